"""The genai-prices snapshot the tests were written against, model by model.

Tests and the demo state exact costs for a few models, so they depend on the snapshot that
`requirements.lock` installs. When `make lock` moves it, this test fails first and names every
rate that changed (model, price version, token class, old -> new); the other price tests then
say where. After checking the changes, record the new snapshot:

    .venv/bin/python -m tests.metering.test_price_snapshot --record
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from metering.core.vocabulary import RATE_CARD_CLASSES
from metering.costs.ratecards import GENAI_PRICES_VERSION, PriceBook

RECORD = Path(__file__).parent.parent / "fixtures" / "price_snapshot.json"
# The models whose prices tests, the demo and the README's examples state.
MODELS = (
    ("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("openai", "o3"), ("openai", "o1-pro"),
    ("anthropic", "claude-sonnet-4-20250514"), ("anthropic", "claude-opus-4-20250514"),
    ("google", "gemini-2.5-pro"), ("google", "gemini-2.5-flash"), ("deepseek", "deepseek-chat"),
)  # fmt: skip


def describe(book: PriceBook) -> dict[str, dict[str, dict[str, list[str]] | None]]:
    """Each model's price versions (by the label after the snapshot's version) and, per token
    class and per request, its prices as text: the base price, then each context tier's."""
    out: dict[str, dict[str, dict[str, list[str]] | None]] = {}
    for provider, model in MODELS:
        pricing = book.lookup(provider, model)
        versions: dict[str, dict[str, list[str]] | None] = {}
        for index, card in enumerate(pricing.cards if pricing is not None else ()):
            if card is None:
                versions[f"#{index}"] = None
                continue
            label = card.price_version.split(":", 1)[1]
            versions[label] = {
                name: [str(card_rate.base), *(f">{start}:{price}" for start, price in card_rate.tiers)]
                for name in (*RATE_CARD_CLASSES, "request")
                for card_rate in [getattr(card, name)]
            }
        out[f"{provider}/{model}"] = versions
    return out


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    found = []
    for model in sorted(set(recorded) | set(current)):
        old, new = recorded.get(model, {}), current.get(model, {})
        for version in sorted(set(old) | set(new)):
            if version not in new:
                found.append(f"{model} {version}: gone")
            elif version not in old:
                found.append(f"{model} {version}: new ({new[version]})")
            elif old[version] != new[version]:
                for name in sorted(set(old[version] or {}) | set(new[version] or {})):
                    a, b = (old[version] or {}).get(name), (new[version] or {}).get(name)
                    if a != b:
                        found.append(f"{model} {version} {name}: {a} -> {b}")
    return found


def test_the_installed_snapshot_prices_these_models_as_recorded() -> None:
    recorded = json.loads(RECORD.read_text())
    changed = differences(recorded["models"], describe(PriceBook()))
    assert not changed, (
        f"genai-prices {recorded['genai_prices']} -> {GENAI_PRICES_VERSION} changed prices the tests state:\n  "
        + "\n  ".join(changed)
        + "\nCheck the price tests, then: .venv/bin/python -m tests.metering.test_price_snapshot --record"
    )


def test_a_change_is_named_by_model_version_and_class() -> None:
    recorded = {"openai/gpt-4o": {"base": {"input": ["2.5"], "output": ["10"]}}}
    current = {"openai/gpt-4o": {"base": {"input": ["2"], "output": ["10"]}, "2026-01-01": {"input": ["1"]}}}
    assert differences(recorded, current) == [
        "openai/gpt-4o 2026-01-01: new ({'input': ['1']})",
        "openai/gpt-4o base input: ['2.5'] -> ['2']",
    ]


if __name__ == "__main__" and "--record" in sys.argv:
    RECORD.write_text(json.dumps({"genai_prices": GENAI_PRICES_VERSION, "models": describe(PriceBook())}, indent=1) + "\n")
    print(f"recorded {RECORD} (genai-prices {GENAI_PRICES_VERSION})")
