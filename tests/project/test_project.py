"""The project's own rules, checked like behaviour: README and CI agree, docs are current, lint is clean."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "the README starts with a bash block of set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_setup_commands_and_ci_runs_the_second() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    assert "mcpz demo" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci.splitlines(), ".ci/run must run the README's second command as written"


def test_cli_reference_is_generated_from_the_current_app() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_cli_reference
    finally:
        sys.path.pop(0)
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == gen_cli_reference.render(), "run: python docs/gen_cli_reference.py"


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        why = f"{name} is not installed (pip install -e '.[test]')"
        # In CI a missing checker must not pass as a skip: the check would silently stop running.
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    return found


def test_ruff_is_clean() -> None:
    ruff = _tool("ruff")
    for args in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_mypy_strict_is_clean() -> None:
    mypy = _tool("mypy")
    done = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_mypy_relaxed_is_clean_on_tests_and_benchmarks() -> None:
    # The second profile (mypy-tests.ini): every body checked, annotations optional.
    mypy = _tool("mypy")
    done = subprocess.run([mypy, "--config-file", "mypy-tests.ini"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_a_missing_checker_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="mcpz-no-such-checker is not installed"):
        _tool("mcpz-no-such-checker")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _tool("mcpz-no-such-checker")


def _ci_setup_script(tmp_path: Path) -> Path:
    """.ci/run without its `cd` and its last line (the venv and the suite), so only the Debian set-up
    runs; apt-get on PATH is a stand-in that fails, as with no network or no root."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    body = [line for line in lines[:-1] if not line.startswith("cd ")]
    script = tmp_path / "setup.sh"
    script.write_text("\n".join(body) + "\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text("#!/bin/sh\nexit 100\n")
    (fake / "apt-get").chmod(0o755)
    return fake


def test_ci_fails_when_gnome_keyring_cannot_be_installed_and_elsewhere_warns(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    fake = _ci_setup_script(tmp_path)
    script = str(tmp_path / "setup.sh")
    in_ci = subprocess.run(
        [bash, script], env={"PATH": str(fake), "CI": "true"}, capture_output=True, text=True
    )
    assert in_ci.returncode == 1, in_ci.stderr
    assert "error: could not install gnome-keyring/dbus" in in_ci.stderr
    local = subprocess.run([bash, script], env={"PATH": str(fake)}, capture_output=True, text=True)
    assert local.returncode == 0, local.stderr
    assert "warning: could not install gnome-keyring/dbus" in local.stderr
