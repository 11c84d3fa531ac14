"""The error cases of issue 13 on a real registry: each one line, with the exit code of
docs/errors.md (refused push 8, bad scope or namespace 2, rejected token 4 said as rejected,
nothing connected 5, Ctrl-C 130), and the failures that used to hang or leave things behind
(connect to a registry never reached, a lock naming a registry it never reached, a no-op push
asking for a passphrase it does not need)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry, isolate, start_registry
from gitutil import git

pytestmark = pytest.mark.slow

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRegistry]:
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, tmp_path_factory.mktemp("home"))
        live = start_registry(tmp_path_factory.mktemp("registry"))
        yield live
        live.stop()


def mcpz(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpz", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **(env or {})},
    )


def one_line(done: Any, code: int, *needles: str) -> None:
    stderr = done.stderr
    got = done.returncode if hasattr(done, "returncode") else done.exit_code
    assert got == code, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def processes_in(folder: Path) -> list[int]:
    """Live processes (zombies included) whose working folder is `folder`: an agent left behind."""
    target = str(folder.resolve())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd") == target:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def agent(cli: Any, tmp_path: Path, name: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    made = cli("init", name, cwd=tmp_path)
    assert made.exit_code == 0, made.stderr
    return tmp_path / name.split("/")[1]


def test_a_refused_push_is_8_and_bad_input_to_the_registry_is_2(
    cli: Any, reg: LiveRegistry, tmp_path: Path
) -> None:
    token = reg.account("acme")
    # Made in the same second from one template, the two inits are the very same commit; a commit
    # on top of only one of them would make the other's push a fast-forward. Each gets its own
    # commit on top, so the two branches diverge however the seconds fall.
    first = agent(cli, tmp_path / "one", "acme/clash")
    (first / "README.md").write_text("one history\n")
    assert cli("commit", "-m", "one", cwd=first).exit_code == 0
    pushed = cli("push", "--registry", reg.url, "--token", token, "--no-sign", cwd=first)
    assert pushed.exit_code == 0, pushed.stderr
    other = agent(cli, tmp_path / "two", "acme/clash")
    (other / "README.md").write_text("another history\n")
    assert cli("commit", "-m", "another", cwd=other).exit_code == 0
    refused = cli("push", "--registry", reg.url, "--token", token, "--json", cwd=other)
    one_line(refused, 8, "has commits you do not have", "`mcpz pull`")
    assert json.loads(refused.stdout)["error"]["exit_code"] == 8

    scope = cli("keys", "create", "--scope", "bogus", "--registry", reg.url, "--token", token)
    one_line(scope, 2, 'unknown scope "bogus"')
    namespace = cli("namespace", "create", "Bad_NS", "--registry", reg.url, "--token", token)
    one_line(namespace, 2, "Bad_NS")


def test_a_rejected_token_is_said_to_be_rejected_and_a_missing_one_missing(
    cli: Any, reg: LiveRegistry, tmp_path: Path
) -> None:
    folder = agent(cli, tmp_path, "acme/tokens")
    rejected = cli("push", "--registry", reg.url, "--token", "mcpz_" + "0" * 40, cwd=folder)
    one_line(rejected, 4, "rejected the token")
    missing = cli("push", "--registry", reg.url, cwd=folder)
    one_line(missing, 4, "wants a token", "`mcpz login`")
    api = cli("whoami", "--registry", reg.url, "--token", "mcpz_" + "0" * 40)
    one_line(api, 4, "unknown or revoked")


def test_a_no_op_push_needs_no_passphrase_and_a_publishing_one_stops_before_sending(
    reg: LiveRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPZ_WALLET_SCRYPT_N", "1024")
    monkeypatch.setenv("MCPZ_REGISTRY", reg.url)
    with_passphrase = {"MCPZ_WALLET_PASSPHRASE": PASSPHRASE}
    for args in (["wallet", "create"], ["login", "--wallet"], ["namespace", "create", "ci"]):
        done = mcpz(*args, env=with_passphrase)
        assert done.returncode == 0, (args, done.stderr)
    made = mcpz("init", "ci/quiet", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "quiet"
    published = mcpz("push", cwd=folder, env=with_passphrase)
    assert published.returncode == 0, published.stderr
    assert "signed by" in published.stderr

    # CI without a passphrase: nothing to publish, so nothing to sign, so no passphrase asked.
    again = mcpz("push", cwd=folder)
    assert again.returncode == 0, again.stderr
    assert "already published" in again.stdout

    # A new version needs a signature: without a passphrase the push stops, and sends nothing.
    manifest = folder / "mcpz.toml"
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    git("commit", "-qam", "0.2.0", cwd=folder)
    stopped = mcpz("push", cwd=folder)
    one_line(stopped, 2, "needs its passphrase", "MCPZ_WALLET_PASSPHRASE")
    versions = mcpz("versions", "ci/quiet", "--json")
    assert [v["version"] for v in json.loads(versions.stdout)] == ["0.1.0"]
    refs = git("ls-remote", reg.git_url("ci/quiet"), cwd=folder).stdout
    assert git("rev-parse", "HEAD", cwd=folder).stdout.strip() not in refs


def test_nothing_connected_as_dev_is_not_found(cli: Any, reg: LiveRegistry) -> None:
    token = reg.account("devs")
    done = cli("tools", "devs/none@dev", "--registry", reg.url, "--token", token, "--json")
    one_line(done, 5, "nothing is connected as devs/none@dev", "`mcpz connect`")
    assert json.loads(done.stdout)["error"]["exit_code"] == 5


def test_ctrl_c_on_logs_follow_exits_130(cli: Any, reg: LiveRegistry, tmp_path: Path) -> None:
    token = reg.account("follow")
    folder = agent(cli, tmp_path, "follow/tail")
    assert cli("push", "--registry", reg.url, "--token", token, "--no-sign", cwd=folder).exit_code == 0
    deployed = cli("deploy", "follow/tail@0.1.0", "--no-sign", "--registry", reg.url, "--token", token)
    assert deployed.exit_code == 0, deployed.stderr
    never = cli("call", "follow/tail@9.9.9", "echo", "text=hi", "--registry", reg.url, "--token", token)
    one_line(never, 5, "follow/tail has never run version 9.9.9 (it runs 0.1.0)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpz", "logs", "follow/tail", "-f", "--registry", reg.url, "--token", token],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)  # let it reach the stream: a SIGINT before that is no less a Ctrl-C
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def test_ctrl_c_at_a_prompt_exits_130(reg: LiveRegistry) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpz", "login", "--token", "--registry", reg.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def test_lock_never_names_a_registry_it_did_not_reach(cli: Any, tmp_path: Path, reg: LiveRegistry) -> None:
    folder = agent(cli, tmp_path, "acme/lonely")
    unreachable = cli("lock", "--registry", "http://127.0.0.1:9", cwd=folder)
    one_line(unreachable, 6, "cannot reach the registry at http://127.0.0.1:9")
    assert not (folder / "mcpz.lock").exists()
    reached = cli("lock", "--registry", reg.url, cwd=folder)
    assert reached.exit_code == 0, reached.stderr
    assert f'registry = "{reg.url}"' in (folder / "mcpz.lock").read_text()


def test_connect_to_a_registry_never_reached_fails_at_once_and_leaves_no_agent(
    cli: Any, tmp_path: Path
) -> None:
    folder = agent(cli, tmp_path, "acme/alone")
    started = time.monotonic()
    done = mcpz("connect", str(folder), "--registry", "http://127.0.0.1:9", "--token", "mcpz_x", "--json")
    assert time.monotonic() - started < 30
    one_line(done, 6, "cannot reach the registry at ws://127.0.0.1:9")
    assert json.loads(done.stdout.splitlines()[-1])["error"]["exit_code"] == 6
    assert processes_in(folder) == []


def test_connect_exits_on_the_first_sigterm_and_leaves_no_agent(tmp_path: Path, reg: LiveRegistry) -> None:
    token = reg.account("term")
    assert mcpz("init", "term/agent", cwd=tmp_path).returncode == 0
    folder = tmp_path / "agent"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpz", "connect", str(folder), "--registry", reg.url, "--token", token],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = ""
        while "is attached" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen += line
        assert "is attached" in seen, seen
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, seen + rest
    assert "detached" in rest
    assert processes_in(folder) == []
