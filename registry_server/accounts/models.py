"""Accounts, namespaces and tokens; the tables of wallet sign-in: nonces, namespace members, key
rotations (release signatures are releases/models.py).

Schema changes go through Alembic. Every table shares `orm.Base`, so foreign keys to accounts,
namespaces and releases resolve.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry_server.orm import Base, UTCDateTime

ROLES = ("owner", "publisher")
"""Member roles: an `owner` member manages members and publishes; a `publisher` publishes.

The namespace's owner (`Namespace.owner_id`) is not a member row: it is the one account whose
wallet key nodes check releases against, and only it may transfer the namespace or rotate its key.
"""


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
    # The one resource (RFC 8707) a token from the OAuth flow is for: a gateway URL it alone may
    # be used at (registry_server/oauth/). None: a plain key, good wherever its scopes are.
    resource: Mapped[str | None] = mapped_column(String(512), nullable=True)


class AuthNonce(Base):
    """A sign-in nonce: issued by POST /v1/auth/nonce, deleted by the one login that uses it."""

    __tablename__ = "auth_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    # When the client said who signs in, only that address may use the nonce (else WrongSigner).
    address: Mapped[str | None] = mapped_column(String(42), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class NamespaceMember(Base):
    __tablename__ = "namespace_members"
    __table_args__ = (UniqueConstraint("namespace", "account_id", name="uq_namespace_member"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace: Mapped[str] = mapped_column(ForeignKey("namespaces.name"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class KeyRotation(Base):
    """A namespace's move from one owner key to another, signed by the old key.

    The rows of a namespace, by sequence, are the chain a node follows from the key it pinned to
    the current one; all rows together are the registry's published list of revoked keys.
    """

    __tablename__ = "key_rotations"
    __table_args__ = (UniqueConstraint("namespace", "sequence", name="uq_rotation_sequence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace: Mapped[str] = mapped_column(ForeignKey("namespaces.name"), index=True)
    old_address: Mapped[str] = mapped_column(String(42), index=True)
    new_address: Mapped[str] = mapped_column(String(42))
    sequence: Mapped[int] = mapped_column(Integer)
    # The canonical statement text as signed (its registry field is the public URL at the time).
    statement: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
