"""Long transfers show bytes and rate on a terminal, and nothing with --json or off a terminal:
`mcpz push` and `mcpz clone`, real processes against a real registry, under a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LiveRegistry
from gitutil import git

from mcpz.repo.templates import render_template

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="needs a pty")]


def in_terminal(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run `argv` with stdin, stdout and stderr on a pseudo-terminal; its exit code and all it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    seen = bytearray()
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], timeout)
            if not ready:
                raise AssertionError(f"no output for {timeout:g}s: {seen.decode(errors='replace')}")
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    return proc.wait(timeout=timeout), seen.decode(errors="replace")


def agent_with_data(tmp_path: Path, name: str) -> Path:
    work = tmp_path / name.split("/")[1]
    work.mkdir()
    render_template("python", work, name)
    (work / "data.bin").write_bytes(os.urandom(600_000))  # incompressible: the pack carries it all
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-qm", "agent", cwd=work)
    return work


def test_push_and_clone_show_bytes_on_a_terminal_only(sqlite_registry: LiveRegistry, tmp_path: Path) -> None:
    token = sqlite_registry.account("acme", "read,publish")
    env = {
        **os.environ,
        "MCPZ_REGISTRY": sqlite_registry.url,
        "MCPZ_TOKEN": token,
        "MCPZ_CONFIG_DIR": str(tmp_path / "config"),
        "MCPZ_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "120",
        "TERM": "xterm",
    }
    env.pop("NO_COLOR", None)
    mcpz = [sys.executable, "-m", "mcpz"]

    first = agent_with_data(tmp_path, "acme/first")
    code, shown = in_terminal([*mcpz, "push", "--no-sign"], first, env)
    assert code == 0, shown
    assert "pushing" in shown and "kB" in shown, shown  # the bytes sent so far, as they go
    assert "published acme/first 0.1.0" in shown

    # A clone of it shows what it receives, and gets the same tree.
    code, shown = in_terminal([*mcpz, "clone", "acme/first@latest", str(tmp_path / "copy")], tmp_path, env)
    assert code == 0, shown
    assert "cloning" in shown and "kB" in shown, shown
    assert (tmp_path / "copy" / "data.bin").read_bytes() == (first / "data.bin").read_bytes()

    # --json on a terminal: the JSON alone, no progress.
    second = agent_with_data(tmp_path, "acme/second")
    code, shown = in_terminal([*mcpz, "--json", "push", "--no-sign"], second, env)
    assert code == 0, shown
    assert "pushing" not in shown and '"published": true' in shown, shown

    # Off a terminal: no progress either.
    third = agent_with_data(tmp_path, "acme/third")
    done = subprocess.run([*mcpz, "push", "--no-sign"], cwd=third, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pushing" not in done.stderr and "kB" not in done.stderr, done.stderr
