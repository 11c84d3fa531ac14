"""Why there is no solution, in sentences a person can act on.

A refutation from `propagate.py` is a chain of removals (this release can't be used because...)
ending at an agent that must be installed but has no release left, possibly split into cases. Only
the removals the conclusion depends on are kept (a backward slice), so an explanation names only
the agents that take part in the conflict. Then each removal becomes one sentence:

    acme/app depends on acme/geo>=2 and acme/maps>=1,<2; acme/maps 1.0..1.9 depend on acme/geo<2;
    so no version of acme/maps satisfies acme/app

Consecutive versions collapse into ranges ("1.0..1.9" means every published version from 1.0 to 1.9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mcpz.errors import ResolutionImpossible
from mcpz.resolve.propagate import ROOT, Leaf, Proof, Propagator, Removal
from mcpz.resolve.provider import Problem, Requirement

EXPLAIN_BUDGET = 400
"""At most this many cases are tried to build an explanation by cases."""


@dataclass(frozen=True)
class Explanation:
    """The sentences, in order, and the agents they name."""

    sentences: tuple[str, ...]
    packages: frozenset[str]
    roots: frozenset[str] = field(default_factory=frozenset)
    """The manifest's dependencies that take part: the ones a user can change."""

    def __str__(self) -> str:
        return "; ".join(self.sentences)


class ConflictError(ResolutionImpossible):
    """No set of releases satisfies the dependencies; `explanation` says why."""

    def __init__(self, explanation: Explanation, *, hint: str | None = None) -> None:
        super().__init__(str(explanation), hint=hint)
        self.explanation = explanation


def describe_versions(problem: Problem, name: str, bits: int) -> str:
    """`bits` of `name`'s releases as ranges of consecutive versions: "1.0..1.9, 2.1"."""
    package = problem.package(name)
    count = len(package.releases)
    runs: list[str] = []
    start: int | None = None
    # Bit 0 is the newest release: walk from the oldest up.
    for bit in range(count - 1, -2, -1):
        inside = bit >= 0 and bool(bits >> bit & 1)
        if inside and start is None:
            start = bit
        elif not inside and start is not None:
            end = bit + 1
            low, high = package.releases[start].version, package.releases[end].version
            runs.append(str(low) if start == end else f"{low}..{high}")
            start = None
    return ", ".join(runs)


def requirement_text(requirement: Requirement) -> str:
    text = requirement.spec.text
    if not text or text == "*":
        return requirement.name
    if text[0] in "^~" and not text.startswith("~="):
        return f"{requirement.name} {text}"
    return f"{requirement.name}{text}"


class _Renderer:
    def __init__(self, problem: Problem, propagator: Propagator, root_label: str) -> None:
        self.problem = problem
        self.propagator = propagator
        self.root_label = root_label
        self.roots = {r.name: r for r in propagator.roots}
        self.project = problem.project.name if problem.project is not None else None
        self.named: set[str] = set()
        self.root_names: set[str] = set()
        self.forced_roots: set[str] = set()
        self.stated_roots: set[str] = set()

    def _versions(self, name: str, bits: int) -> tuple[str, bool]:
        """("acme/x 1.0..1.3", plural)."""
        self.named.add(name)
        return f"{name} {describe_versions(self.problem, name, bits)}", bits.bit_count() > 1

    def slice(self, leaf: Leaf, upto: int | None = None) -> list[int]:
        """Indices of the removals in `leaf.trail` that the conflict depends on, in order."""
        trail = leaf.trail
        by_name: dict[str, list[int]] = {}
        for i, removal in enumerate(trail):
            by_name.setdefault(removal.name, []).append(i)
        selected: set[int] = set()
        seen: set[tuple[str, int, int]] = set()
        forcing_done: set[str] = set()
        work: list[tuple[str, int, int]] = []

        def need(name: str, bits: int, before: int) -> None:
            key = (name, bits, before)
            if bits and key not in seen:
                seen.add(key)
                work.append(key)

        def forcing(name: str) -> None:
            if name in forcing_done:
                return
            forcing_done.add(name)
            parent = leaf.forced.get(name)
            if parent == ROOT and name in self.roots and name != self.project:
                self.forced_roots.add(name)
            if parent == self.project:
                self.forced_roots.add(name)
            if parent is None or parent == ROOT:
                return
            forcing(parent)
            # The parent's releases without this dependency had to be gone for it to be forced.
            package = self.problem.package(parent)
            with_dep = 0
            for _, bits in self.propagator.uses.get((parent, name), ()):
                with_dep |= bits
            need(parent, package.all & ~with_dep, len(trail))

        package = self.problem.package(leaf.conflict.name)
        if not package.releases:
            selected.update(by_name.get(leaf.conflict.name, ()))
        need(leaf.conflict.name, package.all, len(trail))
        forcing(leaf.conflict.name)
        while work:
            name, bits, before = work.pop()
            for i in by_name.get(name, ()):
                if i >= before:
                    break
                removal = trail[i]
                if not removal.bits & bits and removal.kind != "missing":
                    continue
                if i in selected:
                    continue
                selected.add(i)
                if removal.kind == "support":
                    assert removal.requirement is not None
                    dep = removal.requirement
                    need(dep.name, self.problem.package(dep.name).all & dep.loose, i)
                elif removal.kind == "forced":
                    assert removal.parent is not None
                    forcing(removal.parent)
                    admitting = 0
                    for requirement, parent_bits in self.propagator.uses[(removal.parent, name)]:
                        if requirement.loose & removal.bits:
                            admitting |= parent_bits
                    need(removal.parent, admitting & ~removal.parent_bits, i)
        return sorted(i for i in selected if upto is None or i >= upto)

    def _root_requirement(self, name: str) -> Requirement | None:
        if self.project is None:
            return self.roots.get(name)
        for candidate in self.problem.package(self.project).candidates:
            for requirement in candidate.requirements:
                if requirement.name == name:
                    return requirement
        return None

    def sentences(self, trail: Sequence[Removal], indices: Sequence[int]) -> list[str]:
        out: list[str] = []
        roots: list[Requirement] = []
        for name in sorted(self.forced_roots):
            requirement = self._root_requirement(name)
            if requirement is not None:
                roots.append(requirement)
        self.forced_roots.clear()
        for i in indices:
            removal = trail[i]
            if removal.kind == "root" or (
                self.project is not None and removal.kind == "support" and removal.name == self.project
            ):
                assert removal.requirement is not None
                if removal.requirement not in roots:
                    roots.append(removal.requirement)
                continue
            if removal.kind == "forced" and removal.parent == self.project:
                requirement = self._root_requirement(removal.name)
                if requirement is not None and requirement not in roots:
                    roots.append(requirement)
                continue
            sentence = self._sentence(removal)
            if sentence and sentence not in out:
                out.append(sentence)
        roots = [r for r in roots if r.name not in self.stated_roots]
        if roots:
            for requirement in roots:
                self.named.add(requirement.name)
                self.root_names.add(requirement.name)
                self.stated_roots.add(requirement.name)
            opening = " and ".join(requirement_text(r) for r in sorted(roots, key=lambda r: r.name))
            out.insert(0, f"{self.root_label} depends on {opening}")
        return _merge(out)

    def _sentence(self, removal: Removal) -> str:
        name = removal.name
        if removal.kind == "missing":
            self.named.add(name)
            return f"{name} is not in the registry"
        if removal.kind == "yanked":
            which, plural = self._versions(name, removal.bits)
            return f"{which} {'are' if plural else 'is'} yanked"
        if removal.kind == "prerelease":
            which, plural = self._versions(name, removal.bits)
            return (
                f"{which} {'are pre-releases' if plural else 'is a pre-release'}, which no specifier asks for"
            )
        if removal.kind == "support":
            assert removal.requirement is not None
            which, plural = self._versions(name, removal.bits)
            self.named.add(removal.requirement.name)
            return f"{which} {'depend' if plural else 'depends'} on {requirement_text(removal.requirement)}"
        if removal.kind == "forced":
            assert removal.parent is not None
            parts = []
            for requirement, bits in self.propagator.uses[(removal.parent, name)]:
                if bits & removal.parent_bits:
                    which, plural = self._versions(removal.parent, bits & removal.parent_bits)
                    parts.append(
                        f"{which} {'depend' if plural else 'depends'} on {requirement_text(requirement)}"
                    )
            self.named.add(name)
            return "; ".join(parts)
        return ""

    def requirers(self, leaf: Leaf, indices: Sequence[int]) -> list[str]:
        name = leaf.conflict.name
        who: list[str] = []
        for i in indices:
            removal = leaf.trail[i]
            if removal.name != name:
                continue
            if removal.kind == "root" and self.root_label not in who:
                who.append(self.root_label)
            elif removal.kind == "forced" and removal.parent and removal.parent not in who:
                who.append(removal.parent)
        forcer = leaf.forced.get(name)
        if forcer == ROOT and name in self.roots and self.root_label not in who:
            who.append(self.root_label)
            self.root_names.add(name)
        elif forcer and forcer != ROOT and forcer not in who:
            who.append(forcer)
        return who

    def conclusion(self, leaf: Leaf, indices: Sequence[int]) -> str:
        name = leaf.conflict.name
        self.named.add(name)
        if name == self.project:
            return f"so the dependencies of {name} cannot all be met"
        who = [w for w in self.requirers(leaf, indices) if w]
        for w in who:
            if w != self.root_label:
                self.named.add(w)
        if who:
            return f"so no version of {name} satisfies {' and '.join(who)}"
        return f"so no version of {name} can be used"

    def render(self, proof: Proof, upto: int = 0) -> list[str]:
        if isinstance(proof, Leaf):
            indices = self.slice(proof, upto)
            return [*self.sentences(proof.trail, indices), self.conclusion(proof, indices)]
        # Facts from before the split, shared by the cases, come first and once.
        shared: set[int] = set()
        leaves = list(_leaves(proof))
        for leaf in leaves:
            shared.update(i for i in self.slice(leaf) if upto <= i < proof.at)
        some_trail = leaves[0].trail
        out = self.sentences(some_trail, sorted(shared))
        self.named.add(proof.name)
        for bits, branch in proof.branches:
            inner = self.render(branch, proof.at)
            cases = describe_versions(self.problem, proof.name, bits)
            out.append(f"if {proof.name} is {cases}: " + ", ".join(inner))
        out.append(f"so no version of {proof.name} works")
        return out


def _merge(sentences: list[str]) -> list[str]:
    """ "x 1.0 depends on a" and "x 1.0 depends on b" become "x 1.0 depends on a and b"."""
    out: list[str] = []
    for sentence in sentences:
        for verb in (" depends on ", " depend on "):
            if out and verb in sentence and verb in out[-1]:
                subject, _, rest = sentence.partition(verb)
                if out[-1].partition(verb)[0] == subject:
                    out[-1] += f" and {rest}"
                    break
        else:
            out.append(sentence)
    return out


def _leaves(proof: Proof) -> list[Leaf]:
    if isinstance(proof, Leaf):
        return [proof]
    out: list[Leaf] = []
    for _, branch in proof.branches:
        out.extend(_leaves(branch))
    return out


def explain(
    problem: Problem,
    roots: Sequence[Requirement],
    *,
    root_label: str = "the manifest",
    budget: int = EXPLAIN_BUDGET,
) -> Explanation | None:
    """An explanation of why `roots` have no solution over `problem`'s index; None when the
    proof would take more than `budget` cases (or there is a solution after all)."""
    propagator = Propagator(problem, roots, record=True)
    state, conflict = propagator.initial()
    proof = propagator.refute(state, conflict, budget=budget)
    if proof is None:
        return None
    renderer = _Renderer(problem, propagator, root_label)
    sentences = renderer.render(proof)
    return Explanation(
        sentences=tuple(sentences),
        packages=frozenset(renderer.named),
        roots=frozenset(renderer.root_names),
    )


def explain_failure(
    problem: Problem,
    roots: Sequence[Requirement],
    *,
    root_label: str = "the manifest",
    notes: Sequence[str] = (),
) -> ResolutionImpossible:
    """The error to raise when there is no solution: explained when that fits the budget."""
    explanation = explain(problem, roots, root_label=root_label)
    if explanation is None:
        detail = f" (last conflict: {'; '.join(notes)})" if notes else ""
        return ResolutionImpossible(
            f"no set of versions satisfies the dependencies of {root_label}; the conflict is too "
            f"large to explain here{detail}",
            hint="loosen the specifiers in [dependencies], or add the agents one by one to find the conflict",
        )
    changeable = sorted(explanation.roots)
    if changeable:
        hint = f"change the specifier of {' or '.join(changeable)} in [dependencies] (mcpz add NAME SPEC)"
    else:
        hint = "the conflict is between published agents; ask their maintainers, or depend on other versions"
    return ConflictError(explanation, hint=hint)
