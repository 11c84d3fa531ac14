"""The JSON API: the version index (with a batch endpoint for resolvers), yanking, release signatures,
keys, whoami."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, Response
from packaging.version import Version
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from mcpz._version import __version__
from mcpz.errors import NotFoundError, UsageError
from mcpz.keys import signing
from mcpz.names import name_problem
from registry_server.accounts import service as accounts
from registry_server.accounts import tokens
from registry_server.accounts.auth import Forbidden, require
from registry_server.accounts.http import SCOPE_SCHEMA, Caller, public_url, signature_refusal
from registry_server.accounts.models import Account
from registry_server.accounts.namespaces import owner_address
from registry_server.accounts.service import Principal
from registry_server.http import State, agent_name
from registry_server.openapi import AGENT_SCHEMA, AgentPart, Namespace, VersionPath, errors
from registry_server.releases import signatures
from registry_server.releases.models import Agent, Release, ReleaseSignature
from registry_server.releases.service import set_yanked
from registry_server.releases.signatures import signatures_by_release
from registry_server.state import RegistryState

router = APIRouter()
MAX_BATCH = 1000
MAX_CLOSURE = 100_000
"""The most agents one `closure=1` answer may hold (the response is built in memory)."""


class SignatureOut(BaseModel):
    signer: str
    signature: str
    signed_at: datetime


class ReleaseOut(BaseModel):
    name: str
    version: str
    commit: str
    yanked: bool
    yank_reason: str = ""
    dependencies: dict[str, str]
    published_at: datetime
    publisher: str
    manifest_sha256: str = Field(default="", description="sha256 of mcpz.toml at the commit (signed over)")
    signature: str | None = Field(
        default=None, description="The namespace owner's signature if there is one, else the first kept"
    )
    signer: str | None = None
    signatures: list[SignatureOut] = Field(default_factory=list)


class AgentOut(BaseModel):
    name: str
    description: str
    latest: str | None = Field(description="Newest version that is not yanked nor a pre-release")
    versions: list[ReleaseOut]


class IndexVersion(BaseModel):
    version: str
    commit: str
    yanked: bool
    dependencies: dict[str, str]


class IndexOut(BaseModel):
    agents: dict[str, list[IndexVersion]]
    missing: list[str]
    closure: bool = Field(default=False, description="Present (true) when asked with closure=1")


class YankIn(BaseModel):
    reason: str = Field(default="", max_length=500)


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


def _latest(releases: list[Release]) -> str | None:
    candidates = [
        Version(r.version) for r in releases if not r.yanked and not Version(r.version).is_prerelease
    ]
    return str(max(candidates)) if candidates else None


def _release_out(
    agent: str,
    release: Release,
    publishers: dict[int, str],
    signed: tuple[dict[int, list[ReleaseSignature]], str | None] = ({}, None),
) -> ReleaseOut:
    rows, owner_address = signed
    signatures = [
        SignatureOut(signer=r.signer, signature=r.signature, signed_at=r.created_at)
        for r in rows.get(release.id, [])
    ]
    preferred = next(
        (s for s in signatures if s.signer == owner_address), signatures[0] if signatures else None
    )
    return ReleaseOut(
        name=agent,
        version=release.version,
        commit=release.commit,
        yanked=release.yanked,
        yank_reason=release.yank_reason,
        dependencies=json.loads(release.dependencies),
        published_at=release.published_at,
        publisher=publishers.get(release.publisher_id, ""),
        manifest_sha256=hashlib.sha256(release.manifest.encode("utf-8")).hexdigest(),
        signature=preferred.signature if preferred else None,
        signer=preferred.signer if preferred else None,
        signatures=signatures,
    )


def _load_agent(
    state: RegistryState, full: str
) -> tuple[Agent, list[Release], dict[int, str], tuple[dict[int, list[ReleaseSignature]], str | None]]:
    with state.db.session() as session:
        agent = session.scalar(select(Agent).where(Agent.name == full))
        if agent is None:
            raise NotFoundError(f"no agent {full} in this registry")
        releases = list(session.scalars(select(Release).where(Release.agent_id == agent.id)))
        ids = {r.publisher_id for r in releases}
        publishers = {
            k: v for k, v in session.execute(select(Account.id, Account.name).where(Account.id.in_(ids)))
        }
        signed = (
            signatures_by_release(session, [r.id for r in releases]),
            owner_address(session, agent.namespace),
        )
    releases.sort(key=lambda r: Version(r.version))
    return agent, releases, publishers, signed


@router.get("/healthz", tags=["meta"])
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get(
    "/v1/agents/{namespace}/{name}", response_model=AgentOut, tags=["index"], responses=errors(400, 404)
)
def get_agent(namespace: Namespace, name: AgentPart, state: State) -> AgentOut:
    full = agent_name(namespace, name)
    agent, releases, publishers, signed = _load_agent(state, full)
    return AgentOut(
        name=full,
        description=agent.description,
        latest=_latest(releases),
        versions=[_release_out(full, r, publishers, signed) for r in releases],
    )


@router.get(
    "/v1/agents/{namespace}/{name}/{version}",
    response_model=ReleaseOut,
    tags=["index"],
    responses=errors(400, 404),
)
def get_release(namespace: Namespace, name: AgentPart, version: VersionPath, state: State) -> ReleaseOut:
    full = agent_name(namespace, name)
    _agent, releases, publishers, signed = _load_agent(state, full)
    for release in releases:
        if release.version == version:
            return _release_out(full, release, publishers, signed)
    raise NotFoundError(f"{full} {version} is not published", hint=f"see `mcpz versions {full}`")


class IndexCache:
    """Serialised index entries by (agent, serial): an unchanged agent is never re-encoded."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, list[dict[str, Any]]]] = {}

    def refresh(self, session: Session, names: list[str]) -> dict[str, int]:
        """The serials of those of `names` that exist, with the entries of each brought up to date.

        Names never cached are loaded with their serials in one query (a cold cache, e.g. the
        first closure after a restart, costs one query per level of the graph, not two); cached
        ones cost a serials query, and a load only when stale."""
        serials: dict[str, int] = {}
        unseen = [n for n in names if n not in self.entries]
        seen = [n for n in names if n in self.entries]
        if seen:
            query = select(Agent.name, Agent.serial).where(Agent.name.in_(seen))
            serials.update((k, v) for k, v in session.execute(query))
        load = unseen + [n for n in serials if self.entries[n][0] != serials[n]]
        if load:
            rows = session.execute(
                select(
                    Agent.name,
                    Agent.serial,
                    Release.version,
                    Release.commit,
                    Release.yanked,
                    Release.dependencies,
                )
                .outerjoin(Release, Release.agent_id == Agent.id)
                .where(Agent.name.in_(load))
            ).all()
            fresh: dict[str, list[dict[str, Any]]] = {}
            for agent_name, serial, version, commit, yanked, deps in rows:
                serials[agent_name] = serial
                versions = fresh.setdefault(agent_name, [])
                if version is not None:  # an agent without releases is one row of NULLs
                    versions.append(
                        {
                            "version": version,
                            "commit": commit,
                            "yanked": yanked,
                            "dependencies": json.loads(deps),
                        }
                    )
            for agent_name, versions in fresh.items():
                versions.sort(key=lambda v: Version(v["version"]))
                self.entries[agent_name] = (serials[agent_name], versions)
        return serials


def _etag(kind: str, names: list[str], serials: dict[str, int]) -> str:
    # A batch's ETag is what it was before closures existed, so that caches stay warm across upgrades.
    text = "\n".join(f"{n}:{serials.get(n, -1)}" for n in names)
    return '"' + hashlib.sha256((kind + text).encode()).hexdigest()[:32] + '"'


def _closure(session: Session, cache: IndexCache, roots: list[str]) -> tuple[list[str], dict[str, int]]:
    """Every name reachable from `roots` through the dependencies of any version, and the serials
    of those that exist.

    Each step checks the serials of the names about to be followed (refreshing stale entries),
    together with every name the cached entries predict beyond them, then follows the checked
    entries only: with a warm cache the whole closure costs one query, with a cold one a query
    per level of the graph, and every name is followed once.
    """
    reached = set(roots)
    checked: set[str] = set()
    serials: dict[str, int] = {}
    pending = list(roots)
    while pending:
        predicted = set(pending)
        stack = list(pending)
        while stack:
            for entry in cache.entries.get(stack.pop(), (0, []))[1]:
                for dep in entry["dependencies"]:
                    if dep not in predicted and dep not in checked:
                        predicted.add(dep)
                        stack.append(dep)
        todo = sorted(predicted - checked)
        for start in range(0, len(todo), MAX_BATCH):  # bounded IN lists
            serials.update(cache.refresh(session, todo[start : start + MAX_BATCH]))
        checked.update(todo)
        following: list[str] = []
        queue = list(pending)
        while queue:
            name = queue.pop()
            if name not in serials:
                continue  # does not exist: listed as missing
            for entry in cache.entries[name][1]:
                for dep in entry["dependencies"]:
                    if dep not in reached:
                        reached.add(dep)
                        (queue if dep in checked else following).append(dep)
        if len(reached) > MAX_CLOSURE:
            raise UsageError(
                f"the closure of these roots holds more than {MAX_CLOSURE} agents",
                hint="ask for the names in batches (`name=` without `closure=1`)",
            )
        pending = following
    return sorted(reached), serials


@router.get("/v1/index", response_model=IndexOut, tags=["index"], responses=errors(400, 404, 422))
def batch_index(
    request: Request,
    state: State,
    name: Annotated[
        list[str],
        Query(
            description="Agent names; repeat the parameter",
            json_schema_extra={"items": {"type": "string", **AGENT_SCHEMA}, "maxItems": MAX_BATCH},
        ),
    ],
    closure: Annotated[
        bool,
        Query(
            description="Treat the names as roots and answer for every agent reachable from them "
            "through any version's dependencies, in one response"
        ),
    ] = False,
) -> Response:
    """Every version of each named agent with its dependencies, yanked flag and commit id.

    With `closure=1` the names are roots: the answer holds the whole dependency closure (a root
    that does not exist is a 404; a dependency that does not exist is listed in `missing`), so a
    resolver with an empty cache needs one request rather than one per level of the graph.

    Sends an ETag; a request with a matching If-None-Match costs a 304 and no body.
    """
    names = sorted(set(name))
    if len(names) > MAX_BATCH:
        raise UsageError(f"at most {MAX_BATCH} names per request")
    for full in names:
        if name_problem(full):
            raise UsageError(f'agent name "{full}" {name_problem(full)}')
    cache: IndexCache = request.app.state.index_cache
    with state.db.session() as session:
        if closure:
            names, serials = _closure(session, cache, names)
            unknown = [n for n in sorted(set(name)) if n not in serials]
            if unknown:
                raise NotFoundError(f"no agent named {', '.join(unknown[:10])}")
            etag = _etag("closure\n", names, serials)
        else:
            serials = cache.refresh(session, names)
            etag = _etag("", names, serials)
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    body: dict[str, Any] = {
        "agents": {n: cache.entries[n][1] for n in names if n in serials},
        "missing": [n for n in names if n not in serials],
    }
    if closure:
        body["closure"] = True  # tells a client this registry walked it (an older one ignores the option)
    return JSONResponse(body, headers={"ETag": etag, "Cache-Control": "no-cache"})


def _yank(
    state: RegistryState,
    principal: Principal | None,
    namespace: str,
    name: str,
    version: str,
    yanked: bool,
    reason: str,
) -> ReleaseOut:
    full = agent_name(namespace, name)
    require(principal, "publish", namespace, db=state.db)
    with state.db.session() as session:
        set_yanked(session, full, version, yanked, reason)
    return get_release(namespace, name, version, state)


@router.post(
    "/v1/agents/{namespace}/{name}/{version}/yank",
    response_model=ReleaseOut,
    tags=["index"],
    responses=errors(400, 401, 403, 404, 413, 422),
)
def yank(
    namespace: Namespace,
    name: AgentPart,
    version: VersionPath,
    state: State,
    principal: Caller,
    body: Annotated[YankIn | None, Body()] = None,
) -> ReleaseOut:
    """Skip this version in new resolutions; exact locks still install it."""
    return _yank(state, principal, namespace, name, version, True, body.reason if body else "")


@router.delete(
    "/v1/agents/{namespace}/{name}/{version}/yank",
    response_model=ReleaseOut,
    tags=["index"],
    responses=errors(400, 401, 403, 404),
)
def unyank(
    namespace: Namespace, name: AgentPart, version: VersionPath, state: State, principal: Caller
) -> ReleaseOut:
    return _yank(state, principal, namespace, name, version, False, "")


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
        account = session.get(Account, principal.account_id)
        assert account is not None
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


class SignatureIn(BaseModel):
    signature: str = Field(max_length=4096)


@router.post(
    "/v1/agents/{namespace}/{name}/{version}/signature",
    tags=["index"],
    responses=errors(400, 401, 403, 404, 409, 413, 422),
)
def sign_release(
    namespace: Namespace,
    name: AgentPart,
    version: VersionPath,
    body: Annotated[SignatureIn, Body()],
    state: State,
    principal: Caller,
) -> Response:
    """Attach a signature over the release's statement, by the namespace's owner or a member."""
    full = agent_name(namespace, name)
    require(principal, "publish", namespace, db=state.db)
    try:
        with state.db.session() as session:
            signatures.sign_release(session, public_url(state.settings), full, version, body.signature)
    except signing.SignatureError as e:
        if isinstance(e, signing.UnexpectedSigner):
            e = signing.UnexpectedSigner(
                f"{e.message}: it is neither the owner nor a member of {namespace}"
                f" (or the statement signed is not {full} {version} on {public_url(state.settings)})",
                signer=e.signer,
                hint=e.hint,
            )
        return signature_refusal(e)
    release = get_release(namespace, name, version, state)
    return JSONResponse(release.model_dump(mode="json"))
