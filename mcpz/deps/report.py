"""`mcpz tree | why | outdated`: reading what is locked, and what newer releases exist.

`locked_resolution` and `why` read `mcpz.lock` alone (no network); `outdated` reads the index
through the same client as `mcpz lock` (`deps.fetch_snapshot`) and asks the resolver what
`mcpz lock --upgrade` would take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from mcpz.client.index import Snapshot
from mcpz.deps.flows import Project, Remote, fetch_snapshot
from mcpz.errors import NotFoundError, ResolutionImpossible
from mcpz.lockfile import LOCK_FILE, StaleLockError, is_stale, stale_changes
from mcpz.names import AgentName
from mcpz.resolve import Requirer, Resolution, ResolvedPackage, resolve


def locked_resolution(project: Project) -> tuple[Resolution, list[str]]:
    """The lock as a resolution (no network), and warnings (a stale lock)."""
    if project.lock_error is not None:
        raise project.lock_error
    if project.lock is None:
        if not project.dependencies:
            return Resolution(roots={}, packages={}, required_by={}), []
        raise StaleLockError(f"{LOCK_FILE} is missing", hint="run `mcpz lock` first")
    warnings = []
    if is_stale(project.lock, project.dependencies):
        changes = "; ".join(stale_changes(project.lock, project.dependencies))
        warnings.append(f"{LOCK_FILE} is out of date ({changes}); showing it as locked: run `mcpz lock`")
    return project.lock.to_resolution(), warnings


def why(project: Project, name: str) -> tuple[ResolvedPackage, list[tuple[Requirer, ...]], list[str]]:
    """How `name` got into the lock: one shortest chain from the manifest per direct requirer."""
    AgentName.parse(name)
    resolution, warnings = locked_resolution(project)
    if name not in resolution:
        raise NotFoundError(f"{name} is not in {LOCK_FILE}", hint="`mcpz tree` shows what is locked")
    return resolution[name], resolution.why(name), warnings


@dataclass(frozen=True)
class Outdated:
    name: str
    locked: str
    allowed: str | None
    """What `mcpz lock --upgrade` would lock (None: it would no longer be needed)."""
    latest: str | None
    """The newest release that is neither yanked nor a pre-release."""
    direct: bool
    yanked: bool
    """Whether the locked version has been yanked."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "locked": self.locked,
            "allowed": self.allowed,
            "latest": self.latest,
            "direct": self.direct,
            "yanked": self.yanked,
        }


def _latest(snapshot: Snapshot, name: str) -> tuple[str | None, set[str]]:
    finals: list[Version] = []
    yanked: set[str] = set()
    for release in snapshot.index.releases(name):
        if release.yanked:
            yanked.add(str(release.version))
        elif not release.version.is_prerelease:
            finals.append(release.version)
    return (str(max(finals)) if finals else None), yanked


async def outdated(project: Project, remote: Remote, *, all_agents: bool = False) -> list[Outdated]:
    """Each locked agent with a newer release (or a yanked locked version): locked, allowed, latest."""
    resolution, _warnings = locked_resolution(project)
    if not resolution.packages:
        return []
    names = set(project.dependencies) | set(resolution.packages)
    snapshot = await fetch_snapshot(remote, names)
    try:
        upgraded = resolve(
            project.dependencies,
            snapshot.index,
            upgrade=True,
            project=(project.manifest.name, project.manifest.version),
        ).versions()
    except ResolutionImpossible:
        upgraded = {}
    rows: list[Outdated] = []
    for name, package in sorted(resolution.packages.items()):
        latest, yanked = _latest(snapshot, name)
        locked = str(package.version)
        row = Outdated(
            name=name,
            locked=locked,
            allowed=upgraded.get(name),
            latest=latest,
            direct=name in project.dependencies,
            yanked=locked in yanked,
        )
        newer = latest is not None and Version(latest) > package.version
        if all_agents or newer or row.yanked or (row.allowed is not None and row.allowed != locked):
            rows.append(row)
    return rows
