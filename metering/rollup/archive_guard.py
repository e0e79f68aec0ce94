"""The rollup's guard for archived history: a rebuild reads events from the database, so it must
not run while some of the tenant's months live only in the archive (`metering.events.archive`)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from metering.core.tables import archived_months, rollup_state
from metering.core.tenants import Tenant
from metering.costs.book import tenant_overrides
from metering.events.archive import ArchivedHistory, dropped_months
from metering.rollup.reprice import needs_rebuild


def check_rebuild(engine: Engine, tenant: Tenant) -> None:
    """Refuse a rollup that would rebuild the tenant from its first event (its prices changed
    since the last run) while some of its months live only in the archive: the rebuild reads
    the database, so it would lose those months' usage. The way out is in the message: restore
    them (`taskmeter archive --restore`), roll up, archive and drop again. Incremental runs read
    only events past the watermark and are never refused."""
    with engine.connect() as connection:
        months = dropped_months(connection, tenant.id)
        if not months:
            return
        state = connection.execute(select(rollup_state).where(rollup_state.c.tenant_id == tenant.id)).first()
        overrides = tenant_overrides(connection, tenant.id)
        url = connection.execute(
            select(archived_months.c.url).where(archived_months.c.tenant_id == tenant.id).limit(1)
        ).scalar()
    if state is not None and needs_rebuild(state, overrides):
        raise ArchivedHistory(
            f"the prices of tenant {tenant.name!r} changed (or its rollup predates price buckets), so its rollup must be rebuilt from its first event, but the events of "
            f"{months[0]}..{months[-1]} were archived to {url} and dropped from the database: restore them first "
            f"(`taskmeter archive --tenant {tenant.name} --restore --to {url}`), roll up, then archive with --drop again",
            detail={"tenant": tenant.name, "dropped_months": months, "archive": url},
        )
