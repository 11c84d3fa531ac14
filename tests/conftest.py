"""Shared fixtures: every test runs with its own config, data and cache folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MCPZ_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("MCPZ_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("MCPZ_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "80")
    # The real git client in tests must not read the developer's own config.
    gitconfig = home / ".gitconfig"
    gitconfig.write_text("[user]\n\tname = Test User\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("MCPZ_TOKEN", "MCPZ_REGISTRY", "MCPZ_AUTHOR", "MCPZ_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    yield home


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
