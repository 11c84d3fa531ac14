"""Alembic environment: migrations run on the connection the registry hands in."""

from __future__ import annotations

from alembic import context

from registry_server.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `mcpz registry migrate`")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
