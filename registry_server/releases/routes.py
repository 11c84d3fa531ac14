"""The JSON API of releases: the version index (with a batch endpoint for resolvers), yanking,
release signatures. (Keys and whoami are the accounts domain's: accounts/routes.py.)"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, Response
from packaging.version import Version
from pydantic import BaseModel, Field

from mcpz import __version__
from mcpz.errors import NotFoundError, UsageError
from mcpz.keys import signing
from mcpz.tooldefs import MAX_TOOLS
from registry_server.accounts.auth import require
from registry_server.accounts.http import Caller, signature_refusal
from registry_server.accounts.service import Principal
from registry_server.http import State, agent_name, checked_agent_name
from registry_server.openapi import AGENT_SCHEMA, AgentPart, Namespace, VersionPath, errors
from registry_server.releases import index, signatures
from registry_server.releases.models import Release
from registry_server.releases.service import AgentReleases, agent_releases, set_yanked
from registry_server.releases.tools import tools_for_releases
from registry_server.settings import public_url
from registry_server.state import RegistryState

router = APIRouter()
MAX_BATCH = index.MAX_BATCH


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
    tools_digest: str | None = Field(
        default=None,
        description="Digest of the tool definitions signed with the release (the `tools` line of its "
        "statement); null when none were signed",
    )


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


def _latest(releases: list[Release]) -> str | None:
    candidates = [
        Version(r.version) for r in releases if not r.yanked and not Version(r.version).is_prerelease
    ]
    return str(max(candidates)) if candidates else None


def _release_out(listing: AgentReleases, release: Release, tools: dict[int, str] | None = None) -> ReleaseOut:
    signatures = [
        SignatureOut(signer=r.signer, signature=r.signature, signed_at=r.created_at)
        for r in listing.signatures.get(release.id, [])
    ]
    preferred = next(
        (s for s in signatures if s.signer == listing.owner_address), signatures[0] if signatures else None
    )
    return ReleaseOut(
        name=listing.agent.name,
        version=release.version,
        commit=release.commit,
        yanked=release.yanked,
        yank_reason=release.yank_reason,
        dependencies=json.loads(release.dependencies),
        published_at=release.published_at,
        publisher=listing.publishers.get(release.publisher_id, ""),
        manifest_sha256=hashlib.sha256(release.manifest.encode("utf-8")).hexdigest(),
        signature=preferred.signature if preferred else None,
        signer=preferred.signer if preferred else None,
        signatures=signatures,
        tools_digest=(tools or {}).get(release.id),
    )


def _signed_tools(state: RegistryState, releases: list[Release]) -> dict[int, str]:
    with state.db.session() as session:
        found = tools_for_releases(session, [r.id for r in releases])
    return {release_id: t.digest for release_id, t in found.items() if not t.observed}


@router.get("/healthz", tags=["meta"])
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get(
    "/v1/agents/{namespace}/{name}", response_model=AgentOut, tags=["index"], responses=errors(400, 404)
)
def get_agent(namespace: Namespace, name: AgentPart, state: State) -> AgentOut:
    full = agent_name(namespace, name)
    with state.db.session() as session:
        listing = agent_releases(session, full)
    tools = _signed_tools(state, listing.releases)
    return AgentOut(
        name=full,
        description=listing.agent.description,
        latest=_latest(listing.releases),
        versions=[_release_out(listing, r, tools) for r in listing.releases],
    )


@router.get(
    "/v1/agents/{namespace}/{name}/{version}",
    response_model=ReleaseOut,
    tags=["index"],
    responses=errors(400, 404),
)
def get_release(namespace: Namespace, name: AgentPart, version: VersionPath, state: State) -> ReleaseOut:
    full = agent_name(namespace, name)
    with state.db.session() as session:
        listing = agent_releases(session, full)
    for release in listing.releases:
        if release.version == version:
            return _release_out(listing, release, _signed_tools(state, [release]))
    raise NotFoundError(f"{full} {version} is not published", hint=f"see `mcpz versions {full}`")


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
        checked_agent_name(full)
    cache: index.IndexCache = request.app.state.index_cache
    with state.db.session() as session:
        if closure:
            names, serials = index.closure(session, cache, names)
            unknown = [n for n in sorted(set(name)) if n not in serials]
            if unknown:
                raise NotFoundError(f"no agent named {', '.join(unknown[:10])}")
            etag = index.etag("closure\n", names, serials)
        else:
            serials = cache.refresh(session, names)
            etag = index.etag("", names, serials)
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
    state.agent_changed(full)
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


class SignatureIn(BaseModel):
    signature: str = Field(max_length=4096)
    tools: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=MAX_TOOLS,
        description="The agent's `tools/list` at publish, to pin with the first signature: the "
        "statement signed must then be a v2 release statement carrying their digest",
    )


class ToolsOut(BaseModel):
    name: str
    version: str
    tools: list[dict[str, Any]] = Field(description="The tool definitions, canonical form (mcpz.tooldefs)")
    digest: str = Field(description="sha256: and the hex digest of their canonical JSON")
    observed: bool = Field(
        description="True: recorded from a running replica, not signed; false: signed at publish"
    )
    recorded_at: datetime


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
            signatures.sign_release(
                session, public_url(state.settings), full, version, body.signature, tools=body.tools
            )
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


@router.get(
    "/v1/agents/{namespace}/{name}/releases/{version}/tools",
    response_model=ToolsOut,
    tags=["index"],
    responses=errors(400, 404),
)
def get_release_tools(namespace: Namespace, name: AgentPart, version: VersionPath, state: State) -> ToolsOut:
    """The tool definitions pinned to a release: signed at publish, or observed from a replica."""
    full = agent_name(namespace, name)
    with state.db.session() as session:
        release = signatures.find_release(session, full, version)
        found = tools_for_releases(session, [release.id]).get(release.id)
    if found is None:
        raise NotFoundError(
            f"{full} {version} has no tool definitions recorded",
            hint="they are recorded at `mcpz push` (without --no-tools), or when a replica first runs",
        )
    return ToolsOut(
        name=full,
        version=version,
        tools=found.tools,
        digest=found.digest,
        observed=found.observed,
        recorded_at=found.recorded_at,
    )
