"""`mcpz` against a live registry: operator bootstrap, login, push/publish, clone/pull, yank, keys, errors."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import LiveRegistry, start_registry
from gitutil import api, commit, git, init_agent, ls_remote, rev_parse, set_version

from registry_server.serve import free_port


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRegistry]:
    live = start_registry(tmp_path_factory.mktemp("registry"))
    yield live
    live.stop()


@pytest.fixture
def use(reg: LiveRegistry, monkeypatch: pytest.MonkeyPatch) -> LiveRegistry:
    """Point the CLI at the module's registry (MCPZ_REGISTRY), with no token yet."""
    monkeypatch.setenv("MCPZ_REGISTRY", reg.url)
    return reg


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr:\n{stderr}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# --- operator commands and login -----------------------------------------------------------------


def test_operator_bootstraps_while_the_registry_serves(cli, use: LiveRegistry) -> None:  # type: ignore[no-untyped-def]
    data = str(use.data_dir)
    created = cli("--json", "registry", "account", "create", "alice", "--data", data)
    assert created.exit_code == 0, created.stderr
    assert json.loads(created.stdout) == {"account": "alice", "namespaces": ["alice"]}

    again = cli("registry", "account", "create", "alice", "--data", data)
    assert again.exit_code == 2
    assert "already exists" in _one_error_line(again.stderr)

    made = cli(
        "--json",
        "registry",
        "token",
        "create",
        "--account",
        "alice",
        "--scope",
        "read,publish,admin",
        "--expires",
        "30d",
        "--data",
        data,
    )
    assert made.exit_code == 0, made.stderr
    payload = json.loads(made.stdout)
    assert payload["account"] == "alice"
    assert payload["scopes"] == ["read", "publish", "admin"]
    assert payload["token"].startswith("mcpz_")
    expires = datetime.fromisoformat(payload["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)

    # Without --json the token alone is the output, ready for a pipe.
    plain = cli("registry", "token", "create", "--account", "alice", "--scope", "read", "--data", data)
    assert plain.exit_code == 0, plain.stderr
    token = plain.stdout.strip()
    assert token.startswith("mcpz_") and "\n" not in token

    # The running registry accepts what the operator made.
    who = api(use, "/v1/whoami", payload["token"])
    assert who.status_code == 200
    assert who.json()["account"] == "alice"

    unknown = cli("registry", "token", "create", "--account", "nobody", "--scope", "read", "--data", data)
    assert unknown.exit_code == 5
    _one_error_line(unknown.stderr)
    bad_scope = cli("registry", "token", "create", "--account", "alice", "--scope", "root", "--data", data)
    assert bad_scope.exit_code == 2
    _one_error_line(bad_scope.stderr)


def test_login_whoami(cli, use: LiveRegistry, isolated_env: Path) -> None:  # type: ignore[no-untyped-def]
    token = use.account("bob", "read,publish,admin")
    logged = cli("login", "--token", input=token + "\n")
    assert logged.exit_code == 0, logged.stderr
    assert f"logged in to {use.url} as bob" in logged.stdout
    assert token not in logged.stdout + logged.stderr
    # No keyring backend here: the token went to a 0600 file, with a warning saying so.
    stored = isolated_env / "config" / "credentials.toml"
    assert stored.exists()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert "warning" in logged.stderr

    who = cli("whoami")
    assert who.exit_code == 0, who.stderr
    assert "account:    bob" in who.stdout
    assert "namespaces: bob" in who.stdout
    who_json = cli("whoami", "--json")
    assert who_json.exit_code == 0
    data = json.loads(who_json.stdout)
    assert data["account"] == "bob"
    assert data["namespaces"] == ["bob"]
    assert data["scopes"] == ["read", "publish", "admin"]

    bad = cli("login", "--token", input="mcpz_not-a-token\n")
    assert bad.exit_code == 4
    _one_error_line(bad.stderr)
    # The good token is still the one kept.
    assert cli("whoami").exit_code == 0


# --- push, info, versions, clone, pull -----------------------------------------------------------


def test_push_publishes_and_reports(cli, use: LiveRegistry, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MCPZ_TOKEN", use.account("carol"))
    name = "carol/agent"
    work = tmp_path / "agent"
    first = init_agent(work, name, "0.1.0", description="carol's agent")

    pushed = cli("push", cwd=work)
    assert pushed.exit_code == 0, pushed.stderr
    assert pushed.stdout.strip() == f"published {name} 0.1.0 ({first[:12]})"
    assert rev_parse(work, "v0.1.0") == first  # the local tag, made once the registry took it
    assert ls_remote(use.git_url(name))["refs/tags/v0.1.0"] == first

    info = cli("info", name)
    assert info.exit_code == 0, info.stderr
    assert "latest: 0.1.0" in info.stdout
    assert "carol's agent" in info.stdout
    versions = cli("versions", name, "--json")
    assert versions.exit_code == 0
    assert [(v["version"], v["commit"], v["yanked"]) for v in json.loads(versions.stdout)] == [
        ("0.1.0", first, False)
    ]

    again = cli("push", "--json", cwd=work)
    assert again.exit_code == 0, again.stderr
    result = json.loads(again.stdout)
    assert (result["published"], result["already_published"], result["version"]) == (False, True, "0.1.0")
    plain_again = cli("push", cwd=work)
    assert plain_again.exit_code == 0
    assert "already published" in plain_again.stdout

    second = set_version(work, "0.2.0", name, description="carol's agent")
    bumped = cli("push", "--json", cwd=work)
    assert bumped.exit_code == 0, bumped.stderr
    result = json.loads(bumped.stdout)
    assert (result["published"], result["version"], result["commit"]) == (True, "0.2.0", second)
    listed = json.loads(cli("versions", name, "--json").stdout)
    assert [(v["version"], v["commit"]) for v in listed] == [("0.1.0", first), ("0.2.0", second)]
    assert "versions: 0.1.0, 0.2.0" in cli("info", name).stdout

    # Work after a release: the branch moves, the release does not.
    third = commit(work, {"server.py": "print('unreleased')\n"})
    branch_only = cli("push", cwd=work)
    assert branch_only.exit_code == 0
    assert "already published" in branch_only.stdout
    refs = ls_remote(use.git_url(name))
    assert refs["refs/heads/main"] == third
    assert refs["refs/tags/v0.2.0"] == second


def test_clone_at_a_version_and_pull(cli, use: LiveRegistry, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MCPZ_TOKEN", use.account("dave"))
    name = "dave/agent"
    work = tmp_path / "agent"
    first = init_agent(work, name, "0.1.0")
    assert cli("push", cwd=work).exit_code == 0
    second = set_version(work, "0.2.0", name)
    assert cli("push", cwd=work).exit_code == 0

    at_version = tmp_path / "old"
    cloned = cli("clone", f"{name}@0.1.0", str(at_version))
    assert cloned.exit_code == 0, cloned.stderr
    assert rev_parse(at_version, "HEAD") == first
    assert 'version = "0.1.0"' in (at_version / "mcpz.toml").read_text()

    latest = tmp_path / "latest"
    cloned = cli("--json", "clone", name, str(latest))
    assert cloned.exit_code == 0, cloned.stderr
    assert json.loads(cloned.stdout)["commit"] == second
    assert rev_parse(latest, "HEAD") == second

    third = commit(work, {"server.py": "print('newer')\n"})
    assert cli("push", cwd=work).exit_code == 0
    pulled = cli("pull", cwd=latest)
    assert pulled.exit_code == 0, pulled.stderr
    assert f"updated {second[:12]}..{third[:12]}" in pulled.stdout
    assert rev_parse(latest, "HEAD") == third
    assert (latest / "server.py").read_text() == "print('newer')\n"
    again = cli("pull", cwd=latest)
    assert again.exit_code == 0
    assert "already up to date" in again.stdout

    not_empty = cli("clone", name, str(latest))
    assert not_empty.exit_code == 2
    _one_error_line(not_empty.stderr)
    missing = cli("clone", f"{name}@9.9.9", str(tmp_path / "nowhere"))
    assert missing.exit_code == 5, missing.stderr
    _one_error_line(missing.stderr)


def test_yank_and_unyank(cli, use: LiveRegistry, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MCPZ_TOKEN", use.account("erin"))
    name = "erin/agent"
    work = tmp_path / "agent"
    init_agent(work, name, "0.1.0")
    assert cli("push", cwd=work).exit_code == 0
    set_version(work, "0.2.0", name)
    assert cli("push", cwd=work).exit_code == 0

    yanked = cli("yank", f"{name}@0.2.0", "--reason", "leaks memory")
    assert yanked.exit_code == 0, yanked.stderr
    assert f"yanked {name} 0.2.0" in yanked.stdout
    rows = json.loads(cli("versions", name, "--json").stdout)
    assert [(v["version"], v["yanked"], v["yank_reason"]) for v in rows] == [
        ("0.1.0", False, ""),
        ("0.2.0", True, "leaks memory"),
    ]
    info = cli("info", name)
    assert "latest: 0.1.0" in info.stdout
    assert "0.2.0 (yanked)" in info.stdout

    unyanked = cli("unyank", f"{name}@0.2.0")
    assert unyanked.exit_code == 0, unyanked.stderr
    rows = json.loads(cli("versions", name, "--json").stdout)
    assert [v["yanked"] for v in rows] == [False, False]
    assert "latest: 0.2.0" in cli("info", name).stdout

    no_version = cli("yank", name)
    assert no_version.exit_code == 2
    _one_error_line(no_version.stderr)
    unknown = cli("yank", f"{name}@9.9.9")
    assert unknown.exit_code == 5
    _one_error_line(unknown.stderr)
    foreign = cli("yank", f"{name}@0.1.0", "--token", use.account("frank"))
    assert foreign.exit_code == 4
    _one_error_line(foreign.stderr)


def test_keys_commands(cli, use: LiveRegistry, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MCPZ_TOKEN", use.account("gina", "read,publish,admin"))
    created = cli("keys", "create", "--scope", "read", "--name", "ci")
    assert created.exit_code == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("mcpz_") and "\n" not in secret

    listed = cli("keys", "list", "--json")
    assert listed.exit_code == 0
    assert secret not in listed.stdout
    keys = json.loads(listed.stdout)
    ci = [k for k in keys if k["name"] == "ci"]
    assert len(ci) == 1
    assert "token" not in ci[0]
    assert ci[0]["scopes"] == ["read"]
    table = cli("keys", "list")
    assert table.exit_code == 0
    assert "ci" in table.stdout and secret not in table.stdout

    assert cli("whoami", "--token", secret).exit_code == 0
    revoked = cli("keys", "revoke", str(ci[0]["id"]))
    assert revoked.exit_code == 0, revoked.stderr
    refused = cli("whoami", "--token", secret)
    assert refused.exit_code == 4
    _one_error_line(refused.stderr)

    beyond = cli("keys", "create", "--scope", "deploy")
    assert beyond.exit_code == 4
    _one_error_line(beyond.stderr)


# --- errors: exit codes and one line on stderr ---------------------------------------------------


def test_unknown_agent_exits_5(cli, use: LiveRegistry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for args in (
        ["info", "nobody/nothing"],
        ["versions", "nobody/nothing"],
        ["clone", "nobody/nothing", str(tmp_path / "c")],
    ):
        result = cli(*args)
        assert result.exit_code == 5, (args, result.stderr)
        _one_error_line(result.stderr)


def test_no_token_exits_4(cli, use: LiveRegistry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "agent"
    init_agent(work, "hank/agent", "0.1.0")
    use.account("hank")
    for args, where in (
        (["whoami"], None),
        (["keys", "list"], None),
        (["yank", "hank/agent@0.1.0"], None),
        (["push"], work),
    ):
        result = cli(*args, cwd=where)
        assert result.exit_code == 4, (args, result.stdout, result.stderr)
        _one_error_line(result.stderr)
    assert ls_remote(use.git_url("hank/agent")) == {}


def test_registry_down_exits_6(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MCPZ_TOKEN", "mcpz_whatever")
    work = tmp_path / "agent"
    init_agent(work, "ivan/agent", "0.1.0")
    for args, where in (
        (["info", "ivan/agent", "--registry", down], None),
        (["whoami", "--registry", down], None),
        (["clone", "ivan/agent", str(tmp_path / "c"), "--registry", down], None),
        (["push", "--registry", down], work),
    ):
        result = cli(*args, cwd=where)
        assert result.exit_code == 6, (args, result.stdout, result.stderr)
        _one_error_line(result.stderr)
    assert git("tag", "--list", cwd=work).stdout == ""  # no release tag made for a push that never happened
