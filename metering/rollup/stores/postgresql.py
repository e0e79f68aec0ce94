"""The rollup's PostgreSQL store: events read as Arrow through ADBC, and the rebuild of a tenant
alone in the rollup tables done by building new tables and swapping them in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
from psycopg import sql as pgsql
from sqlalchemy import Column, Connection, Engine, MetaData, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import OperationalError

from metering.core.db import adbc_uri
from metering.core.tables import NAMING_CONVENTION
from metering.rollup.stores.common import (
    ROLLUP_TABLES,
    TableStore,
    arrow_events,
    events_query,
    key_values,
    other_tenants_in,
)
from metering.rollup.summary import Summary


class PostgresStore(TableStore):
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
        """Arrow straight from libpq (ADBC): no Python object per value. The query goes with its
        parameters written into it: ADBC runs a query with bound parameters as a prepared
        statement whose whole result libpq holds as text rows before converting them, and one
        without as a binary COPY streamed into Arrow. The parameters are integers (tenant id,
        seq bounds, chunk size), checked here."""
        import adbc_driver_postgresql.dbapi as adbc

        while after < upto:
            query = events_query(tenant_id, after, upto, chunk_size)
            if not all(type(value) is int for value in query.compile().params.values()):
                raise TypeError("only integer parameters are written into the query")
            compiled = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
            with adbc.connect(adbc_uri(engine)) as connection, connection.cursor() as cursor:
                cursor.execute(str(compiled))
                frame = arrow_events(cursor.fetch_arrow_table())
            if frame.empty:
                return
            yield frame
            after = int(frame["seq"].iloc[-1])

    @contextmanager
    def transaction(
        self, engine: Engine, tenant_id: int, *, replacing: Summary | None
    ) -> Iterator[Connection]:
        with engine.connect() as connection, connection.begin():
            yield connection

    def replace_tenant(self, connection: Connection, tenant_id: int, summary: Summary | None) -> int:
        """Alone in the tables (asked under a lock that keeps other writers out of them until
        the transaction ends; readers go on), the tenant's rows go into new tables that take the
        old ones' place (`_rebuild_by_swap`); beside other tenants, its rows are deleted and
        written again."""
        if summary is not None and self._alone(connection, tenant_id):
            return self._rebuild_by_swap(connection, tenant_id, summary)
        self.delete_tenant(connection, tenant_id)
        return 0 if summary is None else self.write(connection, tenant_id, summary, replace_all=True)

    def refresh_statistics(self, engine: Engine) -> None:
        """Without fresh statistics, PostgreSQL plans the reports' joins over freshly bulk-loaded
        tables as if they were empty (a nested loop over the whole month)."""
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("ANALYZE " + ", ".join(table.name for table in ROLLUP_TABLES))
                connection.commit()
        except OperationalError:
            pass

    def shift_costs(self, connection: Connection, tenant_id: int, table: Table, keys: Sequence[str], changes: pd.DataFrame) -> int:
        """The changes COPied into a temporary table and applied by one UPDATE ... FROM joined on
        the key (instead of one UPDATE per row, a round trip each)."""
        if changes.empty:
            return 0
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        stage = f"{table.name}__cost_changes"
        names = [*keys, "d_nanos", "d_rem", "d_unpriced"]
        types = [table.c[name].type.compile(dialect=postgresql.dialect()) for name in keys] + ["bigint"] * 3
        cursor.execute(pgsql.SQL("CREATE TEMPORARY TABLE {} ({}) ON COMMIT DROP").format(
            pgsql.Identifier(stage),
            pgsql.SQL(", ").join(pgsql.SQL("{} {}").format(pgsql.Identifier(n), pgsql.SQL(t)) for n, t in zip(names, types, strict=True)),
        ))  # fmt: skip
        with cursor.copy(pgsql.SQL("COPY {} FROM STDIN").format(pgsql.Identifier(stage))) as copy:
            for row in zip(*[key_values(changes[name]) for name in names], strict=True):
                copy.write_row(row)
        cursor.execute(pgsql.SQL("ANALYZE {}").format(pgsql.Identifier(stage)))  # the join's plan needs its size
        target, source = pgsql.Identifier(table.name), pgsql.Identifier(stage)

        def column(of: pgsql.Identifier, name: str) -> pgsql.Composed:
            return pgsql.SQL("{}.{}").format(of, pgsql.Identifier(name))

        cursor.execute(pgsql.SQL(
            "UPDATE {t} SET cost_nanos = {t}.cost_nanos + {s}.d_nanos + ({t}.cost_rem + {s}.d_rem) / 1000000, "
            "cost_rem = ({t}.cost_rem + {s}.d_rem) %% 1000000, unpriced_events = {t}.unpriced_events + {s}.d_unpriced "
            "FROM {s} WHERE {t}.tenant_id = %s AND {match}"
        ).format(
            t=target, s=source,
            match=pgsql.SQL(" AND ").join(pgsql.SQL("{} = {}").format(column(target, n), column(source, n)) for n in keys),
        ), (tenant_id,))  # fmt: skip
        count = cursor.rowcount
        cursor.execute(pgsql.SQL("DROP TABLE {}").format(source))
        return int(count)

    @staticmethod
    def _alone(connection: Connection, tenant_id: int) -> bool:
        connection.exec_driver_sql(
            "LOCK TABLE " + ", ".join(table.name for table in ROLLUP_TABLES) + " IN EXCLUSIVE MODE"
        )
        return not other_tenants_in(connection, ROLLUP_TABLES, tenant_id)

    def _rebuild_by_swap(self, connection: Connection, tenant_id: int, summary: Summary) -> int:
        """The rows go into new tables without indexes, which get their primary key and indexes
        afterwards (one sort each), and then take the old tables' place and names, all in the
        rollup's transaction. Readers see the old rows until the commit and wait only for the
        swap itself (instead of index upkeep row by row and unique checks against the rows just
        deleted)."""
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]

        def run(statement: str, *names: str) -> None:
            cursor.execute(pgsql.SQL(statement).format(*(pgsql.Identifier(name) for name in names)))

        def columns(names: Sequence[str]) -> pgsql.Composable:
            return pgsql.SQL(", ").join(pgsql.Identifier(name) for name in names)

        # Index builds sort in memory rather than on disk (the default is 64 MB); this transaction only.
        cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
        staged = {table: _staging(table) for table in ROLLUP_TABLES}
        for table, stage in staged.items():
            run("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)", stage.name, table.name)
        written = self.write(connection, tenant_id, summary, replace_all=True, into=staged)
        for table, stage in staged.items():
            cursor.execute(pgsql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                pgsql.Identifier(stage.name), pgsql.Identifier(_staged_name(_pk_name(table))),
                columns([column.name for column in table.primary_key.columns]),
            ))  # fmt: skip
            for index in table.indexes:
                where = index.dialect_options["postgresql"]["where"]  # a partial index: its condition, as declared
                cursor.execute(pgsql.SQL("CREATE {}INDEX {} ON {} ({}){}").format(
                    pgsql.SQL("UNIQUE " if index.unique else ""), pgsql.Identifier(_staged_name(str(index.name))),
                    pgsql.Identifier(stage.name), columns([column.name for column in index.columns]),
                    pgsql.SQL("" if where is None else f" WHERE {where}"),
                ))  # fmt: skip
        for table, stage in staged.items():
            run("DROP TABLE {}", table.name)
            run("ALTER TABLE {} RENAME TO {}", stage.name, table.name)
            run(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                table.name,
                _staged_name(_pk_name(table)),
                _pk_name(table),
            )
            for index in table.indexes:
                run("ALTER INDEX {} RENAME TO {}", _staged_name(str(index.name)), str(index.name))
        return written


def _staging(table: Table) -> Table:
    """A table of the same columns, under the staging name (for writing into it)."""
    return Table(
        _staged_name(table.name),
        MetaData(),
        *(Column(c.name, c.type, nullable=c.nullable) for c in table.columns),
    )


def _staged_name(name: str) -> str:
    return f"{name}__rebuild"


def _pk_name(table: Table) -> str:
    return NAMING_CONVENTION["pk"] % {"table_name": table.name}
