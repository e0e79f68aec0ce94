"""budgets: webhook signing secrets encrypted at rest (Fernet, metering.core.secret_box); jobs counted
at settlement for tenants with outcome rules (budget_state.jobs_at_settlement)

Revision ID: 0017
Revises: 0015
Create Date: 2026-12-06

The secret column widens to hold a Fernet token, and every secret stored in clear is sealed with
the key of the environment the migration runs in (`TASKMETER_ENCRYPTION_KEYS`, else the key
derived from `TASKMETER_SECRET_KEY`: run it with the server's environment). The downgrade opens
them again (with the same keys).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0015"
branch_labels = None
depends_on = None

_webhooks = sa.table("webhooks", sa.column("id", sa.Integer()), sa.column("secret", sa.String()))


def _box():  # type: ignore[no-untyped-def]
    from api.settings import Settings  # the server's settings: the keys of its environment

    return Settings().secret_box()


def _rewrite(sealing: bool) -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(_webhooks.c.id, _webhooks.c.secret)).all()
    if not rows:
        return
    box = _box()
    for hook, secret in rows:
        if sealing == box.is_sealed(secret):
            continue  # already as wanted
        value = box.seal(secret) if sealing else box.open(secret)
        connection.execute(sa.update(_webhooks).where(_webhooks.c.id == hook).values(secret=value))


def upgrade() -> None:
    with op.batch_alter_table("budget_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("jobs_at_settlement", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.alter_column("secret", existing_type=sa.String(length=128), type_=sa.String(length=512),
                              existing_nullable=False)  # fmt: skip
    _rewrite(sealing=True)
    # Tenants with outcome rules get the flag (and their jobs recounted) at their next config
    # change or rollup run (pricing.budget_billing.refresh, api.scheduler).


def downgrade() -> None:
    _rewrite(sealing=False)
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.alter_column("secret", existing_type=sa.String(length=512), type_=sa.String(length=128),
                              existing_nullable=False)  # fmt: skip
    with op.batch_alter_table("budget_state", schema=None) as batch_op:
        batch_op.drop_column("jobs_at_settlement")
