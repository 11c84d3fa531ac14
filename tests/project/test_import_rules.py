"""The import contract of DESIGN.md ("Where the parts live"), checked over the source's AST.

Only HTTP modules import the web framework; pure modules import no database, HTTP, WebSocket or git
library; no code imports another domain's routes; the registry's packages import each other without
cycles; the mcpz library imports the registry only where it starts one. Each rule is a function from
the parsed tree to a list of violations, so a failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "registry_server"
DOMAINS = ("accounts", "releases", "git", "deployments", "mesh", "gateway", "usage")
WEB = ("fastapi", "starlette")

# Besides routes.py, http.py (a domain's HTTP helpers for other domains' routes, or the core's) and
# app.py, these modules speak HTTP by nature:
WEB_ALLOWED = {
    "registry_server.body_limits": "ASGI middleware: counts request bodies before any route runs",
    "registry_server.openapi": "annotations and schema helpers that only route signatures use",
    "registry_server.gateway.asgi": "the gateway is an ASGI app of its own, mounted beside the API",
    "registry_server.mesh.hub": "WebSocket endpoint; the hub and its endpoint are not yet split",
    "registry_server.mesh.connector": "WebSocket endpoint; the hub and its endpoint are not yet split",
}

# Pure: no I/O libraries, so they are tested directly and stay fast to import.
PURE = (
    "registry_server.deployments.scheduler",
    "registry_server.usage.events",
    "registry_server.accounts.tokens",
)
IMPURE = (
    "sqlalchemy",
    "alembic",
    "fastapi",
    "starlette",
    "httpx2",
    "httpx",
    "websockets",
    "dulwich",
    "uvicorn",
)

# The one place the library starts a registry: the demo's embedded one, and `mcpz registry`, the
# operator's commands for running one.
LIBRARY_MAY_IMPORT_REGISTRY = {"mcpz.demo", "mcpz.cli.commands.registry"}

# Known crossings waiting for their own home (issue 12); the list only shrinks.
ROUTES_IMPORTED_ACROSS = {
    (
        "registry_server.mesh.hub",
        "registry_server.accounts.routes",
    ): "namespace_keys builds the keys document",
}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    module_level: bool  # at import time, not inside a function or an `if TYPE_CHECKING:` block

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.target}"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: set[str], root: Path = ROOT) -> Iterator[Import]:
    """Every import in `path`; `from a import b` counts as importing `a.b` when that is a module."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(nodes: list[ast.stmt], top: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(name, alias.name, node.lineno, top)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    yield Import(name, sub if sub in known else base, node.lineno, top)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.body, False)
                yield from walk(node.orelse, top)
            else:
                # A class body runs at import time; a function body does not.
                now = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        yield from walk([child], now)
                    elif isinstance(child, ast.ExceptHandler):
                        yield from walk(child.body, now)

    yield from walk(ast.parse(path.read_text(), filename=str(path)).body, True)


def sources(*packages: str) -> list[Path]:
    return sorted(
        p for package in packages for p in (ROOT / package).rglob("*.py") if "versions" not in p.parts
    )


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    files = sources("mcpz", REGISTRY)
    known = {module_name(p) for p in files}
    return [i for p in files for i in imports_of(p, known)]


def _top(target: str) -> str:
    return target.split(".")[0]


def web_framework_violations(imports: list[Import]) -> list[str]:
    def allowed(module: str) -> bool:
        last = module.rpartition(".")[2]
        return last in ("routes", "http") or module == "registry_server.app" or module in WEB_ALLOWED

    return [
        str(i)
        for i in imports
        if i.importer.startswith(REGISTRY + ".") and _top(i.target) in WEB and not allowed(i.importer)
    ]


def purity_violations(imports: list[Import]) -> list[str]:
    return [str(i) for i in imports if i.importer in PURE and _top(i.target) in IMPURE]


def domain_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == REGISTRY and parts[1] in DOMAINS else None


def foreign_routes_violations(imports: list[Import]) -> list[str]:
    out = []
    for i in imports:
        target_domain = domain_of(i.target)
        if target_domain is None or not i.target.endswith(".routes"):
            continue
        if i.importer == "registry_server.app" or domain_of(i.importer) == target_domain:
            continue  # the composition root mounts every router
        if (i.importer, i.target) not in ROUTES_IMPORTED_ACROSS:
            out.append(str(i))
    return out


def node_of(module: str) -> str | None:
    """A domain is one node; each core module is its own (the core has no package to stand in)."""
    parts = module.split(".")
    if parts[0] != REGISTRY or len(parts) == 1:
        return None
    if parts[1] in DOMAINS:
        return f"{REGISTRY}.{parts[1]}"
    return ".".join(parts[:2])


def cycles(imports: list[Import]) -> list[list[str]]:
    edges: dict[str, set[str]] = {}
    for i in imports:
        a, b = node_of(i.importer), node_of(i.target)
        if i.module_level and a and b and a != b:
            edges.setdefault(a, set()).add(b)
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    return found


def library_violations(imports: list[Import]) -> list[str]:
    return [
        str(i)
        for i in imports
        if _top(i.importer) == "mcpz"
        and _top(i.target) == REGISTRY
        and i.importer not in LIBRARY_MAY_IMPORT_REGISTRY
    ]


def test_only_http_modules_import_the_web_framework(graph: list[Import]) -> None:
    assert web_framework_violations(graph) == []


def test_pure_modules_import_no_io_library(graph: list[Import]) -> None:
    known = {i.importer for i in graph}
    assert set(PURE) <= known, "a module declared pure is gone: update PURE"
    assert purity_violations(graph) == []


def test_no_module_imports_another_domains_routes(graph: list[Import]) -> None:
    assert foreign_routes_violations(graph) == []
    still_crossing = {(i.importer, i.target) for i in graph} & set(ROUTES_IMPORTED_ACROSS)
    assert still_crossing == set(ROUTES_IMPORTED_ACROSS), "a known crossing is gone: drop it from the list"


def test_the_registrys_packages_import_each_other_without_cycles(graph: list[Import]) -> None:
    assert cycles(graph) == []


def test_the_library_imports_the_registry_only_to_start_one(graph: list[Import]) -> None:
    assert library_violations(graph) == []


def test_the_rules_see_what_they_check(tmp_path: Path) -> None:
    """The walker finds imports inside functions, relative ones, and ones that name a module."""
    pkg = tmp_path / "registry_server" / "usage"
    pkg.mkdir(parents=True)
    source = pkg / "events.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import service\n"
        "if TYPE_CHECKING:\n    from registry_server.mesh import hub\n"
        "def f():\n    import sqlalchemy\n"
    )
    found = list(imports_of(source, {"registry_server.usage.service", "registry_server.mesh.hub"}, tmp_path))
    by_target = {i.target: i.module_level for i in found}
    assert by_target == {
        "typing": True,
        "registry_server.usage.service": True,
        "registry_server.mesh.hub": False,
        "sqlalchemy": False,
    }
    assert purity_violations(found) == ["registry_server.usage.events:6 imports sqlalchemy"]
