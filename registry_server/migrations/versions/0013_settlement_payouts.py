"""Settlement: payout batches (their leaves and signed transactions) and withdrawal vouchers.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settlement_payout_batches",
        sa.Column("chain_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("batch_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("contract", sa.String(42), nullable=False),
        sa.Column("root", sa.String(66), nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("leaves", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("nonce", sa.BigInteger, nullable=True),
        sa.Column("receipt_tx", sa.String(66), nullable=True),
        sa.Column("receipt_block", sa.BigInteger, nullable=True),
        sa.Column("receipt_block_hash", sa.String(66), nullable=True),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("final_us", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "settlement_payout_leaves",
        sa.Column("chain_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("batch_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_settlement_payout_leaves_account",
        "settlement_payout_leaves",
        ["account_id", "chain_id", "batch_id"],
    )
    op.create_table(
        "settlement_payout_attempts",
        sa.Column("tx_hash", sa.String(66), primary_key=True),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("batch_id", sa.BigInteger, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("max_fee", sa.BigInteger, nullable=False),
        sa.Column("priority_fee", sa.BigInteger, nullable=False),
        sa.Column("sent_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_settlement_payout_attempts_batch", "settlement_payout_attempts", ["chain_id", "batch_id"]
    )
    op.create_table(
        "settlement_withdrawals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("contract", sa.String(42), nullable=False),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("expiry", sa.BigInteger, nullable=False),
        sa.Column("signature", sa.String(132), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("settled_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_settlement_withdrawals_account", "settlement_withdrawals", ["account_id"])
    op.create_index("ix_settlement_withdrawals_state", "settlement_withdrawals", ["chain_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_settlement_withdrawals_state", table_name="settlement_withdrawals")
    op.drop_index("ix_settlement_withdrawals_account", table_name="settlement_withdrawals")
    op.drop_table("settlement_withdrawals")
    op.drop_index("ix_settlement_payout_attempts_batch", table_name="settlement_payout_attempts")
    op.drop_table("settlement_payout_attempts")
    op.drop_index("ix_settlement_payout_leaves_account", table_name="settlement_payout_leaves")
    op.drop_table("settlement_payout_leaves")
    op.drop_table("settlement_payout_batches")
