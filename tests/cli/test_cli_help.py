"""Help that reads well: every command's help has an example, shows no type labels, keeps text
in brackets as written; the root help groups commands by topic; shell completion is offered."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from mcpz.cli.app import app
from mcpz.cli.examples import EXAMPLES
from mcpz.cli.table import COMMANDS, TOPICS, root_help


def _paths() -> list[list[str]]:
    """Every command and group path under the root."""
    paths: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        if path:
            paths.append(path)
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


PATHS = _paths()


def test_every_command_and_group_has_an_example_and_no_example_is_stale() -> None:
    names = {" ".join(path) for path in PATHS}
    assert sorted(names - set(EXAMPLES)) == [], "commands without an example in mcpz/cli/examples.py"
    assert sorted(set(EXAMPLES) - names) == [], "examples of commands that do not exist"


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_a_command_help_shows_its_example_and_no_type_labels(cli: Any, path: list[str]) -> None:
    shown = cli(*path, "--help")
    assert shown.exit_code == 0, shown.stderr
    text = shown.stdout
    assert text.startswith(f"Usage: mcpz {' '.join(path)} ")
    assert "Example:\n" in text
    assert "Global options, anywhere on the line: --json" in text
    for line in EXAMPLES[" ".join(path)]:
        assert f"    {line}\n" in text, line
    labels = re.findall(r"<(?:bool|str|int|float|path|list\[str\]|int range|float range)>", text)
    assert labels == [], labels
    assert not re.search(r"\b(TEXT|INTEGER|FLOAT|BOOLEAN)\b", text), text
    assert "╭" not in text and "{" not in text.splitlines()[0]


def test_text_in_brackets_is_kept_as_written(cli: Any) -> None:
    tools = cli("tools", "--help").stdout
    assert "namespace/name[@version]" in " ".join(tools.split())
    clone = cli("clone", "--help").stdout
    assert clone.startswith("Usage: mcpz clone [OPTIONS] NAME[@VERSION] [DIRECTORY]\n")


def test_example_commands_name_real_commands_options_and_arguments() -> None:
    from test_hints import resolve

    for name, lines in EXAMPLES.items():
        for line in lines:
            words = line.split(" > ")[0].removeprefix("mcpz ")
            path, problem = resolve(words)
            assert problem is None, (line, problem)
            assert " ".join(path).startswith(name.split(" ")[0]), line


def test_the_root_help_groups_commands_by_the_issues_topics(cli: Any) -> None:
    text = root_help(80)
    order = [topic for topic in TOPICS if any(entry.topic == topic for entry in COMMANDS.values())]
    positions = [text.index(f"\n{topic}:\n") for topic in order]
    assert positions == sorted(positions)
    assert set(order) >= {"Repositories", "Dependencies", "Publishing", "Deploying", "Calling", "Accounts"}
    for flag in ("--json", "--verbose", "--quiet", "--install-completion", "--show-completion"):
        assert flag in text
    # `mcpz` alone, through typer, shows the same table (on stderr, exit 2, as click does).
    alone = cli()
    assert alone.exit_code == 2 and "Repositories:" in alone.stderr + alone.stdout


def test_shell_completion_is_offered_and_completes_commands() -> None:
    program = str(Path(sys.executable).parent / "mcpz")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "SHELL": "/bin/bash"}
    script = subprocess.run(
        [program, "--show-completion", "bash"], capture_output=True, text=True, timeout=60, env=env
    )
    assert script.returncode == 0, script.stderr
    assert "_MCPZ_COMPLETE=complete_bash" in script.stdout and "complete -o default" in script.stdout
    words = {**env, "_MCPZ_COMPLETE": "complete_bash", "COMP_WORDS": "mcpz deploy st", "COMP_CWORD": "2"}
    completed = subprocess.run([program], capture_output=True, text=True, timeout=60, env=words)
    assert completed.returncode == 0 and completed.stdout.split() == ["status"], completed
