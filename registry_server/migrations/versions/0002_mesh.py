"""The deployment mesh: nodes, deployments, revisions, replicas and the epoch counter.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mesh_nodes",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False, index=True),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("capacity", sa.Integer, nullable=False),
        sa.Column("software_version", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=True),
        sa.Column("lost_at", _TS, nullable=True),
        sa.Column("cpu_percent", sa.Float, nullable=False),
        sa.Column("memory_used", sa.BigInteger, nullable=False),
        sa.Column("memory_total", sa.BigInteger, nullable=False),
        sa.Column("load", sa.Float, nullable=False),
    )
    op.create_table(
        "deployments",
        sa.Column("name", sa.String(129), primary_key=True),
        sa.Column("namespace", sa.String(64), sa.ForeignKey("namespaces.name"), nullable=False, index=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("replicas", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "deployment_revisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "deployment",
            sa.String(129),
            sa.ForeignKey("deployments.name", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("agent", sa.String(129), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("env", sa.Text, nullable=False),
        sa.Column("limits", sa.Text, nullable=False),
        sa.Column("selector", sa.Text, nullable=False),
        sa.Column("dependencies", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("deployment", "revision", name="uq_deployment_revision"),
    )
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column(
            "deployment",
            sa.String(129),
            sa.ForeignKey("deployments.name", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("node_id", sa.String(128), nullable=True, index=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stopping", sa.Boolean, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    counters = op.create_table(
        "mesh_counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counters, [{"name": "epoch", "value": 0}])


def downgrade() -> None:
    for table in ("mesh_counters", "replicas", "deployment_revisions", "deployments", "mesh_nodes"):
        op.drop_table(table)
