"""An open month read from the per customer-month figures shows exactly what reading its tasks
shows: the dashboard's figures, the drafts (upcoming invoice, invoice lines), the comparison."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from metering.core.db import unit_of_work
from metering.core.money import to_minor
from metering.core.periods import parse_month
from metering.core.tables import customer_months
from metering.events.schemas import MAX_TOKENS
from metering.rollup import month_figures
from pricing import analysis, open_month, outcomes_repository
from pricing import repository as pricing_repository
from pricing.disputes import open_dispute
from pricing.invoices import upcoming_invoice
from reports import dashboard, month_data
from reports import repository as reports_repository
from reports.billed import month_invoices
from reports.dashboard import month_view
from reports.monthly import write_month
from reports.tables import report_snapshots
from tests.reports.conftest import CUSTOMERS, JOBS, PRICES, TOKENS, Books, ended, started, usage

NOW = datetime(2026, 10, 29, 12, tzinfo=UTC)


def _random_month(books: Books, seed: int) -> None:
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for n in range(120):
        task, customer = f"t{n}", rng.choice(("acme", "globex", "initech"))
        begin = datetime(2026, 10, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(0, 28 * 24 * 60))
        events.append(started(task, begin.isoformat(), customer=customer))
        for _ in range(rng.randrange(0, 4)):
            tokens = rng.choice((100, 20_000, 300_000, 2_000_000))
            events.append(usage(task, (begin + timedelta(minutes=rng.randrange(1, 60))).isoformat(), customer=customer,
                                input_tokens=tokens, output_tokens=rng.randrange(0, tokens // 4 + 1)))  # fmt: skip
        outcome = rng.choice(("completed", "completed", "failed", "cancelled", None))
        if outcome:
            events.append(ended(task, (begin + timedelta(hours=2)).isoformat(), outcome, customer=customer,
                                task_type=rng.choice((None, "support_ticket", "code_review"))))  # fmt: skip
    books.send(*events)
    books.rollup()


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the figures' path read the month's tasks")


def _both(monkeypatch: pytest.MonkeyPatch, read: Any) -> tuple[Any, Any]:
    """The read from the figures (which must not read the month's tasks), and from the tasks."""
    with monkeypatch.context() as patched:
        for module, name in ((dashboard, "scan_tasks"), (outcomes_repository, "billed_tasks"), (pricing_repository, "ended_tasks")):
            patched.setattr(module, name, _refuse)
        fast = read()
    with monkeypatch.context() as patched:
        patched.setattr(open_month, "usable", lambda *args, **kwargs: False)
        slow = read()
    return fast, slow


def _month(books: Books, seed: int, *, own_edges: bool = True) -> None:
    # Job prices inside the dashboard's cost buckets (0.0007 and 0.03 cut two in two), and a tier plan.
    jobs = {**JOBS, "prices": {"default": "0.0007", "support_ticket": "0.03", "code_review": "1.20"}}
    tiered = {"id": "tiered", "type": "per_job", "included": 3,
              "tiers": {"mode": "graduated", "steps": [{"up_to": 5, "price": "0.20"}, {"up_to": None, "price": "0.10"}]}}  # fmt: skip
    customers = [*CUSTOMERS, {"id": "initech", "plan": "tiered", "compare_with": ["jobs", "tokens"]}]
    books.config({"prices": PRICES, "plans": [jobs, TOKENS, tiered], "customers": customers})
    if not own_edges:  # figures without edges on the job prices (as a price they do not know yet)
        with books.engine.begin() as connection:
            assert month_figures.set_edges(connection, books.tenant.id, books.tenant.timezone, [], now=NOW)
    _random_month(books, seed)


@pytest.mark.parametrize("own_edges", [True, False])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_figures_show_what_the_tasks_show(make_books, monkeypatch: pytest.MonkeyPatch, seed: int, own_edges: bool) -> None:  # type: ignore[no-untyped-def]
    books: Books = make_books(f"open-{seed}")
    _month(books, seed, own_edges=own_edges)
    period = parse_month("2026-10", "UTC")
    with Session(books.engine) as session:
        assert open_month.usable(session, books.tenant.id, period, None)
        read, above = [], open_month.tasks_above
        with monkeypatch.context() as patched:
            if own_edges:  # no bucket has tasks on both sides of a job price: none is read
                patched.setattr(open_month, "tasks_above", _refuse)
            else:  # the tasks of the buckets a price cuts in two are
                patched.setattr(open_month, "tasks_above", lambda *args: read.append(1) or above(*args))
            fast, slow = _both(monkeypatch, lambda: month_view(session, books.tenant, period).to_json())
        assert fast == slow and bool(read) is not own_edges
        assert sum(t["losing"] for t in fast["task_types"]) > 0  # the cut buckets were split
        one_fast, one_slow = _both(monkeypatch, lambda: month_view(session, books.tenant, period, customer="acme").to_json())
        assert one_fast == one_slow
        drafts = _both(monkeypatch, lambda: month_invoices(session, books.tenant, period))
        assert drafts[0] == drafts[1] and drafts[0].invoices
        for customer in ("acme", "globex", "initech"):  # the drafts of the reports are the upcoming invoices
            invoice = upcoming_invoice(session, books.tenant, customer, now=NOW)
            draft = drafts[0].by_customer()[customer]
            assert [line["description"] for line in invoice["lines"]] == [line.description for line in draft.lines]
            assert to_minor(invoice["total"], invoice["currency"]) == draft.total_minor


def test_plans_the_figures_cannot_rate_read_the_tasks(make_books) -> None:  # type: ignore[no-untyped-def]
    books: Books = make_books("open-included")
    included = {**JOBS, "included": 2}  # the month's first two completed tasks by end time are free
    books.config({"prices": PRICES, "plans": [included, TOKENS], "customers": CUSTOMERS})
    period = parse_month("2026-10", "UTC")
    with Session(books.engine) as session:
        from pricing import repository

        assert not open_month.usable(session, books.tenant.id, period, repository.stored_plans(session, books.tenant.id).book)


def test_tasks_after_the_month_make_the_view_read_the_tasks(make_books, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    books: Books = make_books("open-later")
    books.send(started("a", "2026-10-03T10:00:00Z"), usage("a", "2026-10-03T10:01:00Z", input_tokens=1000),
               usage("a", "2026-11-02T10:01:00Z", input_tokens=1000))  # fmt: skip
    books.rollup()
    period = parse_month("2026-10", "UTC")
    with Session(books.engine) as session:
        assert open_month.later_tasks(session, books.tenant.id, period)
        view = month_view(session, books.tenant, period)
        assert view.counts["open"] == 1  # open at October's end, though its last event is in November


def test_storing_a_plan_puts_bucket_edges_on_its_job_prices(make_books) -> None:  # type: ignore[no-untyped-def]
    books: Books = make_books("open-edges")  # jobs: 0.50 by default, 1.20 for support tickets

    def own() -> set[int]:
        with books.engine.connect() as connection:
            return set(month_figures.edges_of(connection, books.tenant.id).tolist()) - set(month_figures.COST_EDGES_NANOS.tolist())

    assert own() == {500_000_001, 1_200_000_001}  # a task costing more than 0.50 costs 0.500000001 or more
    books.send(started("a", "2026-10-03T10:00:00Z"), usage("a", "2026-10-03T10:01:00Z", input_tokens=10_000),
               ended("a", "2026-10-03T11:00:00Z"))  # fmt: skip
    books.rollup()

    def bucket() -> int:  # of the task's cost, 0.03 (10,000 input tokens at 3.00 per million)
        with books.engine.connect() as connection:
            [row] = connection.execute(month_figures.customer_months.select()).all()
            assert month_figures.display_bucket(row.bucket, month_figures.edges_of(connection, books.tenant.id)) == 5  # [0.02, 0.05)
        return int(row.bucket)

    assert bucket() == 5
    books.config({"plans": [{**JOBS, "prices": {"default": "0.000000001"}, "effective_from": "2026-11-01"}], "customers": CUSTOMERS})
    assert own() == {500_000_001, 1_200_000_001, 2}  # every version's prices
    assert bucket() == 6  # the figures were rewritten with the new edge


@pytest.mark.parametrize("seed", [3])
def test_the_months_usage_read_once_sums_as_each_read_did(make_books, seed: int) -> None:  # type: ignore[no-untyped-def]
    """`month_usage` over the month's days (or summed over them) gives rating, the customers file
    and the spend by person what their own reads of `usage_daily` gave."""
    books: Books = make_books(f"open-usage-{seed}")
    rng = random.Random(seed)
    events = []
    for n in range(60):  # several people and agents, several days, cache reads
        who = rng.choice(({}, {"actor": "ben@acme.com"}, {"actor": "ben@acme.com", "agent": "ben/codex-3"}, {"actor": "ana@acme.com"}))
        events.append(usage(f"t{n % 9}", f"2026-10-{rng.randrange(1, 32):02d}T10:00:{n % 60:02d}Z", customer=rng.choice(("acme", "globex")),
                            input_tokens=(tokens := rng.choice((7, 1_234_567, 3_000_001))), cache_read_tokens=tokens // 3,
                            output_tokens=rng.randrange(0, 99_999), **who))  # fmt: skip
    unknown = [usage("t1", f"2026-10-0{day}T10:00:00Z", model="no-price", input_tokens=1_000_000, output_tokens=2) for day in (2, 3)]
    books.send(*events, *unknown)
    books.rollup()
    period = parse_month("2026-10", "UTC")
    keys = ["customer", "provider", "model"]
    with Session(books.engine) as session:
        each = pricing_repository.token_usage(session, books.tenant.id, period)
        for by_day in (True, False):
            rows = pricing_repository.month_usage(session, books.tenant.id, period, by_day=by_day)
            tokens = pricing_repository.rating_tokens(rows)
            for frame in (tokens, each):
                assert frame.dtypes.to_dict() == each.dtypes.to_dict()
            summed = [frame.groupby(keys)[list(frame.columns[4:])].sum().sort_index() for frame in (tokens, each)]
            pd.testing.assert_frame_equal(summed[0], summed[1], check_exact=True)
            assert len(tokens) < len(each) or by_day
            assert reports_repository.customer_usage_of(rows) == reports_repository.customer_usage(session, books.tenant.id, period)
            daily = pricing_repository.month_usage(session, books.tenant.id, period, by_day=True)
            people = sorted(reports_repository.spend_by_person_of(daily), key=lambda r: (r.actor, r.agent))
            assert sorted(reports_repository.spend_by_person_of(rows), key=lambda r: (r.actor, r.agent)) == people
            assert len(people) == 4 and sum(p.cost_nanos for p in people) == sum(int(n) for n in daily["cost_nanos"])
            unpriced = reports_repository.unpriced_models_of(daily)
            assert reports_repository.unpriced_models_of(rows) == unpriced
            assert unpriced == [{"provider": "acme-ai", "model": "no-price", "events": 2, "customers": 1, "tokens": 2_000_004}]


@pytest.mark.parametrize("seed", [4, 5])
def test_the_outcomes_from_the_figures_are_the_tasks(make_books, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:  # type: ignore[no-untyped-def]
    """A month's outcomes per task type (`pricing.analysis.month_outcomes`) counted from the figures
    equal those counted from its tasks: completions, reopenings, rejections, failures, disputes,
    at a time inside the month (tasks ending later are then counted from the tasks) and after it."""
    books: Books = make_books(f"open-outcomes-{seed}")
    _month(books, seed)
    rng = random.Random(seed)
    events = []
    for n in range(40):  # completed, then perhaps reopened, completed again, rejected or failed
        task, customer = f"o{n}", rng.choice(("acme", "globex", "initech"))
        at = datetime(2026, 10, 1, tzinfo=UTC) + timedelta(hours=rng.randrange(0, 30 * 24))
        events.append(ended(task, at.isoformat(), customer=customer, task_type=rng.choice((None, "support_ticket", "code_review"))))
        for step in rng.sample(("reopened", "completed", "rejected", "failed"), rng.randrange(0, 3)):
            at += timedelta(hours=rng.randrange(1, 200))
            events.append(ended(task, at.isoformat(), step, customer=customer))
    books.send(*events, ended("d1", "2026-10-05T10:00:00Z", task_type="support_ticket"))
    books.rollup()
    with unit_of_work(books.engine) as session:
        open_dispute(session, books.tenant, "d1", reason="not done", actor="test", now=datetime(2026, 10, 20, tzinfo=UTC))
    period = parse_month("2026-10", "UTC")
    for now in (datetime(2026, 10, 9, 12, tzinfo=UTC), datetime(2026, 11, 29, tzinfo=UTC)):
        with Session(books.engine) as session:
            with monkeypatch.context() as patched:
                patched.setattr(outcomes_repository, "month_outcome_tasks", _refuse)
                fast = analysis.month_outcomes(session, books.tenant, period, now=now) if now.month == 11 else None
            with monkeypatch.context() as patched:
                patched.setattr(open_month, "usable", lambda *args, **kwargs: False)
                slow = analysis.month_outcomes(session, books.tenant, period, now=now)
            found = analysis.month_outcomes(session, books.tenant, period, now=now)
        assert found == slow and (fast is None or fast == slow)
        assert sum(row.reopened for row in found) and sum(row.rejected for row in found) and sum(row.billed_jobs for row in found)
        assert sum(row.disputed for row in found) == (now.month == 11) and all(row.pending == 0 for row in found)


@pytest.mark.parametrize("seed", [1, 6])
def test_the_open_months_files_are_the_per_task_paths_bytes(make_books, monkeypatch: pytest.MonkeyPatch, tmp_path, seed: int) -> None:  # type: ignore[no-untyped-def]
    """The five CSVs of an open month (and the dashboard snapshot written with them) read from the
    figures, their tasks rated as groups and their token usage summed over the month, are byte for
    byte those of the per-task path: every task and every day of usage read and rated."""
    books: Books = make_books(f"open-files-{seed}")
    _month(books, seed)
    books.send(*[usage(f"p{n}", f"2026-10-{n + 1:02d}T08:00:00Z", customer=("acme", "globex")[n % 2], input_tokens=10_000 * n,
                       output_tokens=n, actor="ben@acme.com", **({"agent": "ben/codex-3"} if n % 3 else {})) for n in range(20)])  # fmt: skip
    books.rollup()

    def written(name: str) -> tuple[dict[str, bytes], str]:
        out = tmp_path / name
        write_month(books.engine, books.tenant, "2026-10", out, now=NOW)
        with Session(books.engine) as session:
            payload = session.execute(select(report_snapshots.c.payload).where(report_snapshots.c.tenant_id == books.tenant.id)).scalar_one()
        return {path.name: path.read_bytes() for path in sorted(out.iterdir())}, payload

    with monkeypatch.context() as patched:
        patched.setattr(outcomes_repository, "month_outcome_tasks", _refuse)
        fast = written("figures")
    with monkeypatch.context() as patched:
        patched.setattr(open_month, "usable", lambda *args, **kwargs: False)
        patched.setattr(month_data, "token_days_matter", lambda *args, **kwargs: True)
        slow = written("tasks")
    assert len(fast[0]) == 5 and fast[0] == slow[0]
    assert fast[1] == slow[1]
    assert fast[0]["invoice-lines-2026-10.csv"].count(b"\n") > 3  # the drafts' lines


def test_a_views_json_is_its_dataclass_dict(make_books) -> None:  # type: ignore[no-untyped-def]
    """`MonthView.to_json` (what a snapshot keeps) is `dataclasses.asdict` of the view, made
    without deep-copying its cells, and reads back as the same view."""
    books: Books = make_books("open-json")
    _month(books, 1)
    period = parse_month("2026-10", "UTC")
    with Session(books.engine) as session:
        views = [month_view(session, books.tenant, period, now=NOW), month_view(session, books.tenant, period, customer="acme", now=NOW)]
    for view in views:
        data = view.to_json()
        assert data == dataclasses.asdict(view) and view.task_types and view.customers and view.outcomes
        assert dashboard.MonthView.from_json(json.loads(json.dumps(data))) == view


@pytest.mark.parametrize("rollups", [1, 3])
def test_a_month_whose_figures_pass_int64_reads_its_tasks(make_books, monkeypatch: pytest.MonkeyPatch, rollups: int) -> None:  # type: ignore[no-untyped-def]
    """Three failed tasks of one customer and task type, each of 10**12 input and output tokens at
    2,000 per million (4e18 nano-units): their key's cost passes int64. The rollup keeps it
    (PostgreSQL refused the increment, "bigint out of range"; numpy's sum wrapped around to a
    negative cost) as `too_large`, and the month is read from its tasks: the dashboard and the
    drafts show what the tasks show, the whole 12e18 nano-units."""
    books: Books = make_books(f"open-huge-{rollups}")
    huge = [{"provider": "acme-ai", "model": "acme-huge", "input": "2000", "output": "2000"}]
    books.config({"prices": [*PRICES, *huge], "plans": [JOBS, TOKENS], "customers": CUSTOMERS})
    tasks = [[usage(f"h{i}", f"2026-10-0{i + 3}T10:00:00Z", model="acme-huge", input_tokens=MAX_TOKENS, output_tokens=MAX_TOKENS,
                    actor=f"p{i}"),  # one usage_months key each (theirs fit)
              ended(f"h{i}", f"2026-10-0{i + 3}T11:00:00Z", "failed", task_type="support_ticket")] for i in range(3)]  # fmt: skip
    for part in [sum(tasks, [])] if rollups == 1 else tasks:
        books.send(*part)
        books.rollup()
    with books.engine.connect() as connection:
        [row] = connection.execute(select(customer_months).where(customer_months.c.tenant_id == books.tenant.id)).all()
    assert (row.too_large, row.tasks, row.cost_nanos) == (1, 3, 0)
    period = parse_month("2026-10", "UTC")

    def as_tasks(read: Any) -> tuple[Any, Any]:
        """The read as it is, and from the tasks (the figures never used)."""
        found = read()
        with monkeypatch.context() as patched:
            patched.setattr(open_month, "figures", _refuse)
            patched.setattr(open_month, "usable", lambda *args, **kwargs: False)
            return found, read()

    with Session(books.engine) as session:
        assert not open_month.usable(session, books.tenant.id, period, None)
        assert open_month.usable_figures(session, books.tenant.id, period, "acme") is None
        for customer in (None, "acme"):
            found, tasks = as_tasks(lambda c=customer: month_view(session, books.tenant, period, customer=c, now=NOW).to_json())
            assert found == tasks
            [kind] = [t for t in found["task_types"] if t["failed"]]
            assert (kind["failed"], kind["failed_cost_micros"]) == (3, 12 * 10**15)
        drafts = as_tasks(lambda: month_invoices(session, books.tenant, period))
        assert drafts[0] == drafts[1]
        invoice = upcoming_invoice(session, books.tenant, "acme", now=NOW)
        assert invoice["total"] == Decimal("0.15") and to_minor(invoice["total"], invoice["currency"]) == drafts[0].by_customer()["acme"].total_minor
