"""`summarize` and the merges against a plain pandas reference, on randomized event frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.core.errors import UsageTooLarge
from metering.rollup.summary import (
    DAILY_KEYS,
    DETAIL_KEYS,
    TASK_COLUMNS,
    TOKEN_COLUMNS,
    US_PER_DAY,
    USAGE_COLUMNS,
    merge_additive,
    merge_tasks,
    summarize,
)

KINDS = ["usage", "usage", "usage", "task.started", "task.completed", "task.failed", "task.cancelled", "task.note",
         "task.reopened", "task.accepted", "task.rejected", "task.completed"]  # fmt: skip
TEXTS = ("type", "customer", "task", "task_type", "provider", "model", "actor", "agent")
STATUS_OF = {"task.reopened": "open", "task.rejected": "failed"}
MODELS = [("openai", "gpt-4o"), ("openai", "o3"), ("anthropic", "claude"), ("google", "gemini")]


def random_events(rng: np.random.Generator, n: int, tasks: int) -> pd.DataFrame:
    """Events in seq order; times collide often (ties are broken by seq), and non-usage events
    carry token counts too (they must not be counted)."""
    kind = rng.choice(KINDS, n)
    usage = kind == "usage"
    model = rng.integers(0, len(MODELS), n)
    frame = pd.DataFrame(
        {
            "seq": np.arange(1, n + 1) * 3,
            "time_us": 1_790_000_000 * 10**6 + rng.integers(0, 4, n) * (US_PER_DAY // 3),
            "type": kind,
            "customer": [f"c{i}" for i in rng.integers(0, 3, n)],
            "task": [f"t{i}" for i in rng.integers(0, tasks, n)],
            "task_type": [None if i == 2 else f"type{i}" for i in rng.integers(0, 3, n)],
            "provider": np.where(usage, [MODELS[m][0] for m in model], None),
            "model": np.where(usage, [MODELS[m][1] for m in model], None),
            **{name: rng.integers(0, 1000, n) * rng.integers(0, 2, n) for name in TOKEN_COLUMNS},
            "cost_nanos": rng.integers(0, 10**9, n),
            "cost_rem": rng.integers(0, 10**6, n),
            "priced": rng.random(n) < 0.8,
            # Who: often nobody; an agent sometimes without its actor (both count as given).
            "actor": [None if i == 0 else f"person{i}@acme.com" for i in rng.integers(0, 3, n)],
            "agent": [None if i == 0 else f"agent-{i}" for i in rng.integers(0, 4, n)],
        }
    )
    return frame


def reference_tasks(events: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for task, group in events.groupby("task", sort=True):
        group = group.sort_values(["time_us", "seq"])
        usage = group[group["type"] == "usage"]
        typed = group[group["task_type"].notna()]
        outcome = ["task.completed", "task.failed", "task.cancelled", "task.reopened", "task.rejected"]
        terminal = group[group["type"].isin(outcome)]
        status = STATUS_OF.get(terminal["type"].iloc[-1], terminal["type"].iloc[-1].removeprefix("task.")) if len(terminal) else "open"
        started = group[group["type"] == "task.started"]

        def latest(kind: str, group: pd.DataFrame = group) -> object:
            times = group.loc[group["type"] == kind, "time_us"]
            return times.max() if len(times) else None

        row = {
            "task": task,
            "customer": group["customer"].iloc[0],
            "customer_us": group["time_us"].iloc[0],
            "customer_seq": group["seq"].iloc[0],
            "task_type": typed["task_type"].iloc[-1] if len(typed) else None,
            "task_type_us": typed["time_us"].iloc[-1] if len(typed) else None,
            "task_type_seq": typed["seq"].iloc[-1] if len(typed) else None,
            "status": status,
            "ended_us": terminal["time_us"].iloc[-1] if len(terminal) and status != "open" else None,
            "status_seq": terminal["seq"].iloc[-1] if len(terminal) else None,
            "started_us": started["time_us"].min() if len(started) else None,
            "first_event_us": group["time_us"].min(),
            "last_event_us": group["time_us"].max(),
            "events": len(group),
            "usage_events": len(usage),
            **{name: usage[name].sum() for name in TOKEN_COLUMNS},
            # The exact sum, carried: cost_rem < 10**6.
            "cost_nanos": usage["cost_nanos"].sum() + usage["cost_rem"].sum() // 10**6,
            "cost_rem": usage["cost_rem"].sum() % 10**6,
            "unpriced_events": int((~usage["priced"]).sum()),
            "last_seq": group["seq"].max(),
            "completed_us": latest("task.completed"),
            "accepted_us": latest("task.accepted"),
            "reopened_us": latest("task.reopened"),
            "reopened": int((group["type"] == "task.reopened").sum()),
            "rejected": int((group["type"] == "task.rejected").sum()),
        }
        rows.append(row)
    return normalized(pd.DataFrame(rows, columns=list(TASK_COLUMNS)), ("task",))


def reference_sums(events: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    usage = events[events["type"] == "usage"].assign(
        day=lambda f: (f["time_us"] // US_PER_DAY).astype("datetime64[D]"),
        # A usage event counts for its own actor and agent; '' where it names none.
        actor=lambda f: f["actor"].astype(object).where(f["actor"].notna(), ""),
        agent=lambda f: f["agent"].astype(object).where(f["agent"].notna(), ""),
        usage_events=1,
        unpriced_events=lambda f: (~f["priced"]).astype(int),
    )
    summed = usage.groupby(list(keys), sort=True)[list(USAGE_COLUMNS)].sum().reset_index()
    # The exact sum, carried: cost_rem < 10**6.
    summed["cost_nanos"] += summed["cost_rem"] // 10**6
    summed["cost_rem"] %= 10**6
    return normalized(summed, keys)


def normalized(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Plain Python values in key order: compares frames whatever their dtypes."""
    out = frame.astype(object).where(frame.notna(), None)
    for name in out.columns:
        out[name] = [int(v) if isinstance(v, np.integer) else v for v in out[name]]
    if "day" in out.columns:
        out["day"] = [pd.Timestamp(v).date() for v in out["day"]]
    return out.sort_values(list(keys), ignore_index=True)


def as_categories(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({name: "category" for name in TEXTS})


@pytest.mark.parametrize("form", ["object", "categorical", "categorical-subset"])
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120), tasks=st.integers(1, 12))
def test_summary_equals_the_pandas_reference(form: str, seed: int, n: int, tasks: int) -> None:
    events = random_events(np.random.default_rng(seed), n, tasks)
    if form != "object":
        events = as_categories(events)
    if form == "categorical-subset":  # categories left without rows: not tasks, customers or models
        keep = np.random.default_rng(seed + 1).random(len(events)) < 0.6
        keep[0] = True
        events = events[keep].reset_index(drop=True)
    summary = summarize(events, "UTC")
    plain = events.astype({name: object for name in TEXTS})
    assert normalized(summary.tasks, ("task",)).equals(reference_tasks(plain))
    assert normalized(summary.detail, DETAIL_KEYS).equals(reference_sums(plain, DETAIL_KEYS))
    assert normalized(summary.daily, DAILY_KEYS).equals(reference_sums(plain, DAILY_KEYS))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 120), cut=st.floats(0, 1))
def test_merged_parts_equal_the_whole(seed: int, n: int, cut: float) -> None:
    events = random_events(np.random.default_rng(seed), n, 8)
    at = int(n * cut)
    whole = summarize(events, "UTC")
    first, second = summarize(events.iloc[:at].reset_index(drop=True), "UTC"), summarize(events.iloc[at:].reset_index(drop=True), "UTC")
    if at == 0 or at == n:
        return
    assert normalized(merge_tasks(first.tasks, second.tasks), ("task",)).equals(normalized(whole.tasks, ("task",)))
    for keys, part in ((DETAIL_KEYS, "detail"), (DAILY_KEYS, "daily")):
        merged = merge_additive(getattr(first, part), getattr(second, part), keys)
        assert normalized(merged, keys).equals(normalized(getattr(whole, part), keys))


def test_only_usage_events() -> None:
    events = random_events(np.random.default_rng(7), 50, 5).assign(type="usage")
    events["provider"], events["model"] = "openai", "gpt-4o"
    summary = summarize(events, "UTC")
    assert normalized(summary.detail, DETAIL_KEYS).equals(reference_sums(events, DETAIL_KEYS))
    assert int(summary.tasks["usage_events"].sum()) == 50


def test_events_without_actor_or_agent_columns_sum_as_nobody() -> None:
    """A frame without the columns (an older caller) is usage of no actor and no agent."""
    events = random_events(np.random.default_rng(11), 60, 5)
    summary = summarize(events.drop(columns=["actor", "agent"]), "UTC")
    nobody = events.assign(actor=None, agent=None)
    assert normalized(summary.daily, DAILY_KEYS).equals(reference_sums(nobody, DAILY_KEYS))
    assert set(summary.daily["actor"]) == set(summary.daily["agent"]) == {""}


def test_no_usage_events() -> None:
    events = random_events(np.random.default_rng(8), 30, 4).assign(type="task.started", provider=None, model=None)
    summary = summarize(events, "UTC")
    assert summary.detail.empty and summary.daily.empty
    assert int(summary.tasks["events"].sum()) == 30 and int(summary.tasks["input_tokens"].sum()) == 0


class TestSumsNeverWrapAround:
    """A usage event may cost up to 4e18 nano-units (10**12 tokens of input and of output at the
    rate cap of 2000 per million): three of them in one task used to sum to a negative cost."""

    MOST = 4 * 10**18

    def heavy(self, n: int, task: str = "t1") -> pd.DataFrame:
        events = random_events(np.random.default_rng(9), n, 1).assign(type="usage", task=task, customer="c0", provider="acme-ai", model="acme-max", actor="ann", agent=None)
        return events.assign(time_us=1_790_000_000 * 10**6, cost_nanos=self.MOST, cost_rem=0, input_tokens=10**12)

    def test_two_sum_exactly(self) -> None:
        summary = summarize(self.heavy(2), "UTC")
        assert int(summary.tasks["cost_nanos"].iloc[0]) == 2 * self.MOST
        assert int(summary.daily["cost_nanos"].iloc[0]) == 2 * self.MOST

    def test_three_are_refused_not_wrapped(self) -> None:
        with pytest.raises(UsageTooLarge, match="exceeds 9,223,372,036,854,775,807") as raised:
            summarize(self.heavy(3), "UTC")
        assert raised.value.detail == {"sum": str(3 * self.MOST), "limit": str(2**63 - 1)}

    def test_a_merge_past_the_limit_is_refused(self) -> None:
        old, new = summarize(self.heavy(2), "UTC"), summarize(self.heavy(1), "UTC")
        with pytest.raises(UsageTooLarge):
            merge_tasks(old.tasks, new.tasks)
        with pytest.raises(UsageTooLarge):
            merge_additive(old.daily, new.daily, DAILY_KEYS)

    def test_many_small_sums_near_the_limit_pass(self) -> None:
        """The check looks at exact sums, not at the bound count x largest."""
        events = self.heavy(4).assign(task=["t1", "t2", "t3", "t4"], customer=["c0", "c1", "c2", "c3"])
        summary = summarize(events, "UTC")
        assert summary.tasks["cost_nanos"].tolist() == [self.MOST] * 4
