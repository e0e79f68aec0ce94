"""The events' costs: the tenant's price book and the version that names it, and a frame of
events priced with it (exact nano-units and remainders, `metering.costs.prices`)."""

from __future__ import annotations

import hashlib
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection

from metering.costs.prices import EVENT_COLUMNS as PRICED_COLUMNS
from metering.costs.prices import price_usage
from metering.costs.ratecards import PriceBook, TenantPrice
from metering.costs.tenant_prices import stored_price_settings


def tenant_overrides(connection: Connection, tenant_id: int) -> list[dict[str, Any]]:
    """The tenant's prices and model aliases (`metering.costs.tenant_prices`), as `PriceBook` takes them."""
    return stored_price_settings(connection, tenant_id)


def price_version(overrides: list[dict[str, Any]]) -> str:
    """Names the prices in force: the genai-prices release and a digest of the tenant's prices,
    each in its normal form (`TenantPrice.normal_form`), so that a price digests the same however
    it is stored: a flat price as it did before prices could have tiers and versions."""
    normal = [entry if "match" in entry else TenantPrice.from_mapping(entry).normal_form() for entry in overrides]
    digest = hashlib.sha256(repr(normal).encode()).hexdigest()[:12]
    return f"genai-prices@{package_version('genai-prices')}+tenant:{digest}"


def price_book(connection: Connection, tenant_id: int) -> tuple[PriceBook, str]:
    """The tenant's price book (its prices over genai-prices' snapshot) and its version."""
    overrides = tenant_overrides(connection, tenant_id)
    return PriceBook(overrides), price_version(overrides)


def price_events(frame: pd.DataFrame, book: PriceBook, unpriced: dict[tuple[str, str], int]) -> pd.DataFrame:
    """The events with their exact cost (`cost_nanos`, `cost_rem`) and `priced`; counts the
    unpriced usage events per (provider, model) into `unpriced`."""
    usage = (frame["type"] == "usage").to_numpy()
    nanos, rem = np.zeros(len(frame), dtype=np.int64), np.zeros(len(frame), dtype=np.int64)
    priced = np.ones(len(frame), dtype=bool)
    if usage.any():
        used = frame.loc[usage, list(PRICED_COLUMNS)]  # only what pricing reads: no copy of the rest
        prices = price_usage(used, book)
        nanos[usage] = prices["cost_nanos"].to_numpy()
        rem[usage] = prices["cost_rem"].to_numpy()
        priced[usage] = prices["priced"].to_numpy()
        missing = used.loc[~prices["priced"].to_numpy(), ["provider", "model"]]
        for (provider, model), count in missing.value_counts().items():
            if count:  # categorical columns also list combinations that did not occur
                unpriced[(provider, model)] = unpriced.get((provider, model), 0) + int(count)
    frame["cost_nanos"], frame["cost_rem"], frame["priced"] = nanos, rem, priced
    return frame
