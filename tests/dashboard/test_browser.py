"""The dashboard in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium): sign in, pick a month and a customer, the charts render without console errors, the
numbers are the CSV's, the download works; unauthenticated visits go to the sign-in page and
another tenant's customer is not found; the pages fit a 1280 px window; the API reference renders
with no network. Every host but 127.0.0.1 is unresolvable for the browser (no network), and
screenshots go to artifacts/dashboard/."""

from __future__ import annotations

import base64
import csv
import io
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metering.core.tenants import Tenant
from tests.conftest import LiveServer
from tests.reports.conftest import Books, usage

CHROMIUM, DRIVER = (
    shutil.which("chromium") or "/usr/bin/chromium",
    shutil.which("chromedriver") or "/usr/bin/chromedriver",
)
if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
    pytest.skip(
        "headless Chromium is not installed: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed: pip install selenium"
)
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         # No network: any host but the loopback server fails to resolve.
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")  # fmt: skip


@pytest.fixture
def open_browser(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    drivers = []

    def launch(width: int = 1366, height: int = 900) -> Any:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            *FLAGS,
            f"--user-data-dir={tmp_path / f'profile-{len(drivers)}'}",
            f"--window-size={width},{height}",
        ):
            options.add_argument(flag)
        downloads = tmp_path / "downloads"
        downloads.mkdir(exist_ok=True)
        options.add_experimental_option(
            "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
        )
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        driver.set_page_load_timeout(30)
        driver.downloads = downloads
        drivers.append(driver)
        return driver

    yield launch
    for driver in drivers:
        driver.quit()


def shot(driver: Any, name: str) -> Path:
    """A full-page screenshot (Chromium's DevTools capture beyond the viewport)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    width = driver.execute_script("return document.documentElement.scrollWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    image = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })  # fmt: skip
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(image["data"]))
    return path


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_for(driver: Any, condition: Callable[[Any], Any], seconds: float = 20) -> Any:
    return WebDriverWait(driver, seconds).until(condition)


def sign_in(driver: Any, server: LiveServer, key: str, path: str = "/dashboard") -> None:
    driver.get(server.url + path)
    wait_for(driver, lambda d: "/dashboard/sign-in" in d.current_url)
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(driver, lambda d: "/dashboard/sign-in" not in d.current_url)


def customers_table(driver: Any) -> dict[str, list[str]]:
    """Per customer, the CSV values the table's cells carry (data-value)."""
    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "table.customers tbody tr"):
        name = row.find_element(By.CSS_SELECTOR, "a[data-customer]").get_attribute("data-customer")
        rows[name] = [
            cell.get_attribute("data-value") for cell in row.find_elements(By.CSS_SELECTOR, "[data-value]")
        ]
    return rows


def downloaded(driver: Any, name: str, seconds: float = 20) -> str:
    path = driver.downloads / name
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and not (driver.downloads / f"{name}.crdownload").exists():
            return path.read_bytes().decode("utf-8")
        time.sleep(0.1)
    raise TimeoutException(f"{name} was not downloaded")


@pytest.mark.slow
def test_sign_in_pick_a_month_and_a_customer_charts_numbers_and_download(
    live_server: LiveServer,
    october_books: Books,
    make_key: Callable[..., str],
    open_browser: Callable[..., Any],
) -> None:
    driver = open_browser()
    sign_in(driver, live_server, make_key(october_books.tenant, "read"))
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "section.kpis"))
    assert driver.find_element(By.TAG_NAME, "h1").text.startswith("October 2026")  # the last closed month
    # Pick a month: the filter submits itself (dashboard.js), the filters live in the URL.
    for month in ("2026-11", "2026-10"):
        Select(driver.find_element(By.ID, "month")).select_by_value(month)
        wait_for(
            driver,
            lambda d, m=month: (
                f"month={m}" in d.current_url and d.find_elements(By.CSS_SELECTOR, "section.kpis")
            ),
        )
    charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) >= 5  # months, top revenue, top margin, and a histogram per task type
    drawn = driver.execute_script(
        "return Array.from(document.querySelectorAll('svg.chart rect.bar')).filter(r => r.getBBox().width > 0 && r.getBBox().height > 0).length"
    )
    assert drawn >= 6
    shot(driver, "month-all-customers-laptop")

    # The numbers on the page are those of the customers CSV, downloaded by the browser.
    table = customers_table(driver)
    driver.find_element(By.CSS_SELECTOR, "a[data-report=customers]").click()
    rows = list(csv.DictReader(io.StringIO(downloaded(driver, "customers-2026-10.csv"), newline="")))
    assert {
        r["customer"]: [r["tasks_completed"], r["provider_cost"], r["amount_due"], r["margin"]] for r in rows
    } == table
    kpis = {
        k.get_attribute("data-kpi"): k.find_element(By.CSS_SELECTOR, ".kpi-value").text
        for k in driver.find_elements(By.CSS_SELECTOR, ".kpi")
    }
    assert kpis["revenue"] == "$5.81" and kpis["provider-cost"] == "$8.13" and kpis["margin"] == "−$2.32"

    # Pick a customer.
    Select(driver.find_element(By.ID, "customer")).select_by_value("acme")
    wait_for(
        driver,
        lambda d: "customer=acme" in d.current_url and d.find_elements(By.CSS_SELECTOR, "table.customers"),
    )
    assert list(customers_table(driver)) == ["acme"]
    assert customers_table(driver)["acme"] == table["acme"]
    shot(driver, "month-one-customer-laptop")
    driver.find_element(By.LINK_TEXT, "INV-acme-ai-202610-0001").click()
    wait_for(driver, lambda d: "/dashboard/invoices/" in d.current_url)
    assert driver.find_element(By.CSS_SELECTOR, "[data-total]").get_attribute("data-total") == "1.25"
    assert console_errors(driver) == []


@pytest.mark.slow
def test_phone_width_reads_without_sideways_scrolling(
    live_server: LiveServer,
    october_books: Books,
    make_key: Callable[..., str],
    open_browser: Callable[..., Any],
) -> None:
    driver = open_browser(500, 900)
    # A phone's viewport (desktop windows stop at 500 px): 390 CSS pixels, touch, twice the density.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    sign_in(driver, live_server, make_key(october_books.tenant, "read"), "/dashboard?month=2026-10")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "section.kpis"))
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(driver, "month-all-customers-phone")
    assert console_errors(driver) == []


@pytest.mark.slow
def test_unauthenticated_goes_to_sign_in_and_other_tenants_are_not_found(
    live_server: LiveServer, october_books: Books, make_tenant: Callable[..., Tenant], make_key: Callable[..., str],
    open_browser: Callable[..., Any],
) -> None:  # fmt: skip
    driver = open_browser()
    driver.get(live_server.url + "/dashboard?month=2026-10&customer=acme")
    wait_for(driver, lambda d: "/dashboard/sign-in" in d.current_url)
    assert driver.find_element(By.ID, "key").get_attribute("type") == "password"
    shot(driver, "sign-in")
    other = make_tenant("other-co")
    driver.find_element(By.ID, "key").send_keys(make_key(other, "read"))
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(driver, lambda d: "/dashboard/sign-in" not in d.current_url)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Not found"  # acme belongs to another tenant
    assert [e["message"] for e in console_errors(driver)] == [
        f"{live_server.url}/dashboard?month=2026-10&customer=acme - Failed to load resource: the server responded with a status of 404 (Not Found)"
    ]
    driver.get(live_server.url + "/dashboard?month=2026-10")
    assert "No usage in October 2026 yet" in driver.find_element(By.CSS_SELECTOR, "section.empty").text
    shot(driver, "new-tenant-empty")
    assert console_errors(driver) == []


def resources(driver: Any) -> list[str]:
    """The URLs of every resource the page loaded (scripts, styles, images, fetches)."""
    return driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")  # type: ignore[no-any-return]


@pytest.mark.slow
def test_the_api_reference_renders_its_operations_with_no_network(
    live_server: LiveServer, open_browser: Callable[..., Any]
) -> None:
    driver = open_browser(1280, 900)
    driver.get(live_server.url + "/docs")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10)
    paths = {p.text for p in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/events", "/v1/usage", "/v1/plans"} <= paths
    driver.find_element(By.CSS_SELECTOR, "#operations-events-post_events_v1_events_post .opblock-summary").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock.is-open .opblock-body"))
    loaded = resources(driver)
    assert any(u.endswith("/openapi.json") for u in loaded)
    assert all(u.startswith(live_server.url + "/") for u in loaded), loaded
    shot(driver, "api-docs")
    assert console_errors(driver) == []

    driver.get(live_server.url + "/redoc")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-section-id]")) >= 10)
    assert "/v1/events" in driver.find_element(By.TAG_NAME, "body").text
    # ReDoc's footer asks cdn.redoc.ly for its logo, unconditionally: the policy blocks it.
    logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    loaded = [u for u in resources(driver) if u != logo]
    assert all(u.startswith(live_server.url + "/") for u in loaded), loaded
    assert any(u.endswith("/openapi.json") for u in loaded)
    shot(driver, "api-redoc")
    assert [e["message"] for e in console_errors(driver)] == [
        f"{live_server.url}/redoc - Loading the image 'https://cdn.redoc.ly/redoc/logo-mini.svg' violates the "
        "following Content Security Policy directive: \"img-src 'self' data:\". The action has been blocked."
    ]


@pytest.mark.slow
def test_every_page_fits_a_1280_pixel_window(
    live_server: LiveServer, october_books: Books, make_key: Callable[..., str], open_browser: Callable[..., Any]
) -> None:
    # A task id as long as an agent runtime may make one: it ends in an ellipsis, the row stays one line.
    long_task = "run-2026-11-04T08:00:00Z/" + "d3adb33f" * 10
    october_books.send(usage(long_task, "2026-11-04T08:00:00Z", input_tokens=123_456_789, output_tokens=9_876_543))
    october_books.rollup()
    driver = open_browser(1280, 900)
    assert driver.execute_script("return window.innerWidth") == 1280
    sign_in(driver, live_server, make_key(october_books.tenant, "read"), "/dashboard?month=2026-10")
    pages = {
        "month": "/dashboard?month=2026-10",
        "open-month": "/dashboard?month=2026-11",
        "customer": "/dashboard?month=2026-10&customer=acme",
        "tasks": "/dashboard/customers/acme/tasks?month=2026-11",
        "draft-invoice": "/dashboard/customers/globex/invoice?month=2026-11",
    }
    for name, path in pages.items():
        driver.get(live_server.url + path)
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "main table"))
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1280, name
        # Not even a table scrolls inside its card at this width.
        overflowing = driver.execute_script(
            "return Array.from(document.querySelectorAll('.table-wrap')).filter(w => w.scrollWidth > w.clientWidth + 1).length"
        )
        assert overflowing == 0, name
        shot(driver, f"fit-1280-{name}")
    driver.get(live_server.url + pages["tasks"])
    cell = driver.find_element(By.XPATH, f"//table[contains(@class,'tasks')]//span[@title='{long_task}']/..")
    assert cell.size["height"] < 40  # one line, cut with an ellipsis; the full id on hover
    assert driver.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", cell)
    assert console_errors(driver) == []
