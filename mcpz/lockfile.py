"""`mcpz.lock`: the resolved closure, pinned to commits. Pure: a `Resolution` or text in, text or a
`Lock` out; reading and writing the file is the caller's business. The format is in docs/lockfile.md.

The text is a function of its content alone: agents sorted by name, dependencies sorted, one fixed
layout, so locking the same inputs twice gives the same bytes and a diff shows only what moved.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

from mcpz import exit_codes
from mcpz.errors import UsageError
from mcpz.manifest import MANIFEST_FILE
from mcpz.names import name_problem
from mcpz.resolve.index import parse_spec
from mcpz.resolve.result import Requirer, Resolution, ResolvedPackage
from mcpz.specifiers import specifier_problem

LOCK_FILE = "mcpz.lock"
FORMAT_VERSION = 1
HEADER = "# mcpz.lock: written by `mcpz lock`, read by `mcpz install`. Do not edit by hand.\n"
_COMMIT = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
_TOP_KEYS = ("version", "registry", "project", "manifest-hash", "dependencies", "agent")
_AGENT_KEYS = ("name", "version", "commit", "dependencies", "yanked")


class LockfileError(UsageError):
    """mcpz.lock is missing a key, has a bad value, or was written by a newer mcpz."""


@dataclass(frozen=True)
class LockedAgent:
    name: str
    version: str
    commit: str
    dependencies: Mapping[str, str] = field(default_factory=dict)
    yanked: bool = False


@dataclass(frozen=True)
class Lock:
    registry: str
    manifest_hash: str
    dependencies: Mapping[str, str]
    """The manifest's [dependencies] table as it was when locked."""
    agents: tuple[LockedAgent, ...]
    version: int = FORMAT_VERSION
    project: str | None = None
    """The agent this lock belongs to: a dependency may depend back on it (a legal cycle)."""

    def get(self, name: str) -> LockedAgent | None:
        return next((agent for agent in self.agents if agent.name == name), None)

    def versions(self) -> dict[str, str]:
        """name -> version: what `resolve(locked=...)` prefers."""
        return {agent.name: agent.version for agent in self.agents}

    def to_resolution(self) -> Resolution:
        """The locked closure as a `Resolution` (for `mcpz tree` / `why` without the network)."""
        packages = {
            agent.name: ResolvedPackage(
                name=agent.name,
                version=Version(agent.version),
                commit=agent.commit,
                dependencies=dict(agent.dependencies),
                yanked=agent.yanked,
            )
            for agent in self.agents
        }
        required_by: dict[str, list[Requirer]] = {}
        for name, spec in self.dependencies.items():
            required_by.setdefault(name, []).append(Requirer(None, spec or "*"))
        for agent in self.agents:
            for dep, spec in agent.dependencies.items():
                required_by.setdefault(dep, []).append(Requirer(agent.name, spec or "*"))
        return Resolution(
            roots=dict(self.dependencies),
            packages=packages,
            required_by={name: tuple(edges) for name, edges in sorted(required_by.items())},
        )


def manifest_hash(dependencies: Mapping[str, str]) -> str:
    """`sha256:<hex>` of the manifest's dependency table, independent of key order and spacing."""
    canonical = {name: _normal_spec(spec) for name, spec in sorted(dependencies.items())}
    payload = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def _normal_spec(spec: str) -> str:
    return ",".join(part.strip() for part in spec.split(",") if part.strip())


def is_stale(lock: Lock, manifest_dependencies: Mapping[str, str]) -> bool:
    """Whether the manifest's dependencies changed since `lock` was written."""
    return lock.manifest_hash != manifest_hash(manifest_dependencies)


def stale_changes(lock: Lock, manifest_dependencies: Mapping[str, str]) -> list[str]:
    """What changed, for the message of a failing `mcpz lock --check`: 'added acme/geo ">=1"', ..."""
    before = {name: _normal_spec(spec) for name, spec in lock.dependencies.items()}
    after = {name: _normal_spec(spec) for name, spec in manifest_dependencies.items()}
    changes: list[str] = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            changes.append(f'added {name} "{after[name]}"')
        elif name not in after:
            changes.append(f"removed {name}")
        elif before[name] != after[name]:
            changes.append(f'{name} "{before[name]}" -> "{after[name]}"')
    return changes


def build_lock(
    resolution: Resolution,
    *,
    registry: str,
    manifest_dependencies: Mapping[str, str],
    project: str | None = None,
) -> Lock:
    """The lock for a resolution of `manifest_dependencies` against `registry`."""
    agents: list[LockedAgent] = []
    for name in sorted(resolution.packages):
        package = resolution.packages[name]
        if not _COMMIT.match(package.commit):
            raise LockfileError(
                f"{name} {package.version} has no commit id in the index ({package.commit!r})",
                hint="the registry's index is incomplete; try again, or report it to the registry",
            )
        agents.append(
            LockedAgent(
                name=name,
                version=str(package.version),
                commit=package.commit,
                dependencies=dict(sorted(package.dependencies.items())),
                yanked=package.yanked,
            )
        )
    return Lock(
        registry=registry,
        manifest_hash=manifest_hash(manifest_dependencies),
        dependencies=dict(sorted(manifest_dependencies.items())),
        agents=tuple(agents),
        project=project,
    )


def _s(value: str) -> str:
    """A TOML basic string: JSON's escapes are a subset of TOML's; TOML also forbids a raw DEL."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _inline(table: Mapping[str, str]) -> str:
    if not table:
        return "{}"
    return "{ " + ", ".join(f"{_s(k)} = {_s(v)}" for k, v in sorted(table.items())) + " }"


def dump_lock(lock: Lock) -> str:
    lines = [
        HEADER.rstrip("\n"),
        f"version = {lock.version}",
        f"registry = {_s(lock.registry)}",
        *([f"project = {_s(lock.project)}"] if lock.project else []),
        f"manifest-hash = {_s(lock.manifest_hash)}",
        "",
        "[dependencies]",
    ]
    lines += [f"{_s(name)} = {_s(spec)}" for name, spec in sorted(lock.dependencies.items())]
    for agent in sorted(lock.agents, key=lambda a: a.name):
        lines += [
            "",
            "[[agent]]",
            f"name = {_s(agent.name)}",
            f"version = {_s(agent.version)}",
            f"commit = {_s(agent.commit)}",
            f"dependencies = {_inline(agent.dependencies)}",
        ]
        if agent.yanked:
            lines.append("yanked = true")
    return "\n".join(lines) + "\n"


def _err(message: str, source: str) -> LockfileError:
    return LockfileError(f"{source}: {message}", hint="run `mcpz lock` to write it again")


def _str(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str):
        raise _err(f"{key} must be a string", source)
    return value


def _table(value: Any, key: str, source: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _err(f'{key} must be a table of "namespace/name" = "specifier"', source)
    out: dict[str, str] = {}
    for name, spec in value.items():
        problem = name_problem(name)
        if problem:
            raise _err(f'{key} key "{name}" {problem}', source)
        spec = _str(spec, f'{key}."{name}"', source)
        problem = specifier_problem(spec)
        if problem:
            raise _err(f'{key}."{name}" "{spec}" {problem}', source)
        out[name] = spec
    return dict(sorted(out.items()))


def parse_lock(text: str, source: str = LOCK_FILE) -> Lock:
    """Parse and validate a lockfile; `LockfileError` names the key that is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _err(f"not valid TOML ({e})", source) from e
    for key in data:
        if key not in _TOP_KEYS:
            raise _err(f'unknown key "{key}" (known: {", ".join(_TOP_KEYS)})', source)
    if "version" not in data:
        raise _err('missing "version" (the format version)', source)
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _err("version must be a positive integer", source)
    if version > FORMAT_VERSION:
        raise LockfileError(
            f"{source}: format version {version} is newer than this mcpz understands ({FORMAT_VERSION})",
            hint="upgrade mcpz",
        )
    for key in ("registry", "manifest-hash"):
        if key not in data:
            raise _err(f'missing "{key}"', source)
    registry = _str(data["registry"], "registry", source)
    project = _str(data["project"], "project", source) if "project" in data else None
    digest = _str(data["manifest-hash"], "manifest-hash", source)
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise _err('manifest-hash must be "sha256:" and 64 hex digits', source)
    dependencies = _table(data.get("dependencies", {}), "[dependencies]", source)
    raw_agents = data.get("agent", [])
    if not isinstance(raw_agents, list):
        raise _err("agent must be an array of tables ([[agent]])", source)
    agents: list[LockedAgent] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_agents):
        where = f"agent[{i}]"
        if not isinstance(raw, dict):
            raise _err(f"{where} must be a table", source)
        for key in raw:
            if key not in _AGENT_KEYS:
                raise _err(f'{where} has an unknown key "{key}" (known: {", ".join(_AGENT_KEYS)})', source)
        for key in ("name", "version", "commit"):
            if key not in raw:
                raise _err(f'{where} is missing "{key}"', source)
        name = _str(raw["name"], f"{where}.name", source)
        problem = name_problem(name)
        if problem:
            raise _err(f'{where}.name "{name}" {problem}', source)
        where = f'agent "{name}"'
        if name in seen:
            raise _err(f"{where} is listed twice", source)
        seen.add(name)
        agent_version = _str(raw["version"], f"{where}.version", source)
        try:
            Version(agent_version)
        except InvalidVersion:
            raise _err(f'{where}.version "{agent_version}" is not a PEP 440 version', source) from None
        commit = _str(raw["commit"], f"{where}.commit", source)
        if not _COMMIT.match(commit):
            raise _err(f'{where}.commit "{commit}" is not a commit id (40 or 64 hex digits)', source)
        yanked = raw.get("yanked", False)
        if not isinstance(yanked, bool):
            raise _err(f"{where}.yanked must be true or false", source)
        agents.append(
            LockedAgent(
                name=name,
                version=agent_version,
                commit=commit,
                dependencies=_table(raw.get("dependencies", {}), f"{where}.dependencies", source),
                yanked=yanked,
            )
        )
    lock = Lock(
        registry=registry,
        manifest_hash=digest,
        dependencies=dependencies,
        agents=tuple(sorted(agents, key=lambda a: a.name)),
        version=version,
        project=project,
    )
    _check_closed(lock, source)
    return lock


def _check_closed(lock: Lock, source: str) -> None:
    """Every dependency named in the lock is locked too, at a version its specifiers admit."""
    versions = {agent.name: Version(agent.version) for agent in lock.agents}
    edges = [("[dependencies]", name, spec) for name, spec in lock.dependencies.items()]
    edges += [(f'agent "{a.name}"', dep, spec) for a in lock.agents for dep, spec in a.dependencies.items()]
    for where, name, spec in edges:
        if name == lock.project:
            continue  # a cycle back to the agent being locked
        if name not in versions:
            raise _err(f"{where} depends on {name}, which is not locked", source)
        if not parse_spec(spec).contains(versions[name]):
            raise _err(f'{where} needs {name} "{spec}", but {versions[name]} is locked', source)


class StaleLockError(UsageError):
    """mcpz.lock is missing, or no longer matches mcpz.toml or the registry; `changes` says how."""

    exit_code = exit_codes.LOCK_STALE

    def __init__(self, message: str, *, changes: Sequence[str] = (), hint: str | None = None) -> None:
        if changes:
            message = f"{message}: " + "; ".join(changes)
        super().__init__(message, hint=hint or "run `mcpz lock` and commit mcpz.lock")
        self.changes = list(changes)


def lock_problem(dependencies: Mapping[str, str], lock_text: str | None) -> StaleLockError | None:
    """Why a lock (its text, None when absent) does not fit the manifest's dependencies; pure."""
    if lock_text is None:
        if not dependencies:
            return None
        return StaleLockError(f"{LOCK_FILE} is missing, and {MANIFEST_FILE} has dependencies")
    lock = parse_lock(lock_text)
    if is_stale(lock, dependencies):
        return StaleLockError(
            f"{LOCK_FILE} is out of date: the dependencies in {MANIFEST_FILE} changed since it was written",
            changes=stale_changes(lock, dependencies),
        )
    return None
