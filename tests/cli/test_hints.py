"""Every command the code tells a user to run exists, takes the options the hint gives it, and has
room for its arguments.

The hints are collected from the source: every string (f-strings included, their fields read as
one placeholder word) of mcpz/ and registry_server/ holding a backquoted `mcpz ...`. Each is
resolved through the real click tree of the CLI, and its command's `--help` is run.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from mcpz.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
HINT = re.compile(r"`mcpz ([^`]*)`")
GLOBAL = {"--json", "-v", "-vv", "--verbose", "-q", "--quiet", "--version", "-h", "--help"}


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            str(part.value) if isinstance(part, ast.Constant) else "X"
            for part in node.values
            if isinstance(part, (ast.Constant, ast.FormattedValue))
        )
    return None


def _hints() -> dict[str, list[str]]:
    """hint text -> where it is written (file:line), for every hint in the source."""
    found: dict[str, list[str]] = {}
    for folder in ("mcpz", "registry_server"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                text = _text(node)
                if text is None or (isinstance(node, ast.Constant) and _inside_fstring(tree, node)):
                    continue
                for hint in HINT.findall(text):
                    where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
                    found.setdefault(hint.strip(), []).append(where)
    return found


_FSTRING_PARTS: dict[int, set[int]] = {}


def _inside_fstring(tree: ast.AST, node: ast.AST) -> bool:
    parts = _FSTRING_PARTS.get(id(tree))
    if parts is None:
        parts = {
            id(part)
            for joined in ast.walk(tree)
            if isinstance(joined, ast.JoinedStr)
            for part in joined.values
        }
        _FSTRING_PARTS[id(tree)] = parts
    return id(node) in parts


def _words(hint: str) -> list[str]:
    try:
        return shlex.split(hint)
    except ValueError:
        return hint.split()


def alternatives(hint: str) -> list[str]:
    """`namespace create | show | transfer` (a module's docstring) as the three hints it stands for."""
    first, *others = hint.split(" | ")
    prefix = first.split()[:-1]
    return [first, *(" ".join([*prefix, *other.split()]) for other in others)]


def resolve(hint: str) -> tuple[list[str], str | None]:
    """(command path, problem or None) for the words of one hint."""
    words = [w for w in _words(hint) if w not in GLOBAL]
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    while words and getattr(command, "commands", None) is not None:
        name = words[0]
        if name in ("...", "…") or name.isupper():  # `mcpz registry ...`, `mcpz COMMAND --help`
            return path, None
        sub = command.commands.get(name) if name in command.commands else None
        if sub is None:
            if command.name == "deploy" and path == ["deploy"]:  # `mcpz deploy NAME@VERSION` is apply
                sub, name = command.commands["apply"], "apply"
                words.insert(0, name)
            elif not path:
                return path, f"no command {name!r}"
            else:
                return path, f"`mcpz {' '.join(path)}` has no subcommand {name!r}"
        path.append(name)
        command = sub
        words.pop(0)
    if getattr(command, "commands", None) is not None:
        return path, None  # a group named alone: its help lists the rest
    options = {opt: param for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    capacity = 0
    for param in command.params:
        if getattr(param, "param_type_name", "") == "argument":
            capacity = 10**6 if param.nargs == -1 else capacity + param.nargs
    positionals = 0
    rest = list(words)
    while rest:
        word = rest.pop(0)
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1 and not word[1].isdigit():
            flag = word.split("=", 1)[0]
            param = options.get(flag)
            if param is None:
                return path, f"`mcpz {' '.join(path)}` has no option {flag}"
            if not getattr(param, "is_flag", False) and "=" not in word and rest:
                rest.pop(0)
        elif word not in ("...", "…"):
            positionals += 1
    if positionals > capacity:
        return path, f"`mcpz {' '.join(path)}` takes {capacity} argument(s), the hint gives {positionals}"
    return path, None


HINTS = {alt: where for hint, where in _hints().items() for alt in alternatives(hint)}


def test_the_source_has_hints_to_check() -> None:
    assert len(HINTS) > 40, sorted(HINTS)


@pytest.mark.parametrize("hint", sorted(HINTS))
def test_every_hint_names_a_command_that_exists(hint: str, cli: Any) -> None:
    path, problem = resolve(hint)
    assert problem is None, f"`mcpz {hint}` ({', '.join(HINTS[hint])}): {problem}"
    shown = cli(*path, "--help")
    assert shown.exit_code == 0, (hint, shown.stderr)
    assert shown.stdout.startswith(f"Usage: mcpz {' '.join(path)}".rstrip())


@pytest.mark.parametrize(
    ("hint", "problem"),
    [
        ("status acme/x", "`mcpz status` takes 0 argument(s), the hint gives 1"),
        ("config path --all", "`mcpz config path` has no option --all"),
        ("keys mint --scope node", "`mcpz keys` has no subcommand 'mint'"),
        ("stauts", "no command 'stauts'"),
    ],
)
def test_the_checker_finds_the_hints_that_would_mislead(hint: str, problem: str) -> None:
    assert resolve(hint)[1] == problem
