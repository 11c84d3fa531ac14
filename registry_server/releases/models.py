"""The release index's tables: agents, their releases and the releases' signatures."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry_server.orm import Base, UTCDateTime


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # "namespace/name"; a row is never deleted, so a name once used is never reused.
    name: Mapped[str] = mapped_column(String(129), unique=True)
    namespace: Mapped[str] = mapped_column(ForeignKey("namespaces.name"), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Grows with every change to the agent's releases; the index's ETag is made from it.
    serial: Mapped[int] = mapped_column(Integer, default=0)


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("agent_id", "version", name="uq_release_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    commit: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[str] = mapped_column(Text)
    dependencies: Mapped[str] = mapped_column(Text, default="{}")
    publisher_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime())
    yanked: Mapped[bool] = mapped_column(Boolean, default=False)
    yank_reason: Mapped[str] = mapped_column(Text, default="")


class ReleaseSignature(Base):
    """An EIP-191 signature over a release's `mcpz.keys.signing.ReleaseStatement`, checked when stored."""

    __tablename__ = "release_signatures"
    __table_args__ = (UniqueConstraint("release_id", "signer", name="uq_release_signer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    # EIP-55 checksummed address that the signature recovers to.
    signer: Mapped[str] = mapped_column(String(42))
    signature: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReleaseTools(Base):
    """A release's tool definitions (`tools/list`, canonical form of mcpz.tooldefs).

    Signed (`observed` false): recorded at publish, their digest is in the signed release statement.
    Observed (`observed` true): the release was published without them (`--no-tools`), and the first
    healthy replica's answer was recorded; shown, never trusted as signed.
    """

    __tablename__ = "release_tools"

    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), primary_key=True)
    tools: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(71))
    observed: Mapped[bool] = mapped_column(Boolean, default=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
