"""Listings: built from an agent's releases, kept in step with publishes, and read back with their
versions, tools, tool changelog, README and live usage figures.

Every function takes the caller's session and runs in its transaction. A listing is rebuilt when
its agent's `Agent.serial` differs from the serial it was built from (`refresh_listing`,
`refresh_stale`); the registry calls `refresh_listing` after each publish or yank (a hook that
app.py registers on the registry state) and sweeps stale listings at start and periodically, so
the releases domain never imports the market. Usage figures (calls in 30 days, callers) are
copied from usage events by `refresh_usage`, for sorting; the figures shown for one agent
(`figures`) are computed from the events when asked.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dulwich.objects import Blob, Commit, Tree
from packaging.version import InvalidVersion, Version
from sqlalchemy import case, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mcpz.errors import ManifestError, NotFoundError
from mcpz.manifest import parse_manifest
from registry_server.accounts.models import Account
from registry_server.accounts.namespaces import owner_address
from registry_server.market import ranking, readme, terms
from registry_server.market.changelog import Changelog, changelog
from registry_server.market.models import FREE, Listing, ListingTag, SearchDocument, SearchTerm
from registry_server.releases.models import Agent, Release, ReleaseTools
from registry_server.releases.signatures import signatures_by_release
from registry_server.releases.tools import ToolSet, tools_for_releases
from registry_server.storage import RepoStore
from registry_server.usage.events import Outcome
from registry_server.usage.models import UsageEventRow

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
WINDOW_US = 30 * DAY_US
"""Live figures cover the last 30 days."""
README_NAMES = ("README.md", "readme.md", "Readme.md", "README.markdown", "README")
MAX_README_INDEXED = 20_000
"""Characters of a README that go into the search document."""
MAX_TAGS = 20
MAX_TAG = 64
CHUNK = 500


@dataclass(frozen=True)
class ListingSource:
    """Everything a listing is built from; `refresh_listing` gathers it from the releases."""

    agent_id: int
    name: str
    description: str = ""
    kind: str = "agent"
    license: str = ""
    tags: Sequence[str] = ()
    version: str = ""
    release_id: int | None = None
    tools: Sequence[dict[str, Any]] = ()
    readme: str = ""
    created_us: int = 0
    updated_us: int = 0
    serial: int = 0


@dataclass(frozen=True)
class ListingSummary:
    """A listing as search shows it."""

    name: str
    description: str
    version: str
    kind: str
    license: str
    tags: list[str]
    tools: list[str]
    pricing: str
    rating: float | None
    """The plain average of visible reviews' stars, None without reviews."""
    rating_bayes: float
    """What ranking uses (ranking.bayesian_rating)."""
    reviews: int
    calls_30d: int
    callers_30d: int
    listed: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Figures:
    """Live usage of one agent over the last 30 days, from usage events."""

    calls_30d: int
    callers_30d: int
    ok_30d: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class VersionEntry:
    version: str
    commit: str
    yanked: bool
    yank_reason: str
    published_at: datetime
    tools: list[dict[str, Any]] | None
    """Pinned tool definitions (None: none recorded)."""
    tools_digest: str | None
    tools_observed: bool
    signers: list[str]
    signatures: list[tuple[str, str]]
    """(signer, signature) pairs kept for the release."""


@dataclass(frozen=True)
class ListingInfo:
    summary: ListingSummary
    namespace: str
    owner_address: str | None
    """The namespace owner's wallet (verified by sign-in), None if it has none."""
    readme_html: str
    versions: list[VersionEntry]
    """Oldest first."""
    changelog: list[Changelog]
    """Tool changes between consecutive versions that have tools, newest first."""
    figures: Figures
    latest_tools: list[dict[str, Any]] = field(default_factory=list)


def micros(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


def now_us() -> int:
    return micros(datetime.now(UTC))


def _version_key(version: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def latest_release(releases: Sequence[Release]) -> Release | None:
    """The newest release that is neither yanked nor a pre-release; else the newest not yanked;
    else the newest."""
    ordered = sorted(releases, key=lambda r: _version_key(r.version))
    stable = [r for r in ordered if not r.yanked and not Version(r.version).is_prerelease]
    live = [r for r in ordered if not r.yanked]
    for choice in (stable, live, ordered):
        if choice:
            return choice[-1]
    return None


def read_readme(repos: RepoStore, name: str, commit: str) -> str:
    """README.md of the release's tree ("" when absent, not UTF-8, or the repository is gone)."""
    repo = repos.open(name)
    if repo is None:
        return ""
    try:
        obj = repo.get_object(commit.encode())
        if not isinstance(obj, Commit):
            return ""
        tree = repo.get_object(obj.tree)
        if not isinstance(tree, Tree):
            return ""
        for candidate in README_NAMES:
            try:
                _mode, sha = tree[candidate.encode()]
            except KeyError:
                continue
            blob = repo.get_object(sha)
            if isinstance(blob, Blob):
                data: bytes = blob.as_raw_string()
                return data[: readme.MAX_SOURCE + 4].decode("utf-8", "replace")
        return ""
    except KeyError:
        return ""
    finally:
        repo.close()


def clean_tags(keywords: Iterable[str]) -> list[str]:
    """Manifest keywords as tags: folded to terms joined by '-', unique, at most MAX_TAGS."""
    tags: list[str] = []
    for keyword in keywords:
        tag = "-".join(terms.terms(keyword))[:MAX_TAG]
        if tag and tag not in tags:
            tags.append(tag)
    return tags[:MAX_TAGS]


def source_of(session: Session, repos: RepoStore, agent: Agent) -> ListingSource | None:
    """What the agent's listing is built from; None for an agent without releases."""
    releases = list(session.scalars(select(Release).where(Release.agent_id == agent.id)))
    latest = latest_release(releases)
    if latest is None:
        return None
    try:
        manifest = parse_manifest(latest.manifest)
        kind, license_, keywords = manifest.kind, manifest.license or "", manifest.keywords
        description = manifest.description or agent.description
    except ManifestError:
        kind, license_, keywords, description = "agent", "", (), agent.description
    pinned = tools_for_releases(session, [latest.id]).get(latest.id)
    return ListingSource(
        agent_id=agent.id,
        name=agent.name,
        description=description,
        kind=kind,
        license=license_,
        tags=clean_tags(keywords),
        version=latest.version,
        release_id=latest.id,
        tools=pinned.tools if pinned is not None else [],
        readme=read_readme(repos, agent.name, latest.commit),
        created_us=min(micros(r.published_at) for r in releases),
        updated_us=max(micros(r.published_at) for r in releases),
        serial=agent.serial,
    )


def _tool_texts(tools: Sequence[dict[str, Any]]) -> list[str]:
    return [
        f"{tool.get('name', '')} {tool.get('title') or ''} {tool.get('description') or ''}" for tool in tools
    ]


@dataclass(frozen=True)
class _Fields:
    name: str
    tags: str
    tools: str
    description: str
    readme: str
    tool_names: str


def _search_fields(source: ListingSource) -> _Fields:
    return _Fields(
        name=terms.joined([source.name]),
        tags=terms.joined(source.tags),
        tools=terms.joined(_tool_texts(source.tools)),
        description=terms.joined([source.description]),
        readme=terms.joined([source.readme[:MAX_README_INDEXED]]),
        tool_names=" ".join("_".join(terms.terms(str(tool["name"]))) for tool in source.tools),
    )


def _body(fields: _Fields) -> str:
    parts = (fields.name, fields.tags, fields.tools, fields.description, fields.readme)
    return " ".join(part for part in parts if part)


def _listing_values(source: ListingSource, fields: _Fields) -> dict[str, Any]:
    return {
        "name": source.name,
        "namespace": source.name.split("/")[0],
        "description": source.description,
        "kind": source.kind,
        "license": source.license[:128],
        "tags": json.dumps(list(source.tags)),
        "latest_version": source.version,
        "latest_release_id": source.release_id,
        "readme_source": source.readme,
        "readme_html": readme.render(source.readme) if source.readme else "",
        "tools": json.dumps([str(tool["name"]) for tool in source.tools]),
        "terms_name": fields.name,
        "terms_tags": fields.tags,
        "terms_tools": fields.tools,
        "terms_description": fields.description,
        "terms_tool_names": fields.tool_names,
        "created_us": source.created_us,
        "updated_us": source.updated_us,
        "indexed_serial": source.serial,
    }


def index_listing(session: Session, source: ListingSource, *, updated_us: int | None = None) -> Listing:
    """Create or replace the listing of `source` with its tags, search document and terms.

    Keeps what the listing owns beyond its source: listed/unlisted, ratings, usage, pricing.
    """
    listing = session.get(Listing, source.agent_id)
    fields = _search_fields(source)
    values = _listing_values(source, fields)
    if updated_us is not None:
        values["updated_us"] = updated_us
    if listing is None:
        listing = Listing(
            agent_id=source.agent_id,
            listed=True,
            pricing=FREE,
            rating_sum=0,
            rating_count=0,
            rating_key=ranking.rating_key(0, 0),
            quality=ranking.quality_key(0, 0, 0),
            calls_30d=0,
            callers_30d=0,
            usage_at_us=0,
            **values,
        )
        session.add(listing)
    else:
        for key, value in values.items():
            setattr(listing, key, value)
    session.flush()
    session.execute(delete(ListingTag).where(ListingTag.agent_id == source.agent_id))
    if source.tags:
        session.add_all(ListingTag(agent_id=source.agent_id, tag=tag) for tag in source.tags)
    body = _body(fields)
    document = session.get(SearchDocument, source.agent_id)
    if document is None:
        session.add(SearchDocument(agent_id=source.agent_id, body=body))
    elif document.body != body:
        document.body = body
    add_terms(session, body.split())
    session.flush()
    return listing


def index_new(session: Session, sources: Sequence[ListingSource]) -> int:
    """Create the listings of many agents that have none yet, in bulk (a first index of a large
    registry; the benchmark's index build). Returns how many were created."""
    listings: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    documents: list[dict[str, Any]] = []
    vocabulary: set[str] = set()
    for source in sources:
        fields = _search_fields(source)
        listings.append(
            {
                **_listing_values(source, fields),
                "agent_id": source.agent_id,
                "listed": True,
                "pricing": FREE,
                "rating_sum": 0,
                "rating_count": 0,
                "rating_key": ranking.rating_key(0, 0),
                "quality": ranking.quality_key(0, 0, 0),
                "calls_30d": 0,
                "callers_30d": 0,
                "usage_at_us": 0,
            }
        )
        tags.extend({"agent_id": source.agent_id, "tag": tag} for tag in source.tags)
        body = _body(fields)
        documents.append({"agent_id": source.agent_id, "body": body})
        vocabulary.update(body.split())
    for table, rows in ((Listing, listings), (ListingTag, tags), (SearchDocument, documents)):
        for start in range(0, len(rows), CHUNK):
            session.execute(insert(table), rows[start : start + CHUNK])
    add_terms(session, vocabulary)
    return len(listings)


def add_terms(session: Session, words: Iterable[str]) -> None:
    """Add `words` to the search vocabulary (those already there are skipped)."""
    fresh = sorted(set(words))
    if not fresh:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for start in range(0, len(fresh), CHUNK):
        part = fresh[start : start + CHUNK]
        known = set(session.scalars(select(SearchTerm.term).where(SearchTerm.term.in_(part))))
        rows = [{"term": word} for word in part if word not in known]
        if rows:
            session.execute(insert(SearchTerm).values(rows).on_conflict_do_nothing(index_elements=["term"]))


def refresh_listing(session: Session, repos: RepoStore, name: str, *, force: bool = False) -> Listing | None:
    """Bring `name`'s listing up to date with its releases (when its serial moved, or `force`).

    None for an agent that does not exist or has no releases.
    """
    agent = session.scalar(select(Agent).where(Agent.name == name))
    if agent is None:
        return None
    listing = session.get(Listing, agent.id)
    if listing is not None and listing.indexed_serial == agent.serial and not force:
        return listing
    source = source_of(session, repos, agent)
    if source is None:
        return listing
    return index_listing(session, source, updated_us=max(source.updated_us, now_us()) if listing else None)


def stale_agents(session: Session, limit: int = 1000) -> list[str]:
    """Agents whose listing is missing, was built from another serial, or lacks the tools its
    latest release has since been given (an observed set arrives after publish); at most `limit`."""
    query = (
        select(Agent.name)
        .outerjoin(Listing, Listing.agent_id == Agent.id)
        .where((Listing.agent_id.is_(None)) | (Listing.indexed_serial != Agent.serial))
        .where(select(Release.id).where(Release.agent_id == Agent.id).exists())
        .order_by(Agent.id)
        .limit(limit)
    )
    names = list(session.scalars(query))
    toolless = (
        select(Listing.name)
        .join(ReleaseTools, ReleaseTools.release_id == Listing.latest_release_id)
        .where(Listing.tools == "[]")
        .order_by(Listing.agent_id)
        .limit(limit)
    )
    names.extend(name for name in session.scalars(toolless) if name not in names)
    return names[:limit]


def refresh_stale(session: Session, repos: RepoStore, limit: int = 1000) -> int:
    """Rebuild up to `limit` stale listings; returns how many were rebuilt."""
    names = stale_agents(session, limit)
    for name in names:
        refresh_listing(session, repos, name, force=True)
    return len(names)


def refresh_usage(session: Session, at_us: int | None = None) -> int:
    """Copy each listing's calls and distinct callers of the last 30 days from the usage events,
    and recompute its ranking prior. Returns the number of listings changed."""
    at_us = now_us() if at_us is None else at_us
    since = at_us - WINDOW_US
    row = UsageEventRow
    counts = {
        agent: (int(calls), int(callers))
        for agent, calls, callers in session.execute(
            select(row.agent, func.count(), func.count(func.distinct(row.account_id)))
            .where(row.started_us >= since, row.started_us < at_us)
            .group_by(row.agent)
        )
    }
    changed = 0
    names = list(counts)
    current = list(
        session.execute(
            select(Listing.agent_id, Listing.name, Listing.calls_30d, Listing.callers_30d).where(
                Listing.calls_30d > 0
            )
        )
    )
    for start in range(0, len(names), CHUNK):
        current.extend(
            session.execute(
                select(Listing.agent_id, Listing.name, Listing.calls_30d, Listing.callers_30d).where(
                    Listing.name.in_(names[start : start + CHUNK]), Listing.calls_30d == 0
                )
            )
        )
    for agent_id, name, calls, callers in current:
        new_calls, new_callers = counts.get(name, (0, 0))
        if (new_calls, new_callers) != (calls, callers):
            listing = session.get(Listing, agent_id)
            assert listing is not None
            listing.calls_30d = new_calls
            listing.callers_30d = new_callers
            listing.quality = ranking.quality_key(listing.rating_sum, listing.rating_count, new_calls)
            listing.usage_at_us = at_us
            changed += 1
    return changed


def summary_of(listing: Listing) -> ListingSummary:
    count = listing.rating_count
    return ListingSummary(
        name=listing.name,
        description=listing.description,
        version=listing.latest_version,
        kind=listing.kind,
        license=listing.license,
        tags=json.loads(listing.tags),
        tools=json.loads(listing.tools),
        pricing=listing.pricing,
        rating=round(listing.rating_sum / count, 2) if count else None,
        rating_bayes=round(ranking.bayesian_rating(listing.rating_sum, count), 3),
        reviews=count,
        calls_30d=listing.calls_30d,
        callers_30d=listing.callers_30d,
        listed=listing.listed,
        created_at=from_micros(listing.created_us),
        updated_at=from_micros(listing.updated_us),
    )


def get_listing(session: Session, repos: RepoStore, name: str) -> Listing:
    """The up-to-date listing of `name`, or NotFoundError."""
    listing = refresh_listing(session, repos, name)
    if listing is None:
        raise NotFoundError(
            f"no published agent {name} in this registry", hint="search: mcpz market search WORDS"
        )
    return listing


def percentile(sorted_count: int, fraction: float) -> int:
    """The 0-based index of the nearest-rank percentile in `sorted_count` sorted values."""
    return max(0, math.ceil(fraction * sorted_count) - 1)


def figures(session: Session, name: str, at_us: int | None = None) -> Figures:
    """Calls, distinct callers, success rate and latency percentiles over the last 30 days."""
    at_us = now_us() if at_us is None else at_us
    row = UsageEventRow
    window = (row.agent == name, row.started_us >= at_us - WINDOW_US, row.started_us < at_us)
    calls, ok, callers = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((row.outcome == Outcome.OK, 1), else_=0)), 0),
            func.count(func.distinct(row.account_id)),
        ).where(*window)
    ).one()
    calls, ok, callers = int(calls), int(ok), int(callers)
    p50 = p95 = None
    if calls:
        at = {fraction: percentile(calls, fraction) for fraction in (0.5, 0.95)}
        values = {
            fraction: session.scalar(
                select(row.duration_us).where(*window).order_by(row.duration_us).offset(index).limit(1)
            )
            for fraction, index in at.items()
        }
        p50 = int(values[0.5] or 0) / 1000
        p95 = int(values[0.95] or 0) / 1000
    return Figures(
        calls_30d=calls,
        callers_30d=callers,
        ok_30d=ok,
        success_rate=round(ok / calls, 4) if calls else None,
        p50_ms=p50,
        p95_ms=p95,
    )


def calls_per_day(
    session: Session, name: str, days: int = 30, at_us: int | None = None
) -> list[tuple[str, int]]:
    """(ISO date, calls) for each of the last `days` UTC days, oldest first, zero days included."""
    days = max(1, min(days, 365))
    at_us = now_us() if at_us is None else at_us
    today = at_us // DAY_US
    row = UsageEventRow
    day = row.started_us // DAY_US
    found = {
        int(d): int(n)
        for d, n in session.execute(
            select(day, func.count())
            .where(row.agent == name, row.started_us >= (today - days + 1) * DAY_US, row.started_us < at_us)
            .group_by(day)
        )
    }
    return [
        (from_micros(d * DAY_US).date().isoformat(), found.get(d, 0))
        for d in range(today - days + 1, today + 1)
    ]


def versions_of(session: Session, agent_id: int) -> list[VersionEntry]:
    releases = sorted(
        session.scalars(select(Release).where(Release.agent_id == agent_id)),
        key=lambda r: _version_key(r.version),
    )
    ids = [r.id for r in releases]
    pinned: dict[int, ToolSet] = tools_for_releases(session, ids)
    signed = signatures_by_release(session, ids)
    entries = []
    for release in releases:
        tools = pinned.get(release.id)
        rows = signed.get(release.id, [])
        entries.append(
            VersionEntry(
                version=release.version,
                commit=release.commit,
                yanked=release.yanked,
                yank_reason=release.yank_reason,
                published_at=release.published_at,
                tools=tools.tools if tools is not None else None,
                tools_digest=tools.digest if tools is not None else None,
                tools_observed=tools.observed if tools is not None else False,
                signers=[r.signer for r in rows],
                signatures=[(r.signer, r.signature) for r in rows],
            )
        )
    return entries


def tool_changelog(versions: Sequence[VersionEntry]) -> list[Changelog]:
    """Changes between each pair of consecutive versions with recorded tools, newest first."""
    with_tools = [v for v in versions if v.tools is not None]
    logs = [
        changelog(old.version, old.tools or [], new.version, new.tools or [])
        for old, new in itertools.pairwise(with_tools)
    ]
    return list(reversed(logs))


def info(session: Session, repos: RepoStore, name: str, at_us: int | None = None) -> ListingInfo:
    """Everything the agent's page shows. Unlisted listings are shown too (by name only)."""
    listing = get_listing(session, repos, name)
    versions = versions_of(session, listing.agent_id)
    latest = next((v for v in versions if v.version == listing.latest_version), None)
    return ListingInfo(
        summary=summary_of(listing),
        namespace=listing.namespace,
        owner_address=owner_address(session, listing.namespace),
        readme_html=listing.readme_html,
        versions=versions,
        changelog=tool_changelog(versions),
        figures=figures(session, name, at_us),
        latest_tools=latest.tools or [] if latest is not None else [],
    )


def set_listed(session: Session, repos: RepoStore, name: str, listed: bool) -> ListingSummary:
    """List or unlist; the caller checked that the account may publish in the namespace."""
    listing = get_listing(session, repos, name)
    listing.listed = listed
    listing.updated_us = now_us()
    return summary_of(listing)


def popular_tags(session: Session, limit: int = 30) -> list[tuple[str, int]]:
    """The tags of listed agents with their counts, most used first."""
    count = func.count().label("n")
    query = (
        select(ListingTag.tag, count)
        .join(Listing, Listing.agent_id == ListingTag.agent_id)
        .where(Listing.listed)
        .group_by(ListingTag.tag)
        .order_by(count.desc(), ListingTag.tag)
        .limit(max(1, min(limit, 200)))
    )
    return [(tag, int(n)) for tag, n in session.execute(query)]


def reviewer_names(session: Session, account_ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    rows = session.execute(select(Account.id, Account.name).where(Account.id.in_(ids)))
    return {account_id: name for account_id, name in rows}
