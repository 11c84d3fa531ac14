"""Alembic environment: migrations run on the connection the registry hands in."""

from __future__ import annotations

from alembic import context

# Imported for their side effect: every domain's tables register on Base.metadata, so
# autogenerate compares the whole schema.
import registry_server.accounts.models
import registry_server.billing.models
import registry_server.deployments.models
import registry_server.leases
import registry_server.market.models
import registry_server.oauth.models
import registry_server.releases.models
import registry_server.settlement.models
import registry_server.usage.models
import registry_server.web.models  # noqa: F401
from registry_server.orm import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `mcpz registry migrate`")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
