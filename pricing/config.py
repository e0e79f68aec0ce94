"""The tenant config file (DESIGN.md): `prices`, `models`, `plans`, `customers`, `budgets`, `outcomes`
(rules of `pricing.outcomes`), validated all at once.

Every problem is reported with its path in the file (`plans[2].tiers.steps[1].up_to`), so a file
is fixed in one round trip. A top-level `effective_from` (a tenant-local date) dates every plan
entry that has none of its own; `pricing.service.load_config` decides what the file changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from metering.core.errors import InvalidInput
from metering.spend.budgets import Budget, parse_budgets
from pricing.outcomes import OutcomeRule, rules_problems
from pricing.plans import (
    DEFER_CHECKS,
    PLAN_TYPES,
    CustomerPlan,
    ModelAlias,
    PerJobPlan,
    PerTokenPlan,
    Plan,
    PlanBook,
    PriceOverride,
    Problems,
    join_path,
    prefixed,
    version_problems,
)

SECTIONS = ("prices", "models", "plans", "customers", "budgets", "outcomes")


@dataclass(frozen=True)
class TenantConfig:
    prices: tuple[PriceOverride, ...]
    plans: PlanBook
    customers: tuple[CustomerPlan, ...]
    budgets: tuple[Budget, ...] = ()
    plan_entries: tuple[Plan, ...] = ()  # the file's plan entries, in file order
    sections: frozenset[str] = field(default_factory=frozenset)  # the sections the file has
    effective_from: date | None = None  # the file's top-level date
    models: tuple[ModelAlias, ...] = ()  # model aliases, in file order
    outcomes: tuple[OutcomeRule, ...] = ()  # meaningful when "outcomes" is in sections


def validate_entry(model: type[BaseModel], entry: object, prefix: str, problems: Problems) -> Any:
    """The parsed entry, or None with its problems appended (paths under `prefix`)."""
    try:
        parsed = model.model_validate(entry, context={DEFER_CHECKS: True})
    except ValidationError as error:
        for item in error.errors(include_url=False):
            path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"])
            problems.append((join_path(prefix, path.lstrip(".")), item["msg"].removeprefix("Value error, ")))
        return None
    if isinstance(parsed, PerTokenPlan | PerJobPlan | PriceOverride):
        problems += prefixed(prefix, parsed.problems())
    return parsed


def validate_plan(entry: object, prefix: str, problems: Problems) -> Plan | None:
    """One plan entry (a config file's or an API body's)."""
    kind = entry.get("type") if isinstance(entry, Mapping) else None
    if not isinstance(entry, Mapping):
        problems.append((prefix, "must be a mapping"))
    elif not isinstance(kind, str) or kind not in PLAN_TYPES:
        problems.append((join_path(prefix, "type"), "must be per_token or per_job"))
    else:
        plan: Plan | None = validate_entry(PLAN_TYPES[kind], entry, prefix, problems)
        return plan
    return None


def _section(raw: Mapping[str, Any], name: str, problems: Problems) -> list[Any]:
    section = raw.get(name)
    if section is not None and not isinstance(section, list):
        problems.append((name, "must be a list"))
    return section if isinstance(section, list) else []


def _duplicates(keys: Sequence[object], path: str, problems: Problems) -> None:
    first: dict[object, int] = {}
    for index, key in enumerate(keys):
        if key is not None and first.setdefault(key, index) != index:
            problems.append((path.format(index), f"duplicates {path.format(first[key]).split('.')[0]}"))


def _date(value: object, path: str, problems: Problems) -> date | None:
    if value is None or (isinstance(value, date) and type(value) is date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    problems.append((path, "must be a date such as 2026-11-01"))
    return None


def validate_config(raw: object, *, known_plans: Iterable[str] = ()) -> TenantConfig:
    """Validate a whole tenant config (`prices`, `plans`, `customers`) at once.

    `known_plans` are plans stored already, which customers may name without the file defining
    them. Raises one `InvalidInput` whose detail lists every problem as `{"field", "message"}`.
    """
    if not isinstance(raw, Mapping):
        raise InvalidInput("invalid tenant config", detail=[{"field": "", "message": "must be a mapping"}])
    problems: Problems = [(str(k), "unknown section") for k in raw if k not in (*SECTIONS, "effective_from")]
    effective_from = _date(raw.get("effective_from"), "effective_from", problems)

    raw_prices = _section(raw, "prices", problems)
    prices = [validate_entry(PriceOverride, e, f"prices[{i}]", problems) for i, e in enumerate(raw_prices)]
    _duplicates([p and (p.provider.lower(), p.model.lower(), p.start_date) for p in prices], "prices[{}]", problems)

    raw_models = _section(raw, "models", problems)
    models = [validate_entry(ModelAlias, e, f"models[{i}]", problems) for i, e in enumerate(raw_models)]
    _duplicates([m and m.match.lower() for m in models], "models[{}].match", problems)

    raw_plans = _section(raw, "plans", problems)
    plans = [plan for i, e in enumerate(raw_plans) if (plan := validate_plan(e, f"plans[{i}]", problems))]
    if len(plans) == len(raw_plans):  # version paths index the valid plans: the file's only if all are
        problems += prefixed("plans", version_problems(plans))
    known = {p["id"] for p in raw_plans if isinstance(p, Mapping) and isinstance(p.get("id"), str)} | set(known_plans)

    raw_customers = _section(raw, "customers", problems)
    entries = [validate_entry(CustomerPlan, e, f"customers[{i}]", problems) for i, e in enumerate(raw_customers)]
    for index, customer in enumerate(entries):
        references = [("plan", customer.plan)] if customer else []
        references += [(f"compare_with[{j}]", p) for j, p in enumerate(customer.compare_with if customer else ())]
        problems += [
            (f"customers[{index}].{path}", f"unknown plan {p!r}") for path, p in references if p not in known
        ]

    _duplicates([c and c.id for c in entries], "customers[{}].id", problems)
    budgets, budget_problems = parse_budgets(_section(raw, "budgets", problems))
    problems += budget_problems
    raw_outcomes = _section(raw, "outcomes", problems)
    outcomes = [validate_entry(OutcomeRule, e, f"outcomes[{i}]", problems) for i, e in enumerate(raw_outcomes)]
    if all(outcomes):
        problems += prefixed("outcomes", rules_problems(outcomes))
    if problems:
        detail = [{"field": path, "message": message} for path, message in problems]
        raise InvalidInput(f"invalid tenant config: {len(problems)} problem(s)", detail=detail)
    return TenantConfig(
        prices=tuple(prices),
        models=tuple(m for m in models if m),
        plans=PlanBook.of(plans),
        customers=tuple(c for c in entries if c),
        budgets=tuple(budgets),
        plan_entries=tuple(plans),
        sections=frozenset(name for name in SECTIONS if name in raw),
        effective_from=effective_from,
        outcomes=tuple(outcomes),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader (plain data only), refusing a key given twice in one mapping: YAML says
    keys are unique, and PyYAML would silently keep the last (half a file applied)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> Any:
    first: dict[object, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        if key in first:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"found the key {key!r} twice (first on line {first[key] + 1})", key_node.start_mark,
            )  # fmt: skip
        first[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def decode_config(data: bytes, name: str = "the config file") -> str:
    """A config file's bytes as text: UTF-8, with or without a byte order mark. Anything else is
    refused, naming the first offending line, before anything is read from it."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:
        message = f"{name} is UTF-16 or UTF-32 (it has NUL bytes): re-encode it as UTF-8"
        raise InvalidInput(message, detail=[{"field": "line 1", "message": message}])
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        message = f"{name} is not UTF-8: byte 0x{data[error.start]:02x} at line {line}, column {column}; re-encode it as UTF-8"
        raise InvalidInput(message, detail=[{"field": f"line {line}", "message": message}]) from None


def parse_config(text: str, *, known_plans: Iterable[str] = ()) -> TenantConfig:
    """Validate a tenant config file's YAML text (safe loader: plain data only, unique keys)."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = ": ".join(str(p) for p in (getattr(error, "context", None), getattr(error, "problem", None)) if p)
        raise InvalidInput(
            f"the config file is not valid YAML{f' at {where}' if where else ''}",
            detail=[{"field": where, "message": reason or str(error)}],
        ) from None
    return validate_config({} if raw is None else raw, known_plans=known_plans)
