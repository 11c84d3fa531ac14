"""The CLI's command table against its command modules, and what each command costs to import.

`mcpz.cli.app.COMMANDS` is the one place a command is registered: these tests fail when an entry
names a module or command that does not exist, when a module defines a command the table does not
list, when a summary drifts from the command's help, and when a command module imports another
command module or the root (registration points down).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from mcpz.cli.app import COMMANDS, COMMANDS_PACKAGE, load_module_group

ROOT = Path(__file__).resolve().parents[2]
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
    from mcpz.cli.table import TOPICS

    assert 3 <= len(topics) <= len(TOPICS) <= 9, topics
    assert set(topics) <= set(TOPICS)


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
    forbidden = {f"{COMMANDS_PACKAGE}.{other}" for other in _modules()} | {"mcpz.cli.app"}
    assert not imported & forbidden, f"{module}.py imports {sorted(imported & forbidden)}"


def test_the_shared_helpers_import_no_command_module() -> None:
    for helper in ("common", "output", "prompts"):
        imported = _imports(ROOT / "mcpz" / "cli" / f"{helper}.py")
        assert not any(name.startswith(COMMANDS_PACKAGE) or name == "mcpz.cli.app" for name in imported)


# --- what a command imports: a real `mcpz` process, its sys.modules dumped at exit -----------------

HARNESS = """
import atexit, json, sys
target = sys.argv.pop(1)
atexit.register(lambda: open(target, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "mcpz"
from mcpz.cli import main
main()
"""

# The network, wallet, server and async stacks: no read-only command or help needs them.
HEAVY = ("mcp", "httpx2", "eth_account", "registry_server", "sqlalchemy", "anyio", "dulwich.client")
# What the fast path also leaves alone: typer (and the pydantic it builds parameters with), and rich.
TYPER_AND_RICH = ("typer", "pydantic", "rich")


def loaded_by(args: list[str], cwd: Path, tmp_path: Path) -> set[str]:
    dump = tmp_path / "modules.json"
    env = {**os.environ, "MCPZ_CONFIG_DIR": str(tmp_path / "cfg"), "COLUMNS": "80"}
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, str(dump), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(dump.read_text()))


def _heavy(modules: set[str], *more: str) -> list[str]:
    """The modules of `modules` that are, or are inside, one of HEAVY or `more`."""
    roots = (*HEAVY, *more)
    return sorted(m for m in modules if any(m == r or m.startswith(r + ".") for r in roots))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mcpz.repo.repository import init_agent

    path = tmp_path_factory.mktemp("startup") / "agent"
    init_agent(path, "acme/startup")
    (path / "notes.txt").write_text("an untracked file\n")
    return path


@pytest.mark.parametrize("args", [["status"], ["log", "-n", "5"], ["diff"]])
def test_the_read_only_repository_commands_load_no_network_wallet_or_rendering_stack(
    args: list[str], agent: Path, tmp_path: Path
) -> None:
    modules = loaded_by(args, agent, tmp_path)
    assert not _heavy(modules, *TYPER_AND_RICH), _heavy(modules, *TYPER_AND_RICH)
    assert not {m for m in modules if m.startswith(COMMANDS_PACKAGE + ".")}


def test_a_read_only_command_with_an_option_the_fast_path_does_not_know_goes_to_typer(
    agent: Path, tmp_path: Path
) -> None:
    modules = loaded_by(["log", "--max-count", "1", "HEAD"], agent, tmp_path)
    assert "typer" not in modules  # understood: `--max-count N REV`
    modules = loaded_by(["status", "-h"], agent, tmp_path)
    assert {m for m in modules if m.startswith(COMMANDS_PACKAGE + ".")} == {f"{COMMANDS_PACKAGE}.repo"}


def test_the_root_help_imports_no_command_module(agent: Path, tmp_path: Path) -> None:
    modules = loaded_by(["--help"], agent, tmp_path)
    assert not {m for m in modules if m.startswith(COMMANDS_PACKAGE + ".")}
    assert not _heavy(modules, "dulwich", "typer", "rich"), _heavy(modules, "dulwich", "typer", "rich")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_the_root_help_lists_every_command_by_topic_and_the_global_options(
    flag: str, agent: Path, tmp_path: Path
) -> None:
    done = _mcpz([flag], agent, tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for name, entry in COMMANDS.items():
        assert f"  {name} " in text, name
        assert f"{entry.topic}:" in text
    for option in ("--version", "--json", "--verbose", "--quiet", "--help"):
        assert option in text
    assert "<bool>" not in text and "╭" not in text


def test_a_command_help_imports_only_its_own_module(agent: Path, tmp_path: Path) -> None:
    modules = loaded_by(["call", "--help"], agent, tmp_path)
    assert {m for m in modules if m.startswith(COMMANDS_PACKAGE + ".")} == {f"{COMMANDS_PACKAGE}.local"}
    assert not _heavy(modules, "dulwich"), _heavy(modules, "dulwich")


def _mcpz(args: list[str], cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MCPZ_CONFIG_DIR": str(tmp_path / "cfg"), "NO_COLOR": "1"}
    code = "import sys; sys.argv[0] = 'mcpz'; from mcpz.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["log"],
        ["log", "-n", "1"],
        ["log", "-n1", "--json"],
        ["log", "HEAD", "--max-count=1"],
        ["log", "no-such-rev"],
        ["diff"],
        ["diff", "HEAD"],
        ["diff", "--json", "HEAD", "HEAD"],
        ["diff", "nope"],
        ["-q", "status"],
    ],
)
def test_the_fast_path_prints_and_exits_as_the_typer_command_does(
    args: list[str], agent: Path, tmp_path: Path, cli: Any
) -> None:
    (agent / "edited.txt").write_text("one\ntwo\n")
    fast = _mcpz(args, agent, tmp_path)
    typed = cli(*args, cwd=agent)
    assert (fast.returncode, fast.stdout, fast.stderr) == (typed.exit_code, typed.stdout, typed.stderr)


def test_the_fast_path_reports_a_missing_repository_as_the_typer_command_does(
    tmp_path: Path, cli: Any
) -> None:
    fast = _mcpz(["status"], tmp_path, tmp_path)
    typed = cli("status", cwd=tmp_path)
    assert fast.returncode == typed.exit_code != 0
    assert fast.stderr == typed.stderr and "not inside an agent repository" in fast.stderr
