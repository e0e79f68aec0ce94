"""Where partition work runs: in this process, or on a Dask distributed cluster.

The rollup splits a backlog of events into ranges of seqs and maps its summarizing function over
them through an `Executor`; it never starts processes itself. The seam is one method,
`map(fn, partitions) -> results`: `fn` is a pure function of one partition and the results come
back in the partitions' order. `executor_for(address)` picks the place from
`TASKMETER_DASK_SCHEDULER` (`api.settings`):

- unset: `InProcess`, the partitions one after the other in the caller;
- `tcp://host:port`: a `DaskExecutor` connected to that scheduler;
- `local` or `local:N`: a `DaskExecutor` on a `distributed.LocalCluster` of N worker processes
  (default: one per core) on this machine, started at the first `map` that has partitions and
  stopped at `close` (a large backlog's parallelism on one machine).

Results are the same either way; on a cluster they travel pickled, so `fn` and its partitions must
be importable and picklable on the workers.

A worker lost mid-run (killed, out of memory, its machine gone): Dask's scheduler runs its tasks
again on the other workers (up to its `distributed.scheduler.allowed-failures` deaths per task),
and `retries` more times for a task that raised. A run that still fails raises `ExecutorFailed`
after cancelling what is left, and returns nothing: a caller that writes only after `map` returns
never writes half a result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

from metering.core.errors import Unavailable

__all__ = ["DaskExecutor", "Executor", "ExecutorFailed", "InProcess", "executor_for", "local_workers"]

P = TypeVar("P")
R = TypeVar("R")

CONNECT_TIMEOUT_SECONDS = 30.0
LOCAL = "local"
"""`TASKMETER_DASK_SCHEDULER=local[:N]`: a cluster of this machine's processes for the run."""


class Executor(Protocol):
    @property
    def workers(self) -> int:
        """How many partitions run at once (the rollup splits its backlog into as many)."""
        ...

    own_process: bool
    """Whether each partition runs in a process of its own, which opens the database through
    nothing else (a SQLite store may then read the file with another SQLite library)."""

    def map(self, fn: Callable[[P], R], partitions: Sequence[P]) -> list[R]: ...


class ExecutorFailed(Unavailable):
    """Partition work did not complete on the cluster; nothing of it is returned."""


class InProcess:
    """The partitions one after the other, in the calling thread."""

    workers = 1
    own_process = False

    def map(self, fn: Callable[[P], R], partitions: Sequence[P]) -> list[R]:
        return [fn(partition) for partition in partitions]

    def close(self) -> None:
        pass

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DaskExecutor:
    """Partitions as tasks of a Dask distributed cluster (`client.map` + `gather`).

    `address` is a scheduler's (`tcp://host:8786`), or `local` / `local:N` for a
    `distributed.LocalCluster` of N single-threaded worker processes on this machine, started
    when a `map` first has partitions (a run with nothing to roll up starts nothing) and stopped
    by `close`.

    Tasks are submitted `pure=False`: the same function on an equal partition is run again, not
    served from another caller's result still held by the cluster (a rollup's partition is read
    from the database by the task, so equal arguments do not mean equal results).
    """

    own_process = True
    """Each partition runs in a worker process (`Executor.own_process`)."""

    def __init__(self, address: str, *, retries: int = 1, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
        self.address, self.retries, self.timeout = address, retries, timeout
        self.local_workers = local_workers(address)
        self.cluster: Any = None
        self._client: Any = None
        if self.local_workers is None:
            self._client = self._connect(address)

    def _connect(self, address: Any) -> Any:
        from distributed import Client

        try:
            return Client(address, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ExecutorFailed(
                f"the Dask scheduler at {self.address} cannot be reached: {exc}", detail={"scheduler": self.address}
            ) from exc

    @property
    def client(self) -> Any:
        """The `distributed.Client` (a local cluster is started on first use)."""
        if self._client is None:
            from distributed import LocalCluster

            # Processes, one thread each: pandas holds the GIL for much of a partition's work.
            # The scheduler's HTTP server takes a free port (its default, 8787, may be another
            # cluster's: two rollups on one machine, or a cluster already running).
            self.cluster = LocalCluster(
                n_workers=self.local_workers, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address="127.0.0.1:0",
            )  # fmt: skip
            self._client = self._connect(self.cluster)
        return self._client

    @property
    def workers(self) -> int:
        """The cluster's workers now: the rollup splits its backlog into as many partitions."""
        if self._client is None and self.local_workers is not None:
            return self.local_workers
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def map(self, fn: Callable[[P], R], partitions: Sequence[P]) -> list[R]:
        if not partitions:
            return []
        futures = self.client.map(fn, list(partitions), pure=False, retries=self.retries)
        try:
            return list(self.client.gather(futures, errors="raise"))
        except Exception as exc:
            self.client.cancel(futures)
            name = getattr(fn, "__name__", getattr(getattr(fn, "func", None), "__name__", type(fn).__name__))
            raise ExecutorFailed(
                f"partition work {name!r} failed on the Dask cluster at {self.address}: {type(exc).__name__}: {exc}; nothing was returned",
                detail={"scheduler": self.address, "partitions": len(partitions)},
            ) from exc
        finally:
            del futures  # the cluster forgets the results once no future holds them

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def local_workers(address: str) -> int | None:
    """The worker count of `local` / `local:N` (`local`: one per core), None for a scheduler's
    address; a count that is not a positive integer is a `ValueError`."""
    if address != LOCAL and not address.startswith(LOCAL + ":"):
        return None
    count = address.removeprefix(LOCAL).removeprefix(":")
    if not count:
        return os.cpu_count() or 1
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"TASKMETER_DASK_SCHEDULER={address!r}: expected local, local:N (N >= 1) or tcp://host:port")
    return int(count)


def executor_for(address: str | None, **options: Any) -> InProcess | DaskExecutor:
    """`InProcess` when no scheduler is given, else a `DaskExecutor` for `address`."""
    return DaskExecutor(address, **options) if address else InProcess()
