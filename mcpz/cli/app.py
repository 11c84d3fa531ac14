"""The typer application, its global options and the one top-level error handler."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer import _click
from typer.core import TyperGroup

from mcpz._version import __version__
from mcpz.cli.output import Output, out, set_output
from mcpz.errors import McpzError

_GLOBAL_FLAGS = {"--json", "-v", "--verbose", "-q", "--quiet"}


def _split_global_flags(args: Sequence[str]) -> tuple[Output, list[str]]:
    """Take --json/-v/-q from anywhere before `--`, so `mcpz log --json` works as typed."""
    output = Output()
    rest: list[str] = []
    passthrough = False
    for arg in args:
        if passthrough or (arg not in _GLOBAL_FLAGS and not _is_vv(arg)):
            if arg == "--":
                passthrough = True
            rest.append(arg)
        elif arg == "--json":
            output.json = True
        elif arg in ("-q", "--quiet"):
            output.quiet = True
        elif arg == "--verbose":
            output.verbose += 1
        else:
            output.verbose += len(arg) - 1
    return output, rest


def _is_vv(arg: str) -> bool:
    return len(arg) > 1 and arg[0] == "-" and set(arg[1:]) == {"v"}


def _configure_logging(output: Output) -> None:
    logger = logging.getLogger("mcpz")
    for handler in list(logger.handlers):
        if getattr(handler, "_mcpz_cli", False):
            logger.removeHandler(handler)
    # The MCP SDK logs tracebacks for bad agent output; our one-line errors already say it.
    sdk = logging.getLogger("mcp")
    if not output.verbose and not any(isinstance(h, logging.NullHandler) for h in sdk.handlers):
        sdk.addHandler(logging.NullHandler())
        sdk.propagate = False
    elif output.verbose:
        sdk.propagate = True
    if output.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler._mcpz_cli = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if output.verbose > 1 else logging.INFO)


def report_error(error: McpzError, output: Output) -> None:
    if output.verbose:
        traceback.print_exception(error, file=sys.stderr)
    line = f"error: {error.message}"
    if error.hint:
        line += f" ({error.hint})"
    elif not output.verbose:
        line += " (rerun with -v for details)"
    sys.stderr.write(line.replace("\n", " ") + "\n")
    if output.json:
        payload = {"error": {"message": error.message, "hint": error.hint, "exit_code": error.exit_code}}
        sys.stdout.write(json.dumps(payload) + "\n")


class McpzGroup(TyperGroup):
    def main(self, args: Sequence[str] | None = None, *a: Any, **kw: Any) -> Any:
        output, rest = _split_global_flags(sys.argv[1:] if args is None else args)
        set_output(output)
        _configure_logging(output)
        return super().main(rest, *a, **kw)

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except McpzError as e:
            report_error(e, out())
            raise typer.Exit(e.exit_code) from None


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


# Command modules register themselves on `app` when imported.
from mcpz.cli import (  # noqa: E402, F401
    cmd_auth,
    cmd_connect,
    cmd_demo,
    cmd_deploy,
    cmd_deps,
    cmd_local,
    cmd_namespace,
    cmd_node,
    cmd_publish,
    cmd_registry,
    cmd_repo,
    cmd_usage,
    cmd_verify,
    cmd_wallet,
)
