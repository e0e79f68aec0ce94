"""The database adapter's readers (metering.core.db.driver_rows, read_frame)."""

from __future__ import annotations

import sqlite3
import warnings
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Date, DateTime, Engine, Integer, literal, select

from metering.core.db import driver_rows, read_frame


def _refuse(value: Any) -> Any:
    raise AssertionError(f"sqlite3's default adapter was given {value!r}")


def test_driver_rows_converts_date_parameters_itself(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # sqlite3's default date/datetime adapters are deprecated (Python 3.12 warns): a date must
    # reach the driver already as the ISO text SQLite stores.
    monkeypatch.setitem(sqlite3.adapters, (date, sqlite3.PrepareProtocol), _refuse)
    monkeypatch.setitem(sqlite3.adapters, (datetime, sqlite3.PrepareProtocol), _refuse)
    query = select(
        literal(date(2026, 2, 28), Date).label("day"),
        literal(datetime(2026, 2, 28, 13, 5, 7, tzinfo=UTC), DateTime(timezone=True)).label("at"),
        literal(7, Integer).label("n"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with engine.connect() as connection:
            batches = list(driver_rows(connection, query))
    assert len(batches) == 1
    ((day, at, n),) = batches[0]
    assert str(day) == "2026-02-28"
    assert str(at).startswith("2026-02-28") and "13:05:07" in str(at)
    assert n == 7


def test_driver_rows_in_batches(engine: Engine) -> None:
    query = select(literal(1, Integer)).union_all(select(literal(2, Integer)), select(literal(3, Integer)))
    with engine.connect() as connection:
        batches = [list(batch) for batch in driver_rows(connection, query, batch_size=2)]
    assert [len(batch) for batch in batches] == [2, 1]
    assert sorted(row[0] for batch in batches for row in batch) == [1, 2, 3]


def test_read_frame_converts_date_parameters_itself_on_sqlite(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("sqlite3's adapters (PostgreSQL's columns come through ADBC)")
    monkeypatch.setitem(sqlite3.adapters, (date, sqlite3.PrepareProtocol), _refuse)
    query = select(
        literal(date(2026, 2, 28), Date).label("day"),
        literal("acme").label("customer"),
        literal(7, Integer).label("n"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with engine.connect() as connection:
            frame = read_frame(
                connection, query, ["day", "customer", "n"], texts=("customer",), days=("day",)
            )
    assert frame.to_dict("records") == [{"day": pd.Timestamp("2026-02-28"), "customer": "acme", "n": 7}]
    assert str(frame["n"].dtype) == "int64"
