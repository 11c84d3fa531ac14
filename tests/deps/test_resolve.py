"""The pure resolver: answers that satisfy every constraint, preferences, and explained conflicts."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mcpz import exit_codes
from mcpz.errors import ResolutionImpossible
from mcpz.resolve import (
    ConflictError,
    Index,
    IndexDataError,
    PropagatingBackend,
    Resolution,
    ResolutionTooDeep,
    ResolvelibBackend,
    parse_spec,
    resolve,
)
from mcpz.resolve.explain import describe_versions
from mcpz.resolve.provider import Problem

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def commit(name: str, version: str) -> str:
    import hashlib

    return hashlib.sha1(f"{name}@{version}".encode()).hexdigest()


def make_index(data: Mapping[str, Mapping[str, Mapping[str, str]]], yanked: set[str] = frozenset()) -> Index:  # type: ignore[assignment]
    """{"a/x": {"1.0": {"a/y": ">=1"}}}; `yanked` holds "a/x@1.0" strings."""
    index = Index()
    for name, versions in data.items():
        for version, deps in versions.items():
            index.add(name, version, commit(name, version), deps, yanked=f"{name}@{version}" in yanked)
    return index


def assert_solution(roots: Mapping[str, str], index: Index, resolution: Resolution) -> None:
    """Every specifier holds, and the answer is exactly the closure of the roots."""
    closure: set[str] = set()
    frontier = list(roots)
    while frontier:
        name = frontier.pop()
        if name in closure:
            continue
        closure.add(name)
        frontier.extend(resolution[name].dependencies)
    assert set(resolution.packages) == closure
    for name, spec in roots.items():
        assert parse_spec(spec).contains(resolution[name].version), (name, spec)
    for package in resolution.packages.values():
        release = index.get(package.name, package.version)
        assert release is not None and release.commit == package.commit
        assert package.dependencies == release.dependency_texts
        for dep, spec in package.dependencies.items():
            assert parse_spec(spec).contains(resolution[dep].version), (package.name, dep, spec)


def brute_force(roots: Mapping[str, str], index: Index) -> bool:
    """Whether any assignment (a version or absent, per agent) satisfies everything."""
    names = index.names()
    options = [[None, *index.releases(n)] for n in names]
    for combo in itertools.product(*options):
        chosen = {n: r for n, r in zip(names, combo, strict=True) if r is not None}
        ok = all(n in chosen and parse_spec(s).contains(chosen[n].version) for n, s in roots.items())
        ok = ok and all(
            dep in chosen and spec.contains(chosen[dep].version)
            for release in chosen.values()
            for dep, spec in release.dependencies.items()
        )
        if ok:
            return True
    return False


# -- random graphs ------------------------------------------------------------------------------

VERSIONS = ["1.0", "1.1", "1.2", "2.0", "2.1"]


@st.composite
def satisfiable(draw: st.DrawFn, agents: int = 7) -> tuple[dict[str, str], Index]:
    """A graph with a planted solution; dependencies may point anywhere, cycles included."""
    count = draw(st.integers(2, agents))
    names = [f"t/p{i}" for i in range(count)]
    planted = {n: draw(st.integers(0, len(VERSIONS) - 1)) for n in names}
    data: dict[str, dict[str, dict[str, str]]] = {}
    for name in names:
        data[name] = {}
        for k, version in enumerate(VERSIONS):
            deps: dict[str, str] = {}
            for dep in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
                if dep == name:
                    continue
                target = planted[dep]
                if k == planted[name] or draw(st.booleans()):
                    low = draw(st.integers(0, target))
                    high = draw(st.integers(target, len(VERSIONS) - 1))
                else:
                    low = draw(st.integers(0, len(VERSIONS) - 1))
                    high = draw(st.integers(low, len(VERSIONS) - 1))
                spec = f">={VERSIONS[low]}"
                if high + 1 < len(VERSIONS):
                    spec += f",<{VERSIONS[high + 1]}"
                deps[dep] = spec
            data[name][version] = deps
    root_names = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
    roots = {n: f"=={VERSIONS[planted[n]]}" if draw(st.booleans()) else "" for n in root_names}
    return roots, make_index(data)


@PROPERTY
@given(satisfiable())
def test_every_answer_satisfies_every_specifier(graph: tuple[dict[str, str], Index]) -> None:
    roots, index = graph
    assert_solution(roots, index, resolve(roots, index))
    assert_solution(roots, index, resolve(roots, index, backend=PropagatingBackend()))
    try:
        answer = resolve(roots, index, backend=ResolvelibBackend(None))
    except ResolutionImpossible:
        pass  # resolvelib's backjumping can miss solutions (sarugaku/resolvelib#206): hence the default
    else:
        assert_solution(roots, index, answer)


@st.composite
def unsatisfiable(draw: st.DrawFn) -> tuple[dict[str, str], Index, set[str]]:
    """A small random conflict among c/* agents, beside a satisfiable b/* group (bystanders)
    that the roots also need but that neither depends on nor is depended on by the conflict."""
    conflict = [f"c/p{i}" for i in range(draw(st.integers(1, 3)))]
    versions = VERSIONS[:3]
    data: dict[str, dict[str, dict[str, str]]] = {}
    for name in conflict:
        data[name] = {}
        for version in draw(st.lists(st.sampled_from(versions), min_size=1, max_size=3, unique=True)):
            deps: dict[str, str] = {}
            for dep in draw(st.lists(st.sampled_from(conflict), max_size=2, unique=True)):
                if dep != name:
                    deps[dep] = draw(st.sampled_from([">=1.1", "<1.1", "==1.2", ">=2", "<1.2", ""]))
            data[name][version] = deps
    roots = {conflict[0]: draw(st.sampled_from(["", ">=1.1", "<1.2", "==1.0"]))}
    for extra in conflict[1:]:
        if draw(st.booleans()):
            roots[extra] = draw(st.sampled_from(["", ">=1.1", "<1.1"]))
    bystanders = [f"b/q{i}" for i in range(draw(st.integers(1, 3)))]
    for i, name in enumerate(bystanders):
        deps = {bystanders[i + 1]: ">=1.0"} if i + 1 < len(bystanders) else {}
        data[name] = {"1.0": deps, "1.1": deps}
        roots[name] = ""
    index = make_index(data)
    assume(not brute_force(roots, index))
    return roots, index, set(bystanders)


@PROPERTY
@given(unsatisfiable())
def test_explanations_name_only_the_agents_in_the_conflict(
    graph: tuple[dict[str, str], Index, set[str]],
) -> None:
    roots, index, bystanders = graph
    with pytest.raises(ConflictError) as caught:
        resolve(roots, index)
    explanation = caught.value.explanation
    assert explanation.packages, str(explanation)
    assert not explanation.packages & bystanders, str(explanation)
    assert all(name.startswith("c/") for name in explanation.packages)
    assert not any(b in str(explanation) for b in bystanders)
    assert caught.value.exit_code == exit_codes.RESOLUTION_IMPOSSIBLE


@PROPERTY
@given(satisfiable(agents=4))
def test_the_resolver_says_no_only_when_brute_force_agrees(graph: tuple[dict[str, str], Index]) -> None:
    roots, index = graph
    # Tighten a root to make some of these unsatisfiable.
    name = sorted(roots)[0]
    roots = {**roots, name: "==2.1"}
    try:
        resolution = resolve(roots, index)
    except ConflictError:
        assert not brute_force(roots, index)
    else:
        assert_solution(roots, index, resolution)


# -- the explanation of the example -----------------------------------------------------


def maps_and_geo() -> Index:
    data: dict[str, dict[str, dict[str, str]]] = {
        "acme/maps": {f"1.{i}": {"acme/geo": "<2"} for i in range(10)},
        "acme/geo": {"1.0": {}, "1.5": {}, "2.0": {}, "2.1": {}},
        "acme/weather": {"1.0": {}},
    }
    data["acme/maps"]["2.0"] = {"acme/geo": ">=2"}
    return make_index(data)


def test_conflict_explained_as_a_chain_of_reasons() -> None:
    roots = {"acme/geo": ">=2", "acme/maps": "~=1.0", "acme/weather": "*"}
    with pytest.raises(ConflictError) as caught:
        resolve(roots, maps_and_geo(), project=("acme/app", "0.1.0"))
    assert str(caught.value) == (
        "acme/app depends on acme/geo>=2 and acme/maps~=1.0; acme/maps 1.0..1.9 depend on acme/geo<2; "
        "so no version of acme/maps satisfies acme/app"
    )
    assert caught.value.explanation.packages == {"acme/geo", "acme/maps"}
    assert caught.value.hint is not None and "acme/geo or acme/maps" in caught.value.hint


def test_conflict_through_a_chain_and_by_cases() -> None:
    index = make_index(
        {
            "a/x": {"1.0": {"a/z": "<1"}, "2.0": {"a/y": ">=2"}},
            "a/y": {"1.0": {}, "2.0": {"a/z": ">=3"}},
            "a/z": {"0.5": {}, "2.0": {}, "3.0": {}},
        }
    )
    with pytest.raises(ConflictError) as caught:
        resolve({"a/x": "", "a/z": ">=1,<3"}, index)
    text = str(caught.value)
    assert text.startswith("the manifest depends on a/x and a/z>=1,<3; ")
    assert "a/x 1.0 depends on a/z<1" in text
    assert "a/y 2.0 depends on a/z>=3" in text
    assert text.endswith("so no version of a/x satisfies the manifest")


def test_missing_agent_and_yanked_only_are_explained() -> None:
    index = make_index({"a/x": {"1.0": {"a/gone": ">=1"}}, "a/y": {"1.0": {}}}, yanked={"a/y@1.0"})
    with pytest.raises(ConflictError, match="a/gone is not in the registry"):
        resolve({"a/x": ""}, index)
    with pytest.raises(
        ConflictError, match=r"a/y 1\.0 is yanked; so no version of a/y satisfies the manifest"
    ):
        resolve({"a/y": ">=1"}, index)


def test_version_ranges_collapse() -> None:
    index = make_index({"a/x": {v: {} for v in ["1.0", "1.1", "1.2", "2.0", "2.1", "3.0"]}})
    problem = Problem(index, locked={})
    package = problem.package("a/x")
    bits = sum(
        1 << i for i, r in enumerate(package.releases) if str(r.version) in {"1.0", "1.1", "1.2", "2.1"}
    )
    assert describe_versions(problem, "a/x", bits) == "1.0..1.2, 2.1"


# -- preferences: lock, upgrade, yanked, pre-releases -------------------------------------------


def ecosystem() -> dict[str, dict[str, dict[str, str]]]:
    return {
        "a/x": {"1.0": {"a/z": ">=1"}, "1.1": {"a/z": ">=1"}},
        "a/y": {"1.0": {}, "1.1": {}},
        "a/z": {"1.0": {}, "1.1": {}},
    }


def test_relocking_changes_nothing_and_upgrade_package_moves_only_what_it_forces() -> None:
    roots = {"a/x": "", "a/y": ""}
    first = resolve(roots, make_index(ecosystem()))
    assert first.versions() == {"a/x": "1.1", "a/y": "1.1", "a/z": "1.1"}
    data = ecosystem()
    data["a/x"]["2.0"] = {"a/z": ">=2"}
    data["a/y"]["2.0"] = {}
    data["a/z"]["2.0"] = {}
    newer = make_index(data)
    assert resolve(roots, newer, locked=first.versions()).versions() == first.versions()
    moved = resolve(roots, newer, locked=first.versions(), upgrade={"a/x"})
    assert moved.versions() == {"a/x": "2.0", "a/y": "1.1", "a/z": "2.0"}
    assert resolve(roots, newer, locked=first.versions(), upgrade=True).versions() == {
        "a/x": "2.0",
        "a/y": "2.0",
        "a/z": "2.0",
    }
    # The lock is a preference, not a constraint: a tighter root moves past it.
    assert resolve({"a/x": "", "a/y": ">=2"}, newer, locked=first.versions())["a/y"].version.public == "2.0"


def test_yanked_versions_are_skipped_unless_locked_or_pinned() -> None:
    data = ecosystem()
    index = make_index(data, yanked={"a/y@1.1"})
    assert str(resolve({"a/y": ""}, index)["a/y"].version) == "1.0"
    assert str(resolve({"a/y": ""}, index, locked={"a/y": "1.1"})["a/y"].version) == "1.1"
    assert str(resolve({"a/y": "==1.1"}, index)["a/y"].version) == "1.1"
    assert resolve({"a/y": "==1.1"}, index)["a/y"].yanked
    assert str(resolve({"a/y": ""}, index, locked={"a/y": "1.1"}, upgrade={"a/y"})["a/y"].version) == "1.0"


def test_one_specifier_over_different_lists_of_versions() -> None:
    # The bitset of a specifier is cached per list of versions: a/y, with another list than a/x,
    # gets its own (a/x's "<2.5" would be bits 1-2 of [3.0, 2.0, 1.0], i.e. a/y 1.0 only).
    index = make_index(
        {
            "a/x": {"1.0": {}, "2.0": {}, "3.0": {}},
            "a/y": {"1.0": {}, "2.0": {}},
            "a/z": {"1.0": {}, "2.0": {}, "3.0": {}},
            "a/w": {"1.0": {"a/x": "<2.5", "a/y": "<2.5", "a/z": ">=2.5"}},
        }
    )
    chosen = resolve({"a/w": ""}, index)
    assert {n: str(chosen[n].version) for n in ("a/x", "a/y", "a/z")} == {
        "a/x": "2.0",
        "a/y": "2.0",
        "a/z": "3.0",
    }


def test_prereleases_only_when_a_specifier_names_one() -> None:
    index = make_index({"a/x": {"1.0": {}, "2.0b1": {}}, "a/w": {"1.0": {"a/x": ">=2.0b1"}}})
    assert str(resolve({"a/x": ">=1.0"}, index)["a/x"].version) == "1.0"
    assert str(resolve({"a/x": ">=2.0a1"}, index)["a/x"].version) == "2.0b1"
    assert str(resolve({"a/w": ""}, index)["a/x"].version) == "2.0b1"
    with pytest.raises(ConflictError, match="pre-release"):
        resolve({"a/x": ">=2"}, index)


# -- cycles, tree, why ----------------------------------------------------------------------------


def test_cycles_resolve_and_are_marked() -> None:
    index = make_index(
        {
            "a/x": {"1.0": {"a/y": ">=1"}},
            "a/y": {"1.0": {"a/z": ">=1"}},
            "a/z": {"1.0": {"a/x": "^1"}},
            "a/w": {"1.0": {"a/w": ">=1"}},
        }
    )
    resolution = resolve({"a/x": "", "a/w": ""}, index)
    assert resolution.cycles() == [("a/w",), ("a/x", "a/y", "a/z")]
    marks = [(line.name, line.mark) for line in resolution.tree()]
    assert marks == [("a/w", ""), ("a/w", "cycle"), ("a/x", ""), ("a/y", ""), ("a/z", ""), ("a/x", "cycle")]
    assert [e.parent for e in resolution.required_by["a/x"]] == [None, "a/z"]
    (path,) = resolution.why("a/z")
    assert [(e.parent, e.specifier) for e in path] == [(None, "*"), ("a/x", ">=1"), ("a/y", ">=1")]


def test_a_cycle_back_into_the_project_checks_its_own_version() -> None:
    index = make_index({"acme/geo": {"1.0": {"acme/app": ">=1"}, "2.0": {"acme/app": ">=2"}}})
    resolution = resolve({"acme/geo": ""}, index, project=("acme/app", "1.5"))
    assert resolution.versions() == {"acme/geo": "1.0"}
    assert resolution.required_by["acme/app"][0].parent == "acme/geo"


def test_resolvelib_false_no_is_caught() -> None:
    """sarugaku/resolvelib#206's graph: the one solution is {p2 1, p1 1}."""
    index = make_index(
        {
            "r/p0": {"2": {"r/p2": "==2"}},
            "r/p1": {"1": {}, "2": {"r/p0": "==2"}},
            "r/p2": {"1": {"r/p1": ">=1,<3"}, "2": {"r/p1": "==3"}},
        }
    )
    assert resolve({"r/p2": ""}, index).versions() == {"r/p1": "1", "r/p2": "1"}


def test_round_limit_ends_in_a_clear_error() -> None:
    data = {f"d/p{i}": {f"1.{k}": {f"d/p{i + 1}": ""} if i < 5 else {} for k in range(3)} for i in range(6)}
    index = make_index(data)
    for backend in (ResolvelibBackend(None), PropagatingBackend()):
        with pytest.raises(ResolutionTooDeep, match="gave up after") as caught:
            resolve({"d/p0": ""}, index, max_rounds=2, backend=backend)
        assert caught.value.exit_code == exit_codes.RESOLUTION_IMPOSSIBLE
    assert len(resolve({"d/p0": ""}, index, max_rounds=50)) == 6


# -- the index ------------------------------------------------------------------------------------


def test_index_round_trips_and_rejects_bad_data() -> None:
    index = make_index(ecosystem(), yanked={"a/y@1.0"})
    again = Index.from_dict(index.to_dict())
    assert again.to_dict() == index.to_dict()
    assert [str(r.version) for r in again.releases("a/x")] == ["1.1", "1.0"]
    assert again.releases("a/none") == ()
    with pytest.raises(IndexDataError, match="not a PEP 440 version"):
        Index.from_dict({"a/x": {"one": {"commit": "c"}}})
    with pytest.raises(IndexDataError, match="not a version specifier"):
        Index.from_dict({"a/x": {"1.0": {"commit": "c", "dependencies": {"a/y": ">>1"}}}})
    with pytest.raises(IndexDataError, match="twice"):
        Index.from_dict({"a/x": {"1.0": {"commit": "c"}, "1.0.0": {"commit": "d"}}})


def test_sugar_in_dependencies() -> None:
    index = make_index({"a/x": {"1.2": {}, "1.9": {}, "2.0": {}}, "a/y": {"1.0": {"a/x": "^1.2"}}})
    assert str(resolve({"a/y": ""}, index)["a/x"].version) == "1.9"
    assert str(resolve({"a/x": "~1.2"}, index)["a/x"].version) == "1.2"


def test_conflict_explained_by_cases() -> None:
    index = make_index(
        {
            "s/a": {"1.0": {"s/c": "==1", "s/d": "==1"}, "2.0": {"s/c": "==2", "s/d": "==2"}},
            "s/b": {"1.0": {"s/c": "==1", "s/d": "==2"}, "2.0": {"s/c": "==2", "s/d": "==1"}},
            "s/c": {"1": {}, "2": {}},
            "s/d": {"1": {}, "2": {}},
            "s/e": {"1": {}},
        }
    )
    with pytest.raises(ConflictError) as caught:
        resolve({"s/a": "", "s/b": "", "s/e": ""}, index)
    text = str(caught.value)
    assert text.startswith(
        "the manifest depends on s/a and s/b; if s/a is 2.0: s/a 2.0 depends on s/c==2 and s/d==2"
    )
    assert "; if s/a is 1.0: s/a 1.0 depends on s/c==1 and s/d==1" in text
    assert text.endswith("so no version of s/a works")
    assert caught.value.explanation.packages == {"s/a", "s/b", "s/c", "s/d"}
