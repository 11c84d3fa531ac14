"""The import contract of DESIGN.md ("Where the parts live"), checked over the source's AST.

Only HTTP modules import the web framework, and routes no database library; pure modules import no
database, HTTP, WebSocket or git library; no code imports another domain's routes; the registry's
packages import each other without cycles (lazy imports count) and only downward, in the layer
order of DESIGN.md; no private name crosses a module boundary; the mcpz library imports the
registry only where it starts one. Each rule is a function from the parsed tree to a list of
violations, so a failure names the file, the line and the import; each is also fed a planted
violation, so a rule that stops seeing is a failing test too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "registry_server"
FIRST_PARTY = ("mcpz", REGISTRY)
WEB = ("fastapi", "starlette")
DATABASE = ("sqlalchemy", "alembic")

# The registry's layers, top to bottom (DESIGN.md: "app -> web -> gateway, market, settlement ->
# mesh, billing -> deployments, git -> releases, usage -> accounts -> core"). A module imports only
# its own package or a lower layer; packages of one layer are peers and import each other not at
# all. Every module of the registry that is neither in a domain package nor the composition root
# is the core. A new domain package must be given its place here (a test says so).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("app", "serve"),
    ("web",),
    ("gateway", "market", "settlement"),
    ("mesh", "billing", "maintenance", "oauth"),
    ("deployments", "git"),
    ("releases", "usage"),
    ("accounts",),
)
COMPOSITION_ROOT = LAYERS[0]
DOMAINS = tuple(d for layer in LAYERS[1:] for d in layer)
CORE = "core"
NOT_PACKAGES = {"migrations"}  # Alembic's tree: imports the models to compare, at the bottom of nothing

# Besides routes.py, http.py (a domain's HTTP helpers for other domains' routes, or the core's) and
# app.py, these modules speak HTTP by nature:
WEB_ALLOWED = {
    "registry_server.body_limits": "ASGI middleware: counts request bodies before any route runs",
    "registry_server.openapi": "annotations and schema helpers that only route signatures use",
    "registry_server.gateway.asgi": "the gateway is an ASGI app of its own, mounted beside the API",
    "registry_server.billing.tier_routes": "billing's tier route, until it joins billing/routes.py",
}

# Pure: no I/O libraries, so they are tested directly and stay fast to import.
PURE = (
    "registry_server.deployments.scheduler",
    "registry_server.usage.events",
    "registry_server.accounts.tokens",
    "registry_server.deployments.retries",
    "registry_server.market.ranking",
    "registry_server.market.terms",
    "registry_server.market.changelog",
    "registry_server.market.readme",
    "registry_server.billing.tiers",
    "registry_server.settlement.batches",
    "registry_server.tier_settings",
    "registry_server.maintenance.plan",
    "registry_server.oauth.rules",
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
    "web3",
    "eth_account",
)

# The one place the library starts a registry: the demo's embedded one, and `mcpz registry`, the
# operator's commands for running one (its `payouts` group lives in a module of its own).
LIBRARY_MAY_IMPORT_REGISTRY = {"mcpz.demo", "mcpz.cli.commands.registry", "mcpz.cli.registry_payouts"}

# Known crossings waiting for their own home (issue 12); the lists only shrink.
ROUTES_IMPORTED_ACROSS: dict[tuple[str, str], str] = {}
PRIVATE_IMPORTED_ACROSS: dict[tuple[str, str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    module_level: bool  # at import time, not inside a function or an `if TYPE_CHECKING:` block
    type_only: bool = False  # inside `if TYPE_CHECKING:`: never runs
    name: str | None = None  # `from target's module import name`: the name as imported

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

    def walk(nodes: list[ast.stmt], top: bool, typing: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(name, alias.name, node.lineno, top, typing)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in known:
                        yield Import(name, sub, node.lineno, top, typing)
                    else:
                        yield Import(name, base, node.lineno, top, typing, alias.name)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.body, False, True)
                yield from walk(node.orelse, top, typing)
            else:
                # A class body runs at import time; a function body does not.
                now = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        yield from walk([child], now, typing)
                    elif isinstance(child, ast.ExceptHandler):
                        yield from walk(child.body, now, typing)

    yield from walk(ast.parse(path.read_text(), filename=str(path)).body, True, False)


def private_attribute_uses(path: Path, known: set[str], root: Path = ROOT) -> Iterator[str]:
    """`module._name` where `module` is a first-party module this file imported under that alias."""
    tree = ast.parse(path.read_text(), filename=str(path))
    importer = module_name(path, root)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in known:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and is_private(node.attr)
        ):
            yield f"{importer}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}"


def sources(*packages: str) -> list[Path]:
    return sorted(
        p for package in packages for p in (ROOT / package).rglob("*.py") if "versions" not in p.parts
    )


@pytest.fixture(scope="module")
def known() -> set[str]:
    return {module_name(p) for p in sources(*FIRST_PARTY)}


@pytest.fixture(scope="module")
def graph(known: set[str]) -> list[Import]:
    return [i for p in sources(*FIRST_PARTY) for i in imports_of(p, known)]


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


def routes_database_violations(imports: list[Import]) -> list[str]:
    """A route parses, calls a service and renders: the queries are the service's."""
    return [
        str(i)
        for i in imports
        if i.importer.startswith(REGISTRY + ".")
        and i.importer.rpartition(".")[2] == "routes"
        and _top(i.target) in DATABASE
    ]


SESSION_QUERIES = {
    "execute",
    "scalar",
    "scalars",
    "get",
    "add",
    "add_all",
    "delete",
    "merge",
    "query",
    "flush",
}


def inline_queries(path: Path, root: Path = ROOT) -> Iterator[str]:
    """`session.execute(...)` and the like written in a routes module: the query is the service's."""
    module = module_name(path, root)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in SESSION_QUERIES
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "session"
        ):
            yield f"{module}:{node.lineno} queries with session.{node.func.attr}()"


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
    """Cycles among the registry's packages, counting every import that runs, lazy ones too (a
    cycle hidden in a function is still a cycle); `if TYPE_CHECKING:` imports never run."""
    edges: dict[str, set[str]] = {}
    for i in imports:
        a, b = node_of(i.importer), node_of(i.target)
        if not i.type_only and a and b and a != b:
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


def layer_of(module: str) -> tuple[int, str] | None:
    """(depth, package) of a registry module: 0 for the composition root, the core deepest."""
    parts = module.split(".")
    if parts[0] != REGISTRY or len(parts) == 1 or parts[1] in NOT_PACKAGES:
        return None
    if parts[1] in COMPOSITION_ROOT:
        return 0, "app"  # one root: `serve` runs what `app` composes
    for depth, layer in enumerate(LAYERS):
        if parts[1] in layer:
            return depth, parts[1]
    return len(LAYERS), CORE


def layer_violations(imports: list[Import]) -> list[str]:
    """Imports that point up, or sideways to a peer package of the same layer. Within a domain:
    routes -> service -> models, so models import no other module of a domain and only the
    composition root imports a routes module (`foreign_routes_violations` says which one)."""
    out = []
    for i in imports:
        here, there = layer_of(i.importer), layer_of(i.target)
        if here is None or there is None:
            continue
        if here[1] == there[1] and here[1] != CORE:
            same_domain = True
        elif there[0] > here[0] or (here[1] == there[1] == CORE):
            same_domain = False
        else:
            out.append(f"{i} (layer {here[1]} may not import {there[1]})")
            continue
        if i.importer.endswith(".models") and domain_of(i.target) and _leaf(i.target) in UPPER_IN_A_DOMAIN:
            out.append(f"{i} (models import no service or routes)")
        elif same_domain and i.target.endswith(".routes") and not i.importer.endswith(".routes"):
            out.append(f"{i} (only routes and the composition root import routes)")
    return out


UPPER_IN_A_DOMAIN = ("service", "routes", "http")


def _leaf(module: str) -> str:
    return module.rpartition(".")[2]


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_name_violations(imports: list[Import]) -> list[str]:
    """A first-party `_name` imported by another module, or a private module (`_x`) imported from
    outside its top-level package."""
    out = []
    for i in imports:
        if _top(i.target) not in FIRST_PARTY:
            continue
        if i.name is not None and is_private(i.name):
            if (i.importer, i.target, i.name) not in PRIVATE_IMPORTED_ACROSS:
                out.append(f"{i} ({i.name} is private to it)")
        private_parts = [p for p in i.target.split(".") if is_private(p)]
        if private_parts and _top(i.importer) != _top(i.target):
            out.append(f"{i} (a private module of {_top(i.target)})")
    return out


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


@pytest.mark.slow
def test_the_hub_and_the_services_load_no_web_framework_when_imported() -> None:
    """What the AST says, checked at run time: nothing they import pulls FastAPI or Starlette in."""
    modules = [
        "registry_server.mesh.hub",
        "registry_server.mesh.connector",
        "registry_server.mesh.calls",
        "registry_server.deployments.service",
        "registry_server.releases.index",
        "registry_server.usage.report",
        "registry_server.accounts.namespaces",
    ]
    code = (
        f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('fastapi', 'starlette')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_routes_import_no_database_library_and_write_no_query(graph: list[Import]) -> None:
    assert routes_database_violations(graph) == []
    routes = [p for p in sources(REGISTRY) if p.name == "routes.py"]
    assert {"accounts", "releases", "deployments", "usage", "mesh"} <= {p.parent.name for p in routes}
    assert [q for p in routes for q in inline_queries(p)] == []


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


def test_the_registrys_packages_import_only_downward_in_the_layer_order(graph: list[Import]) -> None:
    assert layer_violations(graph) == []


def unplaced_packages(root: Path = ROOT) -> set[str]:
    """The registry's packages that have no layer in LAYERS."""
    packages = {p.parent.name for p in (root / REGISTRY).glob("*/__init__.py")}
    return packages - NOT_PACKAGES - set(DOMAINS)


def test_every_registry_package_has_its_place_in_the_layers() -> None:
    assert unplaced_packages() == set(), "a new package: give it a layer in LAYERS"


def test_no_private_name_crosses_a_module_boundary(graph: list[Import], known: set[str]) -> None:
    assert private_name_violations(graph) == []
    still = {(i.importer, i.target, i.name) for i in graph} & set(PRIVATE_IMPORTED_ACROSS)
    assert still == set(PRIVATE_IMPORTED_ACROSS), "a known crossing is gone: drop it from the list"
    uses = [u for p in sources(*FIRST_PARTY) for u in private_attribute_uses(p, known)]
    assert uses == []


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


# --- each rule against planted violations: a rule that stops seeing fails here ------------------


def plant(root: Path, files: dict[str, str]) -> tuple[list[Import], set[str], list[Path]]:
    """A synthetic source tree under `root` (module path -> source): its imports, modules, files."""
    paths = []
    for module, text in files.items():
        path = root / (module.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in path.relative_to(root).parents:
            if folder != Path(".") and not (root / folder / "__init__.py").exists():
                (root / folder / "__init__.py").write_text("")
        path.write_text(text)
        paths.append(path)
    every = sorted(root.rglob("*.py"))
    known = {module_name(p, root) for p in every}
    return [i for p in every for i in imports_of(p, known, root)], known, paths


def test_planted_web_framework_and_database_imports_are_found(tmp_path: Path) -> None:
    imports, _, _ = plant(
        tmp_path,
        {
            "registry_server.usage.service": "import starlette.requests\n",
            "registry_server.usage.routes": "from fastapi import APIRouter\nfrom sqlalchemy import select\n",
        },
    )
    assert web_framework_violations(imports) == ["registry_server.usage.service:1 imports starlette.requests"]
    assert routes_database_violations(imports) == ["registry_server.usage.routes:2 imports sqlalchemy"]


def test_a_planted_inline_query_in_a_route_is_found(tmp_path: Path) -> None:
    _, _, (path,) = plant(
        tmp_path,
        {
            "registry_server.usage.routes": (
                "def usage(state):\n"
                "    with state.db.session() as session:\n"
                "        report.usage(session, 1)\n"
                "        return session.get(Namespace, 'acme')\n"
            )
        },
    )
    assert list(inline_queries(path, tmp_path)) == [
        "registry_server.usage.routes:4 queries with session.get()"
    ]


def test_a_planted_foreign_routes_import_is_found_even_inside_a_function(tmp_path: Path) -> None:
    imports, _, _ = plant(
        tmp_path,
        {
            "registry_server.accounts.routes": "",
            "registry_server.mesh.hub": "def keys():\n    from registry_server.accounts.routes import keys\n",
            "registry_server.app": "from registry_server.accounts import routes\n",
        },
    )
    assert foreign_routes_violations(imports) == [
        "registry_server.mesh.hub:2 imports registry_server.accounts.routes"
    ]


def test_a_cycle_hidden_behind_a_lazy_import_is_found_and_a_type_only_one_is_not(tmp_path: Path) -> None:
    imports, _, _ = plant(
        tmp_path,
        {
            "registry_server.accounts.service": "def f():\n    from registry_server.usage import service\n",
            "registry_server.usage.service": "from registry_server.accounts import service\n",
            "registry_server.releases.service": (
                "from typing import TYPE_CHECKING\n"
                "from registry_server.accounts import service\n"
                "if TYPE_CHECKING:\n    from registry_server.git import receive\n"
            ),
            "registry_server.git.receive": "from registry_server.releases import service\n",
        },
    )
    assert cycles(imports) == [
        ["registry_server.accounts", "registry_server.usage", "registry_server.accounts"]
    ]


LAYERED = {
    "registry_server.app": (
        "from registry_server.web import routes\nfrom registry_server.db import Database\n"
    ),
    "registry_server.serve": "from registry_server.app import create_app\n",
    "registry_server.db": "",
    "registry_server.state": "from registry_server.db import Database\n",
    "registry_server.web.routes": "from registry_server.market import service\n",
    "registry_server.market.service": (
        "from registry_server.releases import service\nfrom registry_server.usage import service\n"
    ),
    "registry_server.market.models": "from registry_server.orm import Base\n",
    "registry_server.market.routes": "from registry_server.market import service\n",
    "registry_server.gateway.asgi": "from registry_server.mesh import calls\n",
    "registry_server.mesh.calls": "from registry_server.deployments import service\n",
    "registry_server.deployments.service": "from registry_server.releases import models\n",
    "registry_server.releases.models": "from registry_server.orm import Base\n",
    "registry_server.releases.service": "from registry_server.accounts import service\n",
    "registry_server.usage.service": "from registry_server.state import RegistryState\n",
    "registry_server.accounts.service": "from registry_server.db import Database\n",
    "registry_server.orm": "",
}


def test_imports_downward_in_the_layer_order_pass(tmp_path: Path) -> None:
    imports, _, _ = plant(tmp_path, LAYERED)
    assert layer_violations(imports) == []


@pytest.mark.parametrize(
    ("module", "source", "why"),
    [
        ("registry_server.mesh.hub", "from registry_server.gateway import asgi\n",
         "layer mesh may not import gateway"),
        ("registry_server.billing.ledger", "def f():\n    from registry_server.market import service\n",
         "layer billing may not import market"),
        ("registry_server.market.ranking", "from registry_server.gateway import asgi\n",
         "layer market may not import gateway"),
        ("registry_server.releases.index", "from registry_server.usage import service\n",
         "layer releases may not import usage"),
        ("registry_server.db", "from registry_server.accounts import models\n",
         "layer core may not import accounts"),
        ("registry_server.accounts.auth", "from registry_server.app import create_app\n",
         "layer accounts may not import app"),
        ("registry_server.market.models", "from registry_server.market import service\n",
         "models import no service or routes"),
        ("registry_server.market.service", "from registry_server.market.routes import router\n",
         "only routes and the composition root import routes"),
    ],
)  # fmt: skip
def test_a_planted_import_against_the_layer_order_is_found(
    tmp_path: Path, module: str, source: str, why: str
) -> None:
    imports, _, _ = plant(tmp_path, {**LAYERED, module: LAYERED.get(module, "") + source})
    found = layer_violations(imports)
    assert len(found) == 1 and found[0].startswith(module + ":") and found[0].endswith(f"({why})"), found


def test_a_package_without_a_layer_is_found(tmp_path: Path) -> None:
    plant(tmp_path, {"registry_server.accounts.service": "", "registry_server.loyalty.service": ""})
    assert unplaced_packages(tmp_path) == {"loyalty"}


def test_planted_private_names_are_found(tmp_path: Path) -> None:
    imports, known, paths = plant(
        tmp_path,
        {
            "mcpz._version": "__version__ = '1'\n",
            "mcpz.keys.signing": "def _canonical():\n    pass\n",
            "mcpz.keys.trust": "from mcpz._version import __version__\n",  # inside its own package: fine
            "registry_server.accounts.service": "def _helper():\n    pass\n",
            "registry_server.releases.routes": (
                "from registry_server.accounts.service import _helper\n"
                "from mcpz._version import __version__\n"
                "from mcpz import __version__ as version\n"
                "from registry_server.accounts import service as accounts\n"
                "import mcpz.keys.signing as signing\n"
                "accounts._helper()\n"
                "signing._canonical()\n"
                "accounts.__name__\n"
            ),
        },
    )
    assert private_name_violations(imports) == [
        "registry_server.releases.routes:1 imports registry_server.accounts.service"
        " (_helper is private to it)",
        "registry_server.releases.routes:2 imports mcpz._version (a private module of mcpz)",
    ]
    uses = [u for p in paths for u in private_attribute_uses(p, known, tmp_path)]
    assert uses == [
        "registry_server.releases.routes:6 uses registry_server.accounts.service._helper",
        "registry_server.releases.routes:7 uses mcpz.keys.signing._canonical",
    ]
