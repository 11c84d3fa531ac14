"""Signed deployments: each revision's canonical statement, and the deployers' signatures over it.

Neither table refers to `deployments`: both outlive a removed deployment, so a name deployed
again numbers its revisions on from the highest one nodes may have seen.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deployment_statements",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("deployment", sa.String(129), nullable=False, index=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("statement", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("deployment", "revision", name="uq_deployment_statement"),
    )
    op.create_table(
        "deployment_signatures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("deployment", sa.String(129), nullable=False, index=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("signer", sa.String(42), nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("deployment", "revision", "signer", name="uq_deployment_signature"),
    )


def downgrade() -> None:
    op.drop_table("deployment_signatures")
    op.drop_table("deployment_statements")
