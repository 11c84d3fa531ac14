"""The mcpz library's layers (DESIGN.md, "Where the parts live"), checked over the source's AST.

cli -> demo -> node -> sdk -> deps -> client -> local, repo, keys -> the kernel (flat modules,
resolve/, mesh/); sdk is `mcpz.Client`, the front door over deps and client. A module may import
its own package and any lower layer, never a higher one nor a peer of its own rank; imports inside
functions count too, since a lazy import hides a cycle rather than removing it. The registry's own
rules are in test_import_rules.py, whose walker this reuses.
"""

from __future__ import annotations

import pytest
from test_import_rules import Import, imports_of, module_name, sources

# Highest first. One rank may hold several packages; they must not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("demo",),
    ("node",),
    ("sdk",),
    ("deps",),
    ("client",),
    ("local", "repo", "keys"),
    ("kernel",),
)
RANK = {group: rank for rank, groups in enumerate(LAYERS) for group in groups}


def group_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "mcpz":
        return None
    if len(parts) > 1 and parts[1] in RANK:
        return parts[1]
    return "kernel"


def layer_violations(imports: list[Import]) -> list[str]:
    out = []
    for i in imports:
        a, b = group_of(i.importer), group_of(i.target)
        if a is None or b is None or a == b:
            continue
        if RANK[b] <= RANK[a]:
            out.append(f"{i} ({a} may not import {b})")
    return out


@pytest.fixture(scope="module")
def library_graph() -> list[Import]:
    files = sources("mcpz")
    known = {module_name(p) for p in files}
    return [i for p in files for i in imports_of(p, known)]


def test_every_package_is_placed_in_a_layer(library_graph: list[Import]) -> None:
    packages = {p.parent.name for p in sources("mcpz") if p.name == "__init__.py"} - {"mcpz"}
    placed = set(RANK) | {"resolve", "mesh", "commands"}
    assert packages <= placed, f"packages without a layer: {sorted(packages - placed)}"


def test_the_library_imports_only_downward(library_graph: list[Import]) -> None:
    assert layer_violations(library_graph) == []


@pytest.mark.parametrize(
    ("importer", "target"),
    [
        ("mcpz.client.publish", "mcpz.deps.flows"),
        ("mcpz.lockfile", "mcpz.client.index"),
        ("mcpz.node.agent", "mcpz.cli.app"),
    ],
)
def test_an_upward_import_fails_and_its_reverse_passes(importer: str, target: str) -> None:
    upward = Import(importer, target, 1, module_level=False)
    assert layer_violations([upward]) == [
        f"{upward} ({group_of(importer)} may not import {group_of(target)})"
    ]
    assert layer_violations([Import(target, importer, 1, module_level=True)]) == []


def test_peers_of_one_rank_may_not_import_each_other() -> None:
    both_ways = [
        Import("mcpz.repo.store", "mcpz.keys.wallet", 1, True),
        Import("mcpz.keys.wallet", "mcpz.repo.store", 1, True),
    ]
    assert len(layer_violations(both_ways)) == 2
