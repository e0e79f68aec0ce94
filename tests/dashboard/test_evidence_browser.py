"""The drill-down in headless Chromium: from an invoice line to its tasks, and from a task to its
timeline, by clicking; each page fits a 1280 px window without a console error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.dashboard.test_browser import By, console_errors, open_browser, shot, sign_in, wait_for
from tests.dashboard.test_evidence_pages import acme_invoice
from tests.reports.conftest import Books, usage

__all__ = ["open_browser"]  # a fixture


def fits(driver: Any) -> bool:
    wide = driver.execute_script("return document.documentElement.scrollWidth") <= 1280
    overflowing = driver.execute_script(
        "return Array.from(document.querySelectorAll('.table-wrap')).filter(w => w.scrollWidth > w.clientWidth + 1).length"
    )
    return bool(wide and overflowing == 0)


@pytest.mark.slow
def test_click_from_an_invoice_line_to_a_tasks_timeline(
    live_server: LiveServer, october_books: Books, make_key: Callable[..., str], open_browser: Callable[..., Any]
) -> None:
    # One more event of a1, sent by a person's agent (a late usage event: it lands in a November adjustment).
    october_books.send(usage("a1", "2026-10-10T09:45:00Z", input_tokens=10, actor="ben@acme.com", agent="ben/codex-3"))
    october_books.rollup()
    invoice_id, lines = acme_invoice(october_books)
    driver = open_browser(1280, 900)
    sign_in(driver, live_server, make_key(october_books.tenant, "read"), f"/dashboard/invoices/{invoice_id}")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "table.lines"))
    assert fits(driver)
    driver.find_element(By.CSS_SELECTOR, f"a[data-line='{lines['jobs']}']").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "table.line-tasks"))
    assert driver.current_url.endswith(f"/dashboard/invoices/{invoice_id}/lines/{lines['jobs']}")
    assert driver.find_element(By.CSS_SELECTOR, "a[data-evidence-csv]").get_attribute("href").endswith("/tasks.csv")
    assert fits(driver)
    shot(driver, "evidence-line-tasks")
    driver.find_element(By.CSS_SELECTOR, "a[data-task='a1']").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "table.timeline"))
    assert driver.find_element(By.TAG_NAME, "h1").text == "Task a1"
    rows = driver.find_elements(By.CSS_SELECTOR, "table.timeline tbody tr")
    kinds = [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows]
    assert kinds == ["task.started", "usage", "usage", "task.completed"]  # in time order
    agent_row = rows[2].text
    assert "ben@acme.com" in agent_row and "ben/codex-3" in agent_row
    assert "settled at" in driver.find_element(By.CSS_SELECTOR, "[data-fact=settlement]").text
    assert fits(driver)
    shot(driver, "evidence-task-timeline")
    driver.get(live_server.url + "/dashboard?month=2026-10")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "table.outcomes"))
    assert fits(driver)
    assert console_errors(driver) == []
