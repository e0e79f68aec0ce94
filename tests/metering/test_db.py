"""The database adapter's readers (metering.core.db.driver_rows, read_frame)."""

from __future__ import annotations

import sqlite3
import warnings
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Engine,
    Integer,
    String,
    bindparam,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.exc import DBAPIError

from metering.core.db import (
    driver_rows,
    is_overflow,
    is_unavailable,
    prepare_columns,
    prepared_columns,
    read_frame,
)


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


def test_prepared_columns_are_the_rows_as_lists(engine: Engine) -> None:
    """A query's rows as one list per column, aligned and in the query's order: integers exact
    past 2**53, text escaped and back, null as None; no row gives empty lists."""
    rows = union_all(*[
        select(literal(n, BigInteger).label("n"), literal(name, String).label("name"))
        for n, name in [(3, "caf\u00e9 \\ \"x\""), (2**62 + 1, None), (1, "a\nb")]
    ]).subquery("v")  # fmt: skip
    query = select(rows.c.n, rows.c.name).where(rows.c.n > bindparam("least", type_=BigInteger)).order_by(rows.c.n)
    with engine.connect() as connection:
        prepared = prepare_columns(query, connection.dialect)
        assert prepared_columns(connection, prepared, {"least": 0}) == [
            [1, 3, 2**62 + 1],
            ["a\nb", "caf\u00e9 \\ \"x\"", None],
        ]
        assert prepared_columns(connection, prepared, {"least": 2**62 + 1}) == [[], []]


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


def _past_int64(engine: Engine) -> Any:
    """A sum the database refuses to make in 64 bits: SQLite's `sum()` (its `+` goes to a float
    instead), PostgreSQL's bigint `+` (its `sum()` goes to numeric instead)."""
    big = literal(2**62, BigInteger())
    if engine.dialect.name == "sqlite":
        three = union_all(*(select(big.label("n")) for _ in range(3))).subquery()
        return select(func.sum(three.c.n).label("n"))
    return select((big + big + big).label("n"))


def test_a_driver_error_is_raised_as_sqlalchemy_raises_it(engine: Engine) -> None:
    """The readers bypass SQLAlchemy's rows, not its errors: the server maps them (409, 503)."""
    with engine.connect() as connection:
        with pytest.raises(DBAPIError) as rows_error:
            list(driver_rows(connection, _past_int64(engine)))
        with pytest.raises(DBAPIError) as frame_error:
            read_frame(connection, _past_int64(engine), ["n"])
    for error in (rows_error.value, frame_error.value):
        assert is_overflow(error)
        assert not is_unavailable(error)
        assert "2**62" not in str(error) and str(2**62) not in str(error)  # parameters stay out
