"""The authorization server's tables: registered clients, authorization codes, refresh tokens.

Codes and refresh tokens are stored as the sha256 of their secret, like API keys. Schema changes
go through Alembic (migration 0016, which also binds `tokens.resource`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from registry_server.orm import Base, UTCDateTime


class OAuthClient(Base):
    """A public client: registered through RFC 7591 (an `mcpzc_` id), or described by its client ID
    metadata document (the id is the document's https URL; the row is the document as last fetched,
    so codes and refresh tokens can name it). No secret: PKCE proves the code's holder."""

    __tablename__ = "oauth_clients"

    client_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    # JSON list of the exact redirect URIs an authorization request may name.
    redirect_uris: Mapped[str] = mapped_column(Text)
    grant_types: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OAuthCode(Base):
    """An authorization code: single use, short-lived, bound to its client, redirect URI, PKCE
    challenge, scopes and resource. Kept after its use until it expires, so a second use is seen
    (and revokes what the first earned)."""

    __tablename__ = "oauth_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("oauth_clients.client_id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    redirect_uri: Mapped[str] = mapped_column(String(512))
    challenge: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(128))
    resource: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # What the code earned, revoked if the code comes back: the access token and the refresh family.
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    family: Mapped[str | None] = mapped_column(String(64), nullable=True)


class OAuthRefreshToken(Base):
    """A refresh token. Each use rotates it (a new one, this one marked used); a used one presented
    again revokes its whole family (every refresh token and access token of that grant)."""

    __tablename__ = "oauth_refresh_tokens"

    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family: Mapped[str] = mapped_column(String(64), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("oauth_clients.client_id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    scopes: Mapped[str] = mapped_column(String(128))
    resource: Mapped[str] = mapped_column(String(512))
    access_token_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
