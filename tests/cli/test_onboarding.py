"""Onboarding without an operator: login makes a wallet, logins per registry with a default, a wallet
session mints its own node keys, `mcpz doctor`, `status --remote`, and the warnings that come with them.

Against real registries on loopback (in-process threads), through the real CLI; the wallet is real
(a cheap scrypt cost, MCPZ_WALLET_SCRYPT_N) and so is every signature.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry
from gitutil import api

from mcpz import credentials
from mcpz.client.remote_status import lower_than_published, published_versions
from mcpz.config import Settings
from registry_server.accounts.tokens import beyond_grant
from registry_server.serve import free_port

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(autouse=True)
def cheap_wallet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPZ_WALLET_SCRYPT_N", str(2**10))
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveRegistry, LiveRegistry]]:
    first = start_registry(tmp_path_factory.mktemp("registry-a"))
    second = start_registry(tmp_path_factory.mktemp("registry-b"))
    yield first, second
    first.stop()
    second.stop()


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def login(cli: Any, url: str) -> dict[str, Any]:
    done = cli("login", "--wallet", "--create-wallet", "--registry", url, "--json")
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# --- pure pieces ------------------------------------------------------------------------------------


def test_admin_may_grant_node_and_nothing_else_beyond_its_scopes() -> None:
    session = {"read", "publish", "deploy", "call", "admin"}
    assert beyond_grant(session, ["node"]) == set()
    assert beyond_grant(session, ["node", "call"]) == set()
    assert beyond_grant({"read", "publish"}, ["node"]) == {"node"}
    assert beyond_grant({"node"}, ["node", "admin"]) == {"admin"}


def test_lower_than_published() -> None:
    assert lower_than_published("0.1.0", []) is None
    assert lower_than_published("0.3.0", ["0.1.0", "0.2.0"]) is None
    assert lower_than_published("0.2.0", ["0.1.0", "0.2.0"]) is None  # published already: no warning
    warning = lower_than_published("0.1.5", ["0.1.0", "0.2.0", "not-a-version"])
    assert warning is not None and "lower than the published 0.2.0" in warning
    refs = {b"refs/heads/main": b"a" * 40, b"refs/tags/v0.1.0": b"b" * 40, b"refs/tags/v0.2.0": b"c" * 40}
    refs[b"refs/tags/v0.2.0^{}"] = b"d" * 40
    assert published_versions(refs) == {"0.1.0": "b" * 40, "0.2.0": "d" * 40}


def test_logins_are_kept_per_registry_with_the_latest_the_default(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert credentials.logins() == [] and credentials.default_registry() is None
    config = isolated_env / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('registry = "https://user.example"\n')
    credentials.remember_login("https://a.example", "alice")
    credentials.remember_login("https://b.example", "bob")
    assert [(x.registry, x.account, x.default) for x in credentials.logins()] == [
        ("https://b.example", "bob", True),
        ("https://a.example", "alice", False),
    ]
    # The latest login beats the user config; the environment and flags beat the login.
    assert (Settings.load().registry, Settings.load().sources["registry"]) == ("https://b.example", "login")
    monkeypatch.setenv("MCPZ_REGISTRY", "https://env.example")
    assert Settings.load().registry == "https://env.example"
    monkeypatch.delenv("MCPZ_REGISTRY")
    # Forgetting the default leaves no default: the user config speaks again.
    assert credentials.forget_login("https://b.example")
    assert credentials.default_registry() is None
    assert Settings.load().registry == "https://user.example"
    assert [x.registry for x in credentials.logins()] == ["https://a.example"]
    assert not credentials.forget_login("https://b.example")


def test_login_without_a_wallet_off_a_terminal_names_the_flag(cli: Any) -> None:
    done = cli("login", "--wallet", "--registry", "http://127.0.0.1:9")
    assert done.exit_code == 2
    assert "--create-wallet" in one_error_line(done.stderr)
    assert cli("login", "--token", "--create-wallet").exit_code == 2


def test_init_inside_a_repository_warns(cli: Any, tmp_path: Path) -> None:
    outer = cli("init", str(tmp_path / "outer"), "--name", "acme/outer", "--json")
    assert outer.exit_code == 0, outer.stderr
    assert json.loads(outer.stdout)["inside"] is None and "warning" not in outer.stderr
    inner = cli("init", str(tmp_path / "outer" / "inner"), "--name", "acme/inner", "--json")
    assert inner.exit_code == 0, inner.stderr
    assert json.loads(inner.stdout)["inside"] == str(tmp_path / "outer")
    assert f"is inside the repository at {tmp_path / 'outer'}" in inner.stderr


# --- logins, whoami, logout ----------------------------------------------------------------------


@pytest.mark.slow
def test_login_creates_the_wallet_remembers_the_registry_and_keeps_each(
    cli: Any, two: tuple[LiveRegistry, LiveRegistry], isolated_env: Path
) -> None:
    a, b = two
    first = login(cli, a.url)
    assert first["default"] is True and first["registry"] == a.url
    address = json.loads(cli("wallet", "address", "--json").stdout)["address"]
    assert first["address"] == address
    # No --registry, no MCPZ_REGISTRY: the registry logged into.
    who = json.loads(cli("whoami", "--json").stdout)
    assert who["registry"] == a.url and who["account"] == address.lower()

    login(cli, b.url)  # the same wallet, a second registry: the first stays logged in
    who = json.loads(cli("whoami", "--json").stdout)
    assert who["registry"] == b.url
    assert [(x["registry"], x["default"]) for x in who["logins"]] == [(b.url, True), (a.url, False)]
    assert cli("whoami", "--registry", a.url).exit_code == 0
    text = cli("whoami").stdout
    assert f"{b.url}  {address.lower()} (default)" in text and f"{a.url}  {address.lower()}" in text

    out = cli("logout", "--json")
    assert json.loads(out.stdout) == [{"registry": b.url, "removed": True}]
    # b is forgotten and no longer the default; a still works when named.
    assert cli("whoami", "--registry", a.url).exit_code == 0
    left = json.loads(cli("whoami", "--registry", a.url, "--json").stdout)["logins"]
    assert [x["registry"] for x in left] == [a.url]
    assert cli("whoami", "--registry", b.url).exit_code == 4
    assert cli("logout", "--all").exit_code == 0
    assert cli("whoami", "--registry", a.url).exit_code == 4


# --- node keys without an operator ----------------------------------------------------------------


@pytest.mark.slow
def test_a_wallet_session_mints_node_keys_and_a_node_key_mints_nothing(
    cli: Any, two: tuple[LiveRegistry, LiveRegistry]
) -> None:
    a, _ = two
    login(cli, a.url)
    made = cli("keys", "create", "--scope", "node", "--name", "laptop", "--json")
    assert made.exit_code == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["scopes"] == ["node"]
    assert api(a, "/v1/whoami", key["token"]).json()["scopes"] == ["node"]
    assert api(a, "/v1/nodes", key["token"]).status_code == 200
    # The node key is no admin: it cannot mint, and cannot publish or deploy.
    refused = cli("keys", "create", "--scope", "node", "--token", key["token"])
    assert refused.exit_code == 4
    assert "admin" in one_error_line(refused.stderr)
    assert api(a, "/v1/namespaces", key["token"], method="POST", json={"name": "stolen"}).status_code == 403
    # A key with publish but no admin cannot mint node keys either.
    publish = a.account("pubonly", "read,publish")
    assert cli("keys", "create", "--scope", "node", "--token", publish).exit_code == 4


@pytest.mark.slow
def test_the_operator_command_takes_the_address_as_wallet_address_prints_it(
    cli: Any, two: tuple[LiveRegistry, LiveRegistry]
) -> None:
    a, _ = two
    login(cli, a.url)
    address = cli("wallet", "address").stdout.strip()
    assert address != address.lower()
    done = cli(
        "registry", "token", "create", "--account", address, "--scope", "node",
        "--data", str(a.data_dir), "--json",
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["account"] == address.lower()
    assert api(a, "/v1/whoami", made["token"]).json()["account"] == address.lower()
    missing = cli("registry", "token", "create", "--account", "0x" + "12" * 20, "--scope", "node",
                  "--data", str(a.data_dir))  # fmt: skip
    assert missing.exit_code == 5
    assert "mcpz login --wallet" in one_error_line(missing.stderr)


# --- doctor ------------------------------------------------------------------------------------------


def checks_of(result: Any) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in json.loads(result.stdout)["checks"]}


def test_doctor_with_no_registry_fails_with_6(cli: Any) -> None:
    done = cli("doctor", "--registry", f"http://127.0.0.1:{free_port()}", "--json")
    assert done.exit_code == 6
    checks = checks_of(done)
    assert checks["registry"]["status"] == "fail" and checks["registry"]["exit_code"] == 6
    assert checks["wallet"]["status"] == "warn" and "--create-wallet" in checks["wallet"]["hint"]
    text = cli("doctor", "--registry", f"http://127.0.0.1:{free_port()}")
    assert text.stdout.splitlines()[0].startswith("FAIL  registry")


@pytest.mark.slow
def test_doctor_walks_a_new_user_to_ready(
    cli: Any, two: tuple[LiveRegistry, LiveRegistry], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    a, _ = two
    fresh = checks_of(cli("doctor", "--registry", a.url, "--json"))
    assert fresh["registry"]["status"] == "ok"
    assert fresh["token"]["status"] == "warn" and "mcpz login --wallet" in fresh["token"]["hint"]
    assert cli("doctor", "--registry", a.url).exit_code == 0  # nothing broken, only not set up

    login(cli, a.url)
    ns = f"dr{free_port()}"
    assert cli("doctor", "--namespace", ns).exit_code == 5
    assert cli("namespace", "create", ns).exit_code == 0
    ready = checks_of(cli("doctor", "--namespace", ns, "--json"))
    assert {k: v["status"] for k, v in ready.items()} == {
        "registry": "ok", "token": "ok", "wallet": "ok", "namespace": "ok", "signing": "ok", "nodes": "warn",
    }  # fmt: skip
    assert "mcpz keys create --scope node" in ready["nodes"]["hint"]
    # In an agent folder the namespace comes from its manifest.
    assert cli("init", str(tmp_path / "agent"), "--name", f"{ns}/x").exit_code == 0
    here = checks_of(cli("doctor", "--json", cwd=tmp_path / "agent"))
    assert here["namespace"]["message"] == f'you own "{ns}"'

    # Someone else's namespace: not a member (4); an operator-made one has no owner key.
    assert cli("doctor", "--namespace", "operatorns", "--json").exit_code == 5
    a.account("operatorns")
    other = cli("doctor", "--namespace", "operatorns", "--json")
    assert other.exit_code == 4
    assert checks_of(other)["namespace"]["status"] == "fail"

    # A wrong passphrase fails the wallet check (4); a rejected token fails the token check (4).
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", "wrong")
    wrong = cli("doctor", "--namespace", ns, "--json")
    assert wrong.exit_code == 4 and checks_of(wrong)["wallet"]["status"] == "fail"
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("MCPZ_TOKEN", "mcpz_revoked-or-made-up")
    bad = cli("doctor", "--json")
    assert bad.exit_code == 4 and checks_of(bad)["token"]["status"] == "fail"


# --- status --remote, and a release below a published one ------------------------------------------


@pytest.mark.slow
def test_status_remote_and_the_lower_release_warning(
    cli: Any, two: tuple[LiveRegistry, LiveRegistry], tmp_path: Path
) -> None:
    a, _ = two
    login(cli, a.url)
    ns = f"st{free_port()}"
    assert cli("namespace", "create", ns).exit_code == 0
    agent = tmp_path / "agent"
    assert cli("init", str(agent), "--name", f"{ns}/x").exit_code == 0

    before = cli("status", "--remote", "--json", cwd=agent)
    assert before.exit_code == 0, before.stderr
    remote = json.loads(before.stdout)["remote"]
    assert (remote["remote_head"], remote["published"], remote["ahead"]) == (None, False, 1)
    assert "is not on" in cli("status", "--remote", cwd=agent).stdout

    pushed = cli("push", "--json", cwd=agent)
    assert pushed.exit_code == 0, pushed.stderr
    text = cli("status", "--remote", cwd=agent).stdout
    assert "## main is up to date with" in text
    assert f"## {ns}/x 0.1.0 is published from this commit" in text

    manifest = agent / "mcpz.toml"
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    assert cli("commit", "-m", "0.2.0", cwd=agent).exit_code == 0
    ahead = json.loads(cli("status", "--remote", "--json", cwd=agent).stdout)["remote"]
    assert (ahead["ahead"], ahead["behind"], ahead["published"]) == (1, 0, False)
    assert cli("push", cwd=agent).exit_code == 0

    manifest.write_text(manifest.read_text().replace('version = "0.2.0"', 'version = "0.1.5"'))
    assert cli("commit", "-m", "a lower one", cwd=agent).exit_code == 0
    warned = cli("status", "--remote", cwd=agent)
    assert "warning: 0.1.5 is lower than the published 0.2.0" in warned.stderr
    lower = cli("push", "--json", cwd=agent)
    assert lower.exit_code == 0, lower.stderr
    [warning] = json.loads(lower.stdout)["warnings"]
    assert warning.startswith("0.1.5 is lower than the published 0.2.0: new resolutions")
    assert "warning: 0.1.5 is lower than the published 0.2.0" in lower.stderr


@pytest.mark.slow
def test_login_on_a_terminal_offers_to_create_the_wallet(
    two: tuple[LiveRegistry, LiveRegistry], isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real pseudo-terminal: login asks whether to create a wallet, then the passphrase twice."""
    import os
    import pty
    import select
    import sys
    import time

    a, _ = two
    monkeypatch.delenv("MCPZ_WALLET_PASSPHRASE")
    env = dict(os.environ)
    pid, fd = pty.fork()
    if pid == 0:  # the child: `mcpz login` on the terminal
        os.execve(
            sys.executable, [sys.executable, "-m", "mcpz", "login", "--wallet", "--registry", a.url], env
        )
    seen = b""
    answers = [(b"create one now?", b"y\n"), (b"passphrase for the new wallet:", b"pw-typed\n"),
               (b"the same passphrase again:", b"pw-typed\n")]  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break  # the child closed the terminal
            if not chunk:
                break
            seen += chunk
        if answers and answers[0][0] in seen:
            os.write(fd, answers.pop(0)[1])
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = seen.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert not answers, text
    assert "created wallet 0x" in text and f"logged in to {a.url} as 0x" in text
    assert "pw-typed" not in text  # the passphrase is never echoed
    from mcpz.keys.wallet import Wallet

    Wallet.load().unlock("pw-typed")
