"""POST /v1/otlp/v1/traces: OTLP/HTTP trace export (JSON or protobuf) → usage events.

Point an OpenTelemetry exporter at `<taskmeter>/v1/otlp` (the exporter appends `/v1/traces`)
with `Authorization: Bearer <ingest key>`. GenAI spans become usage events through
`metering.adapters.otlp` and ingestion (the same validation and exactly-once storage as `/v1/events`:
a span's event id is `otel:<traceId>:<spanId>`, so a re-exported span is a duplicate).

The answer follows the OTLP/HTTP spec: 200 with an `ExportTraceServiceResponse` in the request's
encoding, whose `partialSuccess` counts the spans that were rejected and says why. Spans without
GenAI usage are accepted and ignored. taskmeter's own counts are in `X-Taskmeter-*` headers.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from api.bodies import RawBody, decoded, media_type, parse_json
from api.deps import IngestScope, NowDep, SessionDep, SettingsDep
from api.errors import responses
from api.settings import Settings
from metering.adapters.otlp import SpanMapping, spans_to_events
from metering.adapters.otlp_protobuf import decode_export
from metering.core.errors import InvalidInput, TaskmeterError, UnsupportedMediaType
from metering.events.ingest import store_events, validate_items

router = APIRouter(tags=["opentelemetry"])

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
_MAX_REASONS = 5  # spans named in partialSuccess.errorMessage


@router.post(
    "/v1/otlp/v1/traces",
    responses={
        200: {
            "description": "An ExportTraceServiceResponse in the request's encoding (counts in X-Taskmeter-* headers)",
            "content": {
                JSON: {"schema": {"type": "object", "description": "OTLP/JSON ExportTraceServiceResponse"}},
                PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **responses(400, 413, 415),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": {"type": "object", "description": "OTLP/JSON ExportTraceServiceRequest"}},
                PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
def export_traces(
    request: Request,
    body: RawBody,
    principal: IngestScope,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> Response:
    """Ingest the GenAI usage of exported spans (`gen_ai.usage.*`); the customer and task come
    from `taskmeter.customer` and `taskmeter.task` on the span or its resource (the task
    defaults to the trace id). Accepts `Content-Encoding: gzip` or `deflate`."""
    kind = media_type(request)
    if kind not in (JSON, PROTOBUF):
        raise UnsupportedMediaType(f"send OTLP as {JSON} or {PROTOBUF}, not {kind or 'no content type'!r}")
    body = decoded(body, request.headers.get("content-encoding", ""), limit=settings.max_body_bytes, accepted=("gzip", "deflate"))
    if kind == JSON:
        export = parse_json(body)
    else:
        try:
            export = decode_export(body)
        except ValueError as exc:
            raise TaskmeterError(str(exc)) from None  # 400: not protobuf at all
    try:
        converted = spans_to_events(export, mapping=span_mapping(settings))
    except ValueError as exc:
        raise InvalidInput(f"not an OTLP ExportTraceServiceRequest: {exc}") from None

    batch = validate_items(converted.events)
    result = store_events(
        session, principal.tenant.id, batch, now=now, window=settings.event_window
    )
    reasons = [f"{r['path']} (span {r['span_id']}): {_join(r['errors'])}" for r in converted.rejected]
    spans_with_bad_events: dict[str, str] = {}
    for rejected in result.rejected:
        event = converted.events[rejected.index]
        span = event["id"].removesuffix(":outcome")
        spans_with_bad_events.setdefault(span, f"{span}: {_join(e.model_dump() for e in rejected.errors)}")
    reasons += spans_with_bad_events.values()
    rejected_spans = len(converted.rejected) + len(spans_with_bad_events)
    message = "; ".join(reasons[:_MAX_REASONS])
    if len(reasons) > _MAX_REASONS:
        message += f"; and {len(reasons) - _MAX_REASONS} more"
    headers = {
        "X-Taskmeter-Accepted": str(result.accepted),
        "X-Taskmeter-Duplicates": str(result.duplicates),
        "X-Taskmeter-Skipped-Spans": str(converted.skipped),
        "X-Taskmeter-Rejected-Spans": str(rejected_spans),
    }
    if kind == PROTOBUF:
        answer = ExportTraceServiceResponse()
        if rejected_spans:
            answer.partial_success.rejected_spans = rejected_spans
            answer.partial_success.error_message = message
        return Response(answer.SerializeToString(), media_type=PROTOBUF, headers=headers)
    payload: dict[str, Any] = {}
    if rejected_spans:
        payload["partialSuccess"] = {"rejectedSpans": rejected_spans, "errorMessage": message}
    return Response(orjson.dumps(payload), media_type=JSON, headers=headers)


def span_mapping(settings: Settings) -> SpanMapping:
    """Where the customer, task, task type and outcome live on spans. The `otlp_*` settings are
    read when `Settings` declares them; until then SpanMapping's defaults apply."""
    default = SpanMapping()
    return SpanMapping(
        customer_key=getattr(settings, "otlp_customer_attribute", default.customer_key),
        task_key=getattr(settings, "otlp_task_attribute", default.task_key),
        task_type_key=getattr(settings, "otlp_task_type_attribute", default.task_type_key),
        outcome_key=getattr(settings, "otlp_outcome_attribute", default.outcome_key),
        exclusive_input_providers=frozenset(getattr(settings, "otlp_exclusive_input_providers", ())),
        exclusive_output_providers=frozenset(getattr(settings, "otlp_exclusive_output_providers", ())),
    )


def _join(errors: Any) -> str:
    return ", ".join(f"{e['field']} {e['message']}" for e in errors)


