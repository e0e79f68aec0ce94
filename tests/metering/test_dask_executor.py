"""Partition work on a real Dask cluster (a `dask scheduler` and two `dask worker` processes on
loopback) gives what it gives in process, and a worker killed mid-run costs nothing but time."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from api.settings import Settings
from metering.rollup.executors import DaskExecutor, ExecutorFailed, InProcess, executor_for, local_workers
from metering.rollup.summary import Summary, summarize
from tests.metering.test_summarize import random_events
from tests.support.dask_cluster import LocalCluster

PARTITIONS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("dask"), workers=2) as running:
        yield running


def by_task(events: pd.DataFrame, parts: int) -> list[pd.DataFrame]:
    """The frame split so that each task lives in one partition (a stable hash of its name)."""
    which = pd.util.hash_array(events["task"].to_numpy(dtype=object)) % parts
    return [events[which == number].reset_index(drop=True) for number in range(parts)]


def frame_bytes(frame: pd.DataFrame) -> bytes:
    """The frame as Arrow IPC bytes: values, dtypes and column order."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def slow_square(marker: str, value: int) -> int:
    """Writes the worker's pid where the test can see it, then takes its time."""
    if value == 0:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3)
    return value * value


def fail_on_three(value: int) -> int:
    if value == 3:
        raise ValueError("partition 3 is broken")
    return value


class TestInProcess:
    def test_unset_scheduler_runs_in_process(self) -> None:
        executor = executor_for(None)
        assert isinstance(executor, InProcess)
        assert executor.map(lambda x: x + 1, [1, 2, 3]) == [2, 3, 4]
        assert executor.map(lambda x: x, []) == []


class TestTheSetting:
    @pytest.mark.parametrize(
        ("value", "workers"),
        [("local", os.cpu_count() or 1), ("local:3", 3), ("local:1", 1), ("tcp://10.0.0.5:8786", None), ("localhost:8786", None)],
    )
    def test_local_and_its_worker_count(self, value: str, workers: int | None) -> None:
        assert local_workers(value) == workers

    @pytest.mark.parametrize("value", ["local:0", "local:two", "local:-1", "local:1.5"])
    def test_a_bad_local_count_is_refused(self, value: str) -> None:
        with pytest.raises(ValueError, match="local, local:N"):
            local_workers(value)
        with pytest.raises(ValueError, match="local, local:N"):
            Settings(dask_scheduler=value)

    def test_the_setting_takes_an_address_or_local(self) -> None:
        assert Settings(dask_scheduler="").dask_scheduler is None
        assert Settings(dask_scheduler="local:2").dask_scheduler == "local:2"
        assert Settings(dask_scheduler="tcp://127.0.0.1:8786").dask_scheduler == "tcp://127.0.0.1:8786"
        with pytest.raises(ValueError, match="TASKMETER_DASK_SCHEDULER must be local"):
            Settings(dask_scheduler="somewhere")

    def test_a_local_cluster_starts_only_when_there_is_work(self) -> None:
        with executor_for("local:2") as executor:
            assert isinstance(executor, DaskExecutor)
            assert executor.workers == 2
            assert executor.map(abs, []) == []
            assert executor.cluster is None  # nothing to run: nothing started


class TestOnTheCluster:
    def test_summaries_are_byte_identical_to_in_process(self, cluster: LocalCluster) -> None:
        events = random_events(np.random.default_rng(19), 30_000, tasks=2_000)
        for name in ("type", "customer", "task", "task_type", "provider", "model"):
            events[name] = events[name].astype("category")  # as the rollup's reader gives them
        partitions = by_task(events, PARTITIONS)
        assert all(len(part) for part in partitions)
        work = functools.partial(summarize, timezone="Europe/Paris")

        local: list[Summary] = InProcess().map(work, partitions)
        with executor_for(cluster.address) as executor:
            assert isinstance(executor, DaskExecutor)
            remote: list[Summary] = executor.map(work, partitions)

        assert len(remote) == PARTITIONS
        for mine, theirs in zip(local, remote, strict=True):
            for name in ("tasks", "detail", "daily"):
                pd.testing.assert_frame_equal(getattr(theirs, name), getattr(mine, name), check_exact=True)
                assert frame_bytes(getattr(theirs, name)) == frame_bytes(getattr(mine, name))
        tasks = pd.concat([part.tasks["task"] for part in remote])
        assert tasks.is_unique  # a task in one partition only
        assert set(tasks) == set(events["task"])

    def test_a_failing_partition_fails_the_run_cleanly(self, cluster: LocalCluster) -> None:
        with DaskExecutor(cluster.address, retries=1) as executor:
            with pytest.raises(
                ExecutorFailed, match=r"fail_on_three.*partition 3 is broken.*nothing was returned"
            ):
                executor.map(fail_on_three, list(range(6)))
            assert executor.map(fail_on_three, [1, 2]) == [1, 2]  # the client is still usable

    def test_an_unreachable_scheduler_is_a_clear_error(self) -> None:
        from tests.support.processes import free_port

        with pytest.raises(ExecutorFailed, match="cannot be reached"):
            DaskExecutor(f"tcp://127.0.0.1:{free_port()}", timeout=2)

    # Last in the class: it leaves the module's cluster with one worker.
    def test_a_worker_killed_mid_run_is_retried_on_the_other(
        self, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        marker = tmp_path / "running"
        pids = set(cluster.worker_pids().values())
        killed: list[int] = []

        def kill_the_busy_worker() -> None:
            deadline = time.monotonic() + 60
            while not (marker.exists() and marker.read_text()):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
            killed.append(int(marker.read_text()))
            marker.unlink()
            os.kill(killed[0], signal.SIGKILL)

        killer = threading.Thread(target=kill_the_busy_worker)
        with DaskExecutor(cluster.address, retries=1) as executor:
            killer.start()
            results = executor.map(functools.partial(slow_square, str(marker)), list(range(4)))
            killer.join()
        # Dask ran the lost partition again on the surviving worker: the whole result, in order.
        assert killed and killed[0] in pids
        assert results == [0, 1, 4, 9]
        assert int(marker.read_text()) in pids - set(killed)
