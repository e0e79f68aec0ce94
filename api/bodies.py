"""The bodies of the ingestion routes (`/v1/events`, `/v1/otlp/v1/traces`): read within
`max_body_bytes` (413), their `Content-Encoding` undone within the same limit (415 for an
encoding the route does not take), their media type, and JSON parsed (400 naming where it breaks).
"""

from __future__ import annotations

import zlib
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from metering.core.errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType
from metering.events.ingest import UTF8_BOM, MalformedJSON, encoding_problem

_WBITS = {"gzip": 31, "deflate": 15}  # zlib's window bits: gzip framing, zlib framing (HTTP's "deflate")


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it passes the configured size."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large(request))
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(_too_large(request))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(request: Request) -> str:
    settings = request.app.state.settings
    return (
        f"a batch may hold at most {settings.max_batch_events:,} events and "
        f"{settings.max_body_bytes:,} bytes; split it into smaller batches"
    )


RawBody = Annotated[bytes, Depends(read_body)]


def decoded(body: bytes, encoding: str, *, limit: int, accepted: tuple[str, ...]) -> bytes:
    """The body without its `Content-Encoding` (one of `accepted`, or none), never inflated past
    `limit`: a gzip bomb is refused (413) once the limit is passed, not inflated whole."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in accepted:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the body as it is or with {' or '.join(accepted)}",
            detail={"accepted_encodings": list(accepted)},
        )
    inflater = zlib.decompressobj(wbits=_WBITS[encoding])
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise MalformedBody(f"the body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(
            f"the decompressed body passes the limit of {limit:,} bytes; send smaller batches",
            detail={"max_body_bytes": limit},
        )
    if not inflater.eof:
        raise MalformedBody(f"the body is not valid {encoding}: it ends before its compressed stream does")
    if inflater.unused_data.strip(b"\0"):  # zero padding is allowed, as gzip(1) allows it
        raise MalformedBody(
            f"the body is not valid {encoding}: {len(inflater.unused_data):,} bytes follow its compressed stream "
            "(send one gzip stream, not several concatenated)"
        )
    return out


def media_type(request: Request) -> str:
    """The request's `Content-Type` without its parameters, lower case; '' when there is none."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def parse_json(body: bytes) -> Any:
    """A JSON body (UTF-8; a byte order mark is ignored), or 400 naming where it breaks."""
    body = body.removeprefix(UTF8_BOM)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if (problem := encoding_problem(body)) is not None:
            raise MalformedJSON(problem) from None
        raise MalformedJSON(
            f"malformed JSON at line {exc.lineno}, column {exc.colno} (byte {exc.pos}): {exc.msg}",
            detail={"line": exc.lineno, "column": exc.colno, "position": exc.pos},
        ) from None
