"""The one CSV writer of the reports: streams batches of rows as UTF-8 bytes, header first.

Batches are column-oriented (a mapping of every column of the report to equally long sequences of
already formatted text, or integers), so that formatting can work on whole columns. Cells of the report's text
columns that a spreadsheet would run as a formula get a leading `'` (OWASP's CSV injection advice);
numeric columns are produced by `reports.cells` and never neutralized, so `-1.50` stays a number.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from reports.columns import Report

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
LINE_END = "\r\n"  # RFC 4180


def neutralize(text: str) -> str:
    """`text`, made inert for spreadsheets when it starts like a formula."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


Batch = Mapping[str, Sequence[Any]]
"""Columns of formatted text, or of integers (written as they print)."""


def encode(report: Report, batches: Iterable[Batch]) -> Iterator[bytes]:
    """The report as chunks of bytes: the header row, then one chunk per non-empty batch."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=LINE_END)
    writer.writerow(report.columns)
    yield _drain(buffer)
    for batch in batches:
        if set(batch) != set(report.columns):
            raise ValueError(
                f"{report.name}: a batch has columns {sorted(batch)}, not {list(report.columns)}"
            )
        columns = [
            _neutralized(batch[name]) if name in report.text else batch[name] for name in report.columns
        ]
        if not columns[0]:
            continue
        writer.writerows(zip(*columns, strict=True))
        yield _drain(buffer)


_STARTS_LIKE_A_FORMULA = re.compile(r"(?:^|\n)[=+\-@\t\r]")


def _neutralized(values: Sequence[str]) -> Sequence[str]:
    """`neutralize` over a column: one scan of the joined text finds whether any cell needs it
    (a cell holding a newline may raise a false alarm: the cells are then checked one by one)."""
    if not _STARTS_LIKE_A_FORMULA.search("\n".join(values)):
        return values
    return [neutralize(v) for v in values]


def _drain(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode("utf-8")
    buffer.seek(0)
    buffer.truncate()
    return data


def write_file(path: Path, chunks: Iterable[bytes]) -> int:
    """Write chunks to `path` atomically (a temporary file renamed over it); returns the size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    size = 0
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size
