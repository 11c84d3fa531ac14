"""Wallet sign-in (EIP-4361), namespaces and members, key rotations, API keys.

    POST   /v1/auth/nonce                               a single-use nonce, 5 minutes
    POST   /v1/auth/login                               {message, signature} -> session token
    POST   /v1/namespaces                               claim a namespace
    GET    /v1/namespaces/{ns}                          owner, members, key sequence
    PUT    /v1/namespaces/{ns}/members/{account}        {role}: add a member or change its role
    DELETE /v1/namespaces/{ns}/members/{account}
    POST   /v1/namespaces/{ns}/transfer                 {account, signature}: a new owner
    GET    /v1/namespaces/{ns}/keys                     owner key and signed rotations (for nodes)
    POST   /v1/account/rotate-key                       move the caller's wallet key, per namespace
    GET    /v1/revoked-keys                             every rotated-away key, signed by itself
    GET    /v1/whoami                                   the caller's account, namespaces, scopes
    POST   /v1/keys, GET /v1/keys, DELETE /v1/keys/{id} the caller's API keys

(Signing a release, POST /v1/agents/{ns}/{name}/{version}/signature, is releases/routes.py.)

A refused sign-in or signature answers with its stable code in the JSON body
(`{"error": {"code": "wrong_domain", "message": ..., "hint": ..., "request_id": ...}}`):
401 for sign-in refusals, 403 for a signature by a key that may not sign, 400 for one that is
not a signature at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mcpz.errors import NetworkError, UsageError
from mcpz.keys import signing, siwe
from registry_server.accounts import namespaces, signin, tokens
from registry_server.accounts import service as accounts
from registry_server.accounts.auth import Forbidden, require
from registry_server.accounts.http import ROLE_SCHEMA, SCOPE_SCHEMA, Caller, signature_refusal
from registry_server.accounts.models import Account, KeyRotation
from registry_server.http import State, error_response
from registry_server.openapi import PART_SCHEMA, Namespace, errors
from registry_server.orm import utcnow
from registry_server.rate_limit import RateLimited, RateLimiter
from registry_server.settings import RegistrySettings, public_url

router = APIRouter()
# The logger keeps its name from before the domain packages, so logging configs still match.
log = logging.getLogger("registry_server.api_auth")

LOGIN_PATH = "/v1/auth/login"


def login_uri(settings: RegistrySettings) -> str:
    return public_url(settings) + LOGIN_PATH


# ----------------------------------------------------------------------------------- sign-in


class NonceIn(BaseModel):
    address: str | None = Field(
        default=None,
        description="The wallet that will sign in; then only it may use the nonce",
        json_schema_extra={"pattern": "^0x[0-9a-fA-F]{40}$"},
    )


class NonceOut(BaseModel):
    nonce: str
    domain: str = Field(description="The authority (host[:port]) a sign-in message must name")
    uri: str = Field(description="The URI a sign-in message must carry")
    chain_id: int
    expires_at: datetime


class LoginIn(BaseModel):
    message: str = Field(max_length=siwe.MAX_MESSAGE_CHARS)
    signature: str = Field(max_length=4096)


class LoginOut(BaseModel):
    token: str = Field(description="The session token; shown once, stored only as a hash")
    account: str
    address: str
    namespaces: list[str]
    scopes: list[str]
    expires_at: datetime | None


def nonce_limiter(settings: RegistrySettings) -> RateLimiter:
    return RateLimiter(settings.nonce_rate_limit, settings.nonce_rate_window)


@router.post("/v1/auth/nonce", response_model=NonceOut, tags=["auth"], responses=errors(400, 413, 422, 429))
def issue_nonce(request: Request, state: State, body: Annotated[NonceIn | None, Body()] = None) -> NonceOut:
    """A fresh single-use nonce for a Sign-In with Ethereum message, optionally for one address.

    Rate-limited per client address (429 with Retry-After): each nonce is a row until it expires.
    """
    limiter: RateLimiter = request.app.state.nonce_limiter
    wait = limiter.hit(request.client.host if request.client else "", time.monotonic())
    if wait:
        raise RateLimited("too many sign-in nonces requested from this address", wait)
    moment = utcnow()
    address = namespaces.checksum(body.address) if body is not None and body.address else None
    with state.db.session() as session:
        nonce = signin.issue_nonce(session, address, moment)
    base = public_url(state.settings)
    return NonceOut(
        nonce=nonce,
        domain=urlsplit(base).netloc,
        uri=login_uri(state.settings),
        chain_id=state.settings.chain_id,
        expires_at=moment + signin.NONCE_LIFETIME,
    )


@router.post("/v1/auth/login", response_model=LoginOut, tags=["auth"], responses=errors(400, 401, 413, 422))
def login(body: LoginIn, state: State) -> Response | LoginOut:
    """Sign in with a signed EIP-4361 message; the first sign-in creates the account."""
    settings = state.settings
    contract_check = signin.eip1271_check(settings.chain_rpc) if settings.chain_rpc else None
    try:
        with state.db.session() as session:
            done = signin.sign_in(
                session,
                body.message,
                body.signature,
                registry=public_url(settings),
                uri=login_uri(settings),
                chain_id=settings.chain_id,
                now=utcnow(),
                contract_check=contract_check,
            )
    except siwe.SiweError as e:
        hint = e.hint
        if contract_check is None and isinstance(e, siwe.TamperedMessage | siwe.MalformedSignature):
            hint = (
                f"{hint + '; ' if hint else ''}contract-wallet (EIP-1271) signatures are refused: "
                "this registry has no chain RPC configured (MCPZ_REGISTRY_CHAIN_RPC)"
            )
        log.info("sign-in refused", extra={"code": e.code})
        return error_response(401, e.message, hint, code=e.code)
    except NetworkError as e:
        return error_response(503, e.message, e.hint, code="chain_unavailable")
    log.info("signed in", extra={"account": done.account})
    return LoginOut(
        token=done.secret,
        account=done.account,
        address=done.address,
        namespaces=done.namespaces,
        scopes=list(done.scopes),
        expires_at=done.expires_at,
    )


# -------------------------------------------------------------------------------- namespaces


class NamespaceIn(BaseModel):
    name: str = Field(max_length=64, json_schema_extra=PART_SCHEMA)


class MemberOut(BaseModel):
    account: str
    address: str | None
    role: str = Field(json_schema_extra=ROLE_SCHEMA)


class NamespaceOut(BaseModel):
    name: str
    owner: str
    owner_address: str | None
    members: list[MemberOut] = Field(description="The owner first, then the members by name")
    key_sequence: int = Field(description="Rotations of the owner key so far")


class MemberIn(BaseModel):
    role: str = Field(description="owner or publisher", json_schema_extra=ROLE_SCHEMA)


class TransferIn(BaseModel):
    account: str = Field(description="The new owner: an account name or a wallet address")
    signature: str | None = Field(
        default=None, description="The key-rotation statement (old owner key -> new), signed by the old key"
    )


class RotationOut(BaseModel):
    namespace: str
    old_address: str
    new_address: str
    sequence: int
    statement: str = Field(description="The canonical mcpz.keys.signing.KeyRotationStatement text")
    signature: str = Field(description="By old_address")
    created_at: datetime


class KeysOut(BaseModel):
    registry: str
    namespace: str
    owner_address: str | None
    rotations: list[RotationOut]


class RotateIn(BaseModel):
    new_address: str
    rotations: dict[str, tuple[str, str]] = Field(
        description="namespace -> (old key's signature, new key's signature) of its rotation statement"
    )


class RotateOut(BaseModel):
    account: str
    address: str
    rotations: list[RotationOut]


class RevokedKeyOut(BaseModel):
    address: str
    namespace: str
    replaced_by: str
    sequence: int
    statement: str
    signature: str = Field(description="By the revoked key itself")
    revoked_at: datetime


class RevokedOut(BaseModel):
    registry: str
    keys: list[RevokedKeyOut]


def _rotation_out(row: KeyRotation) -> RotationOut:
    return RotationOut(**namespaces.rotation_document(row))


def _namespace_out(state: Any, name: str) -> NamespaceOut:
    with state.db.session() as session:
        found = namespaces.members(session, name)
        return NamespaceOut(
            name=name,
            owner=found[0].account,
            owner_address=found[0].address,
            members=[MemberOut(account=m.account, address=m.address, role=m.role) for m in found],
            key_sequence=namespaces.key_sequence(session, name),
        )


def _acting(state: Any, principal: Any, scope: str = "admin") -> Callable[[Any], Account]:
    principal = require(principal, scope, db=state.db)
    return lambda session: accounts.account_by_id(session, principal.account_id)


@router.post(
    "/v1/namespaces",
    response_model=NamespaceOut,
    status_code=201,
    tags=["namespaces"],
    responses=errors(400, 401, 403, 409, 413, 422),
)
def create_namespace(body: NamespaceIn, state: State, principal: Caller) -> NamespaceOut:
    """Claim a namespace for the calling account."""
    account_in = _acting(state, principal)
    with state.db.session() as session:
        namespaces.create_namespace(session, account_in(session), body.name)
    return _namespace_out(state, body.name)


@router.get(
    "/v1/namespaces/{namespace}", response_model=NamespaceOut, tags=["namespaces"], responses=errors(400, 404)
)
def get_namespace(namespace: Namespace, state: State) -> NamespaceOut:
    return _namespace_out(state, namespace)


@router.put(
    "/v1/namespaces/{namespace}/members/{account}",
    response_model=NamespaceOut,
    tags=["namespaces"],
    responses=errors(400, 401, 403, 404, 409, 413, 422),
)
def put_member(
    namespace: Namespace, account: str, body: MemberIn, state: State, principal: Caller
) -> NamespaceOut:
    account_in = _acting(state, principal)
    with state.db.session() as session:
        namespaces.set_member(session, account_in(session), namespace, account, body.role)
    return _namespace_out(state, namespace)


@router.delete(
    "/v1/namespaces/{namespace}/members/{account}",
    response_model=NamespaceOut,
    tags=["namespaces"],
    responses=errors(400, 401, 403, 404, 409),
)
def delete_member(namespace: Namespace, account: str, state: State, principal: Caller) -> NamespaceOut:
    account_in = _acting(state, principal)
    with state.db.session() as session:
        namespaces.remove_member(session, account_in(session), namespace, account)
    return _namespace_out(state, namespace)


@router.post(
    "/v1/namespaces/{namespace}/transfer",
    response_model=NamespaceOut,
    tags=["namespaces"],
    responses=errors(400, 401, 403, 404, 409, 413, 422),
)
def transfer_namespace(
    namespace: Namespace, body: TransferIn, state: State, principal: Caller
) -> Response | NamespaceOut:
    account_in = _acting(state, principal)
    try:
        with state.db.session() as session:
            namespaces.transfer(
                session,
                account_in(session),
                namespace,
                body.account,
                body.signature,
                public_url(state.settings),
            )
    except signing.SignatureError as e:
        return signature_refusal(e)
    return _namespace_out(state, namespace)


@router.get(
    "/v1/namespaces/{namespace}/keys", response_model=KeysOut, tags=["namespaces"], responses=errors(400, 404)
)
def namespace_keys(namespace: Namespace, state: State) -> KeysOut:
    """The owner's key and the chain of signed rotations that led to it: what nodes check."""
    with state.db.session() as session:
        return KeysOut(**namespaces.keys_document(session, namespace, public_url(state.settings)))


@router.post(
    "/v1/account/rotate-key",
    response_model=RotateOut,
    tags=["namespaces"],
    responses=errors(400, 401, 403, 409, 413, 422),
)
def rotate_key(body: RotateIn, state: State, principal: Caller) -> Response | RotateOut:
    """Move the calling account to a new wallet key; the old key becomes revoked."""
    account_in = _acting(state, principal)
    try:
        with state.db.session() as session:
            account = account_in(session)
            rows = namespaces.rotate_account_key(
                session, account, body.new_address, body.rotations, public_url(state.settings)
            )
            assert account.address is not None
            return RotateOut(
                account=account.name, address=account.address, rotations=[_rotation_out(r) for r in rows]
            )
    except signing.SignatureError as e:
        return signature_refusal(e)


@router.get("/v1/revoked-keys", response_model=RevokedOut, tags=["namespaces"])
def revoked_keys(state: State) -> RevokedOut:
    """Every key rotated away from, each entry signed by that key (the rotation statement)."""
    with state.db.session() as session:
        rows = namespaces.rotations(session)
    return RevokedOut(
        registry=public_url(state.settings),
        keys=[
            RevokedKeyOut(
                address=r.old_address,
                namespace=r.namespace,
                replaced_by=r.new_address,
                sequence=r.sequence,
                statement=r.statement,
                signature=r.signature,
                revoked_at=r.created_at,
            )
            for r in rows
        ],
    )


# ------------------------------------------------------------------------------ keys, whoami


class KeyIn(BaseModel):
    name: str = Field(default="", max_length=128)
    scopes: list[str] = Field(json_schema_extra={**SCOPE_SCHEMA, "minItems": 1})
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class KeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    scopes: list[str] = Field(json_schema_extra=SCOPE_SCHEMA)
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool


class NewKeyOut(KeyOut):
    token: str = Field(description="The secret; shown once, never stored by the registry")


class WhoAmI(BaseModel):
    account: str
    namespaces: list[str]
    scopes: list[str] = Field(json_schema_extra=SCOPE_SCHEMA)
    expires_at: datetime | None


@router.get("/v1/whoami", response_model=WhoAmI, tags=["accounts"], responses=errors(401))
def whoami(state: State, principal: Caller) -> WhoAmI:
    if principal is None:
        require(principal, "read", db=state.db)
    assert principal is not None
    with state.db.session() as session:
        namespaces = accounts.namespaces_of(session, principal.account_id)
    return WhoAmI(
        account=principal.account_name,
        namespaces=namespaces,
        scopes=[s for s in tokens.SCOPES if s in principal.scopes],
        expires_at=principal.expires_at,
    )


def _key_out(token: Any) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "scopes": token.scopes.split(","),
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
        "revoked": token.revoked_at is not None,
    }


@router.post(
    "/v1/keys",
    response_model=NewKeyOut,
    status_code=201,
    tags=["accounts"],
    responses=errors(400, 401, 403, 413, 422),
)
def create_key(body: KeyIn, state: State, principal: Caller) -> NewKeyOut:
    """A new API key for the calling account, with at most the caller's own scopes."""
    principal = require(principal, "admin", db=state.db)
    try:
        scopes = tokens.parse_scopes(body.scopes)
    except ValueError as e:
        raise UsageError(str(e)) from None
    beyond = tokens.beyond_grant(principal.scopes, scopes)
    if beyond:
        raise Forbidden(f"a key cannot have scopes its creator lacks: {', '.join(sorted(beyond))}")
    days = body.expires_in_days or state.settings.default_token_days or None
    with state.db.session() as session:
        account = accounts.account_by_id(session, principal.account_id)
        token, secret = accounts.create_token(
            session, account, scopes, expires_in=timedelta(days=days) if days else None, name=body.name
        )
        out = _key_out(token)
    return NewKeyOut(token=secret, **out)


@router.get("/v1/keys", response_model=list[KeyOut], tags=["accounts"], responses=errors(401, 403))
def list_keys(state: State, principal: Caller) -> list[KeyOut]:
    principal = require(principal, "admin", db=state.db)
    with state.db.session() as session:
        return [KeyOut(**_key_out(t)) for t in accounts.list_tokens(session, principal.account_id)]


@router.delete(
    "/v1/keys/{key_id}", response_model=KeyOut, tags=["accounts"], responses=errors(401, 403, 404, 422)
)
def revoke_key(key_id: int, state: State, principal: Caller) -> KeyOut:
    principal = require(principal, "admin", db=state.db)
    with state.db.session() as session:
        return KeyOut(**_key_out(accounts.revoke_token(session, principal.account_id, key_id)))
