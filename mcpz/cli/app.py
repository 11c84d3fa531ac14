"""The typer application, its global options, the one top-level error handler, and the table of
commands.

Registration points down (pip's `commands_dict` + `create_command`): `COMMANDS` names each command's
module, and the module is imported only when that command runs (or its own help is asked for).
`mcpz --help` is drawn from the table alone, so it imports no command module;
tests/cli/test_cli_registration.py checks the table against the modules, so a command cannot
vanish with an "unused" import.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Annotated, Any

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup

from mcpz._version import __version__
from mcpz.cli.invocation import configure_logging, report_error, split_global_flags
from mcpz.cli.output import out, set_output
from mcpz.cli.table import COMMANDS, Entry
from mcpz.errors import McpzError

COMMANDS_PACKAGE = "mcpz.cli.commands"


def load_module_group(module: str) -> TyperGroup:
    """The click group of everything command module `module` defines (imported now)."""
    loaded = importlib.import_module(f"{COMMANDS_PACKAGE}.{module}")
    return typer.main.get_group(loaded.app)


class LazyCommands(MutableMapping[str, _click.Command]):
    """The root group's commands: names from `COMMANDS`, each module imported on first lookup.

    Mutable in type only (click's groups are): a command is added to the table, never at run time.
    """

    def __init__(self) -> None:
        self._groups: dict[str, TyperGroup] = {}

    def __getitem__(self, name: str) -> _click.Command:
        entry = COMMANDS[name]
        group = self._groups.get(entry.module)
        if group is None:
            group = self._groups[entry.module] = load_module_group(entry.module)
        command = group.commands.get(name)
        if command is None:
            # A table entry its module does not define: a defect of ours, not of the user's input.
            raise LookupError(f"{COMMANDS_PACKAGE}.{entry.module} defines no command {name!r}")
        return command

    def __setitem__(self, name: str, command: _click.Command) -> None:
        raise TypeError(f"commands are registered in mcpz.cli.app.COMMANDS, not at run time ({name!r})")

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"commands are registered in mcpz.cli.app.COMMANDS, not at run time ({name!r})")

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


def summary_command(name: str, entry: Entry) -> TyperCommand:
    """A stand-in that lists a command in `mcpz --help` without importing its module."""
    return TyperCommand(name, help=entry.summary, rich_help_panel=entry.topic)


class McpzGroup(TyperGroup):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.commands = LazyCommands()

    def main(self, args: Sequence[str] | None = None, *a: Any, **kw: Any) -> Any:
        output, rest = split_global_flags(sys.argv[1:] if args is None else args)
        set_output(output)
        configure_logging(output)
        return super().main(rest, *a, **kw)

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except McpzError as e:
            report_error(e, out())
            raise typer.Exit(e.exit_code) from None

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        lazy = self.commands
        self.commands = {name: summary_command(name, entry) for name, entry in COMMANDS.items()}
        try:
            super().format_help(ctx, formatter)
        finally:
            self.commands = lazy


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mcpz {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=McpzGroup,
    name="mcpz",
    help="Version, publish, deploy and sell AI agents (MCP servers).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Every command also takes --json, -v/--verbose and -q/--quiet after its name.",
)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More detail.")] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only results and errors.")] = False,
) -> None:
    """Version, publish, deploy and sell AI agents (MCP servers)."""
