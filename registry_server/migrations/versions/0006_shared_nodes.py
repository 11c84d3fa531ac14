"""Who a node serves: a node that opted in with `mcpz node run --shared` runs every account's
deployments; the others run only those of namespaces their owner owns or is a member of.

Existing nodes are not shared: after the upgrade they serve only their owner's namespaces, and
replicas they ran for other accounts move (docs/deployments.md).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mesh_nodes") as batch:
        batch.add_column(sa.Column("shared", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("mesh_nodes") as batch:
        batch.drop_column("shared")
