"""The client's spool: events that could not be delivered, kept on disk until they can.

A spool directory holds one folder per (server URL, API key), so events are only ever replayed to
the tenant they were recorded for. In it, each client process appends to its own segment,
`seg-<id>.jsonl`, one event per line (the body `taskmeter ingest` reads too). A segment is
created under a temporary name, locked (`flock`), then renamed, so no one sees it unlocked while
it is being written; its owner keeps the lock until the segment is delivered and deleted, or
until the client closes. Segments nobody holds a lock on (their process ended) are claimed by
any client of the same server and key. Sending a segment twice is harmless: ingestion reports the
second copy as duplicates.

Without `fcntl` (Windows) nothing is locked: a client then claims other segments only when it
starts, so give each process its own spool directory there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("taskmeter.client")


def default_spool_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "taskmeter" / "spool"


def spool_folder(spool_dir: str | os.PathLike[str], url: str, api_key: str) -> Path:
    """The folder for one server and key (named by a digest: the key never appears on disk)."""
    digest = hashlib.sha256(f"{url.rstrip('/')}\n{api_key}".encode()).hexdigest()[:20]
    return Path(spool_dir) / digest


@dataclass(eq=False)
class Segment:
    path: Path
    handle: IO[bytes] | None = None  # held open (and locked) by its owner

    def lines(self) -> Iterator[bytes]:
        """The events' JSON, one per line; a torn or corrupt line (a crash mid-write) is skipped."""
        with self.path.open("rb") as reader:
            for number, line in enumerate(reader, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.warning("taskmeter spool: skipping unreadable line %d of %s", number, self.path)
                    continue
                yield line


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._current: Segment | None = None
        self._sealed: list[Segment] = []
        self._claimed_foreign_once = False
        self._closed = False
        self._left_behind = False

    def append(self, lines: list[bytes]) -> None:
        """Write events to this client's current segment (any thread)."""
        if not lines:
            return
        with self._lock:
            if self._closed:  # a segment of its own, left unlocked for the next client
                self._left_behind = True
                segment = self._create()
                assert segment.handle is not None
                with segment.handle as own:
                    own.write(b"\n".join(lines) + b"\n")
                return
            if self._current is None:
                self._current = self._create()
            handle = self._current.handle
            assert handle is not None
            handle.write(b"\n".join(lines) + b"\n")
            handle.flush()

    def has_own(self) -> bool:
        """Whether events of this client wait in the spool (after close: whether it left any)."""
        return self._current is not None or bool(self._sealed) or self._left_behind

    def forked(self) -> Spool:
        """The spool of a forked child: the same folder, none of the parent's segments (their
        locks stay with the parent, whose copies of the handles keep them)."""
        return Spool(self.folder)

    def claim(self) -> list[Segment]:
        """Every segment ready to be sent, oldest first: this client's (the current one is sealed,
        new events go to a new segment) and those whose owner has gone."""
        with self._lock:
            if self._current is not None:
                self._sealed.append(self._current)
                self._current = None
            own = list(self._sealed)
        return own + self._claim_foreign({segment.path for segment in own})

    def done(self, segment: Segment) -> None:
        """The segment was delivered: delete it."""
        segment.path.unlink(missing_ok=True)
        if segment.handle is not None:
            segment.handle.close()
        with self._lock:
            if segment in self._sealed:
                self._sealed.remove(segment)

    def keep(self, segment: Segment) -> None:
        """The segment could not be sent now; this client keeps it (and its lock) for later."""
        with self._lock:
            if segment not in self._sealed:
                self._sealed.append(segment)

    def close(self) -> None:
        """Release every lock; undelivered segments stay on disk for the next client."""
        with self._lock:
            segments = self._sealed + ([self._current] if self._current else [])
            self._sealed, self._current, self._closed = [], None, True
            self._left_behind = bool(segments)
        for segment in segments:
            if segment.handle is not None:
                segment.handle.close()

    def _create(self) -> Segment:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"seg-{uuid.uuid4().hex}"
        temporary = self.folder / f"{name}.tmp"
        handle = temporary.open("ab")
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = self.folder / f"{name}.jsonl"
        os.replace(temporary, path)
        return Segment(path, handle)

    def _claim_foreign(self, own: set[Path]) -> list[Segment]:
        if fcntl is None and self._claimed_foreign_once:
            return []
        self._claimed_foreign_once = True
        try:
            paths = sorted(self.folder.glob("seg-*.jsonl"), key=_mtime)
        except OSError:
            return []
        claimed = []
        for path in paths:
            if path in own:
                continue
            try:
                handle = path.open("ab")
            except OSError:
                continue  # deleted meanwhile
            if fcntl is not None:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    handle.close()  # its owner is alive and holds it
                    continue
            if not path.exists():  # delivered and deleted by another client just now
                handle.close()
                continue
            claimed.append(Segment(path, handle))
        return claimed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
