"""Bulk writes of frames (`metering.core.db.write_frame`): what goes in is what comes back, in
slices (PostgreSQL: CSV written by Arrow in a thread, one slice ahead of the COPY)."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from sqlalchemy import BigInteger, Column, Date, Engine, Integer, MetaData, String, Table, select

from metering.core.db import write_frame

NAMES = ["plain", "with, comma", 'with "quotes"', "two\nlines", "", None, "tâche-東京-🚀", "=1+2", " padded ", "\\N"]


@pytest.mark.parametrize("slice_rows", [3, 250_000], ids=["many-slices", "one-slice"])
def test_a_frame_comes_back_as_it_went_in(slice_rows: int, engine: Engine) -> None:
    probe = Table(
        "bulk_probe", MetaData(),
        Column("id", Integer, primary_key=True), Column("name", String(64)), Column("day", Date), Column("n", BigInteger),
        prefixes=["TEMPORARY"],
    )  # fmt: skip
    frame = pd.DataFrame({
        "id": range(len(NAMES)),
        "name": pd.array(NAMES, dtype=object),
        "day": pd.to_datetime([f"2026-11-{day:02d}" for day in range(1, len(NAMES) + 1)]),
        "n": [2**62 + i for i in range(len(NAMES))],
    })  # fmt: skip
    with engine.begin() as connection:
        probe.create(connection)
        assert write_frame(connection, probe, frame, ["id", "name", "day", "n"], slice_rows=slice_rows) == len(NAMES)
        rows = connection.execute(select(probe).order_by(probe.c.id)).all()
        probe.drop(connection)
    assert [tuple(row) for row in rows] == [
        (i, name, date(2026, 11, i + 1), 2**62 + i) for i, name in enumerate(NAMES)
    ]  # fmt: skip


def test_add_rows_adds_to_stored_rows_and_returns_the_totals(engine: Engine) -> None:
    """`metering.core.db.add_rows`: new keys are inserted, known ones get the amounts added; every
    written row comes back as stored after the write (names that need quoting, 64-bit sums)."""
    from metering.core.db import add_rows

    probe = Table(
        "add_probe", MetaData(),
        Column("k", String(64), primary_key=True), Column("p", BigInteger, primary_key=True),
        Column("a", BigInteger, nullable=False), Column("b", BigInteger, nullable=False),
    )  # fmt: skip
    columns, keys = ("k", "p", "a", "b"), ("k", "p")
    with engine.begin() as connection:
        probe.create(connection)
        try:
            first = add_rows(
                connection,
                probe,
                columns,
                [(n, 1, 2**40, 1) for n in NAMES[:6] if n is not None],
                keys=keys,
                add=("a", "b"),
            )
            assert sorted(tuple(r) for r in first) == sorted(
                (n, 1, 2**40, 1) for n in NAMES[:6] if n is not None
            )
            again = add_rows(
                connection,
                probe,
                columns,
                [("plain", 1, 2**62, 5), ("plain", 2, 7, 0)],
                keys=keys,
                add=("a", "b"),
            )
            assert sorted(tuple(r) for r in again) == [("plain", 1, 2**62 + 2**40, 6), ("plain", 2, 7, 0)]
            assert add_rows(connection, probe, columns, [], keys=keys, add=("a", "b")) == []
            fixed = add_rows(
                connection, probe, ("p", "a", "b"), [(1, 3, 1), (3, 4, 0)], keys=keys, add=("a", "b"), fixed={"k": "plain"}
            )  # fmt: skip
            assert sorted(tuple(r) for r in fixed) == [("plain", 1, 2**62 + 2**40 + 3, 7), ("plain", 3, 4, 0)]
            stored = dict(((r.k, r.p), (r.a, r.b)) for r in connection.execute(select(probe)))
            assert stored[("with, comma", 1)] == (2**40, 1) and stored[("plain", 1)] == (2**62 + 2**40 + 3, 7)
        finally:
            probe.drop(connection)
