"""Where partition work runs: in this process, or on a Dask distributed cluster.

The seam is one method, `map(fn, partitions) -> results`: `fn` is a pure function of one
partition (a task lives in one partition, so partitions never share a task) and the results come
back in the partitions' order. `executor_for(address)` picks the place from
`TASKMETER_DASK_SCHEDULER` (`api.settings`): unset, `InProcess`; `tcp://host:port`, a
`DaskExecutor` connected to that scheduler. Results are the same either way; on a cluster they
travel pickled, so `fn` and its partitions must be importable and picklable on the workers.

A worker lost mid-run (killed, out of memory, its machine gone): Dask's scheduler runs its tasks
again on the other workers, and `retries` more times for a task that raised. A run that still
fails raises `ExecutorFailed` after cancelling what is left, and returns nothing: a caller that
writes only after `map` returns never writes half a result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from metering.errors import Unavailable
from metering.executors import InProcess

__all__ = ["DaskExecutor", "ExecutorFailed", "InProcess", "executor_for"]

P = TypeVar("P")
R = TypeVar("R")

CONNECT_TIMEOUT_SECONDS = 30.0


class ExecutorFailed(Unavailable):
    """Partition work did not complete on the cluster; nothing of it is returned."""


class DaskExecutor:
    """Partitions as tasks of a Dask distributed cluster (`client.map` + `gather`).

    Tasks are submitted `pure=False`: the same function on an equal partition is run again, not
    served from another caller's result still held by the cluster (a rollup's partition is read
    from the database by the task, so equal arguments do not mean equal results).
    """

    own_process = True
    """Each partition runs in a worker process (`metering.executors.Executor`)."""

    def __init__(self, address: str, *, retries: int = 1, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
        from distributed import Client

        self.address, self.retries = address, retries
        try:
            self.client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ExecutorFailed(
                f"the Dask scheduler at {address} cannot be reached: {exc}", detail={"scheduler": address}
            ) from exc

    @property
    def workers(self) -> int:
        """The cluster's workers now: the rollup splits its backlog into as many partitions."""
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def map(self, fn: Callable[[P], R], partitions: Sequence[P]) -> list[R]:
        if not partitions:
            return []
        futures = self.client.map(fn, list(partitions), pure=False, retries=self.retries)
        try:
            return list(self.client.gather(futures, errors="raise"))
        except Exception as exc:
            self.client.cancel(futures)
            name = getattr(fn, "__name__", type(fn).__name__)
            raise ExecutorFailed(
                f"partition work {name!r} failed on the Dask cluster at {self.address}: {type(exc).__name__}: {exc}; nothing was returned",
                detail={"scheduler": self.address, "partitions": len(partitions)},
            ) from exc
        finally:
            del futures  # the cluster forgets the results once no future holds them

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def executor_for(address: str | None, **options: Any) -> InProcess | DaskExecutor:
    """`InProcess` when no scheduler is given, else a `DaskExecutor` connected to `address`."""
    return DaskExecutor(address, **options) if address else InProcess()
