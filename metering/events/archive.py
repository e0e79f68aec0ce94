"""Closed months' events as Parquet, in a folder or an object store (any fsspec URL).

Layout under the archive's root, one partition per tenant and tenant-local month:

    tenant=<id>/month=YYYY-MM/part-00000.parquet, part-00001.parquet, ...
    tenant=<id>/month=YYYY-MM/manifest.json

A part holds stored events (`ARCHIVE_COLUMNS`, in seq order). The manifest is written after its
parts and names them; it keeps the partition's row count, its checksum (`checksum`: SHA-256 over
every row's content, rows in event-id order), the highest seq archived and when the snapshot was
taken. A part the manifest does not name (a run that died before its manifest) is overwritten by
the next run. Archiving a month again writes only the events stored since (seq above the
manifest's), so nothing is archived twice.

This module knows files and frames; which months may be archived (closed ones) and when events
may leave the database is the use case's (`pricing.archive`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem
from sqlalchemy import Connection, select

from metering.core.errors import Conflict, InvalidInput
from metering.core.event_columns import EVENT_COLUMNS, TEXT_COLUMNS
from metering.core.tables import archived_months, events

ARCHIVE_COLUMNS = tuple(column.name for column in events.columns if column.name not in ("tenant_id", "key_id"))
"""A stored event as archived: the `events` row without its tenant (the partition names it) and
without the key that sent it (evidence the database keeps only while the event is there)."""
INTEGER_COLUMNS = frozenset(
    column.name for column in events.columns if column.name in ARCHIVE_COLUMNS and column.type.python_type is int
)
MANIFEST = "manifest.json"
FORMAT = 1


class ArchiveMismatch(Conflict):
    """The archive does not hold what its manifest or the database says it should."""


class ArchivedHistory(Conflict):
    """A rollup would rebuild a tenant from its first event, but some of its events were dropped
    to the archive."""


@dataclass
class Part:
    file: str
    rows: int
    checksum: str
    min_seq: int
    max_seq: int


@dataclass
class Manifest:
    tenant_id: int
    month: str
    rows: int = 0
    checksum: str = ""
    max_seq: int = 0
    snapshot_at: str = ""  # RFC 3339, when the newest part was taken from the database
    parts: list[Part] = field(default_factory=list)
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(**{**data, "parts": [Part(**part) for part in data["parts"]]})


def archive_schema() -> pa.Schema:
    return pa.schema(
        [(name, pa.int64() if name in INTEGER_COLUMNS else pa.string()) for name in ARCHIVE_COLUMNS]
    )


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """Archive columns with one representation whatever they came from (database rows, Parquet):
    int64 numbers, texts as Python strings or None."""
    columns: dict[str, Any] = {}
    for name in ARCHIVE_COLUMNS:
        column = frame[name]
        if name in INTEGER_COLUMNS:
            columns[name] = column.to_numpy(dtype=np.int64)
        else:
            values = column.astype(object).to_numpy()
            columns[name] = np.where(pd.isna(values), None, values)
    return pd.DataFrame(columns)


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash of each normalized row's every column."""
    return pd.util.hash_pandas_object(normalized(frame), index=False).to_numpy()


def checksum(frame: pd.DataFrame) -> str:
    """SHA-256 over the rows' hashes, rows in event-id order (ids are unique in a tenant): the
    same events give the same checksum however they were read or split into parts."""
    if frame.empty:
        return hashlib.sha256(b"").hexdigest()
    order = np.argsort(frame["event_id"].to_numpy(dtype=object), kind="stable")
    return hashlib.sha256(row_hashes(frame)[order].tobytes()).hexdigest()


class Archive:
    """An archive's root: a local folder or any fsspec URL (`memory://`, `s3://bucket/path`)."""

    def __init__(self, url: str) -> None:
        if not url:
            raise InvalidInput(
                "invalid archive location",
                detail=[{"field": "to", "message": "an archive needs a folder or a URL"}],
            )
        self.url = url
        self.fs: AbstractFileSystem
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")

    def folder(self, tenant_id: int, month: str) -> str:
        return f"{self.root}/tenant={tenant_id}/month={month}"

    def manifest(self, tenant_id: int, month: str) -> Manifest | None:
        path = f"{self.folder(tenant_id, month)}/{MANIFEST}"
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "r") as handle:
            return Manifest.from_json(handle.read())

    def months(self, tenant_id: int) -> list[str]:
        """The tenant's archived months (those with a manifest), oldest first."""
        base = f"{self.root}/tenant={tenant_id}"
        if not self.fs.exists(base):
            return []
        found = []
        for path in self.fs.ls(base, detail=False):
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("month=") and self.fs.exists(f"{base}/{name}/{MANIFEST}"):
                found.append(name.removeprefix("month="))
        return sorted(found)

    def append(self, tenant_id: int, month: str, events: pd.DataFrame, *, now: datetime) -> Manifest:
        """Add the month's events stored since its last snapshot (seq above the manifest's) as a
        new part, read it back to check it, then write the manifest. Nothing new: unchanged."""
        manifest = self.manifest(tenant_id, month) or Manifest(tenant_id=tenant_id, month=month)
        new = events[events["seq"].to_numpy(dtype=np.int64) > manifest.max_seq]
        if new.empty:
            return manifest
        new = normalized(new).sort_values("seq", kind="stable").reset_index(drop=True)
        folder = self.folder(tenant_id, month)
        self.fs.makedirs(folder, exist_ok=True)
        name = f"part-{len(manifest.parts):05d}.parquet"
        table = pa.Table.from_pandas(new, schema=archive_schema(), preserve_index=False)
        with self.fs.open(f"{folder}/{name}", "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
        part = Part(name, len(new), checksum(new), int(new["seq"].iloc[0]), int(new["seq"].iloc[-1]))
        back = self._read_part(folder, name)
        if len(back) != part.rows or checksum(back) != part.checksum:
            raise ArchiveMismatch(f"{folder}/{name} does not read back as written", detail={"part": name})
        if manifest.parts:
            everything = pd.concat([self.read(tenant_id, month, manifest.parts), back])
            manifest.rows, manifest.checksum = len(everything), checksum(everything)
        else:
            manifest.rows, manifest.checksum = part.rows, part.checksum
        manifest.parts.append(part)
        manifest.max_seq, manifest.snapshot_at = part.max_seq, now.isoformat()
        with self.fs.open(f"{folder}/{MANIFEST}", "w") as handle:
            handle.write(manifest.to_json())
        return manifest

    def read(self, tenant_id: int, month: str, parts: Sequence[Part] | None = None) -> pd.DataFrame:
        """The partition's events (its manifest's parts, or `parts`), normalized, in seq order."""
        if parts is None:
            manifest = self.manifest(tenant_id, month)
            parts = manifest.parts if manifest is not None else []
        folder = self.folder(tenant_id, month)
        frames = [self._read_part(folder, part.file) for part in parts]
        if not frames:
            return normalized(pd.DataFrame({name: pd.Series(dtype=object) for name in ARCHIVE_COLUMNS}))
        return pd.concat(frames, ignore_index=True).sort_values("seq", kind="stable").reset_index(drop=True)

    def verify(self, tenant_id: int, month: str) -> Manifest:
        """Read the partition back: its row count and checksum must be its manifest's."""
        manifest = self.manifest(tenant_id, month)
        if manifest is None:
            raise ArchiveMismatch(
                f"{month} of tenant {tenant_id} is not in the archive at {self.url}", detail={"month": month}
            )
        events = self.read(tenant_id, month)
        if len(events) != manifest.rows or checksum(events) != manifest.checksum:
            raise ArchiveMismatch(
                f"the archive of {month} at {self.url} does not match its manifest",
                detail={"month": month, "rows": len(events), "manifest_rows": manifest.rows},
            )
        return manifest

    def _read_part(self, folder: str, name: str) -> pd.DataFrame:
        with self.fs.open(f"{folder}/{name}", "rb") as handle:
            return normalized(pq.read_table(handle, schema=archive_schema()).to_pandas())


def read_archived_events(url: str, tenant_id: int, months: Iterable[str]) -> pd.DataFrame:
    """The archived events of the tenant's `months` with the columns and types of the rollup's
    event reader (`metering.rollup.pipeline.EVENT_COLUMNS`: int64 numbers, categorical texts), in seq
    order: what re-rating or a rebuild reads instead of the database for archived months. Only
    those columns are read, straight from Parquet into Arrow (no Python object per value)."""
    archive = Archive(url)
    tables = []
    for month in sorted(set(months)):
        manifest = archive.manifest(tenant_id, month)
        for part in manifest.parts if manifest is not None else []:
            with archive.fs.open(f"{archive.folder(tenant_id, month)}/{part.file}", "rb") as handle:
                tables.append(pq.read_table(handle, columns=list(EVENT_COLUMNS), schema=archive_schema()))
    schema = pa.schema([archive_schema().field(name) for name in EVENT_COLUMNS])
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    table = table.take(pc.sort_indices(table, sort_keys=[("seq", "ascending")]))
    columns = {
        name: table[name].dictionary_encode() if name in TEXT_COLUMNS else table[name]
        for name in EVENT_COLUMNS
    }
    return pa.table(columns).to_pandas()


def dropped_months(connection: Connection, tenant_id: int) -> list[str]:
    """The tenant's months whose events were dropped from the database (`archived_months`)."""
    query = (
        select(archived_months.c.month)
        .where(archived_months.c.tenant_id == tenant_id)
        .order_by(archived_months.c.month)
    )
    return list(connection.execute(query).scalars())
