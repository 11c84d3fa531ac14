from __future__ import annotations

import subprocess
import sys


def test_version_fast_path_prints_version() -> None:
    done = subprocess.run([sys.executable, "-m", "mcpz", "--version"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.startswith("mcpz ")


def test_unknown_command_is_usage_error(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("no-such-command")
    assert result.exit_code == 2
    assert "No such command" in result.stderr
