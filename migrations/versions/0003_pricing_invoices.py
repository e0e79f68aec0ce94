"""pricing and invoices: plans and versions, customers and plan history, billing periods,
invoices, invoice lines, credit notes; triggers that keep finalized invoices unchanged

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Columns of a finalized invoice that never change (the Stripe columns may; status only to void).
FROZEN_INVOICE = ("tenant_id", "customer", "period", "number", "currency", "total_minor", "plan",
                  "plan_versions", "price_version", "created_at", "finalized_at")  # fmt: skip
FROZEN_LINE = ("invoice_id", "line_no", "kind", "description", "quantity", "unit_price", "amount_exact",
               "amount_minor", "plan", "plan_version", "adjusts_period")  # fmt: skip
MESSAGE = "a finalized invoice never changes"


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.String(200), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_plans_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("tenant_id", "plan_id", name=op.f("pk_plans")),
    )
    op.create_table(
        "plan_versions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=True),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "plan_id"], ["plans.tenant_id", "plans.plan_id"], name=op.f("fk_plan_versions_tenant_id_plans")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_versions")),
        sa.UniqueConstraint("tenant_id", "plan_id", "version", name=op.f("uq_plan_versions_tenant_id_plan_id_version")),
    )
    op.create_table(
        "customers",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("plan", sa.String(200), nullable=False),
        sa.Column("compare_with", sa.Text(), nullable=False),
        sa.Column("stripe_customer_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_customers_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("tenant_id", "customer", name=op.f("pk_customers")),
    )
    op.create_table(
        "customer_plans",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("plan", sa.String(200), nullable=False),
        sa.Column("compare_with", sa.Text(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "customer"], ["customers.tenant_id", "customers.customer"],
            name=op.f("fk_customer_plans_tenant_id_customers"),
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer_plans")),
    )
    op.create_index("ix_customer_plans_tenant_customer", "customer_plans", ["tenant_id", "customer"])
    op.create_table(
        "billing_periods",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("watermark_seq", sa.BigInteger(), nullable=False),
        sa.Column("price_version", sa.String(64), nullable=False),
        sa.Column("plans_as_of", sa.BigInteger(), nullable=False),
        sa.Column("assignments_as_of", sa.BigInteger(), nullable=False),
        sa.Column("reconciled_seq", sa.BigInteger(), nullable=False),
        sa.Column("reconciled_price_version", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_billing_periods_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("tenant_id", "period", name=op.f("pk_billing_periods")),
    )
    op.create_table(
        "invoices",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("customer", sa.String(256), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("number", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("plan", sa.String(200), nullable=False),
        sa.Column("plan_versions", sa.Text(), nullable=False),
        sa.Column("price_version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stripe_invoice_id", sa.String(64), nullable=True),
        sa.Column("stripe_status", sa.String(32), nullable=True),
        sa.Column("stripe_error", sa.Text(), nullable=True),
        sa.Column("payment_status", sa.String(32), nullable=True),
        sa.CheckConstraint("status IN ('draft', 'finalized', 'void')", name=op.f("ck_invoices_status")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_invoices_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("number", name=op.f("uq_invoices_number")),
        sa.UniqueConstraint("tenant_id", "customer", "period", name=op.f("uq_invoices_tenant_id_customer_period")),
    )
    op.create_index("ix_invoices_tenant_period", "invoices", ["tenant_id", "period"])
    op.create_table(
        "invoice_lines",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("invoice_id", BigId, nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("quantity", sa.String(60), nullable=False),
        sa.Column("unit_price", sa.String(60), nullable=False),
        sa.Column("amount_exact", sa.String(80), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("plan", sa.String(200), nullable=True),
        sa.Column("plan_version", sa.Integer(), nullable=True),
        sa.Column("adjusts_period", sa.String(7), nullable=True),
        sa.Column("stripe_item_id", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], name=op.f("fk_invoice_lines_invoice_id_invoices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_lines")),
        sa.UniqueConstraint("invoice_id", "line_no", name=op.f("uq_invoice_lines_invoice_id_line_no")),
    )
    op.create_table(
        "credit_notes",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("invoice_id", BigId, nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stripe_credit_note_id", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], name=op.f("fk_credit_notes_invoice_id_invoices")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_credit_notes_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_notes")),
    )
    op.create_index(op.f("ix_credit_notes_invoice_id"), "credit_notes", ["invoice_id"])
    if op.get_bind().dialect.name == "postgresql":
        _postgres_triggers()
    else:
        _sqlite_triggers()


def _changed(columns: tuple[str, ...], distinct: str) -> str:
    return " OR ".join(f"NEW.{c} {distinct} OLD.{c}" for c in columns)


def _sqlite_triggers() -> None:
    # RAISE(ABORT) fails the statement with SQLITE_CONSTRAINT: an IntegrityError to the caller.
    invoice_changed = _changed(FROZEN_INVOICE, "IS NOT")
    line_changed = _changed(FROZEN_LINE, "IS NOT")
    line_frozen = "(SELECT status FROM invoices WHERE id = {}.invoice_id) <> 'draft'"
    for statement in (
        f"""CREATE TRIGGER invoices_frozen_update BEFORE UPDATE ON invoices
            WHEN OLD.status <> 'draft' AND ({invoice_changed}
                 OR (NEW.status IS NOT OLD.status AND NOT (OLD.status = 'finalized' AND NEW.status = 'void')))
            BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END""",
        f"""CREATE TRIGGER invoices_frozen_delete BEFORE DELETE ON invoices WHEN OLD.status <> 'draft'
            BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END""",
        f"""CREATE TRIGGER invoice_lines_frozen_insert BEFORE INSERT ON invoice_lines
            WHEN {line_frozen.format("NEW")} BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END""",
        f"""CREATE TRIGGER invoice_lines_frozen_update BEFORE UPDATE ON invoice_lines
            WHEN {line_frozen.format("OLD")} AND ({line_changed})
            BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END""",
        f"""CREATE TRIGGER invoice_lines_frozen_delete BEFORE DELETE ON invoice_lines
            WHEN {line_frozen.format("OLD")} BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END""",
    ):
        op.execute(statement)


def _postgres_triggers() -> None:
    # check_violation (23514): psycopg raises IntegrityError, as for SQLite.
    invoice_changed = _changed(FROZEN_INVOICE, "IS DISTINCT FROM")
    line_changed = _changed(FROZEN_LINE, "IS DISTINCT FROM")
    op.execute(f"""
        CREATE FUNCTION taskmeter_invoice_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.status <> 'draft' AND (TG_OP = 'DELETE' OR {invoice_changed}
                    OR (NEW.status IS DISTINCT FROM OLD.status AND NOT (OLD.status = 'finalized' AND NEW.status = 'void'))) THEN
                RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'check_violation';
            END IF;
            IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
            RETURN NEW;
        END $$""")
    # Only this module's constant column names are interpolated.
    op.execute(f"""
        CREATE FUNCTION taskmeter_invoice_line_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE parent_status text;
        BEGIN
            SELECT status INTO parent_status FROM invoices
                WHERE id = (CASE WHEN TG_OP = 'INSERT' THEN NEW.invoice_id ELSE OLD.invoice_id END);
            IF parent_status <> 'draft' AND (TG_OP <> 'UPDATE' OR {line_changed}) THEN
                RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'check_violation';
            END IF;
            IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
            RETURN NEW;
        END $$""")  # noqa: S608
    op.execute("""CREATE TRIGGER invoices_frozen BEFORE UPDATE OR DELETE ON invoices
                  FOR EACH ROW EXECUTE FUNCTION taskmeter_invoice_frozen()""")
    op.execute("""CREATE TRIGGER invoice_lines_frozen BEFORE INSERT OR UPDATE OR DELETE ON invoice_lines
                  FOR EACH ROW EXECUTE FUNCTION taskmeter_invoice_line_frozen()""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS invoice_lines_frozen ON invoice_lines")
        op.execute("DROP TRIGGER IF EXISTS invoices_frozen ON invoices")
        op.execute("DROP FUNCTION IF EXISTS taskmeter_invoice_line_frozen()")
        op.execute("DROP FUNCTION IF EXISTS taskmeter_invoice_frozen()")
    op.drop_index(op.f("ix_credit_notes_invoice_id"), table_name="credit_notes")
    op.drop_table("credit_notes")
    op.drop_table("invoice_lines")  # SQLite drops a table's triggers with it
    op.drop_index("ix_invoices_tenant_period", table_name="invoices")
    op.drop_table("invoices")
    op.drop_table("billing_periods")
    op.drop_index("ix_customer_plans_tenant_customer", table_name="customer_plans")
    op.drop_table("customer_plans")
    op.drop_table("customers")
    op.drop_table("plan_versions")
    op.drop_table("plans")
