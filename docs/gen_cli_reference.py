"""Write docs/cli.md from the typer app itself, so the reference never drifts from the code.

Run: python docs/gen_cli_reference.py   (tests/project/test_project.py fails when the file is stale)
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer import _click

from mcpz.cli.app import app
from mcpz.cli.examples import EXAMPLES

HEADER = """# Command reference

Generated from the code by `python docs/gen_cli_reference.py`; do not edit by hand.
Every command also takes `--json` (machine output on stdout), `-v/--verbose` and `-q/--quiet`
after its name. Exit codes are listed in `mcpz/exit_codes.py` and in docs/errors.md.
"""


def _walk(command: _click.Command, path: list[str], out: list[str]) -> None:
    ctx = _click.Context(command, info_name=" ".join(path))
    if path[1:]:
        out.append(f"\n## `{' '.join(path)}`\n")
        help_text = (command.help or "").strip()
        if help_text:
            out.append(help_text + "\n")
        usage = command.get_usage(ctx).replace("Usage: ", "")
        out.append(f"```\n{usage}\n```\n")
        rows = []
        for param in command.get_params(ctx):
            if param.name == "help":
                continue
            if getattr(param, "param_type_name", "") == "argument":
                text = getattr(param, "help", None)
                label = (param.metavar or param.name or "").upper()
                rows.append(f"- `{label}`" + (f": {text}" if text else ""))
                continue
            record = param.get_help_record(ctx)
            if record:
                rows.append(f"- `{record[0]}`: {record[1]}")
        if rows:
            out.append("\n".join(rows) + "\n")
        example = EXAMPLES.get(" ".join(path[1:]))
        if example:
            out.append("Example:\n\n```\n" + "\n".join(example) + "\n```\n")
    if hasattr(command, "commands"):
        for name in sorted(getattr(command, "commands", {})):
            _walk(command.commands[name], [*path, name], out)  # type: ignore[attr-defined]


def render() -> str:
    out = [HEADER]
    _walk(typer.main.get_command(app), ["mcpz"], out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent / "cli.md"
    target.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")
