"""Where a rollup's partitions run: one function mapped over partitions, results in their order.

The rollup splits a large backlog of events into ranges of seqs and maps its summarizing
function over them through an `Executor`; it never starts processes itself. `InProcess` runs
them one after the other in the caller; `ProcessPool` in worker processes. Another executor
(a cluster's) only has to offer the same `map`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    workers: int
    """How many partitions run at once (the rollup splits its backlog into as many)."""
    own_process: bool
    """Whether each partition runs in a process of its own, which opens the database through
    nothing else (a SQLite store may then read the file with another SQLite library)."""

    def map(self, fn: Callable[[T], R], partitions: Sequence[T]) -> Iterable[R]: ...


class InProcess:
    """The partitions one after the other, in the calling thread."""

    workers = 1
    own_process = False

    def map(self, fn: Callable[[T], R], partitions: Sequence[T]) -> Iterable[R]:
        return [fn(partition) for partition in partitions]

    def close(self) -> None:
        pass

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProcessPool:
    """Worker processes, started for one `map` (spawned, not forked: the server process has
    threads); `fn` and the partitions must pickle. Each worker keeps the memory it frees
    (`keep_freed_memory`)."""

    own_process = True

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or min(os.cpu_count() or 1, 4)

    def map(self, fn: Callable[[T], R], partitions: Sequence[T]) -> Iterable[R]:
        context = get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=context, initializer=keep_freed_memory) as pool:
            return list(pool.map(fn, partitions))


def keep_freed_memory() -> None:
    """In a process that lives for one large computation: glibc's malloc keeps the memory that
    numpy and pandas free, instead of unmapping each large array and faulting in fresh zeroed
    pages for the next one (more peak memory, far fewer page faults). Nothing happens where the
    C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_MAX, 0)  # large blocks from the heap, not one mapping each
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # freed heap stays mapped for the next allocation


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
