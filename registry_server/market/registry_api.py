"""The official MCP Registry API's data: listed agents as `server.json` entries.

`server.json` (the MCP Registry's ServerDetail): `name`, `description` (at most 100 characters),
`version`, `remotes` (the gateway's streamable-http URL), and mcpz's own data under `_meta`, in
the publisher-provided namespace `io.modelcontextprotocol.registry/publisher-provided`, key
`io.mcpz`: kind, license, tags, commit, the pinned tools and their digest, the release signatures,
pricing, rating and usage. The response's registry-managed `_meta` holds the official block
(status, publishedAt, updatedAt, isLatest); a yanked version is "deprecated" with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mcpz.errors import NotFoundError
from registry_server.market import service
from registry_server.market.models import Listing
from registry_server.releases.models import Release
from registry_server.releases.signatures import signatures_by_release
from registry_server.releases.tools import tools_for_releases
from registry_server.storage import RepoStore

MAX_LIMIT = 100
MAX_DESCRIPTION = 100
PUBLISHER = "io.modelcontextprotocol.registry/publisher-provided"
OFFICIAL = "io.modelcontextprotocol.registry/official"
MCPZ = "io.mcpz"
SCHEMA = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
GATEWAY_PATH = "/mcp/"
"""Where the registry serves each deployment as an MCP endpoint (DESIGN.md, Gateway)."""


@dataclass(frozen=True)
class ServerEntry:
    summary: service.ListingSummary
    version: service.VersionEntry
    is_latest: bool


def short_description(text: str, name: str) -> str:
    """At most MAX_DESCRIPTION characters (cut on a word, with an ellipsis); the name if empty."""
    text = " ".join(text.split()) or name
    if len(text) <= MAX_DESCRIPTION:
        return text
    cut = text[: MAX_DESCRIPTION - 1]
    if " " in cut[MAX_DESCRIPTION // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,.;:") + "…"


def gateway_url(base_url: str, name: str) -> str:
    """The agent's MCP endpoint on this registry's gateway (streamable HTTP)."""
    return f"{base_url.rstrip('/')}{GATEWAY_PATH}{name}"


def server_response(entry: ServerEntry, base_url: str) -> dict[str, Any]:
    """The MCP Registry's ServerResponse for one version."""
    summary, version = entry.summary, entry.version
    mcpz: dict[str, Any] = {
        "kind": summary.kind,
        "license": summary.license,
        "tags": summary.tags,
        "commit": version.commit,
        "tools": version.tools or [],
        "toolsDigest": version.tools_digest,
        "toolsObserved": version.tools_observed,
        "signatures": [{"signer": s, "signature": sig} for s, sig in version.signatures],
        "pricing": summary.pricing,
        "rating": summary.rating,
        "reviews": summary.reviews,
        "calls30d": summary.calls_30d,
    }
    server = {
        "$schema": SCHEMA,
        "name": summary.name,
        "description": short_description(summary.description, summary.name),
        "version": version.version,
        "remotes": [
            {"type": "streamable-http", "url": f"{base_url.rstrip('/')}{GATEWAY_PATH}{summary.name}"}
        ],
        "_meta": {PUBLISHER: {MCPZ: mcpz}},
    }
    official: dict[str, Any] = {
        "status": "deprecated" if version.yanked else "active",
        "publishedAt": version.published_at.isoformat(),
        "updatedAt": summary.updated_at.isoformat(),
        "isLatest": entry.is_latest,
    }
    if version.yanked and version.yank_reason:
        official["statusMessage"] = version.yank_reason[:500]
    return {"server": server, "_meta": {OFFICIAL: official}}


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def servers(
    session: Session, search: str | None, cursor: str | None, limit: int, updated_since_us: int | None
) -> tuple[list[ServerEntry], str | None]:
    """Listed agents by name after `cursor` (the last name of the previous page), latest version
    each; and the cursor of the next page, None on the last."""
    limit = max(1, min(limit, MAX_LIMIT))
    name = Listing.name
    if session.get_bind().dialect.name == "postgresql":
        name = Listing.name.collate("C")  # type: ignore[assignment]  # byte order, as on SQLite
    query = select(Listing).where(Listing.listed.is_(True), Listing.latest_release_id.is_not(None))
    if search:
        query = query.where(Listing.name.ilike(f"%{_escape_like(search.lower())}%", escape="\\"))
    if cursor:
        query = query.where(name > cursor)
    if updated_since_us is not None:
        query = query.where(Listing.updated_us >= updated_since_us)
    rows = list(session.scalars(query.order_by(name).limit(limit + 1)))
    page = rows[:limit]
    ids = [row.latest_release_id for row in page if row.latest_release_id is not None]
    releases = {r.id: r for r in session.scalars(select(Release).where(Release.id.in_(ids)))}
    tools = tools_for_releases(session, ids)
    signed = signatures_by_release(session, ids)
    entries = []
    for row in page:
        release = releases.get(row.latest_release_id or -1)
        if release is None:
            continue
        pinned = tools.get(release.id)
        entries.append(
            ServerEntry(
                summary=service.summary_of(row),
                version=service.VersionEntry(
                    version=release.version,
                    commit=release.commit,
                    yanked=release.yanked,
                    yank_reason=release.yank_reason,
                    published_at=release.published_at,
                    tools=pinned.tools if pinned else None,
                    tools_digest=pinned.digest if pinned else None,
                    tools_observed=pinned.observed if pinned else False,
                    signers=[s.signer for s in signed.get(release.id, [])],
                    signatures=[(s.signer, s.signature) for s in signed.get(release.id, [])],
                ),
                is_latest=True,
            )
        )
    return entries, (page[-1].name if len(rows) > limit else None)


def versions(session: Session, repos: RepoStore, name: str) -> list[ServerEntry]:
    """Every version of a listed agent, newest published first. NotFoundError if not listed."""
    listing = service.get_listing(session, repos, name)
    if not listing.listed:
        raise NotFoundError(f"{name} is not listed in this registry's marketplace")
    summary = service.summary_of(listing)
    entries = [
        ServerEntry(summary=summary, version=v, is_latest=v.version == listing.latest_version)
        for v in service.versions_of(session, listing.agent_id)
    ]
    entries.sort(key=lambda e: (e.version.published_at, e.version.version), reverse=True)
    return entries
