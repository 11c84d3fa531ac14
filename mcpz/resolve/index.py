"""The version index as the resolver sees it: agents, their releases, their dependencies.

Pure data. The registry's batch index endpoint (or a cache of it, or a test) fills an `Index`;
the resolver reads it through the `PackageIndex` protocol, which asks only for one agent's releases,
newest first. Versions and specifiers are parsed once, when a release enters the index, and equal
specifier texts share one parsed `Spec`.

The dictionary shape (`Index.from_dict` / `Index.to_dict`), also the JSON the registry serves::

    {"acme/geo": {"1.2.0": {"commit": "3f2a...", "yanked": false,
                            "dependencies": {"acme/units": ">=1,<2"}}}}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from mcpz.errors import McpzError, UsageError
from mcpz.names import name_problem
from mcpz.specifiers import parse_specifier


class IndexDataError(McpzError):
    """The index data itself is malformed (a bad version, specifier or name in a release)."""


@dataclass(frozen=True, eq=False)
class Spec:
    """A parsed dependency specifier; `text` is kept as written (sugar included) for messages."""

    text: str
    specifier: SpecifierSet
    pinned: Version | None
    """The version when the specifier is exactly one `==V` (no wildcard), else None."""
    names_prerelease: bool
    """Whether a clause names a pre-release, which is what lets pre-releases in."""

    def __str__(self) -> str:
        return self.text or "*"

    def admits(self, version: Version) -> bool:
        """Whether this specifier admits `version`, pre-releases only when it names one."""
        return self.specifier.contains(
            version, prereleases=self.names_prerelease or not version.is_prerelease
        )

    def contains(self, version: Version) -> bool:
        """Whether `version` is in the range at all, pre-release or not."""
        return self.specifier.contains(version, prereleases=True)


@lru_cache(maxsize=65536)
def parse_spec(text: str) -> Spec:
    """The shared `Spec` for a specifier text; raise UsageError when it is not one."""
    specifier = parse_specifier(text)
    clauses = list(specifier)
    pinned: Version | None = None
    if len(clauses) == 1 and clauses[0].operator == "==" and not clauses[0].version.endswith(".*"):
        pinned = Version(clauses[0].version)
    names_pre = False
    for clause in clauses:
        try:
            names_pre = names_pre or Version(clause.version.removesuffix(".*")).is_prerelease
        except InvalidVersion:
            continue
    return Spec(text=text.strip(), specifier=specifier, pinned=pinned, names_prerelease=names_pre)


@dataclass(frozen=True, eq=False)
class Release:
    """One published version of an agent: the commit it names, whether it is yanked, what it needs."""

    name: str
    version: Version
    commit: str
    dependencies: Mapping[str, Spec] = field(default_factory=dict)
    yanked: bool = False

    def __repr__(self) -> str:
        return f"Release({self.name} {self.version})"

    @property
    def dependency_texts(self) -> dict[str, str]:
        """Dependencies as the specifier texts the publisher wrote."""
        return {name: spec.text for name, spec in self.dependencies.items()}


class PackageIndex(Protocol):
    """What the resolver reads: one agent's releases, newest first; `()` for an unknown agent."""

    def releases(self, name: str) -> Sequence[Release]: ...


class Index:
    """An in-memory `PackageIndex`."""

    def __init__(self, releases: Iterable[Release] = ()) -> None:
        self._by_name: dict[str, list[Release]] = {}
        self._versions: dict[str, set[Version]] = {}
        self._sorted: set[str] = set()
        for release in releases:
            self.add_release(release)

    def add_release(self, release: Release) -> Release:
        versions = self._versions.setdefault(release.name, set())
        if release.version in versions:  # a set: an agent may have thousands of releases
            raise IndexDataError(f"{release.name} {release.version} is in the index twice")
        versions.add(release.version)
        self._by_name.setdefault(release.name, []).append(release)
        self._sorted.discard(release.name)
        return release

    def add(
        self,
        name: str,
        version: str | Version,
        commit: str = "",
        dependencies: Mapping[str, str] | None = None,
        *,
        yanked: bool = False,
    ) -> Release:
        """Add one release from plain values, parsing them (and checking names) once."""
        where = f"{name} {version}"
        problem = name_problem(name)
        if problem:
            raise IndexDataError(f'index: agent name "{name}" {problem}')
        try:
            parsed = version if isinstance(version, Version) else Version(version)
        except InvalidVersion:
            raise IndexDataError(
                f'index: {name} has a release "{version}" that is not a PEP 440 version'
            ) from None
        deps: dict[str, Spec] = {}
        for dep, text in sorted((dependencies or {}).items()):
            problem = name_problem(dep)
            if problem:
                raise IndexDataError(f'index: {where} depends on "{dep}", which {problem}')
            try:
                deps[dep] = parse_spec(text)
            except UsageError:
                raise IndexDataError(
                    f'index: {where} depends on {dep} "{text}", which is not a version specifier'
                ) from None
        return self.add_release(
            Release(name=name, version=parsed, commit=commit or "", dependencies=deps, yanked=yanked)
        )

    def releases(self, name: str) -> Sequence[Release]:
        found = self._by_name.get(name)
        if found is None:
            return ()
        if name not in self._sorted:
            found.sort(key=lambda r: r.version, reverse=True)
            self._sorted.add(name)
        return found

    def get(self, name: str, version: str | Version) -> Release | None:
        wanted = version if isinstance(version, Version) else Version(version)
        for release in self.releases(name):
            if release.version == wanted:
                return release
        return None

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Release]:
        for name in self.names():
            yield from self.releases(name)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Index:
        index = cls()
        for name, versions in data.items():
            if not isinstance(versions, Mapping):
                raise IndexDataError(f"index: {name} must map versions to releases")
            for version, info in versions.items():
                if not isinstance(info, Mapping):
                    raise IndexDataError(f"index: {name} {version} must be a table")
                deps = info.get("dependencies", {})
                commit = info.get("commit", "")
                yanked = info.get("yanked", False)
                if not isinstance(deps, Mapping) or not all(isinstance(v, str) for v in deps.values()):
                    raise IndexDataError(
                        f'index: {name} {version} "dependencies" must map names to specifiers'
                    )
                if not isinstance(commit, str) or not isinstance(yanked, bool):
                    raise IndexDataError(
                        f'index: {name} {version} needs a string "commit" and a bool "yanked"'
                    )
                index.add(name, version, commit, deps, yanked=yanked)
        return index

    def to_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for name in self.names():
            out[name] = {
                str(r.version): {"commit": r.commit, "yanked": r.yanked, "dependencies": r.dependency_texts}
                for r in reversed(self.releases(name))
            }
        return out
