"""Settlement rules, pure: which completed tasks are billable and since when (no database)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pandas as pd
import pytest

from metering.core.errors import InvalidInput
from pricing.config import validate_config
from pricing.outcomes import OutcomeRule, RuleBook, RuleVersion, parse_duration, rules_definition, settle

H = 3_600_000_000  # an hour in microseconds
T0 = 1_790_000_000_000_000  # some instant, UTC microseconds


def book(*rules: dict[str, Any], effective_from: date | None = None) -> RuleBook:
    return RuleBook((RuleVersion(1, effective_from, tuple(OutcomeRule.model_validate(r) for r in rules)),))


def task(status: str = "completed", *, ended: int | None = T0, completed: int | None = T0, accepted: int | None = None,
         reopened: int | None = None, task_type: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"task_type": task_type, "status": status, "ended_us": ended, "completed_us": completed,
            "accepted_us": accepted, "reopened_us": reopened}  # fmt: skip


def settled(rules: RuleBook, *tasks: dict[str, Any]) -> list[int | None]:
    frame = pd.DataFrame(list(tasks)).astype(
        {n: "Int64" for n in ("ended_us", "completed_us", "accepted_us", "reopened_us")}
    )
    out = settle(frame, rules, "UTC")["settled_us"]
    return [None if pd.isna(v) else int(v) for v in out]


WINDOW = book({"task_type": "default", "settle_after": "72h"})
ACCEPTANCE = book({"task_type": "default", "require_acceptance": True})


class TestDurations:
    @pytest.mark.parametrize(("text", "span"), [("72h", timedelta(hours=72)), ("30m", timedelta(minutes=30)),
                                                ("2d", timedelta(days=2)), ("45s", timedelta(seconds=45))])  # fmt: skip
    def test_units(self, text: str, span: timedelta) -> None:
        assert parse_duration(text) == span

    @pytest.mark.parametrize("text", ["72", "h", "1.5h", "-1h", "3w", "", "9999999d"])
    def test_refused(self, text: str) -> None:
        with pytest.raises(ValueError, match="duration|at most"):
            parse_duration(text)


class TestWithoutRules:
    def test_a_completed_task_settles_when_it_completes(self) -> None:
        assert settled(RuleBook(), task()) == [T0]

    def test_failed_and_open_tasks_never_settle(self) -> None:
        assert settled(
            RuleBook(), task("failed", completed=None), task("open", ended=None, completed=None)
        ) == [None, None]


class TestWindow:
    def test_settles_when_the_window_passes(self) -> None:
        assert settled(WINDOW, task()) == [T0 + 72 * H]

    def test_reopened_before_settlement_is_open(self) -> None:
        assert settled(WINDOW, task("open", ended=None, reopened=T0 + 10 * H)) == [None]

    def test_a_later_completion_starts_a_new_window(self) -> None:
        assert settled(WINDOW, task(ended=T0 + 20 * H, completed=T0 + 20 * H, reopened=T0 + 10 * H)) == [
            T0 + 92 * H
        ]

    def test_rejected_before_settlement_is_not_settled(self) -> None:
        assert settled(WINDOW, task("failed", ended=T0 + 71 * H)) == [None]

    def test_settlement_is_final(self) -> None:
        """A reopening or rejection after the window changes nothing billed."""
        assert settled(WINDOW, task("open", ended=None, reopened=T0 + 73 * H), task("failed", ended=T0 + 80 * H)) == [
            T0 + 72 * H, T0 + 72 * H,
        ]  # fmt: skip

    def test_acceptance_settles_at_once(self) -> None:
        assert settled(WINDOW, task(accepted=T0 + 2 * H)) == [T0 + 2 * H]

    def test_an_acceptance_before_the_latest_completion_does_not_count(self) -> None:
        assert settled(
            WINDOW, task(ended=T0 + 5 * H, completed=T0 + 5 * H, accepted=T0 + H, reopened=T0 + 2 * H)
        ) == [T0 + 77 * H]


class TestRequireAcceptance:
    def test_only_acceptance_settles(self) -> None:
        assert settled(ACCEPTANCE, task(), task(accepted=T0 + 500 * H)) == [None, T0 + 500 * H]

    def test_rejected_is_failed(self) -> None:
        assert settled(ACCEPTANCE, task("failed", ended=T0 + H)) == [None]


class TestPerTaskType:
    def test_a_type_without_a_rule_and_no_default_settles_at_once(self) -> None:
        rules = book({"task_type": "code_review", "settle_after": "2d"})
        assert settled(rules, task(task_type="code_review"), task(task_type="support")) == [T0 + 48 * H, T0]

    def test_the_type_rule_wins_over_default(self) -> None:
        rules = book(
            {"task_type": "default", "settle_after": "1h"},
            {"task_type": "code_review", "settle_after": "30m"},
        )
        assert settled(rules, task(task_type="code_review"), task()) == [T0 + H // 2, T0 + H]


class TestVersions:
    def test_the_version_in_force_on_the_completion_day(self) -> None:
        old = RuleVersion(1, None, (OutcomeRule(task_type="default", settle_after=timedelta(hours=1)),))
        new = RuleVersion(
            2, date(2026, 9, 1), (OutcomeRule(task_type="default", settle_after=timedelta(hours=2)),)
        )
        rules = RuleBook((old, new))
        sept = int(pd.Timestamp("2026-09-01", tz="UTC").value // 1000)
        frame = pd.DataFrame(
            [task(ended=sept - H, completed=sept - H), task(ended=sept, completed=sept)]
        ).astype({n: "Int64" for n in ("ended_us", "completed_us", "accepted_us", "reopened_us")})
        out = settle(frame, rules, "UTC")
        assert out["settled_us"].tolist() == [sept, sept + 2 * H]
        assert out["rule_version"].tolist() == [1, 2]

    def test_the_definition_is_canonical(self) -> None:
        a = [OutcomeRule(task_type="b", settle_after="60m"), OutcomeRule(task_type="a")]  # type: ignore[arg-type]
        b = [OutcomeRule(task_type="a", settle_after="0s"), OutcomeRule(task_type="b", settle_after="1h")]  # type: ignore[arg-type]
        assert rules_definition(a) == rules_definition(b)


class TestConfig:
    def test_outcomes_section(self) -> None:
        config = validate_config(
            {"outcomes": [{"task_type": "default", "settle_after": "72h", "dispute_window": "30d"}]}
        )
        assert config.outcomes[0].settle_after == timedelta(hours=72)

    def test_problems_name_their_path(self) -> None:
        raw = {
            "outcomes": [
                {"task_type": "default", "settle_after": "soon"},
                {"task_type": "default", "colour": "red"},
            ]
        }
        with pytest.raises(InvalidInput) as error:
            validate_config(raw)
        fields = [d["field"] for d in error.value.detail]
        assert "outcomes[0].settle_after" in fields and "outcomes[1].colour" in fields

    def test_a_task_type_twice(self) -> None:
        with pytest.raises(InvalidInput) as error:
            validate_config({"outcomes": [{"task_type": "default"}, {"task_type": "default"}]})
        assert error.value.detail == [{"field": "outcomes[1].task_type", "message": "duplicates outcomes[0]"}]
