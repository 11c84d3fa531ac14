"""`resolve`: requirements and an index in, a `Resolution` or an explained `ResolutionImpossible` out.

The search itself sits behind the `Backend` protocol; `ResolvelibBackend` (resolvelib with the
provider in `provider.py`) is the one in use, and another algorithm can replace it without touching
callers. What every backend shares lives here: turning the inputs into a `Problem`, the upgrade and
lock semantics, pruning releases that can never be chosen, checking the answer, and explaining a
failure (`explain.py`), which does not depend on the backend's own account of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Protocol

import resolvelib
from packaging.version import InvalidVersion, Version

from mcpz.errors import ResolutionImpossible, UsageError
from mcpz.resolve.explain import explain_failure
from mcpz.resolve.index import PackageIndex, Release, Spec, parse_spec
from mcpz.resolve.propagate import Propagator, State
from mcpz.resolve.provider import Candidate, Problem, Provider, Requirement, Resolver, RoundCounter
from mcpz.resolve.result import Requirer, Resolution, ResolvedPackage

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROUNDS = 100_000


@dataclass(frozen=True)
class Request:
    """Everything a backend needs: the interned problem, its roots, the pruned starting point."""

    problem: Problem
    roots: tuple[Requirement, ...]
    propagator: Propagator
    state: State
    """Domains after propagation at the root; `problem`'s packages are already pruned to them."""
    max_rounds: int


@dataclass
class Outcome:
    """A backend's answer: the chosen candidate of each agent, or None when it found none."""

    chosen: dict[str, Candidate] | None
    rounds: int
    gave_up: bool = False
    notes: list[str] = field(default_factory=list)


class Backend(Protocol):
    """A resolution algorithm. It only searches; `resolve` does the rest (pruning, checking,
    explaining), so an answer of "none" need not be explained, or even be right: it is checked."""

    def search(self, request: Request) -> Outcome: ...


class ResolvelibBackend:
    """resolvelib's backjumping search, steered by `provider.Provider`.

    `rounds_per_agent` bounds its rounds by the size of the closure (capped by `max_rounds`): past
    that, resolvelib is thrashing, and `resolve` hands over to the complete search.
    """

    def __init__(self, rounds_per_agent: int | None = 3) -> None:
        self.rounds_per_agent = rounds_per_agent

    def search(self, request: Request) -> Outcome:
        provider = Provider(request.problem)
        reporter = RoundCounter()
        resolver = Resolver(provider, reporter)
        rounds = request.max_rounds
        if self.rounds_per_agent is not None:
            rounds = min(rounds, 500 + self.rounds_per_agent * len(request.propagator.names))
        try:
            result = resolver.resolve(request.roots, max_rounds=rounds)
        except resolvelib.ResolutionTooDeep:
            return Outcome(None, reporter.rounds, gave_up=True)
        except resolvelib.ResolutionImpossible as e:
            notes = [f"{c.requirement!r} from {c.parent!r}" for c in e.causes]
            return Outcome(None, reporter.rounds, notes=notes)
        return Outcome(result, reporter.rounds)


class PropagatingBackend:
    """Depth-first search with propagation after every decision (`propagate.Propagator.search`):
    complete, so its "none" is a proof; decisions follow the same preferences (locked, newest)."""

    def search(self, request: Request) -> Outcome:
        propagator = request.propagator
        found, gave_up = propagator.search(
            request.state, budget=request.max_rounds, accept=lambda s: _acceptable(request, s)
        )
        if found is None:
            return Outcome(None, request.max_rounds if gave_up else 0, gave_up=gave_up)
        chosen: dict[str, Candidate] = {}
        for name in found.forced:
            package = request.problem.package(name)
            chosen[name] = package.candidates[found.dom[name].bit_length() - 1]
        return Outcome(chosen, len(found.forced))


class ResolutionTooDeep(ResolutionImpossible):
    """The search gave up after `rounds` rounds without an answer either way."""

    def __init__(self, message: str, *, rounds: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.rounds = rounds


def resolve(
    roots: Mapping[str, str],
    index: PackageIndex,
    *,
    locked: Mapping[str, str | Version] | None = None,
    upgrade: bool | Set[str] = False,
    project: tuple[str, str | Version] | None = None,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    backend: Backend | None = None,
) -> Resolution:
    """Choose one release of every agent the roots need, directly or not.

    `roots` maps agent names to specifiers (PEP 440, or `^`/`~` sugar; "" or "*" for any).
    `locked` (name -> version, e.g. from `mcpz.lock`) is preferred wherever it is still admitted,
    so re-locking changes nothing; `upgrade=True` ignores it, `upgrade={names}` ignores it for
    those agents only, so they, and whatever their new versions force, may move and nothing else.
    `project` (name, version) is the agent being locked: a dependency cycle back into it is checked
    against that version instead of being resolved from the index.

    The default search is resolvelib (`ResolvelibBackend`); when it finds nothing, or runs past its
    share of rounds, the complete search (`PropagatingBackend`) decides. Pass `backend` to use one
    search alone.

    Raises `ConflictError` (a `ResolutionImpossible`) with an explanation when no set of releases
    satisfies everything, `ResolutionTooDeep` when the search used `max_rounds` rounds.
    """
    preferred = _preferences(locked or {}, upgrade)
    project_release: Release | None = None
    root_label = "the manifest"
    if project is not None:
        name, version = project
        root_label = name
        project_release = Release(
            name=name,
            version=version if isinstance(version, Version) else Version(version),
            commit="",
            dependencies={dep: parse_spec(text) for dep, text in sorted(roots.items())},
        )
    problem = Problem(index, locked=preferred, project=project_release)
    if project_release is not None:
        pin = parse_spec(f"=={project_release.version}")
        root_requirements: tuple[Requirement, ...] = (problem.requirement(project_release.name, pin),)
    else:
        root_requirements = tuple(problem.root_requirements(roots))

    propagator = Propagator(problem, root_requirements)
    state, conflict = propagator.initial()
    if conflict is not None:
        raise explain_failure(problem, root_requirements, root_label=root_label)
    for name in propagator.names:
        problem.package(name).live = state.dom[name]
    request = Request(problem, root_requirements, propagator, state, max_rounds)

    # The complete search goes first: it was 4-7x faster than resolvelib on the large benchmark
    # graphs, and its "no" is a proof (resolvelib 1.2 can say "no" when an answer exists,
    # sarugaku/resolvelib#206). resolvelib's provider stays as the second opinion when the
    # complete search runs out of rounds.
    searches: list[Backend] = (
        [backend] if backend is not None else [PropagatingBackend(), ResolvelibBackend()]
    )
    outcome = Outcome(None, 0)
    rounds = 0
    for search in searches:
        outcome = search.search(request)
        rounds += outcome.rounds
        if outcome.chosen is not None and not _acceptable_choice(request, outcome.chosen):
            logger.debug("%s chose a yanked or pre-release version nothing asked for", type(search).__name__)
            outcome = Outcome(None, outcome.rounds)
        if outcome.chosen is not None and _violations(roots, outcome.chosen, project_release):
            logger.debug("%s returned an answer that breaks a constraint", type(search).__name__)
            outcome = Outcome(None, outcome.rounds)
        if outcome.chosen is not None:
            break
        logger.debug("%s found no solution after %d rounds", type(search).__name__, outcome.rounds)
        if isinstance(search, PropagatingBackend) and not outcome.gave_up:
            break  # proved: no solution exists
    if outcome.chosen is None:
        if outcome.gave_up:
            raise ResolutionTooDeep(
                f"dependency resolution gave up after {rounds} rounds without finding a solution",
                rounds=rounds,
                hint="pin the agents that backtrack most with == in [dependencies], or raise the round limit",
            )
        raise explain_failure(problem, root_requirements, root_label=root_label, notes=outcome.notes)
    outcome.rounds = rounds
    return _build(roots, outcome, project_release)


def _acceptable(request: Request, state: State) -> bool:
    chosen = {}
    for name in state.forced:
        package = request.problem.package(name)
        chosen[name] = package.candidates[state.dom[name].bit_length() - 1]
    return _acceptable_choice(request, chosen)


def _acceptable_choice(request: Request, chosen: Mapping[str, Candidate]) -> bool:
    """A yanked release needs the lock or an `==` requirement on it; a pre-release needs a
    requirement that names one. (Both searches mostly see to it; this makes it exact.)"""
    requirers: dict[str, list[Requirement]] = {}
    for requirement in request.roots:
        requirers.setdefault(requirement.name, []).append(requirement)
    for candidate in chosen.values():
        for requirement in candidate.requirements:
            requirers.setdefault(requirement.name, []).append(requirement)
    for name, candidate in chosen.items():
        package = request.problem.package(name)
        bit = 1 << candidate.bit
        reqs = requirers.get(name, [])
        if package.yanked & bit and not package.locked_bit & bit and not any(r.pinned for r in reqs):
            return False
        if package.prerelease & bit and not any(r.spec.names_prerelease for r in reqs):
            return False
    return True


def _preferences(locked: Mapping[str, str | Version], upgrade: bool | Set[str]) -> dict[str, Version]:
    if upgrade is True:
        return {}
    skip = set(upgrade) if upgrade else set()
    out: dict[str, Version] = {}
    for name, version in locked.items():
        if name in skip:
            continue
        try:
            out[name] = version if isinstance(version, Version) else Version(version)
        except InvalidVersion:
            raise UsageError(f'locked version "{version}" of {name} is not a PEP 440 version') from None
    return out


def _build(roots: Mapping[str, str], outcome: Outcome, project: Release | None) -> Resolution:
    """The closure of the roots over the chosen releases, each edge checked."""
    assert outcome.chosen is not None
    chosen = outcome.chosen
    required_by: dict[str, list[Requirer]] = {}
    order: list[str] = []
    frontier = sorted(roots)
    for name in frontier:
        required_by.setdefault(name, []).append(Requirer(None, roots[name].strip() or "*"))
    seen = set(frontier)
    while frontier:
        following: list[str] = []
        for name in frontier:
            if project is not None and name == project.name:
                continue
            order.append(name)
            candidate = chosen.get(name)
            if candidate is None:
                raise AssertionError(f"resolver returned no release for {name}")
            for dep, spec in candidate.release.dependencies.items():
                required_by.setdefault(dep, []).append(Requirer(name, spec.text or "*"))
                if dep not in seen:
                    seen.add(dep)
                    following.append(dep)
        frontier = sorted(following)
    packages: dict[str, ResolvedPackage] = {}
    for name in sorted(order):
        release = chosen[name].release
        packages[name] = ResolvedPackage(
            name=name,
            version=release.version,
            commit=release.commit,
            dependencies=release.dependency_texts,
            yanked=release.yanked,
        )
    return Resolution(
        roots=dict(sorted(roots.items())),
        packages=packages,
        required_by={name: tuple(edges) for name, edges in sorted(required_by.items())},
        rounds=outcome.rounds,
    )


def _violations(
    roots: Mapping[str, str], chosen: Mapping[str, Candidate], project: Release | None
) -> list[str]:
    """Every edge of the closure of `roots` over `chosen` that does not hold (a backend's bug)."""
    problems: list[str] = []
    frontier: list[tuple[str | None, str, Spec]] = [
        (None, name, parse_spec(text)) for name, text in sorted(roots.items())
    ]
    seen: set[str] = set()
    while frontier:
        parent, name, spec = frontier.pop()
        if project is not None and name == project.name:
            if not spec.contains(project.version):
                problems.append(f"{parent} needs {name}{spec}, the project is {project.version}")
            continue
        candidate = chosen.get(name)
        if candidate is None:
            problems.append(f"no release chosen for {name}")
            continue
        if not spec.contains(candidate.version):
            problems.append(f"{name} {candidate.version} is outside {spec} from {parent}")
        if name not in seen:
            seen.add(name)
            frontier.extend((name, dep, dep_spec) for dep, dep_spec in candidate.release.dependencies.items())
    return problems
