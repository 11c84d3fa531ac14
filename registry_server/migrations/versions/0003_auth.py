"""Wallet sign-in and signed releases: nonces, namespace members, release signatures, key rotations.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "auth_nonces",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("address", sa.String(42), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False, index=True),
    )
    op.create_table(
        "namespace_members",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("namespace", sa.String(64), sa.ForeignKey("namespaces.name"), nullable=False, index=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False, index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("namespace", "account_id", name="uq_namespace_member"),
    )
    op.create_table(
        "release_signatures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("release_id", sa.Integer, sa.ForeignKey("releases.id"), nullable=False, index=True),
        sa.Column("signer", sa.String(42), nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("release_id", "signer", name="uq_release_signer"),
    )
    op.create_table(
        "key_rotations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("namespace", sa.String(64), sa.ForeignKey("namespaces.name"), nullable=False, index=True),
        sa.Column("old_address", sa.String(42), nullable=False, index=True),
        sa.Column("new_address", sa.String(42), nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("statement", sa.Text, nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("namespace", "sequence", name="uq_rotation_sequence"),
    )


def downgrade() -> None:
    for table in ("key_rotations", "release_signatures", "namespace_members", "auth_nonces"):
        op.drop_table(table)
