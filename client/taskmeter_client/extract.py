"""Provider usage objects → taskmeter token fields (DESIGN.md, Events).

taskmeter's convention: `input_tokens` counts every input token, cache reads and writes
included; `output_tokens` counts every output token, reasoning included; the cache and reasoning
counts are subsets. Each provider's shape, as its API and Python SDK report it:

| shape | input | cache read / write | output | reasoning |
|---|---|---|---|---|
| OpenAI chat completions | `prompt_tokens` (inclusive) | `prompt_tokens_details.cached_tokens` / `.cache_write_tokens` | `completion_tokens` (inclusive) | `completion_tokens_details.reasoning_tokens` |
| OpenAI Responses | `input_tokens` (inclusive) | `input_tokens_details.cached_tokens` / `.cache_write_tokens` | `output_tokens` (inclusive) | `output_tokens_details.reasoning_tokens` |
| Anthropic Messages | `input_tokens` **+** `cache_read_input_tokens` **+** `cache_creation_input_tokens` | `cache_read_input_tokens` / `cache_creation_input_tokens` (of which 1-hour: `cache_creation.ephemeral_1h_input_tokens`) | `output_tokens` (inclusive) | `output_tokens_details.thinking_tokens` |
| Google Gemini | `prompt_token_count` (includes cached) **+** `tool_use_prompt_token_count` | `cached_content_token_count` / none | `candidates_token_count` **+** `thoughts_token_count` | `thoughts_token_count` |

Anthropic's `input_tokens` leaves the cache out, so the cache counts are added back. Gemini counts
thoughts outside the candidates (`total_token_count` = prompt + candidates + tool-use prompt +
thoughts), so thoughts are added to the output. Gemini has no per-request cache-write count
(explicit caches are billed for storage), so its cache writes are 0.

These are also genai-prices' extractor rules (its `data.py`); the tests check that both agree on
every recorded response. We do not call `genai_prices.extract_usage` at run time because it
raises `LookupError` for a model missing from its snapshot (an unknown model must be metered and
reported `unpriced`, not refused), requires the totals to be present, accepts floats, reads only
Gemini's REST camelCase (`usageMetadata`, not the SDK's `usage_metadata`) and reads mappings only.

Input is a whole response or only its usage object, as a dict (snake_case or Gemini camelCase) or
an SDK object read by attribute (pydantic models, proto-plus messages). A missing or `None` count
is 0; a negative or non-integer count is a `UsageFieldError` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict

__all__ = [
    "MAX_TOKENS",
    "FieldError",
    "Shape",
    "TokenUsage",
    "UsageFieldError",
    "check_count",
    "extract_usage",
    "provider_from_model",
]

MAX_TOKENS = 10**12
"""The most tokens of one class in one event: the event contract's limit, which the server's
schema (`metering.events.schemas`) and cost arithmetic (`metering.costs.prices`) take from here."""


class FieldError(TypedDict):
    """One reason a record was rejected, as ingestion reports it: `{"field", "message"}`."""

    field: str
    message: str


class UsageFieldError(ValueError):
    """A token count or usage field that breaks the conventions; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def as_field_error(self, prefix: str = "") -> FieldError:
        return {"field": f"{prefix}{self.field}", "message": self.message}


def check_count(field: str, value: object) -> int:
    """A token count as an int ≥ 0 (bools, floats and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageFieldError(field, f"expected a non-negative integer, got {_describe(value)}")
    if value < 0:
        raise UsageFieldError(field, f"must be >= 0, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts in taskmeter's convention; construction checks they are consistent."""

    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0  # the 1-hour cache writes (Anthropic), a subset of cache_write_tokens

    def __post_init__(self) -> None:
        for name in ("provider", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise UsageFieldError(name, f"expected a non-empty string, got {_describe(value)}")
        for name in _TOKEN_FIELDS:
            check_count(name, getattr(self, name))
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise UsageFieldError(
                "cache_read_tokens",
                f"cache reads ({self.cache_read_tokens}) and writes ({self.cache_write_tokens}) "
                f"exceed input_tokens ({self.input_tokens}), which includes them",
            )
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise UsageFieldError(
                "cache_write_1h_tokens",
                f"{self.cache_write_1h_tokens} exceeds cache_write_tokens ({self.cache_write_tokens}), which includes it",
            )
        if self.reasoning_tokens > self.output_tokens:
            raise UsageFieldError(
                "reasoning_tokens",
                f"{self.reasoning_tokens} exceeds output_tokens ({self.output_tokens}), which includes it",
            )

    def event_fields(self) -> dict[str, Any]:
        """The provider, model and token fields of a `usage` event."""
        fields: dict[str, Any] = {"provider": self.provider, "model": self.model}
        fields.update((name, getattr(self, name)) for name in _TOKEN_FIELDS)
        if not fields["cache_write_1h_tokens"]:  # only when there are some: events stay as they were
            del fields["cache_write_1h_tokens"]
        return fields


_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
)


class Shape(StrEnum):
    OPENAI_CHAT = "openai-chat"
    OPENAI_RESPONSES = "openai-responses"
    ANTHROPIC_MESSAGES = "anthropic-messages"
    GEMINI = "gemini"


# Per shape, each taskmeter field is the sum of these paths inside the usage object.
_PATHS: dict[Shape, dict[str, tuple[str, ...]]] = {
    Shape.OPENAI_CHAT: {
        "input_tokens": ("prompt_tokens",),
        "output_tokens": ("completion_tokens",),
        "cache_read_tokens": ("prompt_tokens_details.cached_tokens",),
        "cache_write_tokens": ("prompt_tokens_details.cache_write_tokens",),
        "reasoning_tokens": ("completion_tokens_details.reasoning_tokens",),
        "cache_write_1h_tokens": (),
    },
    Shape.OPENAI_RESPONSES: {
        "input_tokens": ("input_tokens",),
        "output_tokens": ("output_tokens",),
        "cache_read_tokens": ("input_tokens_details.cached_tokens",),
        "cache_write_tokens": ("input_tokens_details.cache_write_tokens",),
        "reasoning_tokens": ("output_tokens_details.reasoning_tokens",),
        "cache_write_1h_tokens": (),
    },
    Shape.ANTHROPIC_MESSAGES: {
        "input_tokens": ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"),
        "output_tokens": ("output_tokens",),
        "cache_read_tokens": ("cache_read_input_tokens",),
        "cache_write_tokens": ("cache_creation_input_tokens",),
        "reasoning_tokens": ("output_tokens_details.thinking_tokens",),
        "cache_write_1h_tokens": ("cache_creation.ephemeral_1h_input_tokens",),
    },
    Shape.GEMINI: {
        "input_tokens": ("prompt_token_count", "tool_use_prompt_token_count"),
        "output_tokens": ("candidates_token_count", "thoughts_token_count"),
        "cache_read_tokens": ("cached_content_token_count",),
        "cache_write_tokens": (),
        "reasoning_tokens": ("thoughts_token_count",),
        "cache_write_1h_tokens": (),
    },
}

_OWNER = {
    Shape.OPENAI_CHAT: "openai",
    Shape.OPENAI_RESPONSES: "openai",
    Shape.ANTHROPIC_MESSAGES: "anthropic",
    Shape.GEMINI: "google",
}

_GEMINI_KEYS = (
    "prompt_token_count",
    "candidates_token_count",
    "cached_content_token_count",
    "thoughts_token_count",
)
_ANTHROPIC_KEYS = ("cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation")
_RESPONSES_KEYS = ("input_tokens_details", "total_tokens")
_OPENAI_MODEL = re.compile(r"^(gpt-|chatgpt-|o\d|text-embedding-|davinci|babbage)")


def provider_from_model(model: str | None) -> str | None:
    """The provider a model name unmistakably belongs to (`claude-*`, `gemini-*`, `gpt-*`), else None."""
    if not model:
        return None
    name = model.lower().rsplit("/", 1)[-1]
    if "claude" in name:
        return "anthropic"
    if name.startswith("gemini"):
        return "google"
    if _OPENAI_MODEL.match(name):
        return "openai"
    return None


def extract_usage(response: Any, *, provider: str | None = None, model: str | None = None) -> TokenUsage:
    """Normalize a provider response (or its usage object) to taskmeter's token fields.

    `provider` labels the usage (default: the model's family, else the shape's owner: an
    OpenAI-compatible gateway should pass its own name) and breaks the one tie the shape cannot
    (`input_tokens`/`output_tokens` alone is Anthropic or OpenAI Responses). `model` overrides
    the response's model and is required when the input is a bare usage object.
    """
    root, where, found_model, hint = _locate(response)
    families = {(provider or "").lower(), provider_from_model(model or found_model)}
    shape = _shape(root, where, hint, families)
    counts = {
        field: sum(_count(root, path, where) for path in paths) for field, paths in _PATHS[shape].items()
    }
    model = model or found_model
    if not model:
        raise UsageFieldError("model", "not found in the response; pass model=")
    label = provider or provider_from_model(model) or _OWNER[shape]
    return TokenUsage(provider=label, model=model, **counts)


def _locate(response: Any) -> tuple[Any, str, str | None, str | None]:
    """The usage object, its name for error messages, the response's model and kind."""
    if response is None:
        raise UsageFieldError("usage", "expected a provider response or usage object, got None")
    for key in ("usage_metadata", "usage"):
        usage = _get(response, key)
        if usage is not None:
            model = _get(response, "model_version") if key == "usage_metadata" else _get(response, "model")
            kind = _get(response, "object") or _get(response, "type")
            return (
                usage,
                key,
                model if isinstance(model, str) else None,
                kind if isinstance(kind, str) else None,
            )
    if any(_has(response, key) for key in ("usage", "usage_metadata")):
        raise UsageFieldError("usage", "the response carries no usage (None)")
    return response, "", None, None


def _shape(root: Any, where: str, hint: str | None, families: set[str | None]) -> Shape:
    if where == "usage_metadata" or any(_has(root, key) for key in _GEMINI_KEYS):
        return Shape.GEMINI
    if _has(root, "prompt_tokens") or _has(root, "completion_tokens"):
        return Shape.OPENAI_CHAT
    if _has(root, "input_tokens") or _has(root, "output_tokens"):
        if any(_has(root, key) for key in _ANTHROPIC_KEYS) or hint == "message":
            return Shape.ANTHROPIC_MESSAGES
        if any(_has(root, key) for key in _RESPONSES_KEYS) or hint == "response":
            return Shape.OPENAI_RESPONSES
        if "anthropic" in families:
            return Shape.ANTHROPIC_MESSAGES
        if "openai" in families:
            return Shape.OPENAI_RESPONSES
        raise UsageFieldError(
            where or "usage",
            "input_tokens/output_tokens alone may be Anthropic (cache excluded) or OpenAI Responses "
            "(cache included); pass provider=",
        )
    raise UsageFieldError(where or "usage", "no token counts of a known provider shape found")


def _count(root: Any, path: str, where: str) -> int:
    value = root
    for key in path.split("."):
        value = _get(value, key)
        if value is None:
            return 0
    return check_count(f"{where}.{path}" if where else path, value)


def _get(obj: Any, key: str) -> Any:
    """`obj[key]` or `obj.key`, trying Gemini's camelCase spelling too; None when absent."""
    camel = _camel(key)
    if isinstance(obj, Mapping):
        value = obj.get(key)
        return obj.get(camel) if value is None and camel != key else value
    value = getattr(obj, key, None)
    return getattr(obj, camel, None) if value is None and camel != key else value


def _has(obj: Any, key: str) -> bool:
    if isinstance(obj, Mapping):
        return key in obj or _camel(key) in obj
    return hasattr(obj, key) or hasattr(obj, _camel(key))


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"
