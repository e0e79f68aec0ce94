"""Bad input sweep: JSONL files and request bodies in the wrong encoding, with byte order marks,
blank lines, 10 MB lines, truncated last lines and CRLF; tenant config files with every kind of
error. Each gets a message naming the line or the path, and nothing is half-applied: a JSONL file
stores exactly its valid events (a rerun is a replay), a request body that cannot be read stores
nothing, and a config file with any error changes nothing at all."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from metering.core.tables import events, tenant_prices
from metering.core.tenants import Tenant
from pricing.tables import customer_plans, customers, plan_versions, plans
from tests.factories import make_event

Run = Callable[..., tuple[int, Any, str]]


def jsonl(*items: dict[str, Any]) -> list[str]:
    return [json.dumps(item, ensure_ascii=False) for item in items]


def stored_ids(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(select(events.c.event_id)).scalars())


def rejections(path: Path) -> list[dict[str, Any]]:
    rejected = path.with_name(path.name.removesuffix(".jsonl") + ".rejected.jsonl")
    return [json.loads(line) for line in rejected.read_text(encoding="utf-8").splitlines()] if rejected.exists() else []


class TestJsonlFiles:
    @pytest.fixture
    def ingest(self, run: Run, tenant: Tenant, tmp_path: Path) -> Callable[[bytes], tuple[int, Any, str, Path]]:
        def ingest(data: bytes, name: str = "events.jsonl") -> tuple[int, Any, str, Path]:
            path = tmp_path / name
            path.write_bytes(data)
            return (*run("ingest", path, "--tenant", tenant.name), path)

        return ingest

    def test_latin1_lines_are_rejected_by_line_and_the_utf8_ones_stored(self, ingest: Any, engine: Engine) -> None:
        lines = jsonl(make_event(id="ok-1"), make_event(id="cafe-1", customer="café"), make_event(id="ok-2"))
        code, out, _, path = ingest("\n".join(lines).encode("latin-1") + b"\n")
        assert code == 0 and (out["accepted"], out["rejected"]) == (2, 1)
        [rejected] = rejections(path)
        assert rejected["line"] == 2 and "not UTF-8" in rejected["errors"][0]["message"]
        assert "re-encode the file as UTF-8" in rejected["errors"][0]["message"]
        assert stored_ids(engine) == {"ok-1", "ok-2"}

    @pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
    def test_a_utf16_or_utf32_file_is_refused_whole(self, ingest: Any, engine: Engine, encoding: str) -> None:
        data = "\n".join(jsonl(make_event(id="wide-1"), make_event(id="wide-2"))).encode(encoding)
        code, out, err, path = ingest(data)
        assert code == 1 and out is None
        assert "UTF-16 or UTF-32" in err and "line 1" in err and "re-encode it as UTF-8" in err
        assert stored_ids(engine) == set() and rejections(path) == []

    def test_a_utf8_byte_order_mark_is_ignored(self, ingest: Any, engine: Engine) -> None:
        code, out, _, _ = ingest(b"\xef\xbb\xbf" + "\n".join(jsonl(make_event(id="bom-1"), make_event(id="bom-2"))).encode())
        assert code == 0 and out["accepted"] == 2
        assert stored_ids(engine) == {"bom-1", "bom-2"}

    def test_blank_lines_are_skipped_and_line_numbers_stay_the_files(self, ingest: Any, engine: Engine) -> None:
        good, bad = jsonl(make_event(id="b-1"), make_event(id="b-2")), jsonl(make_event(id="b-bad", input_tokens=-1))
        data = f"\n\n{good[0]}\n   \n\t\n{bad[0]}\n\n{good[1]}\n\n".encode()
        code, out, _, path = ingest(data)
        assert code == 0 and (out["accepted"], out["rejected"], out["lines"]) == (2, 1, 3)
        [rejected] = rejections(path)
        assert rejected["line"] == 6 and rejected["id"] == "b-bad" and rejected["errors"][0]["field"] == "input_tokens"
        assert stored_ids(engine) == {"b-1", "b-2"}

    def test_crlf_line_ends(self, ingest: Any, engine: Engine) -> None:
        code, out, _, _ = ingest(("\r\n".join(jsonl(make_event(id="crlf-1"), make_event(id="crlf-2"))) + "\r\n").encode())
        assert code == 0 and out["accepted"] == 2
        assert stored_ids(engine) == {"crlf-1", "crlf-2"}

    def test_10_mb_lines_are_rejected_with_their_reason_and_the_others_stored(self, ingest: Any, engine: Engine) -> None:
        huge_event = jsonl(make_event(id="huge", metadata={"blob": "x" * (10 * 1024 * 1024)}))[0]
        garbage = "y" * (10 * 1024 * 1024)
        data = "\n".join([*jsonl(make_event(id="small-1")), huge_event, garbage, *jsonl(make_event(id="small-2"))]).encode()
        code, out, _, path = ingest(data)
        assert code == 0 and (out["accepted"], out["rejected"]) == (2, 2)
        by_line = {r["line"]: r for r in rejections(path)}
        assert by_line[2]["id"] == "huge" and by_line[2]["errors"][0]["field"] == "metadata.blob"
        assert "at most 1024 characters" in by_line[2]["errors"][0]["message"]
        assert by_line[3]["errors"][0]["message"].startswith("malformed JSON")
        assert stored_ids(engine) == {"small-1", "small-2"}

    def test_a_truncated_last_line_is_rejected_and_a_rerun_of_the_fixed_file_adds_only_it(self, ingest: Any, engine: Engine) -> None:
        lines = jsonl(make_event(id="t-1"), make_event(id="t-2"), make_event(id="t-3"))
        code, out, _, path = ingest(("\n".join(lines[:2]) + "\n" + lines[2][:40]).encode())  # cut mid-string, no newline
        assert code == 0 and (out["accepted"], out["rejected"]) == (2, 1)
        [rejected] = rejections(path)
        assert rejected["line"] == 3 and "malformed JSON" in rejected["errors"][0]["message"]
        assert stored_ids(engine) == {"t-1", "t-2"}

        code, out, _, _ = ingest(("\n".join(lines) + "\n").encode())
        assert (out["accepted"], out["duplicates"], out["rejected"]) == (1, 2, 0)
        assert stored_ids(engine) == {"t-1", "t-2", "t-3"}

    def test_nul_bytes_after_the_first_line_are_named(self, ingest: Any, engine: Engine) -> None:
        first, second = jsonl(make_event(id="n-1"), make_event(id="n-2"))
        code, out, _, path = ingest(f"{first}\n{second[:20]}\x00\x00{second[20:]}\n".encode())
        assert code == 0 and (out["accepted"], out["rejected"]) == (1, 1)
        assert "NUL bytes" in rejections(path)[0]["errors"][0]["message"]

    def test_no_such_file(self, run: Run, tenant: Tenant, tmp_path: Path) -> None:
        code, _, err = run("ingest", tmp_path / "missing.jsonl", "--tenant", tenant.name)
        assert code == 1 and "no such file" in err


class TestRequestBodies:
    """POST /v1/events: a body that is not UTF-8 JSON is refused whole (400, saying why)."""

    BATCH = [make_event(id="body-1", customer="café"), make_event(id="body-2")]

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (json.dumps(BATCH, ensure_ascii=False).encode("latin-1"), "not UTF-8 (byte 0xe9 at position"),
            (json.dumps(BATCH).encode("utf-16"), "UTF-16 or UTF-32"),
            (json.dumps(BATCH).encode("utf-32"), "UTF-16 or UTF-32"),
            (b"\x00" * 8, "UTF-16 or UTF-32"),
            (json.dumps(BATCH).encode()[:-25], "malformed JSON at line 1, column"),
            (b"", "malformed JSON at line 1, column 1"),
        ],
        ids=["latin-1", "utf-16", "utf-32", "nul", "truncated", "empty"],
    )
    def test_an_unreadable_body_stores_nothing(self, api: httpx.Client, engine: Engine, body: bytes, message: str) -> None:
        answer = api.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"] == "malformed_json"
        assert message in answer.json()["message"]
        assert stored_ids(engine) == set()

    @pytest.mark.parametrize("content_type", ["application/json", "application/cloudevents-batch+json"])
    def test_a_utf8_byte_order_mark_is_ignored(self, api: httpx.Client, content_type: str) -> None:
        batch = self.BATCH if content_type == "application/json" else []
        answer = api.post("/v1/events", content=b"\xef\xbb\xbf" + json.dumps(batch).encode(), headers={"Content-Type": content_type})
        assert answer.status_code == 200, answer.text

    def test_crlf_between_tokens_is_just_whitespace(self, api: httpx.Client, engine: Engine) -> None:
        body = json.dumps(self.BATCH, indent=1).replace("\n", "\r\n").encode()
        assert api.post("/v1/events", content=body, headers={"Content-Type": "application/json"}).json()["accepted"] == 2
        assert stored_ids(engine) == {"body-1", "body-2"}


GOOD = """\
prices:
  - {provider: acme-ai, model: acme-large, input: "3.00", output: "15.00"}
plans:
  - id: tokens
    type: per_token
    rates: {input: "6.00", output: "30.00", cache_read: "0.60", cache_write: "7.50"}
  - id: jobs
    type: per_job
    prices: {default: "0.50", support_ticket: "1.20"}
customers:
  - {id: acme, plan: jobs, compare_with: [tokens]}
"""

# Each bad file: its text (or bytes), and what stderr must say (the line or the path, the reason).
BAD_CONFIGS: dict[str, tuple[str | bytes, list[str]]] = {
    "yaml syntax": ("plans:\n  - id: a\n    type: per_job\n   prices: {default: '1'}\n", ["not valid YAML at line 4, column 4"]),
    "unclosed flow": ("plans: [\n", ["not valid YAML at line 2"]),
    "duplicate yaml key": (GOOD + "plans: []\n", ["found the key 'plans' twice (first on line 3)", "line 12"]),
    "duplicate key inside an entry": (
        "plans:\n  - {id: a, type: per_job, prices: {default: '1'}, prices: {default: '2'}}\n",
        ["found the key 'prices' twice", "line 2"],
    ),
    "unknown section": (GOOD + "discounts: []\n", ['"field": "discounts"', "unknown section"]),
    "unknown plan key": (GOOD.replace("type: per_job", "type: per_job\n    colour: red"), ['"field": "plans[1].colour"']),
    "negative price": (GOOD.replace('default: "0.50"', 'default: "-0.50"'), ['"field": "plans[1].prices.default"', "must not be negative"]),
    "float price": (GOOD.replace('input: "6.00"', "input: 6.00"), ['"field": "plans[0].rates.input"', "not a float"]),
    "not a number": (GOOD.replace('default: "0.50"', 'default: "NaN"'), ['"field": "plans[1].prices.default"', "finite"]),
    "negative model price": (GOOD.replace('input: "3.00"', 'input: "-3.00"'), ['"field": "prices[0]']),
    "tiers out of order": (
        "plans:\n  - id: t\n    type: per_job\n    tiers: {mode: graduated, steps: [{up_to: 1000, price: '1.00'}, "
        "{up_to: 500, price: '0.80'}, {up_to: null, price: '0.60'}]}\n",
        ['"field": "plans[0].tiers.steps[1].up_to"', "greater than the previous step"],
    ),
    "unknown plan for a customer": (GOOD.replace("plan: jobs", "plan: nope"), ['"field": "customers[0].plan"', "unknown plan 'nope'"]),
    "unknown compare_with plan": (GOOD.replace("[tokens]", "[tokens, gold]"), ['"field": "customers[0].compare_with[1]"']),
    "duplicate customer ids": (GOOD + "  - {id: acme, plan: tokens}\n", ['"field": "customers[1].id"', "duplicates customers[0]"]),
    "duplicate model prices": (
        GOOD.replace("plans:", '  - {provider: acme-ai, model: acme-large, input: "4.00", output: "15.00"}\nplans:'),
        ['"field": "prices[1]"', "duplicates prices[0]"],
    ),
    "latin-1": (GOOD.replace("id: acme,", "id: acmé,").encode("latin-1"), ["is not UTF-8: byte 0xe9 at line 11, column 13", "re-encode it as UTF-8"]),
    "utf-16": (GOOD.encode("utf-16"), ["UTF-16 or UTF-32", "re-encode it as UTF-8"]),
    "not a mapping": ("- just\n- a list\n", ["must be a mapping"]),
}


class TestConfigFiles:
    @pytest.fixture
    def load(self, run: Run, tenant: Tenant, tmp_path: Path) -> Callable[[str | bytes], tuple[int, Any, str]]:
        def load(text: str | bytes) -> tuple[int, Any, str]:
            path = tmp_path / "tenant.yaml"
            path.write_bytes(text.encode() if isinstance(text, str) else text)
            return run("config", "load", path, "--tenant", tenant.name)

        return load

    @staticmethod
    def pricing_state(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the tables a config file writes."""
        state = {}
        with engine.connect() as connection:
            for table in (plans, plan_versions, customers, customer_plans, tenant_prices):
                state[table.name] = sorted(tuple(map(str, row)) for row in connection.execute(select(table)))
        return state

    def test_a_good_file_loads_and_loading_it_again_changes_nothing(self, load: Any, engine: Engine) -> None:
        code, out, _ = load(GOOD)
        assert code == 0 and {p["id"]: p["status"] for p in out["plans"]} == {"tokens": "created", "jobs": "created"}
        before = self.pricing_state(engine)
        code, out, _ = load(GOOD)
        assert code == 0 and {p["status"] for p in out["plans"]} == {"unchanged"}
        assert self.pricing_state(engine) == before

    @pytest.mark.parametrize("case", list(BAD_CONFIGS))
    def test_a_bad_file_is_refused_naming_where_and_changes_nothing(self, load: Any, engine: Engine, case: str) -> None:
        assert load(GOOD)[0] == 0
        before = self.pricing_state(engine)
        text, expected = BAD_CONFIGS[case]
        code, out, err = load(text)
        assert code == 1 and out is None, err
        for needle in expected:
            assert needle in err, f"{needle!r} not in {err!r}"
        assert "Traceback" not in err
        assert self.pricing_state(engine) == before

    def test_every_problem_of_a_file_is_reported_at_once(self, load: Any) -> None:
        text = GOOD.replace('default: "0.50"', 'default: "-0.50"').replace("plan: jobs", "plan: nope") + "discounts: []\n"
        code, _, err = load(text)
        assert code == 1 and "3 problem(s)" in err
        assert all(f'"field": "{f}"' in err for f in ("discounts", "plans[1].prices.default", "customers[0].plan"))

    def test_valid_prices_and_plans_are_not_applied_when_a_customer_is_wrong(self, load: Any, engine: Engine) -> None:
        assert load(GOOD)[0] == 0
        before = self.pricing_state(engine)
        changed = (
            GOOD.replace('input: "3.00"', 'input: "3.50"')  # a valid change of prices
            .replace('support_ticket: "1.20"', 'support_ticket: "1.40"')  # a valid new version of a plan
            + "  - {id: globex, plan: enterprise}\n"  # and one customer on a plan that does not exist
        )
        code, _, err = load(changed)
        assert code == 1 and '"field": "customers[1].plan"' in err
        assert self.pricing_state(engine) == before
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(customers).where(customers.c.customer == "globex")).scalar() == 0
