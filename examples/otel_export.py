"""An OpenTelemetry-instrumented agent whose GenAI spans are metered by taskmeter.

    pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
    python examples/otel_export.py --url http://127.0.0.1:8000 --api-key tm_...

The spans follow the OpenTelemetry GenAI semantic conventions (`gen_ai.usage.input_tokens`, ...),
as instrumentations of the OpenAI and Anthropic SDKs write them; the OTLP/HTTP exporter sends
them (protobuf) to taskmeter's `/v1/otlp/v1/traces`. taskmeter needs to know who pays and for
which task: the agent puts `taskmeter.customer`, `taskmeter.task` and `taskmeter.task_type` in
the OpenTelemetry baggage for the duration of a task, and `BaggageToAttributes` copies them onto
every span started inside it (attributes do not inherit from parent spans). The agent span says
how the task ended with `taskmeter.outcome`. No real model is called.
"""

from __future__ import annotations

import argparse
import json
import os
import random

from opentelemetry import baggage, context, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

TASKMETER_KEYS = ("taskmeter.customer", "taskmeter.task", "taskmeter.task_type")
TICKETS = [("acme", "ticket-101"), ("acme", "ticket-102"), ("globex", "ticket-201")]


class BaggageToAttributes(SpanProcessor):
    """Copies the taskmeter baggage entries onto each span as it starts."""

    def on_start(self, span: Span, parent_context: context.Context | None = None) -> None:
        for key in TASKMETER_KEYS:
            value = baggage.get_baggage(key, parent_context)
            if value is not None:
                span.set_attribute(key, str(value))

    def on_end(self, span: ReadableSpan) -> None:
        pass


def chat(tracer: trace.Tracer, provider: str, model: str, rng: random.Random) -> None:
    """One model call, instrumented the way GenAI instrumentations do it."""
    with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT) as span:
        span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
                             "gen_ai.request.model": model})  # fmt: skip
        input_tokens, output_tokens = rng.randint(500, 3000), rng.randint(50, 600)
        cached = 256 if input_tokens > 1024 else 0
        span.set_attributes({
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": input_tokens,  # semconv: cache reads included
            "gen_ai.usage.output_tokens": output_tokens,
            "gen_ai.usage.cache_read.input_tokens": cached,
        })  # fmt: skip


def run_task(tracer: trace.Tracer, customer: str, task: str, rng: random.Random, *, fail: bool) -> None:
    ctx = baggage.set_baggage("taskmeter.customer", customer)
    ctx = baggage.set_baggage("taskmeter.task", task, ctx)
    ctx = baggage.set_baggage("taskmeter.task_type", "support_ticket", ctx)
    token = context.attach(ctx)
    try:
        with tracer.start_as_current_span("invoke_agent support-triage", kind=SpanKind.INTERNAL) as agent:
            agent.set_attributes({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support-triage"})
            chat(tracer, "anthropic", "claude-sonnet-4-5", rng)
            chat(tracer, "openai", "gpt-4o-mini", rng)
            if fail:
                agent.set_status(Status(StatusCode.ERROR, "the CRM did not answer"))
            agent.set_attribute("taskmeter.outcome", "failed" if fail else "completed")
    finally:
        context.detach(token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("TASKMETER_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("TASKMETER_API_KEY"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if not args.api_key:
        parser.error("give --api-key or set TASKMETER_API_KEY (an ingest key: taskmeter keys create)")

    provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
    provider.add_span_processor(BaggageToAttributes())
    exporter = OTLPSpanExporter(
        endpoint=f"{args.url.rstrip('/')}/v1/otlp/v1/traces", headers={"Authorization": f"Bearer {args.api_key}"}
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("examples.otel_export")

    rng = random.Random(args.seed)
    for number, (customer, task) in enumerate(TICKETS):
        run_task(tracer, customer, task, rng, fail=number == 2)
    flushed = provider.force_flush(timeout_millis=30_000)
    provider.shutdown()
    print(json.dumps({"tasks": len(TICKETS), "spans": 3 * len(TICKETS), "flushed": flushed}))


if __name__ == "__main__":
    main()
