"""Tables of the deployment mesh: nodes, deployments, their revisions, replicas, the epoch counter,
and the deployers' signed statements of each revision.

Schema changes go through Alembic (migrations 0002, 0005 and 0006). The tables share `models.Base`, so
foreign keys to accounts and namespaces resolve. JSON columns are text (the same on SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import false

from registry_server.orm import Base, UTCDateTime

EPOCH_COUNTER = "epoch"
"""The row of `mesh_counters` every replica assignment's epoch is drawn from."""


class MeshNode(Base):
    """A node that said hello at least once. Rows are kept when a node is lost, as it may come back,
    until the registry's `lost_node_retention` runs out."""

    __tablename__ = "mesh_nodes"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(253))
    # The account whose `node` token connected it; only that account may reclaim the id.
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    labels: Mapped[str] = mapped_column(Text, default="{}")
    capacity: Mapped[int] = mapped_column(Integer)
    software_version: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16))  # "ready" or "lost"
    # It said `--shared` in its hello: it runs the deployments of every account, not only its owner's.
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lost_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cpu_percent: Mapped[float] = mapped_column(Float, default=0.0)
    memory_used: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_total: Mapped[int] = mapped_column(BigInteger, default=0)
    load: Mapped[float] = mapped_column(Float, default=0.0)


class Deployment(Base):
    """Desired state of one agent's deployment; its name is the agent's name."""

    __tablename__ = "deployments"

    name: Mapped[str] = mapped_column(String(129), primary_key=True)
    namespace: Mapped[str] = mapped_column(ForeignKey("namespaces.name"), index=True)
    revision: Mapped[int] = mapped_column(Integer)  # the revision replicas converge to
    replicas: Mapped[int] = mapped_column(Integer)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)  # removal in progress
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeploymentRevision(Base):
    """What a replica runs: release, command, environment, limits and node selector. Immutable."""

    __tablename__ = "deployment_revisions"
    __table_args__ = (UniqueConstraint("deployment", "revision", name="uq_deployment_revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment: Mapped[str] = mapped_column(ForeignKey("deployments.name", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    agent: Mapped[str] = mapped_column(String(129))
    version: Mapped[str] = mapped_column(String(64))
    commit: Mapped[str] = mapped_column(String(64))
    command: Mapped[str] = mapped_column(Text)  # JSON list of strings
    env: Mapped[str] = mapped_column(Text)  # JSON object
    limits: Mapped[str] = mapped_column(Text)  # JSON {"memory_bytes": int|null, "open_files": int|null}
    selector: Mapped[str] = mapped_column(Text)  # JSON object: labels a node must carry
    dependencies: Mapped[str] = mapped_column(Text)  # JSON list of [name, version, commit]
    # Replicas may answer other tools than those signed with the release (`mcpz deploy --allow-tool-drift`).
    allow_tool_drift: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MeshReplica(Base):
    """One replica: its current assignment (node, epoch) and the status its node last reported."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    deployment: Mapped[str] = mapped_column(ForeignKey("deployments.name", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    epoch: Mapped[int] = mapped_column(BigInteger)  # 0: never assigned
    status: Mapped[str] = mapped_column(String(16))
    stopping: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MeshCounter(Base):
    """Counters that only grow (the epoch), kept in the database so they survive restarts."""

    __tablename__ = "mesh_counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class DeploymentStatementRow(Base):
    """The canonical `mcpz.keys.signing.DeploymentStatement` of each revision, as it was made.

    Kept when the deployment is removed (no foreign key): the highest revision ever made for a
    name is where its numbering goes on if it is deployed again, since nodes refuse a revision
    lower than one they have seen.
    """

    __tablename__ = "deployment_statements"
    __table_args__ = (UniqueConstraint("deployment", "revision", name="uq_deployment_statement"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment: Mapped[str] = mapped_column(String(129), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    statement: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeploymentSignature(Base):
    """An EIP-191 signature over a revision's statement, by the namespace's owner or a member;
    checked when stored."""

    __tablename__ = "deployment_signatures"
    __table_args__ = (UniqueConstraint("deployment", "revision", "signer", name="uq_deployment_signature"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment: Mapped[str] = mapped_column(String(129), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    # EIP-55 checksummed address that the signature recovers to.
    signer: Mapped[str] = mapped_column(String(42))
    signature: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
