"""The registry's metadata tables (SQLAlchemy 2). Schema changes go through Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str | None] = mapped_column(String(42), unique=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Namespace(Base):
    __tablename__ = "namespaces"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    # sha256 of the whole secret: the secret itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the secret, enough for a person to tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128), default="")
    scopes: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


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
