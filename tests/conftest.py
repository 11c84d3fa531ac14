"""Shared fixtures: every test runs with its own config, data and cache folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    isolate(monkeypatch, home)
    yield home


def isolate(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Config, data, cache and git settings of their own under `home`: never the developer's.
    (Module-scoped setups call it with a `pytest.MonkeyPatch.context()` of their own.)"""
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MCPZ_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("MCPZ_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("MCPZ_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "80")
    # The real git client in tests must not read the developer's own config.
    gitconfig = home / ".gitconfig"
    gitconfig.write_text(
        "[user]\n\tname = Test User\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n"
    )
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("MCPZ_TOKEN", "MCPZ_REGISTRY", "MCPZ_AUTHOR", "MCPZ_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("MCPZ_REGISTRY_")]:
        monkeypatch.delenv(var)


def missing(what: str) -> NoReturn:
    """Skip for a tool this machine lacks (`what`: its name, how to install it); in CI, whose
    `.ci/run` installs every one, fail instead."""
    message = f"{what} is missing (`.ci/run` installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli() -> object:
    """Run `mcpz ARGS...` in-process, as the user would type it."""
    from mcpz.cli.app import app

    runner = CliRunner()

    def run(*args: str, input: str | None = None, cwd: Path | None = None) -> CliResult:
        old = Path.cwd()
        if cwd is not None:
            os.chdir(cwd)
        try:
            result = runner.invoke(app, list(args), input=input, catch_exceptions=False)
        finally:
            os.chdir(old)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


# --- registries -----------------------------------------------------------------------------

POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_base() -> str | None:
    url = os.environ.get("MCPZ_TEST_POSTGRES_URL")
    if url:
        return url
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex(("127.0.0.1", 5432)) != 0:
            return None
    return POSTGRES_DEFAULT


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import secrets

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = _postgres_base()
    if base is None:
        pytest.skip("PostgreSQL is not available: set MCPZ_TEST_POSTGRES_URL or run one on 127.0.0.1:5432")
    name = f"mcpz_test_{secrets.token_hex(6)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {make_url(base).render_as_string(hide_password=True)} is not usable: {e}")
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class LiveRegistry:
    """A real registry served on a random loopback port from a thread of the test process."""

    url: str
    data_dir: Path
    database_url: str
    _handle: object

    def account(self, name: str, scopes: str = "read,publish,deploy,call,admin") -> str:
        """Create an account (and its namespace) and return a token for it."""
        return account_token(self.database_url, name, scopes)

    def git_url(self, name: str, token: str | None = None) -> str:
        base = self.url if token is None else self.url.replace("http://", f"http://mcpz:{token}@")
        return f"{base}/git/{name}.git"

    def stop(self) -> None:
        self._handle.stop()  # type: ignore[attr-defined]


def account_token(database_url: str, name: str, scopes: str = "read,publish,deploy,call,admin") -> str:
    """A token with `scopes` for the account `name` in the registry database at `database_url`,
    the account (and its namespace) created first unless it exists."""
    from registry_server.accounts import service as accounts
    from registry_server.accounts import tokens
    from registry_server.db import Database

    db = Database(database_url)
    try:
        with db.session() as session:
            try:
                account = accounts.create_account(session, name)
            except Exception:
                account = accounts.account_by_name(session, name)
        with db.session() as session:
            account = accounts.account_by_name(session, name)
            scope = tokens.parse_scopes(scopes)
            _row, secret = accounts.create_token(session, account, scope, expires_in=None)
    finally:
        db.dispose()
    return secret


def start_registry(data_dir: Path, database_url: str | None = None, **settings: object) -> LiveRegistry:
    from registry_server.serve import free_port, start_in_thread
    from registry_server.settings import RegistrySettings

    env = dict(os.environ)
    if database_url:
        env["MCPZ_DATABASE_URL"] = database_url
    else:
        env.pop("MCPZ_DATABASE_URL", None)
    config = RegistrySettings.load(data_dir=data_dir, env=env, port=free_port(), **settings)
    handle = start_in_thread(config)
    return LiveRegistry(handle.url, config.data_dir, config.database_url, handle)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveRegistry]:
    """A live registry, once on SQLite and once on PostgreSQL."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    live = start_registry(tmp_path / "registry", url)
    yield live
    live.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def billing_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A registry's state with an account `acme` (creator) and `bob` (consumer), opened in this
    process (tests/billingutil.py), once on SQLite and once on PostgreSQL."""
    from billingutil import open_world

    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    world = open_world(tmp_path / "registry", url)
    yield world
    world.state.close()


@pytest.fixture
def sqlite_registry(tmp_path: Path) -> Iterator[LiveRegistry]:
    """A live registry on SQLite only, for tests whose subject is not the database."""
    live = start_registry(tmp_path / "registry")
    yield live
    live.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Any]:
    """A registry with fast heartbeats, and `meshutil.Mesh` to start nodes and deploy on it."""
    from meshutil import FAST, Mesh

    reg = start_registry(tmp_path / "registry", **FAST)
    mesh = Mesh(tmp_path, reg)
    try:
        yield mesh
    finally:
        mesh.close()
        mesh.reg.stop()


# --- a local chain -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anvil() -> Iterator[Any]:
    """anvil on a free loopback port for the module (tests/chainutil.py); skips when not installed."""
    from chainutil import start_anvil

    chain = start_anvil()
    try:
        yield chain
    finally:
        chain.stop()


@pytest.fixture(scope="module")
def evm() -> Iterator[Any]:
    """mcpz's embedded EVM (`mcpz chain dev --engine evm`) on a free loopback port for the module."""
    from chainutil import start_evm

    chain = start_evm()
    try:
        yield chain
    finally:
        chain.stop()


@pytest.fixture
def settlement(anvil: Any) -> Any:
    """A fresh TestToken and McpzSettlement on the module's anvil (chainutil.Settlement)."""
    from chainutil import deploy_settlement

    return deploy_settlement(anvil)


@pytest.fixture(params=["anvil", "evm"])
def either_settlement(request: pytest.FixtureRequest) -> Any:
    """`settlement` on anvil, then on the embedded EVM: for the tests that prove the EVM stands in."""
    from chainutil import deploy_settlement

    return deploy_settlement(request.getfixturevalue(request.param))


# --- the fast lane ----------------------------------------------------------------------------

# Fixtures that start real processes or servers: a test that uses one is `slow` without saying so,
# so `pytest -m "not slow"` (the inner loop, docs/development.md) stays under a minute.
SLOW_FIXTURES = frozenset(
    {"registry", "sqlite_registry", "postgres_url", "mesh", "anvil", "evm", "settlement", "either_settlement"}
)
# Modules whose module-scoped set-up starts real processes (registries, nodes, agents, mypy), or
# that run seconds of property tests: measured with `pytest -m "not slow" --junitxml`, each over 2 s.
SLOW_MODULES = frozenset(
    {
        "test_api_fuzz", "test_bench_smoke", "test_demo", "test_examples", "test_login",
        "test_pack_reuse", "test_templates", "test_trust_revocations", "test_deployment_signing",
        "test_deps_cli",
        "test_file_modes", "test_gateway", "test_gateway_protocol", "test_gateway_restart",
        "test_jsonlimits", "test_local", "test_mesh_e2e", "test_mesh_hub", "test_node_sharing",
        "test_node_supervisor", "test_openapi", "test_project", "test_registry_api",
        "test_registry_cli", "test_registry_git", "test_registry_refusals", "test_registry_startup",
        "test_repo_recovery", "test_scheduler", "test_signed_releases", "test_usage_api",
        "test_usage_recorder", "test_web_session",
    }
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SLOW_MODULES or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
