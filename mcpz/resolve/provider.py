"""The resolvelib provider: the preference order and the candidate filter that make resolution fast.

Every agent's releases get a bit each (bit 0 = the newest). Each distinct (agent, specifier) becomes
one interned `Requirement` holding the set of releases it admits as an integer bitset, computed once;
so `find_matches` is a few AND operations and `is_satisfied_by` a bit test (the satisfaction cache).

Which requirement to work on next (`narrow_requirement_selection`, which returns exactly one so
resolvelib never sorts): those named by the last backtrack's causes first; among them pinned (`==`)
and already-locked choices; then the fewest remaining candidates; then the shallowest; then by name,
so the order never depends on hashing.

Which candidate to try first (`find_matches`): the locked version when it is still admitted, then
newest first. Yanked releases are skipped unless the lock or an `==` pins them; pre-releases unless a
specifier on that agent names one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from packaging.version import Version
from resolvelib import AbstractProvider, BaseReporter
from resolvelib.resolvers.resolution import Resolution
from resolvelib.structs import RequirementInformation

from mcpz.resolve.index import PackageIndex, Release, Spec, parse_spec


class Candidate:
    """A release as the resolver handles it: its bit, and its dependencies as interned requirements."""

    __slots__ = ("bit", "name", "release", "requirements")

    def __init__(self, name: str, bit: int, release: Release, requirements: tuple[Requirement, ...]) -> None:
        self.name = name
        self.bit = bit
        self.release = release
        self.requirements = requirements

    @property
    def version(self) -> Version:
        return self.release.version

    def __repr__(self) -> str:
        return f"{self.name} {self.release.version}"


class Requirement:
    """`name` restricted by `spec`; `loose` is the bitset of releases in range (pre-releases too)."""

    __slots__ = ("loose", "name", "pinned", "spec")

    def __init__(self, name: str, spec: Spec, loose: int) -> None:
        self.name = name
        self.spec = spec
        self.loose = loose
        self.pinned = spec.pinned is not None

    def __repr__(self) -> str:
        return f"{self.name}{self.spec.specifier}" if str(self.spec.specifier) else f"{self.name} *"


class Package:
    """One agent's releases as bitsets."""

    __slots__ = ("candidates", "live", "locked_bit", "name", "prerelease", "releases", "yanked")

    def __init__(self, name: str, releases: Sequence[Release], locked: Version | None) -> None:
        self.name = name
        self.releases = list(releases)
        self.candidates: list[Candidate] = []
        self.yanked = 0
        self.prerelease = 0
        self.locked_bit = 0
        for bit, release in enumerate(self.releases):
            if release.yanked:
                self.yanked |= 1 << bit
            if release.version.is_prerelease:
                self.prerelease |= 1 << bit
            if locked is not None and release.version == locked:
                self.locked_bit = 1 << bit
        self.live = (1 << len(self.releases)) - 1

    @property
    def all(self) -> int:
        return (1 << len(self.releases)) - 1

    def bits(self, mask: int) -> Iterator[int]:
        while mask:
            low = mask & -mask
            yield low.bit_length() - 1
            mask ^= low


class Problem:
    """The interned form of one resolution problem: packages, requirements, preferences."""

    def __init__(
        self,
        index: PackageIndex,
        *,
        locked: Mapping[str, Version],
        project: Release | None = None,
    ) -> None:
        self.index = index
        self.locked = locked
        self.project = project
        self._packages: dict[str, Package] = {}
        self._requirements: dict[tuple[str, str], Requirement] = {}
        # Agents often share a list of versions, and specifiers repeat across agents: the bitset
        # of a specifier over one list of versions is computed once (matching a version against
        # a SpecifierSet is the costly part of building a problem).
        self._shapes: dict[tuple[Version, ...], int] = {}
        self._shape_of: dict[str, int] = {}
        self._masks: dict[tuple[int, str], int] = {}

    def package(self, name: str) -> Package:
        package = self._packages.get(name)
        if package is None:
            if self.project is not None and name == self.project.name:
                releases: Sequence[Release] = (self.project,)
            else:
                releases = self.index.releases(name)
            package = Package(name, releases, self.locked.get(name))
            self._packages[name] = package
            # Candidates after the package is registered, so that cycles find it.
            package.candidates = [
                Candidate(name, bit, release, self.requirements_of(release))
                for bit, release in enumerate(package.releases)
            ]
        return package

    @property
    def packages(self) -> Mapping[str, Package]:
        return self._packages

    def requirement(self, name: str, spec: Spec) -> Requirement:
        key = (name, spec.text)
        found = self._requirements.get(key)
        if found is None:
            releases = self.package(name).releases if name in self._packages else self._releases(name)
            shape = self._shape_of.get(name)
            if shape is None:
                versions = tuple(release.version for release in releases)
                shape = self._shapes.setdefault(versions, len(self._shapes))
                self._shape_of[name] = shape
            loose = self._masks.get((shape, spec.text), -1)
            if loose < 0:
                loose = 0
                for bit, release in enumerate(releases):
                    if spec.contains(release.version):
                        loose |= 1 << bit
                self._masks[(shape, spec.text)] = loose
            found = Requirement(name, spec, loose)
            self._requirements[key] = found
        return found

    def _releases(self, name: str) -> Sequence[Release]:
        if self.project is not None and name == self.project.name:
            return (self.project,)
        return self.index.releases(name)

    def requirements_of(self, release: Release) -> tuple[Requirement, ...]:
        return tuple(self.requirement(dep, spec) for dep, spec in release.dependencies.items())

    def root_requirements(self, roots: Mapping[str, str]) -> list[Requirement]:
        return [self.requirement(name, parse_spec(text)) for name, text in sorted(roots.items())]

    def admitted(self, name: str, requirements: Iterable[Requirement], excluded: int = 0) -> int:
        """The bitset of releases of `name` that every requirement admits, filters applied."""
        package = self.package(name)
        mask = package.live & ~excluded
        asks_prerelease = False
        pinned = False
        for requirement in requirements:
            mask &= requirement.loose
            asks_prerelease = asks_prerelease or requirement.spec.names_prerelease
            pinned = pinned or requirement.pinned
        if not asks_prerelease:
            mask &= ~package.prerelease
        if not pinned:
            mask &= ~(package.yanked & ~package.locked_bit)
        return mask


class Provider(AbstractProvider[Requirement, Candidate, str]):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self._ordered: dict[tuple[str, int], list[Candidate]] = {}
        self._depth: dict[str, int] = {}

    def identify(self, requirement_or_candidate: Requirement | Candidate) -> str:
        return requirement_or_candidate.name

    def get_preference(
        self,
        identifier: str,
        resolutions: Mapping[str, Candidate],
        candidates: Mapping[str, Iterator[Candidate]],
        information: Mapping[str, Iterator[RequirementInformation[Requirement, Candidate]]],
        backtrack_causes: Sequence[RequirementInformation[Requirement, Candidate]],
    ) -> Any:
        return self._key(identifier, candidates, information, self._cause_names(backtrack_causes))

    def narrow_requirement_selection(
        self,
        identifiers: Iterable[str],
        resolutions: Mapping[str, Candidate],
        candidates: Mapping[str, Iterator[Candidate]],
        information: Mapping[str, Iterator[RequirementInformation[Requirement, Candidate]]],
        backtrack_causes: Sequence[RequirementInformation[Requirement, Candidate]],
    ) -> Iterable[str]:
        causes = self._cause_names(backtrack_causes)
        pool = list(identifiers)
        if causes:
            in_causes = [i for i in pool if i in causes]
            if in_causes:
                pool = in_causes
        best = min(pool, key=lambda i: self._key(i, candidates, information, causes))
        return [best]

    @staticmethod
    def _cause_names(causes: Sequence[RequirementInformation[Requirement, Candidate]]) -> set[str]:
        names: set[str] = set()
        for cause in causes:
            names.add(cause.requirement.name)
            if cause.parent is not None:
                names.add(cause.parent.name)
        return names

    def _key(
        self,
        identifier: str,
        candidates: Mapping[str, Iterator[Candidate]],
        information: Mapping[str, Iterator[RequirementInformation[Requirement, Candidate]]],
        causes: set[str],
    ) -> tuple[int, int, int, str]:
        depth = 1 << 30
        pinned = False
        for info in information[identifier]:
            pinned = pinned or info.requirement.pinned
            if info.parent is None:
                depth = 1
            else:
                depth = min(depth, self._depth.get(info.parent.name, 1 << 29) + 1)
        self._depth[identifier] = depth
        locked_bit = self.problem.package(identifier).locked_bit
        count = 0
        for candidate in candidates[identifier]:
            count += 1
            if (1 << candidate.bit) == locked_bit:
                pinned = True
        return (0 if pinned else 1, count, depth, identifier)

    def find_matches(
        self,
        identifier: str,
        requirements: Mapping[str, Iterator[Requirement]],
        incompatibilities: Mapping[str, Iterator[Candidate]],
    ) -> list[Candidate]:
        excluded = 0
        for candidate in incompatibilities[identifier]:
            excluded |= 1 << candidate.bit
        mask = self.problem.admitted(identifier, requirements[identifier], excluded)
        key = (identifier, mask)
        ordered = self._ordered.get(key)
        if ordered is None:
            package = self.problem.package(identifier)
            ordered = [package.candidates[bit] for bit in package.bits(mask & ~package.locked_bit)]
            if mask & package.locked_bit:
                ordered.insert(0, package.candidates[package.locked_bit.bit_length() - 1])
            self._ordered[key] = ordered
        return ordered

    def is_satisfied_by(self, requirement: Requirement, candidate: Candidate) -> bool:
        return bool(requirement.loose >> candidate.bit & 1)

    def get_dependencies(self, candidate: Candidate) -> Iterable[Requirement]:
        return candidate.requirements


class RoundCounter(BaseReporter[Requirement, Candidate, str]):
    def __init__(self) -> None:
        self.rounds = 0

    def starting_round(self, index: int) -> None:
        self.rounds = index + 1


class _CachingResolution(Resolution[Requirement, Candidate, str]):
    """resolvelib's search, with "does the current pin still satisfy this criterion" cached.

    resolvelib asks that question of every criterion twice a round, which makes a round cost
    O(agents x requirements); criteria are immutable and replaced when they change, so the answer
    for a (criterion, pin) pair never changes.
    """

    def __init__(self, provider: Provider, reporter: BaseReporter[Requirement, Candidate, str]) -> None:
        super().__init__(provider, reporter)
        self._satisfying: dict[int, tuple[object, object, bool]] = {}

    def _is_current_pin_satisfying(self, name: str, criterion: Any) -> bool:
        pin = self._states[-1].mapping.get(name)
        if pin is None:
            return False
        hit = self._satisfying.get(id(criterion))
        if hit is not None and hit[0] is criterion and hit[1] is pin:
            return hit[2]
        satisfied = all(requirement.loose >> pin.bit & 1 for requirement in criterion.iter_requirement())
        self._satisfying[id(criterion)] = (criterion, pin, satisfied)
        return satisfied


class Resolver:
    """resolvelib's resolver with the cached satisfaction check; returns the pins alone.

    (resolvelib's own result graph walks parents recursively and can recurse without end on a
    dependency cycle; `core` builds the closure from the pins itself.)
    """

    def __init__(self, provider: Provider, reporter: BaseReporter[Requirement, Candidate, str]) -> None:
        self.provider = provider
        self.reporter = reporter

    def resolve(self, requirements: Iterable[Requirement], max_rounds: int = 100) -> dict[str, Candidate]:
        resolution = _CachingResolution(self.provider, self.reporter)
        state = resolution.resolve(requirements, max_rounds=max_rounds)
        return dict(state.mapping)
