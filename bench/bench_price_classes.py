"""The rollup's in-memory step (price + summarize) with 1-hour cache writes and model aliases,
against `main`'s code on the same events, in the same run.

    .venv/bin/python bench/bench_price_classes.py [--events 2000000] [--runs 3] [--main-ref main]

`main`'s metering and client packages are exported with `git archive` into a scratch folder and
run in subprocesses beside this branch's (alternating, best of `--runs` each): the same events
(`bench_prices.make_events`, with one event in four renamed to a Bedrock, Gemini-API or Azure
deployment spelling), priced and summarized per task as one rollup chunk. This branch also reads
`cache_write_1h_tokens` (a third of Anthropic cache writes) and resolves the renamed models
through three tenant aliases and the provider-prefix rules; `main` prices them as unpriced (it
has neither). Prints seconds per run and the ratio branch / main.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALIASES = [
    {"match": "prod-gpt4o-*", "provider": "openai", "model": "gpt-4o"},
    {"match": "prod-mini-*", "provider": "openai", "model": "gpt-4o-mini"},
    {"match": "anthropic.claude-sonnet-4-5*", "provider": "anthropic", "model": "claude-sonnet-4-5"},
]
RENAMED = {
    ("openai", "gpt-4o"): ("azure", "prod-gpt4o-eastus"),
    ("openai", "gpt-4o-mini"): ("azure", "prod-mini-westeu"),
    ("anthropic", "claude-sonnet-4-5"): ("aws", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("google", "gemini-2.5-pro"): ("google", "models/gemini-2.5-pro"),
}


def child(events: int) -> None:
    """In a process whose sys.path holds one codebase: price and summarize, print seconds."""
    import numpy as np

    from bench.bench_prices import OVERRIDES, make_events
    from metering.costs.prices import price_usage
    from metering.costs.ratecards import PriceBook
    from metering.rollup.summary import TOKEN_COLUMNS, summarize

    frame = make_events(events)
    rng = np.random.default_rng(7)
    renamed = rng.random(len(frame)) < 0.25
    for (provider, model), (new_provider, new_model) in RENAMED.items():
        rows = renamed & (frame["provider"] == provider).to_numpy() & (frame["model"] == model).to_numpy()
        frame.loc[rows, "provider"], frame.loc[rows, "model"] = new_provider, new_model
    has_1h = "cache_write_1h_tokens" in TOKEN_COLUMNS
    anthropic = frame["model"].str.contains("claude").to_numpy()
    if has_1h:
        frame["cache_write_1h_tokens"] = np.where(anthropic, frame["cache_write_tokens"] // 3, 0).astype(
            np.int64
        )
    n = len(frame)
    frame["seq"] = np.arange(1, n + 1, dtype=np.int64)
    frame["type"] = "usage"
    frame["customer"] = (np.arange(n) % 1000).astype(str)
    frame["task"] = (np.arange(n) // 10).astype(str)
    frame["task_type"] = None
    frame["reasoning_tokens"] = np.zeros(n, dtype=np.int64)
    book = PriceBook([*OVERRIDES, *ALIASES] if has_1h else OVERRIDES)
    started = time.perf_counter()
    priced = price_usage(frame, book)
    frame["cost_nanos"], frame["cost_rem"], frame["priced"] = (
        priced["cost_nanos"],
        priced["cost_rem"],
        priced["priced"],
    )
    summary = summarize(frame, "UTC")
    seconds = time.perf_counter() - started
    import metering

    where = metering.__file__
    print(
        json.dumps(
            {
                "seconds": seconds,
                "tasks": len(summary.tasks),
                "unpriced": int((~priced["priced"]).sum()),
                "1h": has_1h,
                "code": where,
            }
        )
    )


def export(ref: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "metering", "client", "bench"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def run(root: Path, events: int) -> dict[str, object]:
    env_path = f"{root}:{root / 'client'}"
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", "--events", str(events)],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        cwd=root,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--main-ref", default="main")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.events)
        return
    from bench.common import cpu_check, machine

    print(machine())
    print(cpu_check())
    with tempfile.TemporaryDirectory() as scratch:
        main_root = Path(scratch)
        export(args.main_ref, main_root)
        export("HEAD", branch_root := Path(scratch) / "branch")
        times: dict[str, list[float]] = {"main": [], "branch": []}
        for _ in range(args.runs):
            for name, root in (("main", main_root), ("branch", branch_root)):
                result = run(root, args.events)
                times[name].append(float(result["seconds"]))  # type: ignore[arg-type]
                print(name, result, flush=True)
    best = {name: min(values) for name, values in times.items()}
    print(f"price + summarize of {args.events:,} events: main {best['main']:.2f} s, branch {best['branch']:.2f} s "
          f"(ratio {best['branch'] / best['main']:.2f}); runs {times}")  # fmt: skip


if __name__ == "__main__":
    if "--child" not in sys.argv:  # a child's codebase is its PYTHONPATH only
        sys.path.insert(0, str(ROOT))
    else:
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
    main()
