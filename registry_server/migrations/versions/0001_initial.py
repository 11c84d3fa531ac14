"""Accounts, namespaces, tokens, agents and releases.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("address", sa.String(42), nullable=True, unique=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "namespaces",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False, index=True),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("scopes", sa.String(128), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("last_used_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
    )
    op.create_table(
        "agents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(129), nullable=False, unique=True),
        sa.Column("namespace", sa.String(64), sa.ForeignKey("namespaces.name"), nullable=False, index=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("serial", sa.Integer, nullable=False),
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id"), nullable=False, index=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("dependencies", sa.Text, nullable=False),
        sa.Column("publisher_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("published_at", _TS, nullable=False),
        sa.Column("yanked", sa.Boolean, nullable=False),
        sa.Column("yank_reason", sa.Text, nullable=False),
        sa.UniqueConstraint("agent_id", "version", name="uq_release_version"),
    )


def downgrade() -> None:
    for table in ("releases", "agents", "tokens", "namespaces", "accounts"):
        op.drop_table(table)
