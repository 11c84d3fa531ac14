"""Leases: one holder per job across registry replicas, with an epoch that fences a former holder.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        # Microseconds since the epoch, on the database's clock where it has one (PostgreSQL), so
        # replicas on machines whose clocks differ agree on when a lease ran out.
        sa.Column("expires_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
