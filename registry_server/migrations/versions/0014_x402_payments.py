"""x402: the payments the gateway took, for idempotency by payment identifier and settlement by hash.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "x402_payments",
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("payer", sa.String(42), nullable=False),
        sa.Column("nonce", sa.String(66), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("tool", sa.String(256), nullable=False),
        sa.Column("price", sa.BigInteger, nullable=False),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=True),
        sa.Column("response", sa.Text, nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("payer", "nonce", name="uq_x402_payments_authorization"),
    )


def downgrade() -> None:
    op.drop_table("x402_payments")
