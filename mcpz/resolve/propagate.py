"""Constraint propagation over the index, and a complete search built on it.

Each agent in the closure of the roots has a domain: the bitset of its releases that can still be
part of a solution. An agent is *forced* when every solution contains it: a root, or a dependency
of every remaining release of a forced agent. Three rules shrink domains until nothing changes:

- root:    a root requirement restricts its agent's domain;
- support: a release dies when no remaining release of one of its dependencies is in range;
- forced:  a forced agent's dependency, shared by all its remaining releases, is forced too and
           restricted to the union of what those releases admit.

Every rule only removes releases that no solution can contain, so the result is sound: it prunes
resolvelib's candidates without changing its answer, and a forced agent left with an empty domain
proves there is no solution. `Propagator.search` adds decisions (an agent is given one version, or
one group of versions) with chronological backtracking: a complete search (maintained arc
consistency), used to check a "no" from resolvelib (whose backjumping can miss solutions:
sarugaku/resolvelib#206), and, with `record=True`, to build the proof that `explain.py` turns into
sentences.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice

from mcpz.resolve.provider import Problem, Requirement

ROOT = ""
"""`forced[name] == ROOT`: forced by a root requirement."""


@dataclass(frozen=True)
class Removal:
    """Why some releases of `name` left its domain.

    kind: "root" (outside `requirement`, a root requirement), "missing" (the agent is not in the
    index), "yanked", "prerelease", "support" (they depend on `requirement`, which no remaining
    release of its agent satisfies), "forced" (`parent` is forced and its remaining releases
    `parent_bits` all depend on this agent, none admitting these), "decision" (an assumption).
    """

    name: str
    bits: int
    kind: str
    requirement: Requirement | None = None
    parent: str | None = None
    parent_bits: int = 0


@dataclass(frozen=True)
class Conflict:
    """A forced agent with no release left."""

    name: str


@dataclass
class State:
    dom: dict[str, int]
    forced: dict[str, str]
    trail: list[Removal] = field(default_factory=list)
    open: list[str] = field(default_factory=list)
    """Forced agents with more than one release left, as of the first `scanned` entries of
    `forced` (entries are only added, in order, and domains only shrink: a name that left this
    list never comes back), so `Propagator.undecided` does not rescan every forced agent."""
    scanned: int = 0

    def copy(self) -> State:
        return State(dict(self.dom), dict(self.forced), list(self.trail), list(self.open), self.scanned)


@dataclass(frozen=True)
class Leaf:
    """The end of a refutation: propagation met `conflict`; `trail` says how."""

    conflict: Conflict
    trail: tuple[Removal, ...]
    forced: dict[str, str]


@dataclass(frozen=True)
class Split:
    """A refutation by cases: each group of `name`'s releases fails for its own reason."""

    name: str
    branches: tuple[tuple[int, Proof], ...]
    at: int
    """How much of each branch's trail was there before the split."""


Proof = Leaf | Split


class Propagator:
    def __init__(self, problem: Problem, roots: Sequence[Requirement], *, record: bool = False) -> None:
        self.problem = problem
        self.roots = list(roots)
        self.record = record
        self.names: list[str] = []
        self.depth: dict[str, int] = {}
        # (parent, dependency) -> [(requirement, bits of parent's releases with it)]
        self.uses: dict[tuple[str, str], list[tuple[Requirement, int]]] = {}
        self.parents: dict[str, list[str]] = {}
        self.children: dict[str, list[str]] = {}
        self._discover()

    def _discover(self) -> None:
        frontier = sorted({r.name for r in self.roots})
        for name in frontier:
            self.depth[name] = 1
        seen = set(frontier)
        level = 1
        while frontier:
            following: list[str] = []
            for name in frontier:
                self.names.append(name)
                package = self.problem.package(name)
                groups: dict[str, dict[int, int]] = {}
                by_id: dict[int, Requirement] = {}
                for candidate in package.candidates:
                    for requirement in candidate.requirements:
                        per = groups.setdefault(requirement.name, {})
                        per[id(requirement)] = per.get(id(requirement), 0) | 1 << candidate.bit
                        by_id[id(requirement)] = requirement
                self.children[name] = sorted(groups)
                for dep, per in groups.items():
                    self.uses[(name, dep)] = [(by_id[key], bits) for key, bits in per.items()]
                    self.parents.setdefault(dep, []).append(name)
                    if dep not in seen:
                        seen.add(dep)
                        self.depth[dep] = level + 1
                        following.append(dep)
            frontier = sorted(following)
            level += 1

    # -- the rules ----------------------------------------------------------------------------

    def initial(self) -> tuple[State, Conflict | None]:
        """The domains before any decision: filters, roots, then propagation to a fixed point."""
        state = State({}, {})
        pins: dict[str, int] = {}
        names_prerelease: set[str] = set()
        requirements = [*self.roots, *(r for (_, _), rs in self.uses.items() for r, _ in rs)]
        for requirement in requirements:
            if requirement.pinned:
                pins[requirement.name] = pins.get(requirement.name, 0) | requirement.loose
            if requirement.spec.names_prerelease:
                names_prerelease.add(requirement.name)
        for name in self.names:
            package = self.problem.package(name)
            dom = package.all
            if not package.releases:
                self._note(state, Removal(name, 0, "missing"))
            yanked = package.yanked & ~package.locked_bit & ~pins.get(name, 0)
            if yanked:
                self._note(state, Removal(name, yanked, "yanked"))
            dom &= ~yanked
            if name not in names_prerelease and dom & package.prerelease:
                self._note(state, Removal(name, dom & package.prerelease, "prerelease"))
                dom &= ~package.prerelease
            state.dom[name] = dom
        for requirement in self.roots:
            state.forced.setdefault(requirement.name, ROOT)
            removed = state.dom[requirement.name] & ~requirement.loose
            if removed:
                self._note(state, Removal(requirement.name, removed, "root", requirement))
                state.dom[requirement.name] &= requirement.loose
        conflict = self._propagate(state, self.names)
        if conflict is None:
            conflict = next((Conflict(r.name) for r in self.roots if not state.dom[r.name]), None)
        return state, conflict

    def _note(self, state: State, removal: Removal) -> None:
        if self.record:
            state.trail.append(removal)

    def _propagate(self, state: State, changed: Sequence[str]) -> Conflict | None:
        dom = state.dom
        forced = state.forced
        queue = deque(changed)
        queued = set(changed)
        while queue:
            name = queue.popleft()
            queued.discard(name)
            live = dom[name]
            for parent in self.parents.get(name, ()):
                parent_dom = dom[parent]
                if not parent_dom:
                    continue
                for requirement, bits in self.uses[(parent, name)]:
                    dead = parent_dom & bits
                    if dead and not live & requirement.loose:
                        parent_dom &= ~dead
                        self._note(state, Removal(parent, dead, "support", requirement))
                if parent_dom != dom[parent]:
                    dom[parent] = parent_dom
                    if not parent_dom and parent in forced:
                        return Conflict(parent)
                    if parent not in queued:
                        queued.add(parent)
                        queue.append(parent)
            if name not in forced or not live:
                continue
            for child in self.children[name]:
                union = 0
                covered = 0
                for requirement, bits in self.uses[(name, child)]:
                    if live & bits:
                        union |= requirement.loose
                        covered |= bits
                if live & ~covered:
                    continue
                newly = child not in forced
                if newly:
                    forced[child] = name
                removed = dom[child] & ~union
                if removed:
                    dom[child] &= union
                    self._note(state, Removal(child, removed, "forced", None, name, live))
                if not dom[child]:
                    return Conflict(child)
                if (newly or removed) and child not in queued:
                    queued.add(child)
                    queue.append(child)
        return None

    def decide(self, state: State, name: str, bits: int) -> Conflict | None:
        """Assume `name` is one of `bits` (forced) and propagate."""
        removed = state.dom[name] & ~bits
        state.forced.setdefault(name, ROOT)
        if removed:
            self._note(state, Removal(name, removed, "decision"))
            state.dom[name] &= bits
        if not state.dom[name]:
            return Conflict(name)
        return self._propagate(state, [name])

    # -- search ---------------------------------------------------------------------------------

    def undecided(self, state: State) -> str | None:
        """The forced agent with the fewest releases left (then the shallowest, then by name)."""
        dom = state.dom
        fresh = list(islice(state.forced, state.scanned, None))
        state.scanned += len(fresh)
        still: list[str] = []
        best: tuple[int, int, str] | None = None
        for name in chain(state.open, fresh):
            count = dom[name].bit_count()
            if count > 1:
                still.append(name)
                if best is None or count <= best[0]:
                    key = (count, self.depth.get(name, 0), name)
                    if best is None or key < best:
                        best = key
        state.open = still
        return None if best is None else best[2]

    def preferred_splits(self, state: State, name: str) -> list[int]:
        """Search order: the locked release, then newest first; one release per branch."""
        package = self.problem.package(name)
        dom = state.dom[name]
        order = [1 << b for b in package.bits(dom & ~package.locked_bit)]
        if dom & package.locked_bit:
            order.insert(0, package.locked_bit)
        return order

    def grouped_splits(self, state: State, name: str) -> list[int]:
        """Proof order: releases with the same dependencies together, newest group first."""
        package = self.problem.package(name)
        groups: dict[tuple[int, ...], int] = {}
        for bit in package.bits(state.dom[name]):
            signature = tuple(sorted(id(r) for r in package.candidates[bit].requirements))
            groups[signature] = groups.get(signature, 0) | 1 << bit
        return list(groups.values())

    def search(
        self,
        state: State,
        *,
        budget: int,
        accept: Callable[[State], bool] = lambda state: True,
    ) -> tuple[State | None, bool]:
        """Depth-first search from `state`: (a solution, False), (None, False) when there is
        none, or (None, True) when `budget` decisions ran out first."""
        stack: list[tuple[State, Iterator[int], str]] = []
        current: State | None = state
        decisions = 0
        while True:
            if current is not None:
                name = self.undecided(current)
                if name is None:
                    if accept(current):
                        return current, False
                else:
                    stack.append((current, iter(self.preferred_splits(current, name)), name))
            current = None
            while stack:
                base, options, name = stack[-1]
                bits = next(options, None)
                if bits is None:
                    stack.pop()
                    continue
                decisions += 1
                if decisions > budget:
                    return None, True
                trial = base.copy()
                if self.decide(trial, name, bits) is None:
                    current = trial
                    break
            if current is None:
                return None, False

    def refute(self, state: State, conflict: Conflict | None, *, budget: int) -> Proof | None:
        """A proof that `state` has no solution, by grouped cases; None when there is a solution or
        the proof would need more than `budget` propagations."""
        spent = 0

        def go(state: State, conflict: Conflict | None, depth: int) -> Proof | None:
            nonlocal spent
            if conflict is not None:
                return Leaf(conflict, tuple(state.trail), dict(state.forced))
            name = self.undecided(state)
            if name is None or depth > 6:
                return None
            branches: list[tuple[int, Proof]] = []
            for bits in self.grouped_splits(state, name):
                spent += 1
                if spent > budget:
                    return None
                trial = state.copy()
                proof = go(trial, self.decide(trial, name, bits), depth + 1)
                if proof is None:
                    return None
                branches.append((bits, proof))
            return Split(name, tuple(branches), len(state.trail))

        return go(state, conflict, 0)
