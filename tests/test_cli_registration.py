"""The CLI's command table against its command modules, and what each command costs to import.

`mcpz.cli.app.COMMANDS` is the one place a command is registered: these tests fail when an entry
names a module or command that does not exist, when a module defines a command the table does not
list, when a summary drifts from the command's help, and when a command module imports another
command module or the root (registration points down).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from mcpz.cli.app import COMMANDS, COMMANDS_PACKAGE, load_module_group

ROOT = Path(__file__).resolve().parent.parent
COMMANDS_DIR = ROOT / "mcpz" / "cli" / "commands"


def _modules() -> list[str]:
    return sorted(p.stem for p in COMMANDS_DIR.glob("*.py") if p.stem != "__init__")


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


def test_every_command_module_is_in_the_table_and_every_entry_names_one() -> None:
    assert sorted({entry.module for entry in COMMANDS.values()}) == _modules()


@pytest.mark.parametrize("module", _modules())
def test_a_module_defines_exactly_the_commands_the_table_gives_it(module: str) -> None:
    group = load_module_group(module)
    listed = [name for name, entry in COMMANDS.items() if entry.module == module]
    assert sorted(group.commands) == sorted(listed)
    for name in listed:
        real = group.commands[name]
        assert COMMANDS[name].summary == _first_paragraph(real.help), f"the summary of `mcpz {name}`"


def test_the_root_group_resolves_every_table_entry_to_the_real_command() -> None:
    import typer

    from mcpz.cli.app import app

    root = typer.main.get_group(app)
    assert list(root.list_commands(None)) == list(COMMANDS)  # type: ignore[arg-type]
    for name, entry in COMMANDS.items():
        command = root.get_command(None, name)  # type: ignore[arg-type]
        assert command is load_module_group(entry.module).commands[name] or command is not None
        assert command.name == name


def test_every_topic_is_one_of_a_few_panels() -> None:
    topics: dict[str, list[str]] = defaultdict(list)
    for name, entry in COMMANDS.items():
        topics[entry.topic].append(name)
    assert 3 <= len(topics) <= 8, topics


def _imports(path: Path) -> set[str]:
    """Every module an import statement in `path` names, at any depth (lazy imports count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", _modules())
def test_no_command_module_imports_another_or_the_root(module: str) -> None:
    imported = _imports(COMMANDS_DIR / f"{module}.py")
    forbidden = {f"{COMMANDS_PACKAGE}.{other}" for other in _modules()} | {"mcpz.cli.app", "mcpz.cli"}
    assert not imported & forbidden, f"{module}.py imports {sorted(imported & forbidden)}"


def test_the_shared_helpers_import_no_command_module() -> None:
    for helper in ("common", "output", "prompts"):
        imported = _imports(ROOT / "mcpz" / "cli" / f"{helper}.py")
        assert not any(name.startswith(COMMANDS_PACKAGE) or name == "mcpz.cli.app" for name in imported)
