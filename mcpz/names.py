"""Agent names: `namespace/name`, each part lower-case `[a-z0-9-]`, at most 64 characters."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mcpz.errors import UsageError

MAX_PART = 64
LATEST = "latest"
"""`NAME@latest`: the newest release that is not yanked nor a pre-release, wherever a version is
accepted (on a call through the gateway: the version the deployment runs)."""
_PART = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid agent name, or None when it is."""
    if not isinstance(name, str) or name.count("/") != 1:
        return 'must be "namespace/name"'
    for part in name.split("/"):
        if not part:
            return "has an empty part"
        if len(part) > MAX_PART:
            return f'part "{part[:20]}..." is longer than {MAX_PART} characters'
        if not _PART.fullmatch(part):
            return (
                f'part "{part}" may hold only lower-case letters, digits and "-", '
                "and may not start or end with -"
            )
    return None


def part_problem(part: str) -> str | None:
    """Why a single namespace or name part is invalid, or None."""
    problem = name_problem(f"{part}/x")
    return problem


@dataclass(frozen=True, order=True)
class AgentName:
    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> AgentName:
        problem = name_problem(text)
        if problem:
            raise UsageError(f'agent name "{text}" {problem}', hint='use a name like "acme/weather"')
        namespace, name = text.split("/")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def split_spec(spec: str, *, words: tuple[str, ...] = ()) -> tuple[str, str | None]:
    """`NAME[@VERSION]` as (name, version or None): the name valid, the version exact ("1.2.0",
    not a range like "1.x") or one of `words` (such as "dev"), and never empty after an "@"."""
    from packaging.version import InvalidVersion, Version

    name, at, version = spec.partition("@")
    AgentName.parse(name)
    if not at:
        return name, None
    if not version:
        raise UsageError(
            f'"{spec}" has an empty version after "@"', hint=f"write {name}@1.0.0, or just {name}"
        )
    if version in words or version == LATEST:
        return name, version
    try:
        Version(version)
    except InvalidVersion:
        raise UsageError(
            f'"{version}" is not an exact version',
            hint=f"name one release, e.g. {name}@1.0.0 (`mcpz versions {name}` lists them)",
        ) from None
    return name, version


def version_or_latest(version: str | None) -> str | None:
    """The version asked for in `NAME@VERSION`, None for the newest (no version, or `latest`)."""
    return None if not version or version == LATEST else version
