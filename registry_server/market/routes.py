"""The marketplace's JSON API (`/v1/market/...`) and the official MCP Registry API (`/v0.1/servers`).

Reads are public; writes need a token: a review needs the `call` scope (the reviewer used the
agent through the gateway), a report `read`, a reply or (un)listing `publish` in the agent's
namespace, a moderation decision an `admin` token of an account in `market_admins`. Writes are
rate-limited per account (429 with Retry-After).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from mcpz.errors import NotFoundError, UsageError
from mcpz.instants import parse_instant
from registry_server.accounts.auth import Forbidden, require
from registry_server.accounts.http import Caller
from registry_server.accounts.service import Principal
from registry_server.http import State, agent_name
from registry_server.market import registry_api, reviews, service
from registry_server.market.search import KINDS, MAX_LIMIT, MAX_OFFSET, MAX_QUERY, SORTS, SearchQuery, search
from registry_server.openapi import AgentPart, Namespace, VersionPath, errors
from registry_server.rate_limit import RateLimited, RateLimiter
from registry_server.settings import RegistrySettings, public_url
from registry_server.state import RegistryState

router = APIRouter(tags=["market"])

WRITE_LIMIT = 30
WRITE_WINDOW = 3600.0
"""Review writes, replies and reports per account: at most WRITE_LIMIT per WRITE_WINDOW seconds."""


def market_limiter(settings: RegistrySettings) -> RateLimiter:
    return RateLimiter(WRITE_LIMIT, WRITE_WINDOW)


# --- bodies ---------------------------------------------------------------------------------


class ListingOut(BaseModel):
    name: str
    description: str
    version: str
    kind: str
    license: str
    tags: list[str]
    tools: list[str] = Field(description="Tool names of the latest version")
    pricing: str = Field(description='"free" until billing adds plans')
    rating: float | None = Field(description="Average stars of visible reviews; null without reviews")
    rating_bayes: float = Field(description="The Bayesian-averaged rating that ranking uses")
    reviews: int
    calls_30d: int
    callers_30d: int
    listed: bool
    created_at: datetime
    updated_at: datetime


class SearchOut(BaseModel):
    query: str = Field(description="The terms searched for (corrected when `corrected`)")
    corrected: bool
    suggestions: list[str] = Field(description="Closest agent names when nothing matched")
    more: bool = Field(description="Another page follows at offset + limit")
    results: list[ListingOut]


class FiguresOut(BaseModel):
    calls_30d: int
    callers_30d: int
    ok_30d: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None


class SignatureOut(BaseModel):
    signer: str
    signature: str


class VersionOut(BaseModel):
    version: str
    commit: str
    yanked: bool
    yank_reason: str
    published_at: datetime
    tools: list[dict[str, Any]] | None = Field(description="Pinned tool definitions; null if none recorded")
    tools_digest: str | None
    tools_observed: bool = Field(description="Recorded from a running replica, not signed at publish")
    signatures: list[SignatureOut]


class ToolChangeOut(BaseModel):
    tool: str
    fields: list[str]
    inputs_added: list[str]
    inputs_removed: list[str]
    required_added: list[str]
    required_removed: list[str]
    breaking: bool


class ChangelogOut(BaseModel):
    older: str
    newer: str
    added: list[str]
    removed: list[str]
    changed: list[ToolChangeOut]
    breaking: bool


class InfoOut(ListingOut):
    namespace: str
    owner_address: str | None = Field(description="The namespace owner's verified wallet")
    readme_html: str = Field(description="The README rendered and sanitised")
    tools_detail: list[dict[str, Any]] = Field(description="The latest version's tool definitions")
    versions: list[VersionOut]
    changelog: list[ChangelogOut]
    figures: FiguresOut


class ReviewIn(BaseModel):
    stars: int = Field(ge=1, le=5)
    text: str = Field(default="", max_length=reviews.MAX_TEXT)


class ReplyIn(BaseModel):
    text: str = Field(min_length=1, max_length=reviews.MAX_TEXT)


class ReportIn(BaseModel):
    reason: str = Field(default="", max_length=reviews.MAX_REASON)


class DecisionIn(BaseModel):
    decision: str = Field(json_schema_extra={"enum": list(reviews.DECISIONS)})


class ReviewOut(BaseModel):
    id: int
    agent: str
    reviewer: str
    stars: int
    text: str
    version: str
    calls: int = Field(description="The reviewer's completed calls of the agent")
    created_at: datetime
    updated_at: datetime
    edits: int
    reply: str | None
    replied_by: str | None
    replied_at: datetime | None
    hidden: bool
    reports: int
    moderation: str


class ReviewsOut(BaseModel):
    agent: str
    reviews: list[ReviewOut]


class TagOut(BaseModel):
    tag: str
    listings: int


# --- rendering ------------------------------------------------------------------------------


def listing_out(summary: service.ListingSummary) -> ListingOut:
    return ListingOut(**summary.__dict__)


def info_out(info: service.ListingInfo) -> InfoOut:
    return InfoOut(
        **info.summary.__dict__,
        namespace=info.namespace,
        owner_address=info.owner_address,
        readme_html=info.readme_html,
        tools_detail=info.latest_tools,
        versions=[
            VersionOut(
                version=v.version,
                commit=v.commit,
                yanked=v.yanked,
                yank_reason=v.yank_reason,
                published_at=v.published_at,
                tools=v.tools,
                tools_digest=v.tools_digest,
                tools_observed=v.tools_observed,
                signatures=[SignatureOut(signer=s, signature=sig) for s, sig in v.signatures],
            )
            for v in info.versions
        ],
        changelog=[
            ChangelogOut(
                older=log.older,
                newer=log.newer,
                added=log.added,
                removed=log.removed,
                changed=[ToolChangeOut(**c.__dict__, breaking=c.breaking) for c in log.changed],
                breaking=log.breaking,
            )
            for log in info.changelog
        ],
        figures=FiguresOut(**info.figures.__dict__),
    )


def review_out(view: reviews.ReviewView) -> ReviewOut:
    return ReviewOut(**view.__dict__)


def _limit(request: Request, principal: Principal) -> None:
    limiter: RateLimiter = request.app.state.market_limiter
    wait = limiter.hit(f"account:{principal.account_id}", time.monotonic())
    if wait:
        raise RateLimited("too many review writes, replies or reports from this account", wait)


def _is_admin(state: RegistryState, principal: Principal | None) -> bool:
    return (
        principal is not None
        and principal.has("admin")
        and principal.account_name in state.settings.market_admins
    )


# --- search and listings --------------------------------------------------------------------


@router.get("/v1/market/search", response_model=SearchOut, responses=errors(400, 422))
def market_search(
    state: State,
    q: Annotated[str, Query(max_length=MAX_QUERY, description="Words; empty lists everything")] = "",
    kind: Annotated[str | None, Query(json_schema_extra={"enum": list(KINDS)})] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    free: Annotated[bool | None, Query(description="true: free only; false: paid only")] = None,
    min_rating: Annotated[float | None, Query(ge=1, le=5)] = None,
    namespace: Annotated[str | None, Query(max_length=64)] = None,
    sort: Annotated[str, Query(json_schema_extra={"enum": list(SORTS)})] = "relevance",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SearchOut:
    """Listed agents matching the words (name, tags, tools, description, README), ranked by
    text match, Bayesian-averaged rating and usage; a typo is corrected, and a query with no hit
    names the closest agents."""
    query = SearchQuery(q, kind, tag, free, min_rating, namespace, sort, limit, offset)
    with state.db.session() as session:
        result = search(session, query)
    return SearchOut(
        query=result.query,
        corrected=result.corrected,
        suggestions=result.suggestions,
        more=result.more,
        results=[listing_out(s) for s in result.listings],
    )


@router.get("/v1/market/tags", response_model=list[TagOut], responses=errors(422))
def market_tags(state: State, limit: Annotated[int, Query(ge=1, le=200)] = 30) -> list[TagOut]:
    """Tags of listed agents, most used first."""
    with state.db.session() as session:
        return [TagOut(tag=tag, listings=n) for tag, n in service.popular_tags(session, limit)]


@router.get("/v1/market/agents/{namespace}/{name}", response_model=InfoOut, responses=errors(400, 404, 422))
def market_info(namespace: Namespace, name: AgentPart, state: State) -> InfoOut:
    """A listing: README, versions with their pinned tools and signatures, the tool changelog,
    rating and live figures (calls, callers, success rate, p50/p95 latency over 30 days)."""
    full = agent_name(namespace, name)
    with state.db.session() as session:
        info = service.info(session, state.repos, full)
    return info_out(info)


def _set_listed(state: RegistryState, principal: Principal | None, full: str, listed: bool) -> ListingOut:
    require(principal, "publish", full.split("/")[0], db=state.db)
    with state.db.session() as session:
        return listing_out(service.set_listed(session, state.repos, full, listed))


@router.post(
    "/v1/market/agents/{namespace}/{name}/list",
    response_model=ListingOut,
    responses=errors(400, 401, 403, 404, 422),
)
def market_list(namespace: Namespace, name: AgentPart, state: State, principal: Caller) -> ListingOut:
    """Show the agent in search and the registry API again (publishers of its namespace)."""
    return _set_listed(state, principal, agent_name(namespace, name), True)


@router.post(
    "/v1/market/agents/{namespace}/{name}/unlist",
    response_model=ListingOut,
    responses=errors(400, 401, 403, 404, 422),
)
def market_unlist(namespace: Namespace, name: AgentPart, state: State, principal: Caller) -> ListingOut:
    """Leave the agent out of search and the registry API; its page and releases stay."""
    return _set_listed(state, principal, agent_name(namespace, name), False)


# --- reviews --------------------------------------------------------------------------------


@router.get(
    "/v1/market/agents/{namespace}/{name}/reviews",
    response_model=ReviewsOut,
    responses=errors(400, 401, 403, 404, 422),
)
def market_reviews(
    namespace: Namespace,
    name: AgentPart,
    state: State,
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=reviews.MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    hidden: Annotated[bool, Query(description="Include hidden reviews (market admins only)")] = False,
) -> ReviewsOut:
    """Visible reviews, newest first, each with the reviewer's call count and the owner's reply."""
    full = agent_name(namespace, name)
    if hidden and not _is_admin(state, principal):
        require(principal, "admin", db=state.db)
        raise Forbidden("only market admins see hidden reviews")
    with state.db.session() as session:
        views = reviews.list_reviews(session, full, include_hidden=hidden, limit=limit, offset=offset)
    return ReviewsOut(agent=full, reviews=[review_out(v) for v in views])


@router.put(
    "/v1/market/agents/{namespace}/{name}/review",
    response_model=ReviewOut,
    responses=errors(400, 401, 403, 404, 409, 413, 422, 429),
)
def market_review(
    namespace: Namespace, name: AgentPart, body: ReviewIn, request: Request, state: State, principal: Caller
) -> ReviewOut:
    """Write or replace your review (1-5 stars and text). Only an account with a completed call
    of the agent may; an edit keeps the old text in the review's history."""
    full = agent_name(namespace, name)
    principal = require(principal, "call", db=state.db)
    _limit(request, principal)
    with state.db.session() as session:
        view = reviews.write_review(session, full, principal.account_id, body.stars, body.text)
    return review_out(view)


@router.post(
    "/v1/market/reviews/{review_id}/reply",
    response_model=ReviewOut,
    responses=errors(400, 401, 403, 404, 409, 413, 422, 429),
)
def market_reply(
    review_id: int, body: ReplyIn, request: Request, state: State, principal: Caller
) -> ReviewOut:
    """The agent's publisher replies, once per review."""
    principal = require(principal, "publish", db=state.db)
    _limit(request, principal)
    with state.db.session() as session:
        return review_out(reviews.reply(session, review_id, principal.account_id, body.text))


@router.post(
    "/v1/market/reviews/{review_id}/report",
    response_model=ReviewOut,
    responses=errors(400, 401, 403, 404, 409, 413, 422, 429),
)
def market_report(
    review_id: int, body: ReportIn, request: Request, state: State, principal: Caller
) -> ReviewOut:
    """Report a review, once per account; enough reports hide it until an admin decides."""
    principal = require(principal, "read", db=state.db)
    _limit(request, principal)
    threshold = state.settings.review_report_threshold
    with state.db.session() as session:
        view = reviews.report(session, review_id, principal.account_id, body.reason, threshold=threshold)
    return review_out(view)


@router.post(
    "/v1/market/reviews/{review_id}/moderate",
    response_model=ReviewOut,
    responses=errors(400, 401, 403, 404, 413, 422),
)
def market_moderate(review_id: int, body: DecisionIn, state: State, principal: Caller) -> ReviewOut:
    """A market admin keeps a reported review (reports no longer hide it) or removes it."""
    require(principal, "admin", db=state.db)
    if not _is_admin(state, principal):
        raise Forbidden("only accounts in the registry's market_admins setting decide on reviews")
    with state.db.session() as session:
        return review_out(reviews.moderate(session, review_id, body.decision))


@router.get("/v1/market/reported", response_model=list[ReviewOut], responses=errors(401, 403, 422))
def market_reported(state: State, principal: Caller) -> list[ReviewOut]:
    """Reviews hidden by reports and waiting for a decision (market admins)."""
    require(principal, "admin", db=state.db)
    if not _is_admin(state, principal):
        raise Forbidden("only accounts in the registry's market_admins setting decide on reviews")
    with state.db.session() as session:
        return [review_out(v) for v in reviews.reported(session)]


# --- the official MCP Registry API ----------------------------------------------------------


class ServerResponse(BaseModel):
    """The MCP Registry's ServerResponse: `server` (server.json) and registry-managed `_meta`."""

    model_config = ConfigDict(populate_by_name=True)
    server: dict[str, Any]
    meta: dict[str, Any] = Field(alias="_meta")


class ServerListMetadata(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    next_cursor: str | None = Field(default=None, alias="nextCursor")
    count: int


class ServerList(BaseModel):
    servers: list[ServerResponse]
    metadata: ServerListMetadata


def _server_list(entries: list[registry_api.ServerEntry], base: str, cursor: str | None) -> ServerList:
    return ServerList(
        servers=[ServerResponse.model_validate(registry_api.server_response(e, base)) for e in entries],
        metadata=ServerListMetadata.model_validate({"nextCursor": cursor, "count": len(entries)}),
    )


@router.get(
    "/v0.1/servers",
    response_model=ServerList,
    response_model_by_alias=True,
    tags=["mcp-registry"],
    responses=errors(400, 422),
)
def registry_servers(
    state: State,
    search_: Annotated[str | None, Query(alias="search", max_length=MAX_QUERY)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=registry_api.MAX_LIMIT)] = 30,
    updated_since: Annotated[str | None, Query(description="RFC 3339 date-time")] = None,
) -> ServerList:
    """Listed agents as MCP Registry servers (latest version each), by name; `search` is a
    case-insensitive substring of the name, as in the official registry."""
    since = None
    if updated_since:
        try:
            since = service.micros(parse_instant(updated_since, datetime.now().astimezone()))
        except UsageError as e:
            raise UsageError(f"updated_since: {e.message}", hint="an RFC 3339 date-time") from e
    with state.db.session() as session:
        entries, next_cursor = registry_api.servers(session, search_, cursor, limit, since)
    return _server_list(entries, public_url(state.settings), next_cursor)


@router.get(
    "/v0.1/servers/{namespace}/{name}/versions",
    response_model=ServerList,
    response_model_by_alias=True,
    tags=["mcp-registry"],
    responses=errors(400, 404, 422),
)
def registry_versions(namespace: Namespace, name: AgentPart, state: State) -> ServerList:
    """Every version of a server, newest published first (the name may be sent URL-encoded)."""
    full = agent_name(namespace, name)
    with state.db.session() as session:
        entries = registry_api.versions(session, state.repos, full)
    return _server_list(entries, public_url(state.settings), None)


@router.get(
    "/v0.1/servers/{namespace}/{name}/versions/{version}",
    response_model=ServerResponse,
    response_model_by_alias=True,
    tags=["mcp-registry"],
    responses=errors(400, 404, 422),
)
def registry_version(
    namespace: Namespace,
    name: AgentPart,
    version: VersionPath,
    state: State,
) -> ServerResponse:
    """One version of a server; `latest` is the newest version that is not yanked."""
    full = agent_name(namespace, name)
    with state.db.session() as session:
        entries = registry_api.versions(session, state.repos, full)
    wanted = next((e for e in entries if e.is_latest), None) if version == "latest" else None
    wanted = wanted or next((e for e in entries if e.version.version == version), None)
    if wanted is None:
        raise NotFoundError(f"{full} has no version {version}", hint=f"see /v0.1/servers/{full}/versions")
    return ServerResponse.model_validate(registry_api.server_response(wanted, public_url(state.settings)))
