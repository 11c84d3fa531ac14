"""Billing: prices, splits, subscriptions, tiers, caps, holds, credits, charges, invoices, the ledger;
usage events gain their price, plan, hold and the transaction that rated them.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UNRATED = "price > 0 AND rated IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.add_column(sa.Column("price", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("plan", sa.String(16), nullable=False, server_default=""))
        batch.add_column(sa.Column("hold", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("rated", sa.String(128), nullable=True))
    op.create_index(
        "ix_usage_unrated",
        "usage_events",
        ["started_us"],
        sqlite_where=sa.text(UNRATED),
        postgresql_where=sa.text(UNRATED),
    )
    op.create_index(
        "ix_usage_hold",
        "usage_events",
        ["hold"],
        sqlite_where=sa.text("hold != ''"),
        postgresql_where=sa.text("hold != ''"),
    )
    op.create_table(
        "billing_prices",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("effective_us", sa.BigInteger, nullable=False),
        sa.Column("pricing", sa.Text, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
    )
    op.create_index("ix_billing_prices_agent", "billing_prices", ["agent", "effective_us"])
    op.create_table(
        "billing_splits",
        sa.Column("agent", sa.String(200), primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("bps", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "billing_subscriptions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("plan", sa.String(16), nullable=False),
        sa.Column("started_us", sa.BigInteger, nullable=False),
        sa.Column("ended_us", sa.BigInteger, nullable=True),
        sa.Column("paid_through", sa.String(7), nullable=False),
    )
    op.create_index("ix_billing_subscriptions_account", "billing_subscriptions", ["account_id", "agent"])
    op.create_table(
        "billing_tiers",
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("tier", sa.String(32), nullable=False),
    )
    op.create_table(
        "billing_caps",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("token_id", sa.Integer, nullable=False, server_default="0"),
        sa.Column("agent", sa.String(200), nullable=False, server_default=""),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("account_id", "token_id", "agent", "period", name="uq_billing_caps"),
    )
    op.create_table(
        "billing_holds",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("gate", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("released_us", sa.BigInteger, nullable=True),
        sa.Column("captured", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_billing_holds_gate", "billing_holds", ["gate", "released_us"])
    op.create_table(
        "billing_credits",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("expires_us", sa.BigInteger, nullable=True),
        sa.Column("expired", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "billing_charges",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("consumer_id", sa.Integer, nullable=False),
        sa.Column("token_id", sa.Integer, nullable=False, server_default="0"),
        sa.Column("creator_id", sa.Integer, nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(256), nullable=False),
        sa.Column("plan", sa.String(16), nullable=False),
        sa.Column("started_us", sa.BigInteger, nullable=False),
        sa.Column("price", sa.BigInteger, nullable=False),
        sa.Column("fee", sa.BigInteger, nullable=False),
        sa.Column("earning", sa.BigInteger, nullable=False),
        sa.Column("txn", sa.String(128), nullable=False),
        sa.Column("settled", sa.String(128), nullable=True),
    )
    op.create_index("ix_billing_charges_consumer", "billing_charges", ["consumer_id", "started_us"])
    op.create_index("ix_billing_charges_creator", "billing_charges", ["creator_id", "started_us"])
    op.create_index("ix_billing_charges_token", "billing_charges", ["token_id", "started_us"])
    op.create_table(
        "billing_invoices",
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("lines", sa.Text, nullable=False),
        sa.Column("finalized_us", sa.BigInteger, nullable=False),
        sa.Column("refers_to", sa.Integer, nullable=True),
        sa.UniqueConstraint("account_id", "period", "kind", name="uq_billing_invoice_period"),
    )
    op.create_table(
        "ledger_transactions",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("memo", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "ledger_entries",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("txn", sa.String(128), sa.ForeignKey("ledger_transactions.key"), nullable=False),
        sa.Column("account", sa.String(96), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_ledger_entries_txn", "ledger_entries", ["txn"])
    op.create_index("ix_ledger_entries_account", "ledger_entries", ["account", "id"])
    op.create_table(
        "ledger_balances",
        sa.Column("account", sa.String(96), primary_key=True),
        sa.Column("balance", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "ledger_balances",
        "ledger_entries",
        "ledger_transactions",
        "billing_invoices",
        "billing_charges",
        "billing_credits",
        "billing_holds",
        "billing_caps",
        "billing_tiers",
        "billing_subscriptions",
        "billing_splits",
        "billing_prices",
    ):
        op.drop_table(table)
    op.drop_index("ix_usage_hold", "usage_events")
    op.drop_index("ix_usage_unrated", "usage_events")
    with op.batch_alter_table("usage_events") as batch:
        for column in ("rated", "hold", "plan", "price"):
            batch.drop_column(column)
