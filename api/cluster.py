"""The Dask cluster the rollup's partitions run on (`TASKMETER_DASK_SCHEDULER`), if any."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from api.settings import Settings
from metering.rollup.executors import DaskExecutor


@contextmanager
def cluster_executor(settings: Settings) -> Iterator[DaskExecutor | None]:
    """A client of the configured cluster for the block (closed after; a `local` cluster is
    started when a rollup first has partitions to run, and stopped after), or None when none is
    configured: the rollup then runs in this process. An unreachable scheduler raises
    `ExecutorFailed` (a 503-kind error)."""
    if not settings.dask_scheduler:
        yield None
        return
    with DaskExecutor(settings.dask_scheduler) as executor:
        yield executor
