"""`mcpz registry serve` refuses to start with one line on stderr, not uvicorn's traceback.

Each case runs the real command as a subprocess, as an operator would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LiveRegistry, start_registry

from mcpz import exit_codes
from registry_server.serve import free_port


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `mcpz registry serve ARGS`; it must end by itself (a bound, not a wait for success)."""
    return subprocess.run(
        [sys.executable, "-m", "mcpz", "registry", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr:\n{result.stderr}"
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[LiveRegistry]:
    live = start_registry(tmp_path / "registry")
    yield live
    live.stop()


def test_a_second_registry_on_the_same_data_folder(running: LiveRegistry) -> None:
    result = _serve("--data", str(running.data_dir), "--port", str(free_port()))
    line = _one_line(result)
    assert "another registry process" in line and str(running.data_dir) in line
    assert "--data" in line
    assert result.returncode == exit_codes.USAGE


def test_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _serve("--data", str(tmp_path / "reg"), "--port", str(port))
    line = _one_line(result)
    assert f"127.0.0.1:{port}" in line and "in use" in line and "--port" in line
    assert result.returncode == exit_codes.ERROR


def test_a_port_out_of_range(tmp_path: Path) -> None:
    # Before: announced "registry on http://127.0.0.1:99999" and listened on another port.
    result = _serve("--data", str(tmp_path / "reg"), "--port", "99999")
    line = _one_line(result)
    assert "port 99999" in line and "65535" in line
    assert result.returncode == exit_codes.USAGE
    assert not (tmp_path / "reg").exists()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("MCPZ_REGISTRY_PORT", "eighty", "eighty"),
        ("MCPZ_REGISTRY_CALL_TIMEOUT", "-5", "call_timeout"),
        ("MCPZ_REGISTRY_NONCE_RATE_LIMIT", "0", "nonce_rate_limit"),
    ],
)
def test_a_bad_setting_is_a_usage_error(tmp_path: Path, variable: str, value: str, named: str) -> None:
    env = {"MCPZ_REGISTRY_PORT": str(free_port()), variable: value}
    result = _serve("--data", str(tmp_path / "reg"), env=env)
    line = _one_line(result)
    assert "invalid registry setting" in line and named in line
    assert result.returncode == exit_codes.USAGE


def test_a_host_that_does_not_resolve(tmp_path: Path) -> None:
    result = _serve("--data", str(tmp_path / "reg"), "--host", "no-such-host.invalid", "--port", "8080")
    assert "no-such-host.invalid" in _one_line(result)
    assert result.returncode == exit_codes.USAGE
