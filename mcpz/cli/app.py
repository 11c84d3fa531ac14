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
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Annotated, Any

import typer
from typer import _click
from typer.core import TyperArgument, TyperGroup, TyperOption

from mcpz import exit_codes
from mcpz._version import __version__
from mcpz.cli.invocation import configure_logging, report_error, split_global_flags
from mcpz.cli.output import out, set_output
from mcpz.cli.table import COMMANDS
from mcpz.errors import McpzError, UsageError

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
        prepare_help(command, [name])
        return command

    def __setitem__(self, name: str, command: _click.Command) -> None:
        raise TypeError(f"commands are registered in mcpz.cli.app.COMMANDS, not at run time ({name!r})")

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"commands are registered in mcpz.cli.app.COMMANDS, not at run time ({name!r})")

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


def prepare_help(command: _click.Command, path: list[str]) -> None:
    """Plain help for `command` and its subcommands: no rich markup (which ate `[@version]`), no
    type labels (a value's placeholder is its name), usage as docs write it, and the command's
    example (cli/examples.py) as the epilog."""
    from mcpz.cli.examples import epilog

    if getattr(command, "_mcpz_prepared", False):
        return
    command._mcpz_prepared = True  # type: ignore[attr-defined]
    command.rich_markup_mode = None  # type: ignore[attr-defined]
    for param in command.params:
        if isinstance(param, TyperOption) and not param.is_flag and param.metavar is None:
            param.metavar = (param.name or "value").upper()
        elif isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = (param.name or "arg").upper()
            setattr(param, "display_type_rich", _no_type)  # noqa: B010 (an instance's own override)
            setattr(param, "_usage_display_name", _usage_name(param))  # noqa: B010
    command.epilog = epilog(" ".join(path)) or command.epilog
    for name, sub in getattr(command, "commands", {}).items():
        prepare_help(sub, [*path, name])


def _no_type(ctx: _click.Context | None = None) -> None:
    """No `<str>`/`<path>` beside an argument's name: its help says what it is."""
    return None


def _usage_name(param: TyperArgument) -> Callable[[], str]:
    """An argument in the usage line as docs write it: `NAME`, `[NAME]`, `[ARGS]...`."""
    name = param.metavar or (param.name or "arg").upper()
    shown = name if param.required else f"[{name}]"
    shown += "..." if param.nargs != 1 else ""
    return lambda: shown


class McpzGroup(TyperGroup):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.commands = LazyCommands()

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **kw: Any,
    ) -> Any:
        """Run a command as `standalone_mode` would, but report click's own errors (usage errors,
        Ctrl-C at a prompt) through the one printer of errors: one line on stderr, the JSON object
        on stdout with --json, the exit code of docs/errors.md."""
        output, rest = split_global_flags(sys.argv[1:] if args is None else args)
        set_output(output)
        configure_logging(output)
        try:
            result = super().main(rest, prog_name, complete_var, standalone_mode=False, **kw)
        except _click.exceptions.NoArgsIsHelpError as e:
            e.show()  # `mcpz deploy` alone: its help, on stderr, exit 2 (as click does)
            sys.exit(e.exit_code)
        except _click.exceptions.UsageError as e:
            report_error(usage_error(e), output)
            sys.exit(e.exit_code)
        except typer.Abort as e:
            # click turns Ctrl-C at a prompt (and end of input) into Abort; Ctrl-C is 130 everywhere.
            if isinstance(e.__context__, KeyboardInterrupt):
                report_error(McpzError("interrupted"), output)
                sys.exit(exit_codes.INTERRUPTED)
            reason = "no input" if isinstance(e.__context__, EOFError) else "not confirmed"
            report_error(McpzError(f"aborted: {reason}", hint="run it again"), output)
            sys.exit(exit_codes.ERROR)
        except _click.exceptions.ClickException as e:
            report_error(McpzError(e.format_message()), output)
            sys.exit(e.exit_code)
        sys.exit(result if isinstance(result, int) else exit_codes.SUCCESS)

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except McpzError as e:
            report_error(e, out())
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(exit_codes.INTERRUPTED) from None

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """The root help is the table's (cli/table.py), the same text the fast path prints."""
        from mcpz.cli.table import root_help

        formatter.write(root_help(formatter.width or 80))


def usage_error(error: _click.exceptions.UsageError) -> UsageError:
    """click's usage error as ours, pointing at the help of the command it concerns."""
    command = error.ctx.command_path if error.ctx is not None else "mcpz"
    return UsageError(error.format_message().rstrip("."), hint=f"see `{command} --help`")


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
    rich_markup_mode=None,
    add_completion=True,
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
