"""Bulk writes of frames (`metering.db.write_frame`): what goes in is what comes back, in
slices (PostgreSQL: CSV written by Arrow in a thread, one slice ahead of the COPY)."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from sqlalchemy import BigInteger, Column, Date, Engine, Integer, MetaData, String, Table, select

from metering.db import write_frame

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
