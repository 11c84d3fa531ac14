"""What every invocation does around its command, typer or not: the global flags, logging, and the
one printer of errors."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Sequence

from mcpz.cli.output import Output
from mcpz.errors import McpzError

_GLOBAL_FLAGS = {"--json", "-v", "--verbose", "-q", "--quiet"}


def split_global_flags(args: Sequence[str]) -> tuple[Output, list[str]]:
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


def configure_logging(output: Output) -> None:
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
