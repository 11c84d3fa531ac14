"""Usage events: one row per `tools/call` through the gateway, unique by its id.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("token_id", sa.Integer, nullable=True),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(256), nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("replica_id", sa.String(128), nullable=False),
        sa.Column("node_id", sa.String(128), nullable=False),
        # Unix time in microseconds, and microseconds: integers compare and sum exactly.
        sa.Column("started_us", sa.BigInteger, nullable=False),
        sa.Column("duration_us", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("bytes_in", sa.BigInteger, nullable=False),
        sa.Column("bytes_out", sa.BigInteger, nullable=False),
        # sha256 of the event's canonical JSON: the same id with another payload is a conflict.
        sa.Column("digest", sa.String(64), nullable=False),
    )
    op.create_index("ix_usage_account_started", "usage_events", ["account_id", "started_us"])
    op.create_index("ix_usage_agent_started", "usage_events", ["agent", "started_us"])


def downgrade() -> None:
    op.drop_index("ix_usage_agent_started", table_name="usage_events")
    op.drop_index("ix_usage_account_started", table_name="usage_events")
    op.drop_table("usage_events")
