"""Deployment revisions that allow tool drift: `deployment_revisions.allow_tool_drift`.

A revision made with `mcpz deploy --allow-tool-drift` lets its replicas answer other tools than
those signed with the release; the flag is also a line of the revision's signed statement.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployment_revisions") as batch:
        batch.add_column(sa.Column("allow_tool_drift", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("deployment_revisions") as batch:
        batch.drop_column("allow_tool_drift")
