"""`mcpz tree | why | outdated`: reading what is locked, and what newer releases exist.

`tree`, `why_report` (their JSON is their `to_dict()`), `locked_resolution` and `why` read
`mcpz.lock` alone (no network); `outdated` reads the index through the same client as
`mcpz lock` (`deps.fetch_snapshot`) and asks the resolver what `mcpz lock --upgrade` would take.
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
from mcpz.resolve import Requirer, Resolution, ResolvedPackage, TreeLine, resolve


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


@dataclass(frozen=True, slots=True)
class TreeReport:
    """`mcpz tree`: the locked tree in depth-first order (`lines`), its cycles, and warnings."""

    name: str
    version: str
    lines: list[TreeLine]
    cycles: list[list[str]]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The nested JSON of `mcpz tree --json`: each agent with its own `dependencies`."""
        roots: list[dict[str, Any]] = []
        stack: list[list[dict[str, Any]]] = [roots]
        for line in self.lines:
            node: dict[str, Any] = {
                "name": line.name,
                "version": str(line.version),
                "specifier": line.specifier,
                "mark": line.mark,
                "dependencies": [],
            }
            del stack[line.depth + 1 :]
            stack[line.depth].append(node)
            stack.append(node["dependencies"])
        return {"name": self.name, "version": self.version, "dependencies": roots, "cycles": self.cycles}


def tree(project: Project) -> TreeReport:
    """The locked dependency tree of `project` (no network)."""
    resolution, warnings = locked_resolution(project)
    return TreeReport(
        name=project.manifest.name,
        version=project.manifest.version,
        lines=resolution.tree(),
        cycles=[list(c) for c in resolution.cycles()],
        warnings=warnings,
    )


@dataclass(frozen=True, slots=True)
class WhyStep:
    """One edge of a chain: `parent` asked for `name` with `specifier`, and `version` is locked."""

    parent: str
    name: str
    version: str
    specifier: str

    def to_dict(self) -> dict[str, str]:
        return {
            "parent": self.parent,
            "name": self.name,
            "version": self.version,
            "specifier": self.specifier,
        }


@dataclass(frozen=True, slots=True)
class WhyReport:
    """`mcpz why NAME`: the locked agent and the chains from the manifest (`root`) to it."""

    root: str
    name: str
    version: str
    commit: str
    paths: list[list[WhyStep]]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "commit": self.commit,
            "paths": [[step.to_dict() for step in chain] for chain in self.paths],
        }


def why_report(project: Project, name: str) -> WhyReport:
    """Why `name` is locked, as chains of named steps (see `why`)."""
    package, paths, warnings = why(project, name)
    versions = {a.name: a.version for a in project.lock.agents} if project.lock else {}
    root = project.manifest.name
    return WhyReport(
        root=root,
        name=name,
        version=str(package.version),
        commit=package.commit,
        paths=[_chain(p, name, versions, root) for p in paths],
        warnings=warnings,
    )


def _chain(path: tuple[Requirer, ...], name: str, versions: dict[str, str], root: str) -> list[WhyStep]:
    steps = []
    for i, edge in enumerate(path):
        child = path[i + 1].parent if i + 1 < len(path) else name
        assert child is not None
        steps.append(WhyStep(edge.parent or root, child, versions.get(child, ""), edge.specifier))
    return steps


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
