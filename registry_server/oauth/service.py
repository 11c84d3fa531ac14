"""The authorization server's operations: register a client, issue an authorization code for a
signed-in account, exchange it for tokens, refresh them with rotation.

Access tokens are mcpz tokens (`accounts.service.create_token`, stored hashed) with the scopes the
grant maps to and the `resource` they are bound to; the gateway accepts them only there. Each
function runs in the caller's session and raises `rules.OAuthError` with the RFC 6749 error code.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, CursorResult, delete, select, update
from sqlalchemy.orm import Session

from registry_server.accounts import tokens
from registry_server.accounts.models import Token
from registry_server.accounts.service import account_by_id, create_token
from registry_server.oauth import rules
from registry_server.oauth.documents import ClientDocuments
from registry_server.oauth.models import OAuthClient, OAuthCode, OAuthRefreshToken
from registry_server.oauth.rules import OAuthError
from registry_server.orm import utcnow

CODE_LIFETIME = timedelta(minutes=2)
ACCESS_LIFETIME = timedelta(hours=1)
REFRESH_LIFETIME = timedelta(days=30)
CLIENT_PREFIX = "mcpzc_"
CODE_PREFIX = "mcpzac_"
REFRESH_PREFIX = "mcpzrt_"


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    created_at: datetime

    def registration(self) -> dict[str, object]:
        """The client information response (RFC 7591 3.2.1)."""
        return {
            "client_id": self.client_id,
            "client_id_issued_at": int(self.created_at.timestamp()),
            "client_name": self.name,
            "redirect_uris": list(self.redirect_uris),
            "grant_types": list(self.grant_types),
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "application_type": "native",
        }


@dataclass(frozen=True)
class Grant:
    """What the token endpoint answers (RFC 6749 5.1); the secrets are shown once."""

    access_token: str
    expires_in: int
    refresh_token: str | None
    scope: str

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


def _client(row: OAuthClient) -> Client:
    return Client(
        client_id=row.client_id,
        name=row.name,
        redirect_uris=tuple(json.loads(row.redirect_uris)),
        grant_types=tuple(row.grant_types.split(",")),
        created_at=row.created_at,
    )


def register_client(session: Session, body: object, now: datetime) -> Client:
    name, uris, grants = rules.registration(body)
    row = OAuthClient(
        client_id=CLIENT_PREFIX + secrets.token_urlsafe(18),
        name=name,
        redirect_uris=json.dumps(uris),
        grant_types=",".join(grants),
        created_at=now,
    )
    session.add(row)
    session.flush()
    return _client(row)


def find_client(session: Session, client_id: str | None, documents: ClientDocuments) -> Client | None:
    """The client of `client_id`: a registered one, or the one its metadata document describes (an
    https URL: fetched through `documents`, and its row updated to match). None: no such client;
    OAuthError invalid_client: a document that cannot be fetched or used."""
    if not client_id or len(client_id) > rules.MAX_URI:
        return None
    if rules.is_document_client_id(client_id):
        # Fetched before the first query: no database connection is held while the network answers.
        name, uris, grants = documents.get(client_id)
        row = session.get(OAuthClient, client_id)
        if row is None:
            row = OAuthClient(client_id=client_id, created_at=utcnow())
            session.add(row)
        row.name, row.redirect_uris, row.grant_types = name, json.dumps(uris), ",".join(grants)
        session.flush()
        return _client(row)
    if client_id.startswith("https://"):
        return None  # a URL that is not a document's (no path, a fragment): never a registered id
    row = session.get(OAuthClient, client_id)
    return _client(row) if row is not None else None


def issue_code(
    session: Session,
    client: Client,
    *,
    account_id: int,
    redirect_uri: str,
    challenge: str,
    scopes: tuple[str, ...],
    resource: str,
    now: datetime,
) -> str:
    """A fresh authorization code for the account (it approved the request), usable once within
    CODE_LIFETIME; codes long expired are dropped here, so they never pile up."""
    session.execute(delete(OAuthCode).where(OAuthCode.expires_at <= now - timedelta(hours=1)))
    secret = CODE_PREFIX + secrets.token_urlsafe(32)
    session.add(
        OAuthCode(
            code_hash=tokens.hash_secret(secret),
            client_id=client.client_id,
            account_id=account_id,
            redirect_uri=redirect_uri,
            challenge=challenge,
            scopes=" ".join(scopes),
            resource=resource,
            created_at=now,
            expires_at=now + CODE_LIFETIME,
        )
    )
    return secret


def exchange_code(
    session: Session,
    client: Client,
    *,
    code: str,
    redirect_uri: str | None,
    verifier: str | None,
    resource: str | None,
    now: datetime,
) -> Grant | OAuthError:
    """Tokens for an authorization code (RFC 6749 4.1.3, RFC 7636 4.6, RFC 8707 2.2); OAuthError
    raised for a refusal. A code used before revokes what its first use earned (RFC 6749 4.1.2):
    that refusal is returned, not raised, so the caller's transaction commits the revocation."""
    row = session.get(OAuthCode, tokens.hash_secret(code))
    if row is None or row.expires_at <= now:
        raise OAuthError("invalid_grant", "the authorization code is unknown or expired")
    if row.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the authorization code was issued to another client")
    if row.used_at is not None:
        _revoke_grant(session, row.token_id, row.family, now)
        return OAuthError("invalid_grant", "the authorization code was used already; its tokens are revoked")
    if redirect_uri != row.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request's")
    if not verifier or not rules.verifier_matches(verifier, row.challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge (PKCE)")
    if resource is not None and _canonical(resource) != row.resource:
        raise OAuthError("invalid_target", "resource differs from the authorization request's")
    _use_once(session, OAuthCode, OAuthCode.code_hash == row.code_hash, now, "the authorization code")
    grant, token_id, family = _grant(
        session, client, row.account_id, tuple(row.scopes.split()), row.resource, now, family=None
    )
    row.token_id, row.family = token_id, family
    return grant


def refresh(
    session: Session,
    client: Client,
    *,
    refresh_token: str,
    scope: str | None,
    resource: str | None,
    now: datetime,
) -> Grant | OAuthError:
    """New tokens for a refresh token, which is used up (rotation); presenting a used one again
    revokes its whole family, as a stolen copy is the likely reason (OAuth 2.1 4.3.1). Refusals
    are raised, except that one, returned so the caller's transaction commits the revocation."""
    row = session.get(OAuthRefreshToken, tokens.hash_secret(refresh_token))
    if row is None or row.expires_at <= now:
        raise OAuthError("invalid_grant", "the refresh token is unknown or expired")
    if row.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the refresh token was issued to another client")
    if row.used_at is not None:
        _revoke_grant(session, None, row.family, now)
        return OAuthError("invalid_grant", "the refresh token was used already; its grant is revoked")
    earlier = session.get(Token, row.access_token_id)
    if earlier is None or earlier.revoked_at is not None:
        # Its key was revoked (the API keys page, `mcpz keys revoke`): that ends the grant.
        raise OAuthError("invalid_grant", "this grant's access was revoked; authorize again")
    granted = tuple(row.scopes.split())
    scopes = granted if scope is None else rules.parse_scope(scope)
    if not set(scopes) <= set(granted):
        raise OAuthError("invalid_scope", f"a refresh may only narrow the grant ({' '.join(granted)})")
    if resource is not None and _canonical(resource) != row.resource:
        raise OAuthError("invalid_target", "resource differs from the grant's")
    _use_once(
        session, OAuthRefreshToken, OAuthRefreshToken.secret_hash == row.secret_hash, now, "the refresh token"
    )
    grant, _token_id, _family = _grant(
        session, client, row.account_id, scopes, row.resource, now, family=row.family
    )
    return grant


def _use_once(
    session: Session,
    model: type[OAuthCode] | type[OAuthRefreshToken],
    which: ColumnElement[bool],
    now: datetime,
    what: str,
) -> None:
    """Mark the row `which` used; one use only, even when two requests race: the row is claimed
    by whoever sets used_at, and the other is refused."""
    claimed = session.execute(update(model).where(which, model.used_at.is_(None)).values(used_at=now))
    if not isinstance(claimed, CursorResult) or claimed.rowcount != 1:
        raise OAuthError("invalid_grant", f"{what} was used already")


def _grant(
    session: Session,
    client: Client,
    account_id: int,
    scopes: tuple[str, ...],
    resource: str,
    now: datetime,
    *,
    family: str | None,
) -> tuple[Grant, int, str]:
    # Refresh tokens past their lifetime are dropped here, so they never pile up.
    session.execute(delete(OAuthRefreshToken).where(OAuthRefreshToken.expires_at <= now))
    account = account_by_id(session, account_id)
    token, secret = create_token(
        session,
        account,
        rules.mcpz_scopes(scopes),
        expires_in=ACCESS_LIFETIME,
        name=f"oauth: {client.name}"[:128],
        resource=resource,
    )
    family = family or secrets.token_hex(16)
    refresh_secret: str | None = None
    if "refresh_token" in client.grant_types:
        refresh_secret = REFRESH_PREFIX + secrets.token_urlsafe(32)
        session.add(
            OAuthRefreshToken(
                secret_hash=tokens.hash_secret(refresh_secret),
                family=family,
                client_id=client.client_id,
                account_id=account_id,
                scopes=" ".join(scopes),
                resource=resource,
                access_token_id=token.id,
                created_at=now,
                expires_at=now + REFRESH_LIFETIME,
            )
        )
    grant = Grant(
        access_token=secret,
        expires_in=int(ACCESS_LIFETIME.total_seconds()),
        refresh_token=refresh_secret,
        scope=" ".join(scopes),
    )
    return grant, token.id, family


def _revoke_grant(session: Session, token_id: int | None, family: str | None, now: datetime) -> None:
    """Revoke an access token and every token of a refresh family (a replayed code or refresh token)."""
    ids = {token_id} if token_id is not None else set()
    if family is not None:
        rows = session.scalars(select(OAuthRefreshToken).where(OAuthRefreshToken.family == family)).all()
        for row in rows:
            ids.add(row.access_token_id)
            if row.used_at is None:
                row.used_at = now
    if ids:
        session.execute(
            update(Token).where(Token.id.in_(ids), Token.revoked_at.is_(None)).values(revoked_at=now)
        )


def _canonical(resource: str) -> str:
    try:
        return tokens.canonical_resource(resource)
    except ValueError as e:
        raise OAuthError("invalid_target", f"resource {resource!r} is not usable: {e}") from None
