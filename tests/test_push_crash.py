"""kill -9 at every step of a push: after a restart the version is fully published or fully absent.

The registry runs as its own process (`mcpz registry serve`) with the test-only hook
`MCPZ_TEST_CRASH_AT` naming one step of receiving a push; the real `git push` of a release makes
it die there with SIGKILL. It is then started again without the hook, and what a client sees is
checked: either the index lists the version and a clone of its tag works, or the index does not
know it, the tag is gone and the same push publishes it. Never a tag the index does not know (the
version 404s, re-pushing says "Everything up-to-date") nor a release whose tag cannot be fetched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import isolate
from gitutil import api, bare_path, git, init_agent, ls_remote, quarantines, release_rows
from meshutil import until

from registry_server.crash_points import STEPS

pytestmark = pytest.mark.slow

# What each step must end as: the database commit is the moment a release exists.
EXPECTED = {step: "absent" for step in STEPS} | {"after-db-commit": "published"}


@dataclass
class RegistryProcess:
    """`mcpz registry serve` on one data folder, started (optionally with the crash hook) and killed."""

    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'registry.db'}"

    def git_url(self, name: str, token: str | None = None) -> str:
        base = self.url if token is None else self.url.replace("http://", f"http://mcpz:{token}@")
        return f"{base}/git/{name}.git"

    def start(self, crash_at: str | None = None) -> None:
        from registry_server.serve import free_port

        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "MCPZ_TEST_CRASH_AT"}
        if crash_at:
            env["MCPZ_TEST_CRASH_AT"] = crash_at
        argv = [sys.executable, "-m", "mcpz", "registry", "serve", "--data", str(self.data_dir)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--port", str(self.port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        until(self._listening, 60, f"the registry to listen; log:\n{self.tail()}")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the registry exited with {self.proc.returncode}:\n{self.tail()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@dataclass
class Setup:
    registry: RegistryProcess
    token: str
    tmp: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One data folder and account for every step; each step pushes its own agent."""
    from registry_server import accounts, tokens
    from registry_server.db import Database

    tmp = tmp_path_factory.mktemp("crash")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, tmp_path_factory.mktemp("home"))
        registry = RegistryProcess(tmp / "registry", tmp / "registry.log")
        registry.start()  # creates and migrates the database
        db = Database(registry.database_url)
        try:
            with db.session() as session:
                account = accounts.create_account(session, "acme")
                _row, token = accounts.create_token(
                    session, account, tokens.parse_scopes("read,publish"), expires_in=None
                )
        finally:
            db.dispose()
        registry.stop()
        try:
            yield Setup(registry, token, tmp)
        finally:
            registry.stop()


def _published(registry: RegistryProcess, name: str, commit: str, where: Path) -> bool:
    """The index lists the version at `commit` and a clone of its tag checks out that commit."""
    response = api(registry, f"/v1/agents/{name}/0.1.0")
    if response.status_code != 200:
        return False
    assert response.json()["commit"] == commit
    git("clone", "-q", "--branch", "v0.1.0", registry.git_url(name), str(where))
    assert git("rev-parse", "HEAD", cwd=where).stdout.strip() == commit
    return True


@pytest.mark.parametrize("step", STEPS)
def test_a_push_killed_at_any_step_leaves_the_version_published_or_absent(setup: Setup, step: str) -> None:
    registry, token = setup.registry, setup.token
    name = f"acme/crash-{step}"
    work = setup.tmp / step / "work"
    head = init_agent(work, name, "0.1.0")
    git("tag", "v0.1.0", cwd=work)

    registry.start(crash_at=step)
    try:
        push = git("push", registry.git_url(name, token), "main", "v0.1.0", cwd=work, check=False)
        assert push.returncode != 0, f"the push survived the crash at {step}:\n{push.stderr}"
        assert registry.proc is not None
        assert registry.proc.wait(timeout=30) == -signal.SIGKILL, registry.tail()
    finally:
        registry.stop()

    registry.start()
    try:
        refs = ls_remote(registry.git_url(name))
        if _published(registry, name, head, setup.tmp / step / "clone"):
            outcome = "published"
            assert refs.get("refs/tags/v0.1.0") == head
            again = git("push", registry.git_url(name, token), "main", "v0.1.0", cwd=work, check=False)
            assert again.returncode == 0, again.stderr
        else:
            outcome = "absent"
            assert "refs/tags/v0.1.0" not in refs, f"wedged: a tag the index does not know ({refs})"
            assert release_rows(registry, name) == []
            again = git("push", registry.git_url(name, token), "main", "v0.1.0", cwd=work, check=False)
            assert again.returncode == 0, again.stderr
            assert "published acme/crash" in again.stderr, again.stderr
            assert _published(registry, name, head, setup.tmp / step / "clone")
        assert outcome == EXPECTED[step]
        assert release_rows(registry, name) == [("0.1.0", head)]
        assert quarantines(registry, name) == []
        leftovers = [p for p in bare_path(registry, name).rglob("*.lock")]
        assert leftovers == []
    finally:
        registry.stop()
