"""x402: the relayer's nonces, allocated under a row lock by every replica, and each payment's signed
settlement transaction, recorded before it is broadcast so that it can be broadcast again.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "x402_relayer_nonces",
        sa.Column("chain_id", sa.BigInteger, primary_key=True),
        sa.Column("address", sa.String(42), primary_key=True),
        sa.Column("next_nonce", sa.BigInteger, nullable=False),
    )
    with op.batch_alter_table("x402_payments") as batch:
        batch.add_column(sa.Column("version", sa.String(64), nullable=True))
        batch.add_column(sa.Column("relayer", sa.String(42), nullable=True))
        batch.add_column(sa.Column("relayer_nonce", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("raw", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("x402_payments") as batch:
        batch.drop_column("raw")
        batch.drop_column("relayer_nonce")
        batch.drop_column("relayer")
        batch.drop_column("version")
    op.drop_table("x402_relayer_nonces")
