"""A tenant's price settings as stored: its model prices (`tenant_prices`) and model aliases
(`tenant_model_aliases`), read as the one list `metering.costs.ratecards.PriceBook` takes.

The list is plain data (it goes to the rollup's worker processes, and its text is digested into
the rollup's price version): prices in (provider, model) order, each the mapping
`TenantPrice.as_mapping` stored (older rows: their flat rate columns), then the aliases in the
order of the config file.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from metering.core.tables import tenant_model_aliases, tenant_prices


def stored_price_settings(connection: Connection | Session, tenant_id: int) -> list[dict[str, Any]]:
    prices = connection.execute(
        select(tenant_prices)
        .where(tenant_prices.c.tenant_id == tenant_id)
        .order_by(tenant_prices.c.provider, tenant_prices.c.model)
    ).all()
    out: list[dict[str, Any]] = []
    for r in prices:
        if r.spec:
            out.append(orjson.loads(r.spec))
        else:
            flat = (("provider", r.provider), ("model", r.model), ("input", r.input), ("output", r.output),
                    ("cache_read", r.cache_read), ("cache_write", r.cache_write))  # fmt: skip
            out.append({k: v for k, v in flat if v is not None})
    aliases = connection.execute(
        select(tenant_model_aliases)
        .where(tenant_model_aliases.c.tenant_id == tenant_id)
        .order_by(tenant_model_aliases.c.position)
    ).all()
    out += [{"match": a.match, "provider": a.provider, "model": a.model} for a in aliases]
    return out
