"""The dependency flows behind `mcpz add | remove | lock | install | tree | why | outdated`.

Each flow reads the project (`mcpz.toml`, `mcpz.lock`), reads the registry's index through one
`IndexClient` where it has to (`mcpz.client.index`: batched, concurrent, ETag-cached), calls the
pure core (`mcpz.resolve`, `mcpz.lockfile`) and writes files atomically (temp file + rename).

    project = open_project(Path("."))
    remote = Remote(registry=url, token=token, cache_root=cache_dir())
    result = await lock(project, remote)                 # writes mcpz.lock when it changed
    check_lock_fresh(Path("."))                          # StaleLockError when it must be re-locked

Re-locking prefers the versions already locked, so it changes nothing unless asked (`upgrade=`);
a locked version whose commit the registry now reports differently is refused, never adopted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from mcpz import exit_codes
from mcpz.atomic import write_atomic
from mcpz.client.index import FetchStats, IndexClient, Snapshot, VersionEntry
from mcpz.deps.manifest_edit import edit_dependency
from mcpz.errors import NotFoundError, UsageError
from mcpz.lockfile import (
    LOCK_FILE,
    Lock,
    LockedAgent,
    LockfileError,
    StaleLockError,
    build_lock,
    dump_lock,
    is_stale,
    lock_problem,
    manifest_hash,
    parse_lock,
)
from mcpz.manifest import MANIFEST_FILE, Manifest, load_manifest
from mcpz.names import AgentName
from mcpz.resolve import Requirer, Resolution, ResolvedPackage, resolve
from mcpz.specifiers import specifier_problem

if TYPE_CHECKING:  # installing is imported when it runs: `mcpz lock` never needs it
    from mcpz.deps.install import InstallResult

EXIT_LOCK_STALE = exit_codes.LOCK_STALE
"""`mcpz lock --check` (and `install`, `push`) found mcpz.lock missing or out of date."""


@dataclass(frozen=True)
class Remote:
    """Where the index comes from: the registry, a token, the cache folder, and whether to go online."""

    registry: str
    token: str | None = None
    cache_root: Path | None = None
    offline: bool = False
    token_lookup: Callable[[], str | None] | None = None
    """Asked for a stored token only when the registry wants one (the OS keyring is slow to open)."""


@dataclass(frozen=True)
class Project:
    folder: Path
    manifest: Manifest
    manifest_text: str
    lock: Lock | None
    lock_text: str | None
    lock_error: LockfileError | None = None

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_FILE

    @property
    def lock_path(self) -> Path:
        return self.folder / LOCK_FILE

    @property
    def dependencies(self) -> dict[str, str]:
        return dict(self.manifest.dependencies)


def open_project(path: Path) -> Project:
    """The agent at `path` (a folder, or its mcpz.toml) with its lock, if any and readable."""
    folder = path.parent if path.name == MANIFEST_FILE and path.is_file() else path
    manifest = load_manifest(folder)
    manifest_text = (folder / MANIFEST_FILE).read_text(encoding="utf-8")
    lock: Lock | None = None
    lock_text: str | None = None
    error: LockfileError | None = None
    try:
        lock_text = (folder / LOCK_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as e:
        error = LockfileError(f"{LOCK_FILE}: cannot read it: {e}", hint="run `mcpz lock` to write it again")
    if lock_text is not None:
        try:
            lock = parse_lock(lock_text)
        except LockfileError as e:
            error = e
    return Project(folder, manifest, manifest_text, lock, lock_text, error)


# --- freshness -------------------------------------------------------------------------------


def check_lock_fresh(path: Path) -> None:
    """Raise `StaleLockError` (a UsageError) when the agent at `path` needs a lock it lacks, or its
    lock predates the manifest's dependencies; `LockfileError` when the lock does not parse."""
    project_folder = path.parent if path.name == MANIFEST_FILE else path
    manifest = load_manifest(project_folder)
    try:
        text: str | None = (project_folder / LOCK_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    problem = lock_problem(manifest.dependencies, text)
    if problem is not None:
        raise problem


# --- what changed between two locks ----------------------------------------------------------


@dataclass(frozen=True)
class LockChange:
    name: str
    old: str | None
    new: str | None
    old_commit: str | None = None
    new_commit: str | None = None

    @property
    def kind(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        if self.old == self.new:
            return "changed"
        return "upgraded" if Version(self.new) > Version(self.old) else "downgraded"

    def __str__(self) -> str:
        if self.old is None:
            return f"added {self.name} {self.new}"
        if self.new is None:
            return f"removed {self.name} {self.old}"
        if self.old == self.new:
            return f"{self.name} {self.new} changed"
        return f"{self.name} {self.old} -> {self.new}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "old": self.old, "new": self.new}


def diff_locks(old: Lock | None, new: Lock) -> list[LockChange]:
    """Agents added, removed, or moved (version, commit or dependencies) from `old` to `new`."""
    before = {a.name: a for a in old.agents} if old is not None else {}
    after = {a.name: a for a in new.agents}
    changes: list[LockChange] = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a is None and b is not None:
            changes.append(LockChange(name, None, b.version, None, b.commit))
        elif b is None and a is not None:
            changes.append(LockChange(name, a.version, None, a.commit, None))
        elif a is not None and b is not None:
            if (a.version, a.commit, dict(a.dependencies)) != (b.version, b.commit, dict(b.dependencies)):
                changes.append(LockChange(name, a.version, b.version, a.commit, b.commit))
    return changes


# --- lock ------------------------------------------------------------------------------------


@dataclass
class LockResult:
    path: Path
    lock: Lock
    text: str
    resolution: Resolution
    changes: list[LockChange]
    written: bool
    index: FetchStats | None = None
    resolve_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    searched: bool = True
    """False when the old lock was still valid against the index, so no search was needed."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "written": self.written,
            "registry": self.lock.registry,
            "agents": len(self.lock.agents),
            "changes": [c.to_dict() for c in self.changes],
            "warnings": self.warnings,
            "index": self.index.to_dict() if self.index is not None else None,
            "resolve_seconds": round(self.resolve_seconds, 4),
            "searched": self.searched,
        }


async def fetch_snapshot(remote: Remote, names: Iterable[str], *, reach: bool = False) -> Snapshot:
    """The index closure of `names`; with `reach`, the registry is contacted even when there is
    nothing to fetch (a lock must not name a registry that was never reached)."""
    async with IndexClient(
        remote.registry,
        remote.token,
        cache_root=remote.cache_root,
        offline=remote.offline,
        token_lookup=remote.token_lookup,
    ) as client:
        wanted = list(names)
        if reach and not wanted:
            await client.reach()
        return await client.closure(wanted)


def _check_roots_exist(dependencies: Mapping[str, str], snapshot: Snapshot, registry: str) -> None:
    gone = sorted(name for name in dependencies if name in snapshot.missing)
    if gone:
        raise NotFoundError(
            f"{', '.join(gone)} {'is' if len(gone) == 1 else 'are'} not in the registry at {registry}",
            hint=f"check the name in [dependencies] of {MANIFEST_FILE}; `mcpz info NAME` shows an agent",
        )


def _resolve_lock(
    project: Project,
    remote: Remote,
    dependencies: Mapping[str, str],
    snapshot: Snapshot,
    *,
    upgrade: bool | set[str] = False,
) -> tuple[Lock, str, Resolution, float | None]:
    """The new lock for `dependencies` and the search's seconds (None when the old lock was still
    valid); refuses a locked version whose commit the index changed."""
    _check_roots_exist(dependencies, snapshot, remote.registry)
    previous = project.lock
    if upgrade is False and previous is not None:
        kept = _still_valid(previous, dependencies, snapshot, remote.registry)
        if kept is not None:
            return kept, dump_lock(kept), kept.to_resolution(), None
    started = time.perf_counter()
    resolution = resolve(
        dependencies,
        snapshot.index,
        locked=previous.versions() if previous is not None else None,
        upgrade=upgrade,
        project=(project.manifest.name, project.manifest.version),
    )
    seconds = time.perf_counter() - started
    new = build_lock(
        resolution,
        registry=remote.registry,
        manifest_dependencies=dependencies,
        project=project.manifest.name,
    )
    if previous is not None and previous.registry.rstrip("/") == remote.registry.rstrip("/"):
        for agent in new.agents:
            old = previous.get(agent.name)
            if old is not None and old.version == agent.version and old.commit != agent.commit:
                from mcpz.deps.install import IntegrityError

                raise IntegrityError(
                    f"the registry now lists {agent.name} {agent.version} at commit {agent.commit[:12]}, "
                    f"but {LOCK_FILE} pins {old.commit[:12]}; a published version never changes, so "
                    "this is refused",
                    hint="report it to the registry's operator; to trust the registry anyway, delete "
                    f"{LOCK_FILE} and lock again",
                )
    return new, dump_lock(new), resolution, seconds


def _still_valid(
    lock: Lock, dependencies: Mapping[str, str], snapshot: Snapshot, registry: str
) -> Lock | None:
    """`lock` itself (its yanked flags brought up to date) when it is still a resolution of
    `dependencies` against this index, else None.

    That is what resolving with the locked versions preferred returns anyway (they are consistent,
    so they are chosen): checking it costs a pass over the lock instead of a search. It holds when
    the lock is of this registry and these dependencies, every locked release is in the index with
    the same commit and dependencies, and the locked agents are exactly the closure of the roots.
    (The lock's own consistency, every edge admitted, was checked when it was parsed.)
    """
    if lock.registry.rstrip("/") != registry.rstrip("/") or is_stale(lock, dependencies):
        return None
    agents: list[LockedAgent] = []
    for agent in lock.agents:
        entry = next((e for e in snapshot.raw.get(agent.name, ()) if e.get("version") == agent.version), None)
        if entry is None or entry.get("commit") != agent.commit:
            return None
        if entry.get("dependencies", {}) != dict(agent.dependencies):
            return None
        agents.append(replace(agent, yanked=entry.get("yanked") is True))
    reached: set[str] = set()
    frontier = list(dependencies)
    while frontier:
        name = frontier.pop()
        if name in reached:
            continue
        reached.add(name)
        locked = lock.get(name)
        if locked is None:
            return None
        frontier.extend(locked.dependencies)
    if reached != {agent.name for agent in lock.agents}:
        return None
    return replace(lock, agents=tuple(agents))


def _upgrade_set(project: Project, upgrade: bool, packages: Sequence[str]) -> bool | set[str]:
    if upgrade:
        return True
    if not packages:
        return False
    known = set(project.dependencies) | ({a.name for a in project.lock.agents} if project.lock else set())
    for name in packages:
        AgentName.parse(name)
        if name not in known:
            raise UsageError(
                f"--upgrade-package {name}: {name} is neither locked nor in [dependencies]",
                hint="`mcpz tree` lists what is locked",
            )
    return set(packages)


def _significant(text: str) -> str:
    """A lock's text without the yanked flags: a version yanked upstream is news, not a change."""
    return "\n".join(line for line in text.splitlines() if line.strip() != "yanked = true")


async def lock(
    project: Project,
    remote: Remote,
    *,
    upgrade: bool = False,
    upgrade_packages: Sequence[str] = (),
    check: bool = False,
) -> LockResult:
    """Resolve the manifest's dependencies and write mcpz.lock when it changed.

    With `check`, write nothing and raise `StaleLockError` when the lock is missing, predates the
    manifest, or would change if locked again (a locked version yanked since is only a warning).
    """
    if upgrade and upgrade_packages:
        raise UsageError("give --upgrade or --upgrade-package, not both")
    dependencies = project.dependencies
    warnings: list[str] = []
    if project.lock_error is not None:
        if check:
            raise StaleLockError(project.lock_error.message)
        warnings.append(f"ignored the old {LOCK_FILE}: {project.lock_error.message}")
    if check:
        if project.lock_error is None:
            problem = lock_problem(dependencies, project.lock_text)
            if problem is not None:
                raise problem
        if project.lock is None and dependencies:
            raise StaleLockError(f"{LOCK_FILE} is missing")
    wanted = _upgrade_set(project, upgrade, upgrade_packages)
    new_registry = project.lock is None or not _same_registry(project.lock, remote)
    snapshot = await fetch_snapshot(remote, dependencies, reach=new_registry)
    new, text, resolution, seconds = _resolve_lock(project, remote, dependencies, snapshot, upgrade=wanted)
    changes = diff_locks(project.lock, new)
    yanked = [f"{a.name} {a.version} is yanked" for a in new.agents if a.yanked]
    warnings += [f"{w}; it stays locked (`mcpz lock --upgrade-package NAME` moves off it)" for w in yanked]
    result = LockResult(
        path=project.lock_path,
        lock=new,
        text=text,
        resolution=resolution,
        changes=changes,
        written=False,
        index=snapshot.stats,
        resolve_seconds=seconds or 0.0,
        warnings=warnings,
        searched=seconds is not None,
    )
    if check:
        if project.lock_text is None or _significant(text) != _significant(project.lock_text):
            described = [str(c) for c in changes]
            if project.lock is not None and not _same_registry(project.lock, remote):
                described.insert(0, f"it was locked against {project.lock.registry}, not {remote.registry}")
            described = described or ["its text differs from what `mcpz lock` writes"]
            raise StaleLockError(
                f"{LOCK_FILE} is out of date: locking again would change it", changes=described
            )
        return result
    if text != project.lock_text:
        write_atomic(project.lock_path, text)
        result.written = True
    return result


# --- add / remove ----------------------------------------------------------------------------


def default_specifier(entries: Sequence[VersionEntry]) -> str:
    """Compatible with the newest release that is neither yanked nor a pre-release:
    1.4.2 -> "~=1.4" (any 1.x from 1.4), 0.3.1 -> "~=0.3.1" (0.3.x from 0.3.1, since 0.x minors
    break); only pre-releases -> ">=2.0.0b1"."""
    versions: list[Version] = []
    for entry in entries:
        try:
            if not entry.get("yanked", False):
                versions.append(Version(str(entry.get("version"))))
        except InvalidVersion:
            continue
    if not versions:
        raise NotFoundError("it has no release that is not yanked", hint="pass a specifier, e.g. ==1.0.0")
    final = [v for v in versions if not v.is_prerelease]
    if not final:
        return f">={max(versions)}"
    newest = max(final)
    release = (*newest.release, 0, 0)[:3]
    if release[0] == 0:
        return f"~=0.{release[1]}.{release[2]}"
    return f"~={release[0]}.{release[1]}"


@dataclass
class EditResult:
    name: str
    specifier: str | None
    """The specifier now in [dependencies] (None after remove)."""
    previous: str | None
    manifest_changed: bool
    lock: LockResult | None
    formatting_kept: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "specifier": self.specifier,
            "previous": self.previous,
            "manifest_changed": self.manifest_changed,
            "lock": self.lock.to_dict() if self.lock is not None else None,
        }


async def add(
    project: Project, remote: Remote, name: str, specifier: str | None = None, *, relock: bool = True
) -> EditResult:
    """Add (or change) a dependency; lock it too unless `relock=False`. Nothing is written when the
    agent does not exist or the new set of dependencies cannot be resolved."""
    AgentName.parse(name)
    if name == project.manifest.name:
        raise UsageError(f"{name} is this agent itself", hint="an agent cannot depend on itself")
    if specifier is not None:
        specifier = specifier.strip()
        problem = specifier_problem(specifier)
        if problem:
            raise UsageError(f'"{specifier}" {problem}', hint='e.g. "^1.2", "~=1.4" or ">=1.2,<2"')
    previous = project.dependencies.get(name)
    snapshot = await fetch_snapshot(remote, {*project.dependencies, name})
    if name in snapshot.missing:
        raise NotFoundError(
            f"{name} is not in the registry at {remote.registry}", hint="check the name: `mcpz info NAME`"
        )
    if specifier is None:
        try:
            specifier = default_specifier(snapshot.raw.get(name, []))
        except NotFoundError as e:
            raise NotFoundError(f"{name}: {e.message}", hint=e.hint) from None
    dependencies = {**project.dependencies, name: specifier}
    lock_result = await _relock_with(project, remote, dependencies, snapshot, {name}) if relock else None
    text, kept = edit_dependency(project.manifest_text, project.manifest, name, specifier)
    changed = text != project.manifest_text
    if changed:
        write_atomic(project.manifest_path, text)
    _write_lock(lock_result, project)
    return EditResult(name, specifier, previous, changed, lock_result, kept)


async def remove(project: Project, remote: Remote, name: str, *, relock: bool = True) -> EditResult:
    """Remove a dependency from mcpz.toml and what only it needed from mcpz.lock."""
    AgentName.parse(name)
    if name not in project.dependencies:
        listed = ", ".join(sorted(project.dependencies)) or "none"
        raise UsageError(f"{name} is not in [dependencies] (there: {listed})")
    previous = project.dependencies[name]
    dependencies = {k: v for k, v in project.dependencies.items() if k != name}
    lock_result: LockResult | None = None
    if relock:
        fresh = project.lock is not None and not is_stale(project.lock, project.dependencies)
        if fresh and project.lock is not None and _same_registry(project.lock, remote):
            lock_result = _pruned(project, project.lock, dependencies)
        else:
            snapshot = await fetch_snapshot(remote, dependencies)
            lock_result = await _relock_with(project, remote, dependencies, snapshot, False)
    text, kept = edit_dependency(project.manifest_text, project.manifest, name, None)
    write_atomic(project.manifest_path, text)
    _write_lock(lock_result, project)
    return EditResult(name, None, previous, True, lock_result, kept)


def _same_registry(lock: Lock, remote: Remote) -> bool:
    return lock.registry.rstrip("/") == remote.registry.rstrip("/")


async def _relock_with(
    project: Project,
    remote: Remote,
    dependencies: Mapping[str, str],
    snapshot: Snapshot,
    upgrade: bool | set[str],
) -> LockResult:
    new, text, resolution, seconds = _resolve_lock(project, remote, dependencies, snapshot, upgrade=upgrade)
    return LockResult(
        path=project.lock_path,
        lock=new,
        text=text,
        resolution=resolution,
        changes=diff_locks(project.lock, new),
        written=False,
        index=snapshot.stats,
        resolve_seconds=seconds or 0.0,
        searched=seconds is not None,
    )


def _pruned(project: Project, lock: Lock, dependencies: Mapping[str, str]) -> LockResult:
    """The lock without what only the removed dependency needed: no resolution, no network."""
    keep: set[str] = set()
    frontier = [n for n in dependencies if lock.get(n) is not None]
    while frontier:
        name = frontier.pop()
        if name in keep:
            continue
        keep.add(name)
        agent = lock.get(name)
        if agent is not None:
            frontier.extend(dep for dep in agent.dependencies if dep not in keep)
    full = lock.to_resolution()
    packages: dict[str, ResolvedPackage] = {n: p for n, p in full.packages.items() if n in keep}
    required_by: dict[str, tuple[Requirer, ...]] = {}
    for name, spec in dependencies.items():
        required_by.setdefault(name, ())
        required_by[name] += (Requirer(None, spec or "*"),)
    for name in sorted(keep):
        for dep, spec in packages[name].dependencies.items():
            required_by[dep] = (*required_by.get(dep, ()), Requirer(name, spec or "*"))
    resolution = Resolution(roots=dict(dependencies), packages=packages, required_by=required_by)
    new = build_lock(
        resolution,
        registry=lock.registry,
        manifest_dependencies=dependencies,
        project=project.manifest.name,
    )
    return LockResult(
        path=project.lock_path,
        lock=new,
        text=dump_lock(new),
        resolution=resolution,
        changes=diff_locks(lock, new),
        written=False,
    )


def _write_lock(result: LockResult | None, project: Project) -> None:
    if result is not None and result.text != project.lock_text:
        write_atomic(project.lock_path, result.text)
        result.written = True


# --- install ---------------------------------------------------------------------------------


def install_registry(project: Project, registry: str | None) -> str:
    """The registry to fetch from: the one given, else the lock's."""
    if registry:
        return registry.rstrip("/")
    if project.lock is not None:
        return project.lock.registry.rstrip("/")
    return ""


async def install(
    project: Project,
    *,
    registry: str,
    token: str | None,
    cache_root: Path,
    offline: bool = False,
    reinstall: bool = False,
    progress: Any = None,
    received: Callable[[int], None] | None = None,
) -> InstallResult:
    """Fetch, verify and place every locked agent; never resolves. A stale lock is refused.
    `received(n)` hears each n bytes of pack data fetched."""
    if project.lock_error is not None:
        raise project.lock_error
    problem = lock_problem(project.dependencies, project.lock_text)
    if problem is not None:
        problem.hint = "run `mcpz lock`, then `mcpz install`"
        raise problem
    current = project.lock or Lock(
        registry=registry, manifest_hash=manifest_hash({}), dependencies={}, agents=()
    )
    from mcpz.deps.install import install_lock

    return await install_lock(
        project.folder,
        current,
        registry=registry or current.registry,
        token=token,
        cache_root=cache_root,
        offline=offline,
        reinstall=reinstall,
        progress=progress,
        received=received,
    )
