"""The agent manifest, `mcpz.toml`: parsing, validation and writing.

Everything here is pure: text or dicts in, a `Manifest` or a `ManifestError` out. Errors name the
key, the bad value and what would be valid, as a person fixing the file needs.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w
from packaging.version import InvalidVersion, Version

from mcpz.errors import ManifestError
from mcpz.names import name_problem
from mcpz.specifiers import specifier_problem

MANIFEST_FILE = "mcpz.toml"
KINDS = ("agent", "plugin")
Kind = Literal["agent", "plugin"]

_TABLES = ("agent", "run", "dependencies")
_AGENT_KEYS = ("name", "version", "kind", "description", "license", "keywords")
_RUN_KEYS = ("command", "env", "sessions", "max_sessions", "session_idle")
SESSION_MODES = ("shared", "isolated")
DEFAULT_MAX_SESSIONS = 16
DEFAULT_SESSION_IDLE = 300.0


@dataclass(frozen=True)
class RunSpec:
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    # How the gateway maps client sessions to agent processes (docs/gateway.md#session-modes):
    # "shared", one warm process for every session, or "isolated", one process per session, at
    # most `max_sessions` at once per replica, each ended after `session_idle` seconds unused.
    sessions: str = "shared"
    max_sessions: int = DEFAULT_MAX_SESSIONS
    session_idle: float = DEFAULT_SESSION_IDLE


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    kind: Kind = "agent"
    description: str = ""
    license: str | None = None
    keywords: tuple[str, ...] = ()
    run: RunSpec | None = None
    dependencies: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.name.split("/")[0]

    @property
    def short_name(self) -> str:
        return self.name.split("/")[1]

    def to_dict(self) -> dict[str, Any]:
        agent: dict[str, Any] = {"name": self.name, "version": self.version, "kind": self.kind}
        if self.description:
            agent["description"] = self.description
        if self.license is not None:
            agent["license"] = self.license
        if self.keywords:
            agent["keywords"] = list(self.keywords)
        data: dict[str, Any] = {"agent": agent}
        if self.run is not None:
            run: dict[str, Any] = {"command": list(self.run.command)}
            if self.run.env:
                run["env"] = dict(self.run.env)
            if self.run.sessions != "shared":
                run["sessions"] = self.run.sessions
            if self.run.max_sessions != DEFAULT_MAX_SESSIONS:
                run["max_sessions"] = self.run.max_sessions
            if self.run.session_idle != DEFAULT_SESSION_IDLE:
                run["session_idle"] = self.run.session_idle
            data["run"] = run
        if self.dependencies:
            data["dependencies"] = dict(sorted(self.dependencies.items()))
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def with_version(self, version: str) -> Manifest:
        return _replace(self, version=check_version(version, key="[agent].version"))

    def with_dependencies(self, dependencies: Mapping[str, str]) -> Manifest:
        return _replace(self, dependencies=dict(sorted(dependencies.items())))


def _replace(manifest: Manifest, **changes: Any) -> Manifest:
    from dataclasses import replace

    return replace(manifest, **changes)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _err(message: str, source: str) -> ManifestError:
    return ManifestError(f"{source}: {message}", hint=f"fix {source} and try again")


def _unknown(key: str, known: tuple[str, ...], where: str, source: str) -> ManifestError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    suggestion = f'; did you mean "{close[0]}"?' if close else f" (known: {', '.join(known)})"
    return _err(f'unknown key {where}"{key}"{suggestion}', source)


def check_version(value: Any, *, key: str = "version", source: str = MANIFEST_FILE) -> str:
    """Return `value` if it is a PEP 440 version in normal form, else raise ManifestError."""
    if not isinstance(value, str):
        raise _err(f'{key} must be a string like "1.0.0", not {type(value).__name__}', source)
    try:
        normal = str(Version(value))
    except InvalidVersion:
        raise _err(f'{key} "{value}" is not a PEP 440 version (e.g. "1.0.0")', source) from None
    if normal != value:
        # Tags and index entries use the version text as is, so two spellings of one version
        # would name two different releases.
        raise _err(f'{key} "{value}" is not in PEP 440 normal form; write "{normal}"', source)
    return value


def _str(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str):
        raise _err(f"{key} must be a string, not {type(value).__name__}", source)
    return value


def _str_list(value: Any, key: str, source: str, *, allow_empty: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _err(f'{key} must be a list of strings, e.g. ["a", "b"]', source)
    if not allow_empty and not value:
        raise _err(f'{key} must not be empty, e.g. ["python", "server.py"]', source)
    return tuple(value)


def manifest_from_dict(data: Mapping[str, Any], source: str = MANIFEST_FILE) -> Manifest:
    """Validate a decoded manifest; raise ManifestError naming the first problem."""
    for key in data:
        if key not in _TABLES:
            raise _unknown(key, _TABLES, "", source)
    agent = data.get("agent")
    if not isinstance(agent, dict):
        raise _err('missing table [agent] (with name = "ns/name" and version = "0.1.0")', source)
    for key in agent:
        if key not in _AGENT_KEYS:
            raise _unknown(key, _AGENT_KEYS, "[agent].", source)
    if "name" not in agent:
        raise _err('[agent].name is missing (e.g. name = "acme/weather")', source)
    name = _str(agent["name"], "[agent].name", source)
    problem = name_problem(name)
    if problem:
        raise _err(f'[agent].name "{name}" {problem} (e.g. "acme/weather")', source)
    if "version" not in agent:
        raise _err('[agent].version is missing (e.g. version = "0.1.0")', source)
    version = check_version(agent["version"], key="[agent].version", source=source)
    kind = agent.get("kind", "agent")
    if kind not in KINDS:
        raise _err(f'[agent].kind "{kind}" is not one of "agent", "plugin"', source)
    description = _str(agent.get("description", ""), "[agent].description", source)
    license_ = agent.get("license")
    if license_ is not None:
        license_ = _str(license_, "[agent].license", source)
    keywords = _str_list(agent.get("keywords", []), "[agent].keywords", source)

    run: RunSpec | None = None
    run_table = data.get("run")
    if run_table is not None:
        if not isinstance(run_table, dict):
            raise _err("[run] must be a table", source)
        if kind == "plugin":
            raise _err('[run] is only for kind = "agent"; a plugin is not run on its own', source)
        for key in run_table:
            if key not in _RUN_KEYS:
                raise _unknown(key, _RUN_KEYS, "[run].", source)
        if "command" not in run_table:
            raise _err('[run].command is missing (e.g. command = ["python", "server.py"])', source)
        command = _str_list(run_table["command"], "[run].command", source, allow_empty=False)
        env = run_table.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise _err('[run].env must be a table of strings, e.g. { LOG_LEVEL = "info" }', source)
        sessions = run_table.get("sessions", "shared")
        if sessions not in SESSION_MODES:
            raise _err(f'[run].sessions {sessions!r} is not one of "shared", "isolated"', source)
        max_sessions = run_table.get("max_sessions", DEFAULT_MAX_SESSIONS)
        if not _whole(max_sessions) or not 1 <= max_sessions <= 100_000:
            raise _err(f"[run].max_sessions {max_sessions!r} must be a whole number from 1 to 100000", source)
        idle = run_table.get("session_idle", DEFAULT_SESSION_IDLE)
        if isinstance(idle, bool) or not isinstance(idle, int | float) or not 1 <= idle <= 86_400:
            raise _err(f"[run].session_idle {idle!r} must be seconds, from 1 to 86400", source)
        run = RunSpec(
            command=command,
            env=dict(env),
            sessions=sessions,
            max_sessions=max_sessions,
            session_idle=float(idle),
        )
    elif kind == "agent":
        raise _err('missing table [run] for kind = "agent" (e.g. command = ["python", "server.py"])', source)

    deps_table = data.get("dependencies", {})
    if not isinstance(deps_table, dict):
        raise _err('[dependencies] must be a table of "ns/name" = "specifier"', source)
    dependencies: dict[str, str] = {}
    for dep, spec in deps_table.items():
        problem = name_problem(dep)
        if problem:
            raise _err(f'[dependencies] key "{dep}" {problem} (e.g. "acme/geo")', source)
        if dep == name:
            raise _err(f'[dependencies] "{dep}" is the agent itself', source)
        if not isinstance(spec, str):
            raise _err(f'[dependencies]."{dep}" must be a string like ">=1.2,<2"', source)
        problem = specifier_problem(spec)
        if problem:
            raise _err(f'[dependencies]."{dep}" "{spec}" {problem}', source)
        dependencies[dep] = spec
    return Manifest(
        name=name,
        version=version,
        kind=kind,
        description=description,
        license=license_,
        keywords=keywords,
        run=run,
        dependencies=dict(sorted(dependencies.items())),
    )


def parse_manifest(text: str, source: str = MANIFEST_FILE) -> Manifest:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _err(f"not valid TOML: {e}", source) from e
    return manifest_from_dict(data, source)


def load_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"no {MANIFEST_FILE} in {folder}",
            hint="run `mcpz init` to create an agent, or cd into one",
        ) from None
    except UnicodeDecodeError as e:
        raise _err(f"not UTF-8 text: {e}", str(path)) from e
    return parse_manifest(text, MANIFEST_FILE)
