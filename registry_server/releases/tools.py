"""Storing and reading the tool definitions pinned to releases (the `release_tools` table).

A signed set is written once, at publish, and never replaced. An observed set (from a replica of a
release published with `--no-tools`) is written only when the release has none yet, and a later
signed set does not exist for such a release, so the first observation stays.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mcpz.errors import RefusedError
from mcpz.tooldefs import canonical_bytes, tools_digest
from registry_server.orm import utcnow
from registry_server.releases.models import Agent, Release, ReleaseTools


@dataclass(frozen=True)
class ToolSet:
    tools: list[dict[str, Any]]
    digest: str
    observed: bool
    recorded_at: datetime


def record_tools(
    session: Session, release_id: int, tools: Iterable[Mapping[str, Any]], *, observed: bool
) -> ToolSet:
    """Pin `tools` to the release in the caller's transaction; returns what is stored.

    Recording the same set again is a no-op. A different signed set is refused (signed tools are
    immutable); an observed set is ignored when any set is already stored.
    """
    tools = list(tools)
    data = canonical_bytes(tools)
    digest = tools_digest(tools)
    existing = session.get(ReleaseTools, release_id)
    if existing is not None:
        if not observed and not existing.observed and existing.digest != digest:
            raise RefusedError("this release's tool definitions are already pinned and cannot change")
        return _to_set(existing)
    row = ReleaseTools(
        release_id=release_id,
        tools=data.decode(),
        digest=digest,
        observed=observed,
        recorded_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return _to_set(row)


def record_observed(
    session: Session, name: str, version: str, tools: Iterable[Mapping[str, Any]]
) -> ToolSet | None:
    """Record a replica's tools/list for release `name` `version` as observed, if the release has
    no tools yet (then the stored set is returned unchanged); None when there is no such release."""
    release_id = session.scalar(
        select(Release.id)
        .join(Agent, Agent.id == Release.agent_id)
        .where(Agent.name == name, Release.version == version)
    )
    if release_id is None:
        return None
    return record_tools(session, release_id, tools, observed=True)


def tools_for_releases(session: Session, release_ids: Iterable[int]) -> dict[int, ToolSet]:
    """The pinned sets of those releases that have one, by release id."""
    ids = list(release_ids)
    if not ids:
        return {}
    rows = session.scalars(select(ReleaseTools).where(ReleaseTools.release_id.in_(ids)))
    return {row.release_id: _to_set(row) for row in rows}


def _to_set(row: ReleaseTools) -> ToolSet:
    return ToolSet(
        tools=json.loads(row.tools), digest=row.digest, observed=row.observed, recorded_at=row.recorded_at
    )
