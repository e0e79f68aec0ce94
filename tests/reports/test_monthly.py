"""The monthly CSVs against the hand-built October of `send_october` (tests/reports/conftest.py).

Costs at the tenant's acme-large price (input 3.00, output 15.00, cache reads 0.30 per million):
a1 = 1M·3 + 100k·15 = 4.50; a2 = 200k·3 = 0.60; a3 = 200k·3 + 10k·15 = 0.75;
g1 = 400k·3 + 100k·0.30 + 50k·15 = 1.98; g2 in October = 100k·3 = 0.30 (0.90 more in September).
acme is billed per job (support ticket 1.20, failed 0.05): 1.25. globex per token (6.00 input,
30.00 output, 0.60 cache reads per million): 500k input (400k of g1 without its cache reads, 100k
of g2) = 3.00, 50k output = 1.50, 100k cache reads = 0.06: 4.56.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select

from pricing.tables import invoices
from reports.columns import REPORTS
from tests.reports.conftest import Books, ended, send_october, started, usage

CLOSE = datetime(2026, 11, 1, 1, tzinfo=UTC)

CUSTOMERS_HEADER = ("customer,plan,currency,tasks_completed,tasks_failed,tasks_cancelled,tasks_open,input_tokens,output_tokens,"
                    "cache_read_tokens,cache_write_tokens,reasoning_tokens,provider_cost,amount_due,margin,jobs_billed,jobs_pending")  # fmt: skip
LINES_HEADER = "invoice,customer,period,line,description,quantity,unit_price,amount,currency"
TASKS_HEADER = ("task,customer,task_type,status,started_at,ended_at,usage_events,input_tokens,output_tokens,cache_read_tokens,"
                "cache_write_tokens,reasoning_tokens,provider_cost,priced")  # fmt: skip
COMPARISON_HEADER = ("customer,plan,billed,revenue,provider_cost,margin,margin_pct,tasks_completed,revenue_per_completed_task,"
                     "break_even_job_price")  # fmt: skip


SPEND_HEADER = "customer,actor,agent,tasks,usage_events,input_tokens,output_tokens,provider_cost"


def closed_october(books: Books, tmp_path: Path) -> dict[str, str]:
    send_october(books)
    books.rollup()
    books.close("2026-10", now=CLOSE)
    return books.write("2026-10", tmp_path / "out")


class TestTheFourFiles:
    def test_file_names_and_headers_are_those_of_the_design(self, books: Books, tmp_path: Path) -> None:
        files = closed_october(books, tmp_path)
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
            "comparison-2026-10.csv", "customers-2026-10.csv", "invoice-lines-2026-10.csv", "spend-2026-10.csv",
            "tasks-2026-10.csv",
        ]  # fmt: skip
        headers = {name: text.split("\r\n", 1)[0] for name, text in files.items()}
        assert headers == {"customers": CUSTOMERS_HEADER, "invoice-lines": LINES_HEADER, "tasks": TASKS_HEADER,
                           "comparison": COMPARISON_HEADER, "spend": SPEND_HEADER}  # fmt: skip
        assert {name: ",".join(r.columns) for name, r in REPORTS.items()} == headers

    def test_utf8_rfc4180_lines_and_no_bom(self, books: Books, tmp_path: Path) -> None:
        closed_october(books, tmp_path)
        raw = (tmp_path / "out" / "customers-2026-10.csv").read_bytes()
        assert not raw.startswith(b"\xef\xbb\xbf")
        assert raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b"")

    def test_customers(self, books: Books, tmp_path: Path) -> None:
        files = closed_october(books, tmp_path)
        assert files["customers"].split("\r\n")[1:] == [
            "acme,jobs,USD,1,1,0,1,1400000,110000,0,0,0,5.850000,1.25,-4.60,1,0",
            "globex,tokens,USD,2,0,0,0,600000,50000,100000,0,20000,2.280000,4.56,2.28,2,0",
            "",
        ]

    def test_invoice_lines(self, books: Books, tmp_path: Path) -> None:
        files = closed_october(books, tmp_path)
        assert files["invoice-lines"].split("\r\n")[1:] == [
            "INV-acme-ai-202610-0001,acme,2026-10,1,Completed support_ticket tasks,1,1.20,1.20,USD",
            "INV-acme-ai-202610-0001,acme,2026-10,2,Failed or cancelled tasks,1,0.05,0.05,USD",
            'INV-acme-ai-202610-0002,globex,2026-10,1,"Input tokens, price per 1M tokens",500000,6.00,3.00,USD',
            'INV-acme-ai-202610-0002,globex,2026-10,2,"Output tokens, price per 1M tokens",50000,30.00,1.50,USD',
            'INV-acme-ai-202610-0002,globex,2026-10,3,"Cache read tokens, price per 1M tokens",100000,0.60,0.06,USD',
            "",
        ]

    def test_tasks_hold_the_months_share_and_the_status_now(self, books: Books, tmp_path: Path) -> None:
        files = closed_october(books, tmp_path)
        assert (
            files["tasks"].split("\r\n")[1:]
            == [
                "a1,acme,support_ticket,completed,2026-10-10T09:00:00Z,2026-10-10T10:00:00Z,1,1000000,100000,0,0,0,4.500000,true",
                "a2,acme,,failed,,2026-10-20T12:05:00.250000Z,1,200000,0,0,0,0,0.600000,true",
                "a3,acme,,open,,,1,200000,10000,0,0,0,0.750000,true",
                "g1,globex,code_review,completed,,2026-10-05T08:10:00Z,1,500000,50000,100000,0,20000,1.980000,true",
                "g2,globex,,completed,,2026-10-01T02:00:00Z,1,100000,0,0,0,0,0.300000,true",  # 0.90 of it was September's
                "",
            ]
        )

    def test_comparison(self, books: Books, tmp_path: Path) -> None:
        files = closed_october(books, tmp_path)
        # acme under tokens: 1.4M in · 6 + 110k out · 30 = 8.40 + 3.30 = 11.70, over 1 completed task.
        assert files["comparison"].split("\r\n")[1:] == [
            "acme,jobs,true,1.25,5.850000,-4.60,-3.6800,1,1.250000,11.700000",
            "acme,tokens,false,11.70,5.850000,5.85,0.5000,1,11.700000,11.700000",
            "globex,tokens,true,4.56,2.280000,2.28,0.5000,2,2.280000,2.280000",
            "globex,jobs,false,1.00,2.280000,-1.28,-1.2800,2,0.500000,2.280000",
            "",
        ]

    def test_the_september_files_hold_what_happened_in_september(self, books: Books, tmp_path: Path) -> None:
        send_october(books)
        rows = books.rows("2026-09", tmp_path)
        assert [(r["task"], r["status"], r["input_tokens"], r["provider_cost"]) for r in rows["tasks"]] == [
            ("g2", "completed", "300000", "0.900000")  # completed since: its status now
        ]
        assert [
            (r["customer"], r["tasks_completed"], r["tasks_open"], r["amount_due"]) for r in rows["customers"]
        ] == [
            ("globex", "0", "1", "1.80")  # open at September's end; a draft (September is not closed)
        ]


class TestReconciliation:
    def test_amount_due_equals_the_lines_equals_the_invoices(self, books: Books, tmp_path: Path) -> None:
        send_october(books)
        books.send(*[usage(f"x{i}", "2026-10-12T10:00:00Z", customer="globex", input_tokens=1_234_567 + i, output_tokens=7_777 * i)
                     for i in range(40)])  # fmt: skip
        books.rollup()
        books.close("2026-10", now=CLOSE)
        rows = books.rows("2026-10", tmp_path)
        due = sum(Decimal(r["amount_due"]) for r in rows["customers"])
        lines = sum(Decimal(r["amount"]) for r in rows["invoice-lines"])
        with books.engine.connect() as connection:
            totals = (
                connection.execute(select(invoices.c.total_minor).where(invoices.c.period == "2026-10"))
                .scalars()
                .all()
            )
        assert due == lines == Decimal(sum(totals)).scaleb(-2)
        for customer in rows["customers"]:
            mine = [
                Decimal(r["amount"]) for r in rows["invoice-lines"] if r["customer"] == customer["customer"]
            ]
            assert Decimal(customer["amount_due"]) == sum(mine)

    def test_tasks_add_up_to_the_customers_to_the_micro_unit(self, books: Books, tmp_path: Path) -> None:
        # Costs with sub-micro remainders: 7 tokens at 3.00 per million is 0.000021; 1 token 0.000003.
        books.send(*[usage(f"t{i}", "2026-10-03T10:00:00Z", input_tokens=i * 7 + 1, cache_read_tokens=i % 3,
                           output_tokens=i % 5) for i in range(300)])  # fmt: skip
        rows = books.rows("2026-10", tmp_path)
        for column in ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens"):
            assert sum(int(r[column]) for r in rows["tasks"]) == int(rows["customers"][0][column])
        assert sum(Decimal(r["provider_cost"]) for r in rows["tasks"]) == Decimal(
            rows["customers"][0]["provider_cost"]
        )

    def test_the_open_month_shows_the_drafts(self, books: Books, tmp_path: Path) -> None:
        send_october(books)
        rows = books.rows("2026-10", tmp_path)
        assert [(r["customer"], r["amount_due"]) for r in rows["customers"]] == [
            ("acme", "1.25"),
            ("globex", "4.56"),
        ]
        assert {r["invoice"] for r in rows["invoice-lines"]} == {""}  # no numbers before the close
        assert sum(Decimal(r["amount"]) for r in rows["invoice-lines"]) == Decimal("5.81")

    def test_late_usage_is_an_adjustment_of_the_next_month_naming_the_closed_one(
        self, books: Books, tmp_path: Path
    ) -> None:
        send_october(books)
        books.rollup()
        books.close("2026-10", now=CLOSE)
        books.send(
            usage("g1", "2026-10-20T00:00:00Z", customer="globex", input_tokens=1_000_000)
        )  # 6.00 more, for October
        books.send(
            usage("n1", "2026-11-03T00:00:00Z", customer="globex", input_tokens=100_000)
        )  # 0.60 in November
        books.rollup()
        books.close("2026-11", now=datetime(2026, 12, 1, 1, tzinfo=UTC))
        rows = books.rows("2026-11", tmp_path)
        lines = [(r["customer"], r["period"], r["amount"]) for r in rows["invoice-lines"]]
        assert ("globex", "2026-10", "6.00") in lines and ("globex", "2026-11", "0.60") in lines
        globex = next(r for r in rows["customers"] if r["customer"] == "globex")
        assert globex["amount_due"] == "6.60" and globex["input_tokens"] == "100000"
        october = books.rows("2026-10", tmp_path / "again")
        assert (
            next(r for r in october["customers"] if r["customer"] == "globex")["amount_due"] == "4.56"
        )  # final


class TestFormulaNeutralization:
    def test_text_cells_that_start_like_formulas_get_a_quote_and_numbers_stay_numbers(
        self, make_books, tmp_path: Path
    ) -> None:  # type: ignore[no-untyped-def]
        books = make_books(configured=False)
        books.config({"plans": [{"id": "=plan", "type": "per_job", "prices": {"default": "0.50"}}],
                      "customers": [{"id": "=HYPERLINK(\"http://x\")", "plan": "=plan"}, {"id": "@sum", "plan": "=plan"}]})  # fmt: skip
        books.send(
            usage(
                "+task",
                "2026-10-01T00:00:00Z",
                customer='=HYPERLINK("http://x")',
                input_tokens=10,
                model="acme-large",
            ),
            ended("+task", "2026-10-01T00:01:00Z", customer='=HYPERLINK("http://x")', task_type="-type"),
            usage("\ttab", "2026-10-01T00:00:00Z", customer="@sum", input_tokens=10),
            usage("\rcr", "2026-10-01T00:00:00Z", customer="@sum", input_tokens=10),
        )
        rows = books.rows("2026-10", tmp_path)
        assert [r["customer"] for r in rows["customers"]] == ['\'=HYPERLINK("http://x")', "'@sum"]
        assert {r["plan"] for r in rows["customers"]} == {"'=plan"}
        assert [(r["task"], r["task_type"]) for r in rows["tasks"]] == [
            ("'\ttab", ""),
            ("'\rcr", ""),
            ("'+task", "'-type"),
        ]
        assert [r["margin"] for r in rows["customers"]] == ["0.50", "0.00"]  # margins are plain numbers
        assert {r["plan"] for r in rows["comparison"]} == {"'=plan"}

    def test_a_negative_adjustment_stays_a_number(self, books: Books, tmp_path: Path) -> None:
        send_october(books)
        books.rollup()
        books.close("2026-10", now=CLOSE)
        books.send(
            ended("a1", "2026-10-10T10:30:00Z", "failed", task_type="support_ticket")
        )  # completed → failed, late
        books.rollup()
        rows = books.rows("2026-11", tmp_path)
        amounts = sorted(r["amount"] for r in rows["invoice-lines"] if r["period"] == "2026-10")
        assert amounts == ["-1.20", "0.05"]  # 1.20 credited back, 0.05 more for a failed task


class TestDeterminism:
    def test_reruns_are_byte_identical(self, books: Books, tmp_path: Path) -> None:
        send_october(books)
        books.rollup()
        books.close("2026-10", now=CLOSE)
        first = books.write("2026-10", tmp_path / "a")
        again = books.write("2026-10", tmp_path / "b")
        for name in first:
            assert (tmp_path / "a" / f"{name}-2026-10.csv").read_bytes() == (
                tmp_path / "b" / f"{name}-2026-10.csv"
            ).read_bytes()
        assert first == again

    def test_byte_order_sorting(self, books: Books, tmp_path: Path) -> None:
        books.send(
            *(usage(t, "2026-10-02T00:00:00Z", input_tokens=1) for t in ("b", "B", "a", "Ä", "_", "10", "9"))
        )
        rows = books.rows("2026-10", tmp_path)
        assert [r["task"] for r in rows["tasks"]] == ["10", "9", "B", "_", "a", "b", "Ä"]


class TestTenantMonths:
    def test_the_month_is_the_tenants_calendar_month(self, make_books, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        books = make_books(timezone="America/New_York")
        # 2026-11-01T02:00Z is October 31, 22:00 in New York.
        books.send(started("ny", "2026-11-01T01:00:00Z"), usage("ny", "2026-11-01T02:00:00Z", input_tokens=1_000_000),
                   ended("ny", "2026-11-01T03:00:00Z"))  # fmt: skip
        october = books.rows("2026-10", tmp_path / "oct")
        november = books.rows("2026-11", tmp_path / "nov")
        assert [(r["task"], r["started_at"], r["ended_at"], r["input_tokens"]) for r in october["tasks"]] == [
            ("ny", "2026-11-01T01:00:00Z", "2026-11-01T03:00:00Z", "1000000")  # times stay UTC
        ]
        assert november["tasks"] == [] and november["customers"] == []

    def test_a_new_tenant_gets_headers_only(self, make_books, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        books = make_books(configured=False)
        files = books.write("2026-10", tmp_path)
        assert {name: text.count("\r\n") for name, text in files.items()} == dict.fromkeys(files, 1)

    def test_usage_without_a_plan_has_no_amount(self, make_books, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        books = make_books()
        send_october(books)
        books.send(usage("s1", "2026-10-04T00:00:00Z", customer="stray", input_tokens=1_000_000))
        rows = books.rows("2026-10", tmp_path)
        stray = next(r for r in rows["customers"] if r["customer"] == "stray")
        assert (stray["plan"], stray["amount_due"], stray["margin"], stray["provider_cost"]) == (
            "",
            "",
            "",
            "3.000000",
        )
        assert [r["amount_due"] for r in rows["customers"] if r["customer"] != "stray"] == ["1.25", "4.56"]
        assert "stray" not in {r["customer"] for r in rows["comparison"]}

    def test_tenants_never_see_each_other(self, make_books, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        ours, theirs = make_books("ours"), make_books("theirs")
        send_october(theirs)
        files = ours.write("2026-10", tmp_path)
        assert all(text.count("\r\n") == 1 for text in files.values())


class TestOneReadOfTheTasks:
    def test_the_scanned_ended_tasks_are_what_pricing_reads(self, books: Books) -> None:
        from sqlalchemy.orm import Session

        from metering.core.periods import parse_month
        from pricing.repository import ended_tasks
        from reports.tasks import scan_tasks

        send_october(books)
        books.send(ended("a3", "2026-10-31T23:30:00Z", "cancelled", task_type="=x"))
        books.rollup()
        october = parse_month("2026-10", "UTC")
        with Session(books.engine) as session:
            scanned = scan_tasks(session, books.tenant, october).ended().sort_values("task").reset_index(drop=True)
            read = ended_tasks(session, books.tenant.id, october).sort_values("task").reset_index(drop=True)
        assert list(scanned.columns) == list(read.columns)
        assert scanned.astype(object).where(scanned.notna(), None).to_dict("records") == read.astype(object).where(read.notna(), None).to_dict("records")
        assert list(scanned["task"]) == ["a1", "a2", "a3", "g1", "g2"]
