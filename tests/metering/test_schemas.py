"""The event schema: every rule of DESIGN.md, with the field and the reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.events.ingest import Prepared, prepare_rows, validate_items
from tests.factories import make_event

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def check(items: list[object]) -> Prepared:
    """Shape validation, then the cross-field rules: everything but the database."""
    return prepare_rows(validate_items(items), tenant_id=1, now=NOW)


def stored_time(event: dict[str, object]) -> datetime:
    [row] = check([event]).rows
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=row[3])


def errors_of(event: object) -> dict[str, str]:
    prepared = check([event])
    assert not prepared.rows
    [rejected] = prepared.rejected
    return {e.field: e.message for e in rejected.errors}


class TestValidEvents:
    def test_time_with_offset_is_normalized_to_utc(self) -> None:
        assert stored_time(make_event(time="2026-10-01T12:00:00+05:30")) == datetime(2026, 10, 1, 6, 30, tzinfo=UTC)

    def test_nanosecond_fraction_keeps_microseconds(self) -> None:
        expected = datetime(2026, 10, 1, 12, 0, 0, 123456, tzinfo=UTC)
        assert stored_time(make_event(time="2026-10-01T12:00:00.123456789Z")) == expected

    def test_defaults_for_optional_token_fields(self) -> None:
        [row] = check([make_event()]).rows
        assert row[11:14] == (0, 0, 0)  # cache_read, cache_write, reasoning

    def test_cache_and_reasoning_exactly_at_their_totals(self) -> None:
        event = make_event(input_tokens=100, cache_read_tokens=60, cache_write_tokens=40, output_tokens=7, reasoning_tokens=7)
        assert check([event]).rows

    def test_terminal_event_without_model(self) -> None:
        assert check([make_event(type="task.completed")]).rows

    def test_up_to_seven_days_ahead_is_accepted(self) -> None:
        at = (NOW + timedelta(days=7)).isoformat()
        assert check([make_event(time=at)]).rows


class TestRejections:
    @pytest.mark.parametrize(
        ("change", "field", "message"),
        [
            ({"id": ""}, "id", "at least 1 character"),
            ({"id": "x" * 129}, "id", "at most 128 characters"),
            ({"id": 17}, "id", "valid string"),
            ({"type": "usage.tokens"}, "type", "'usage'"),
            ({"time": "2026-10-01T12:00:00"}, "time", "should have timezone info"),
            ({"time": "2026-10-01"}, "time", "valid datetime"),
            ({"time": 1760000000}, "time", "valid datetime"),
            ({"time": "2026-02-30T00:00:00Z"}, "time", "day value is outside expected range"),
            ({"time": "2026-12-07T12:00:01Z"}, "time", "more than 7 days in the future"),
            ({"customer": ""}, "customer", "at least 1 character"),
            ({"task": "t" * 257}, "task", "at most 256 characters"),
            ({"provider": None}, "provider", "required on usage events"),
            ({"model": None}, "model", "required on usage events"),
            ({"input_tokens": -1}, "input_tokens", "greater than or equal to 0"),
            ({"input_tokens": 1.5}, "input_tokens", "valid integer"),
            ({"input_tokens": "12"}, "input_tokens", "valid integer"),
            ({"output_tokens": True}, "output_tokens", "valid integer"),
            ({"input_tokens": 10**12 + 1}, "input_tokens", "less than or equal to 1000000000000"),
            ({"input_tokens": 10, "cache_read_tokens": 11}, "cache_read_tokens", "must not exceed input_tokens"),
            ({"input_tokens": 10, "cache_read_tokens": 6, "cache_write_tokens": 5}, "cache_write_tokens", "must not exceed input_tokens"),
            ({"output_tokens": 10, "reasoning_tokens": 11}, "reasoning_tokens", "must not exceed output_tokens"),
            ({"metadata": {"agent": 7}}, "metadata.agent", "valid string"),
            ({"tenant": "someone-else"}, "tenant", "not a known event field"),
        ],
    )
    def test_rule(self, change: dict[str, object], field: str, message: str) -> None:
        event = make_event()
        event.update(change)
        event = {k: v for k, v in event.items() if v is not None}
        errors = errors_of(event)
        assert field in errors, errors
        assert message in errors[field]

    def test_missing_fields_are_each_named(self) -> None:
        assert errors_of({"id": "e1"}) == {
            "type": "is required", "time": "is required", "customer": "is required", "task": "is required",
        }  # fmt: skip

    def test_tokens_on_terminal_event(self) -> None:
        event = make_event(type="task.completed", input_tokens=5)
        assert errors_of(event)["input_tokens"] == "token counts are only allowed on usage events"

    def test_not_an_object(self) -> None:
        assert errors_of(42) == {"event": "each event must be a JSON object"}

    def test_rejection_keeps_index_and_id_and_valid_neighbours(self) -> None:
        prepared = check([make_event(id="a"), make_event(id="b", input_tokens=-5), make_event(id="c")])
        assert [row[1] for row in prepared.rows] == ["a", "c"]
        assert prepared.positions == [0, 2]
        assert [(r.index, r.id) for r in prepared.rejected] == [(1, "b")]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "id": st.text(max_size=130) | st.integers(),
                "type": st.sampled_from(["usage", "task.started", "task.completed", "bogus"]),
                "time": st.sampled_from(["2026-10-01T00:00:00Z", "2026-10-01", "2030-01-01T00:00:00Z"]) | st.text(max_size=30),
                "customer": st.text(max_size=5),
                "task": st.text(max_size=5),
                "provider": st.text(max_size=5),
                "model": st.text(max_size=5),
                "input_tokens": st.integers(-5, 10**13) | json_values,
                "output_tokens": st.integers(-5, 100),
                "cache_read_tokens": st.integers(-5, 100),
                "reasoning_tokens": st.integers(-5, 100),
                "metadata": json_values,
            },
        )
        | json_values,
        max_size=8,
    )
)
def test_any_input_is_either_valid_or_rejected_with_a_reason(items: list[object]) -> None:
    prepared = check(items)
    accounted = len(prepared.rows) + len(prepared.rejected) + prepared.duplicates
    assert accounted == len(items)
    for rejection in prepared.rejected:
        assert rejection.errors and all(e.field and e.message for e in rejection.errors)
    for row in prepared.rows:
        input_tokens, output_tokens, cache_read, cache_write, reasoning = row[9:14]
        assert cache_read + cache_write <= input_tokens and reasoning <= output_tokens
