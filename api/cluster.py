"""The Dask cluster the rollup's partitions run on (`TASKMETER_DASK_SCHEDULER`), if any."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from api.settings import Settings
from metering.dask_executor import DaskExecutor


@contextmanager
def cluster_executor(settings: Settings) -> Iterator[DaskExecutor | None]:
    """A client of the configured cluster for the block (closed after), or None when none is
    configured: the rollup then picks its own way (in this process, or worker processes for a
    large backlog). An unreachable scheduler raises `ExecutorFailed` (a 503-kind error)."""
    if not settings.dask_scheduler:
        yield None
        return
    with DaskExecutor(settings.dask_scheduler) as executor:
        yield executor
