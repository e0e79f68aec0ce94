"""Reading JSONL event files: one JSON object per line, streamed in batches.

Every line is accounted for: it goes into a batch (where validation may still reject it, with its
line number), or it is unreadable (not UTF-8) and says so. Blank lines are skipped; a UTF-8 byte
order mark at the start is ignored. A file in UTF-16 or UTF-32 (a byte order mark or NUL bytes
on its first line) is refused as a whole before anything is read from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from metering.core.errors import InvalidInput

BOM = b"\xef\xbb\xbf"
WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16 (and UTF-32 LE, which starts the same)


@dataclass
class LineBatch:
    lines: list[int] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    # Lines that never became an item: (line number, raw bytes, field, message).
    unreadable: list[tuple[int, bytes, str, str]] = field(default_factory=list)
    bytes_read: int = 0


def read_batches(stream: BinaryIO, batch_size: int = 5000) -> Iterator[LineBatch]:
    batch = LineBatch()
    for number, line in enumerate(stream, start=1):
        batch.bytes_read += len(line)
        if number == 1 and line.startswith(BOM):
            line = line[len(BOM) :]
        elif number == 1 and (line.startswith(WIDE_BOMS) or b"\x00" in line):
            message = "the file is UTF-16 or UTF-32 (NUL bytes on line 1): re-encode it as UTF-8; nothing was ingested"
            raise InvalidInput(message, detail=[{"field": "line 1", "message": message}])
        stripped = line.strip()
        if stripped:
            _read_line(batch, number, stripped)
        if len(batch.raw) + len(batch.unreadable) >= batch_size:
            yield batch
            batch = LineBatch()
    if batch.raw or batch.unreadable or batch.bytes_read:
        yield batch


def _read_line(batch: LineBatch, number: int, line: bytes) -> None:
    if b"\x00" in line:
        batch.unreadable.append((number, line, "line", "has NUL bytes (UTF-16 or binary data?): re-encode the file as UTF-8"))
        return
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        batch.unreadable.append((number, line, "line", f"not UTF-8 (byte {exc.start}): re-encode the file as UTF-8"))
        return
    batch.lines.append(number)
    batch.raw.append(line)
