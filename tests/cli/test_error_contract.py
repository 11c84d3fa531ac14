"""The error contract of docs/errors.md, held against the code: every exit code, every error class,
usage errors in one line (and as JSON with --json) from every command."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mcpz
from mcpz import exit_codes
from mcpz.errors import McpzError

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")


def _rows(header: str) -> list[list[str]]:
    """The body rows of the markdown table in docs/errors.md whose header row starts with `header`."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
    return rows


def _error_classes() -> Iterator[type[McpzError]]:
    for module in pkgutil.walk_packages(mcpz.__path__, "mcpz."):
        if "_bundled" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    seen: set[type[McpzError]] = set()
    todo: list[type[McpzError]] = [McpzError]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            yield cls
            todo.extend(cls.__subclasses__())


def test_the_codes_of_the_doc_are_the_codes_of_exit_codes() -> None:
    documented = {int(code) for code, _meaning in _rows("code")}
    defined = {value for name, value in vars(exit_codes).items() if name.isupper() and isinstance(value, int)}
    assert documented == defined
    assert re.findall(r"^\| (\d+)\s+\|", exit_codes.__doc__ or "", re.M) == [
        str(int(code)) for code, _ in _rows("code")
    ], "the table in mcpz/exit_codes.py's docstring lists the same codes in the same order"


def test_every_error_class_has_the_exit_code_docs_errors_md_gives_it() -> None:
    table = {name: (parent, int(code)) for name, parent, code in _rows("error class")}
    # The library's classes: the registry's own (Forbidden, ...) answer HTTP, not exit codes, and
    # are loaded or not depending on what else this process has imported.
    classes = [cls for cls in _error_classes() if cls.__module__.split(".")[0] == "mcpz"]
    names = {cls.__name__ for cls in classes}
    assert sorted(names - set(table)) == [], "error classes missing from docs/errors.md"
    assert sorted(set(table) - names) == [], "docs/errors.md lists error classes that do not exist"
    documented_codes = {int(code) for code, _ in _rows("code")}
    for cls in classes:
        parent, code = table[cls.__name__]
        assert cls.exit_code == code, (
            f"{cls.__module__}.{cls.__qualname__} exits {cls.exit_code}, doc says {code}"
        )
        assert code in documented_codes
    for name, (parent, _code) in table.items():
        same = [cls for cls in classes if cls.__name__ == name]
        assert any(parent in {base.__name__ for base in cls.__bases__} for cls in same), (name, parent)


def test_the_tree_in_the_errors_docstring_agrees_with_the_classes() -> None:
    from mcpz import errors

    for name, code in re.findall(r"(\w+)\s+exit (\d+):", errors.__doc__ or ""):
        cls = next(c for c in _error_classes() if c.__name__ == name)
        assert cls.exit_code == int(code), name


# -- usage errors, from every command --------------------------------------------------------


def _commands() -> list[list[str]]:
    """Every runnable command path (`deploy apply`, `keys create`, ...), groups excluded."""
    import typer

    from mcpz.cli.app import app

    paths: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        subs = getattr(command, "commands", None)
        if subs:
            for name in subs:
                walk(subs[name], [*path, name])
        elif path:
            paths.append(path)

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.parametrize("path", _commands(), ids=" ".join)
def test_a_usage_error_is_one_line_and_one_json_object_from_every_command(cli: Any, path: list[str]) -> None:
    result = cli("--json", *path, "--zqxj-wv")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: No such option: --zqxj-wv")
    assert f"(see `mcpz {' '.join(path)} --help`)" in result.stderr
    payload = json.loads(result.stdout)
    assert payload == {
        "error": {
            "message": "No such option: --zqxj-wv",
            "hint": f"see `mcpz {' '.join(path)} --help`",
            "exit_code": 2,
        }
    }


def test_a_missing_argument_and_a_bad_value_are_usage_errors_too(cli: Any) -> None:
    missing = cli("clone", "--json")
    assert missing.exit_code == 2 and "Missing argument 'NAME[@VERSION]'" in missing.stderr
    assert json.loads(missing.stdout)["error"]["exit_code"] == 2
    bad = cli("logs", "acme/x", "--tail", "many", "--json")
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "--tail" in bad.stderr
    unknown = cli("no-such-command", "--json")
    assert unknown.exit_code == 2 and json.loads(unknown.stdout)["error"]["message"].startswith(
        "No such command"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["clone", "acme/x@"], 'has an empty version after "@"'),
        (["deploy", "acme/x@1.x"], '"1.x" is not an exact version'),
        (["verify", "acme/x@^1"], '"^1" is not an exact version'),
        (["clone", "Acme/X"], 'agent name "Acme/X"'),
    ],
)
def test_names_and_versions_are_refused_before_any_request(cli: Any, args: list[str], says: str) -> None:
    # The registry URL names a port nobody listens on: a request would fail with 6, not 2.
    result = cli(*args, "--registry", "http://127.0.0.1:9", "--token", "mcpz_x", "--json")
    assert result.exit_code == 2, result.stderr
    assert says in result.stderr and result.stderr.count("\n") == 1


def test_not_an_agent_repository_is_a_usage_error(cli: Any, tmp_path: Path) -> None:
    for args in (["push", "--registry", "http://127.0.0.1:9"], ["pull"], ["commit", "-m", "x"], ["status"]):
        result = cli(*args, cwd=tmp_path)
        assert result.exit_code == 2, (args, result.stderr)
        assert "is not inside an agent repository" in result.stderr


def test_pull_without_origin_and_on_a_detached_head_says_what_to_do(cli: Any, tmp_path: Path) -> None:
    from gitutil import git

    made = cli("init", "acme/geo", cwd=tmp_path)
    assert made.exit_code == 0, made.stderr
    agent = tmp_path / "geo"
    alone = cli("pull", "--json", cwd=agent)
    assert alone.exit_code == 2 and alone.stderr.count("\n") == 1
    assert "has no origin" in alone.stderr and "`mcpz push`" in alone.stderr
    git("checkout", "-q", "--detach", "HEAD", cwd=agent)
    detached = cli("pull", cwd=agent)
    assert detached.exit_code == 2 and detached.stderr.count("\n") == 1
    assert "HEAD is detached" in detached.stderr
