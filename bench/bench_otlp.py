"""OTLP trace ingestion: GenAI spans/s through `POST /v1/otlp/v1/traces` of a real
`taskmeter serve` (one uvicorn worker, SQLite), in OTLP/JSON and protobuf, bodies pre-encoded
the way the OpenTelemetry SDK encodes them (batches of 500 spans, the SDK's default export size
is 512). Each span carries chat usage (input, output, cache read), the customer on the resource.

    .venv/bin/python bench/bench_otlp.py [--spans 100000] [--batch 500] [--clients 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span  # noqa: E402

from bench.common import machine, timed  # noqa: E402
from bench.server import serve_sqlite  # noqa: E402

T0 = 1_795_000_000_000_000_000  # 2026-11-18


def span_values(n: int) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-2024-08-06", "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 1000 + n % 977, "gen_ai.usage.output_tokens": 100 + n % 313,
        "gen_ai.usage.cache_read.input_tokens": 512, "taskmeter.task": f"task-{n // 8}",
        "taskmeter.task_type": "support_ticket",
    }  # fmt: skip


def ids(n: int, seed: int) -> tuple[bytes, bytes]:
    trace = (seed << 64 | n // 8 + 1).to_bytes(16, "big")
    return trace, (n + 1).to_bytes(8, "big")


def json_body(first: int, count: int, seed: int) -> bytes:
    spans = []
    for n in range(first, first + count):
        trace, span = ids(n, seed)
        attributes = [
            {"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}
            for k, v in span_values(n).items()
        ]
        spans.append({
            "traceId": trace.hex(), "spanId": span.hex(), "name": "chat gpt-4o", "kind": 3,
            "startTimeUnixNano": str(T0 + n * 1_000_000), "endTimeUnixNano": str(T0 + n * 1_000_000 + 900_000),
            "attributes": attributes, "status": {},
        })  # fmt: skip
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "bench-agent"}},
                               {"key": "taskmeter.customer", "value": {"stringValue": "acme"}}]}  # fmt: skip
    return orjson.dumps({"resourceSpans": [{"resource": resource, "scopeSpans": [
        {"scope": {"name": "bench"}, "spans": spans}]}]})  # fmt: skip


def protobuf_body(first: int, count: int, seed: int) -> bytes:
    spans = []
    for n in range(first, first + count):
        trace, span = ids(n, seed)
        attributes = [
            KeyValue(key=k, value=AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v))
            for k, v in span_values(n).items()
        ]
        spans.append(Span(trace_id=trace, span_id=span, name="chat gpt-4o", kind=Span.SPAN_KIND_CLIENT,
                          start_time_unix_nano=T0 + n * 1_000_000, end_time_unix_nano=T0 + n * 1_000_000 + 900_000,
                          attributes=attributes))  # fmt: skip
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource={"attributes": [KeyValue(key="service.name", value=AnyValue(string_value="bench-agent")),
                                 KeyValue(key="taskmeter.customer", value=AnyValue(string_value="acme"))]},
        scope_spans=[ScopeSpans(scope={"name": "bench"}, spans=spans)])])  # fmt: skip
    return request.SerializeToString()


def run(label: str, db: Path, bodies: list[bytes], content_type: str, spans: int, clients: int) -> dict[str, Any]:
    accepted = [0] * clients
    with serve_sqlite(db) as (url, key):
        headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}

        def send(n: int) -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                for body in bodies[n::clients]:
                    response = client.post("/v1/otlp/v1/traces", content=body)
                    response.raise_for_status()
                    assert response.headers["x-taskmeter-rejected-spans"] == "0", response.text
                    accepted[n] += int(response.headers["x-taskmeter-accepted"])

        with timed() as t:
            threads = [threading.Thread(target=send, args=(n,)) for n in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    assert sum(accepted) == spans, (sum(accepted), spans)
    size = sum(len(b) for b in bodies) / spans
    return {"label": label, "spans": spans, "clients": clients, "sps": spans / t[0], "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="tm-bench-otlp-"))
    starts = range(0, args.spans, args.batch)
    results = []
    for seed, (label, encode, content_type) in enumerate(
        [("OTLP/JSON", json_body, "application/json"), ("OTLP/protobuf", protobuf_body, "application/x-protobuf")], 1
    ):
        bodies = [encode(first, min(args.batch, args.spans - first), seed) for first in starts]
        results.append(run(label, tmp / f"otlp-{seed}.db", bodies, content_type, args.spans, args.clients))
    print(f"\n{args.spans:,} GenAI spans in batches of {args.batch}, {args.clients} client(s), one uvicorn worker, SQLite:")
    for r in results:
        print(f"  {r['label']:<14} {r['sps']:>9,.0f} spans/s   ({r['bytes']:.0f} bytes/span)")


if __name__ == "__main__":
    main()
