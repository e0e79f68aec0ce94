"""Where the rollup reads events and writes its tables: a `RollupStore` per database, each with
its fast paths. `metering.rollup.pipeline` reads the same whichever store it is given."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import pandas as pd
from sqlalchemy import Connection, Engine, Table

from metering.rollup.summary import Summary


class RollupStore(Protocol):
    def read_events(
        self,
        engine: Engine,
        tenant_id: int,
        after: int,
        upto: int,
        chunk_size: int,
        *,
        own_process: bool = False,
    ) -> Iterator[pd.DataFrame]:
        """The tenant's events with after < seq <= upto (`EVENT_COLUMNS`), in seq order, at most
        `chunk_size` a frame. `own_process`: the caller is a process that opens the database
        through nothing else."""
        ...

    def transaction(
        self, engine: Engine, tenant_id: int, *, replacing: Summary | None
    ) -> AbstractContextManager[Connection]:
        """A connection in a transaction that commits when the block ends (rolls back when it
        raises), ready to write `replacing` in place of the tenant's rows if given."""
        ...

    def merge(self, connection: Connection, tenant_id: int, summary: Summary) -> int:
        """Merge the summary into the tenant's stored rows: its task rows, already merged with
        the stored ones (`metering.rollup.summary.merge_tasks`), in their place; its usage rows
        added to the stored ones. Returns the tasks written."""
        ...

    def replace_tenant(self, connection: Connection, tenant_id: int, summary: Summary | None) -> int:
        """Put the summary in place of all the tenant's rows (none: delete them); returns the
        tasks written."""
        ...

    def refresh_statistics(self, engine: Engine) -> None:
        """Fresh planner statistics of the rollup tables after a rebuild; best effort."""
        ...

    def price_pairs(self, connection: Connection, tenant_id: int) -> list[tuple[str, str]]:
        """The (provider, model) pairs of the tenant's price buckets (`metering.rollup.reprice`)."""
        ...

    def read_buckets(self, connection: Connection, tenant_id: int, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
        """The tenant's price buckets of these pairs, read in `connection`'s transaction."""
        ...

    def read_detail_costs(self, connection: Connection, tenant_id: int, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
        """The tenant's detail rows' keys and costs, of these pairs at least, in `connection`'s transaction."""
        ...

    def shift_costs(self, connection: Connection, tenant_id: int, table: Table, keys: Sequence[str], changes: pd.DataFrame) -> int:
        """Add cost changes to the tenant's rows of `table` by key, carried; returns rows changed."""
        ...


def store_for(engine: Engine) -> RollupStore:
    """The store of `engine`'s database, with its default thresholds."""
    from metering.rollup.stores.postgresql import PostgresStore
    from metering.rollup.stores.sqlite import SqliteStore

    return PostgresStore() if engine.dialect.name == "postgresql" else SqliteStore()
