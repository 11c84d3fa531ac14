"""Settlement: deposits seen on chain (credited once after confirmations) and the scan cursor.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settlement_deposits",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("log_index", sa.Integer, nullable=False),
        sa.Column("sender", sa.String(42), nullable=False),
        sa.Column("account", sa.String(200), nullable=False),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("block_number", sa.BigInteger, nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ledger_key", sa.String(128), nullable=True),
        sa.Column("seen_us", sa.BigInteger, nullable=False),
        sa.Column("settled_us", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("chain_id", "tx_hash", "log_index", name="uq_settlement_deposits_log"),
    )
    op.create_index(
        "ix_settlement_deposits_state", "settlement_deposits", ["chain_id", "state", "block_number"]
    )
    op.create_index("ix_settlement_deposits_account", "settlement_deposits", ["account_id"])
    op.create_table(
        "settlement_cursor",
        sa.Column("chain_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("block", sa.BigInteger, nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("settlement_cursor")
    op.drop_index("ix_settlement_deposits_account", table_name="settlement_deposits")
    op.drop_index("ix_settlement_deposits_state", table_name="settlement_deposits")
    op.drop_table("settlement_deposits")
