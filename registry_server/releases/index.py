"""The version index as /v1/index serves it: each agent's versions with their dependencies, cached
serialised per agent and serial (an agent's serial moves with every publish and yank), and the
dependency closure of a set of roots.

Each function takes the caller's session; the route only parses, calls and renders.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from mcpz.errors import UsageError
from registry_server.releases.models import Agent, Release

MAX_BATCH = 1000
"""The most names one request (and one IN list) may hold."""
MAX_CLOSURE = 100_000
"""The most agents one `closure=1` answer may hold (the response is built in memory)."""


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


def etag(kind: str, names: list[str], serials: dict[str, int]) -> str:
    # A batch's ETag is what it was before closures existed, so that caches stay warm across upgrades.
    text = "\n".join(f"{n}:{serials.get(n, -1)}" for n in names)
    return '"' + hashlib.sha256((kind + text).encode()).hexdigest()[:32] + '"'


def closure(session: Session, cache: IndexCache, roots: list[str]) -> tuple[list[str], dict[str, int]]:
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
