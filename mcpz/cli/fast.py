"""A start-up fast path for the hottest read-only commands: `status`, `log`, `diff`.

typer builds a pydantic adapter for every parameter, and importing typer and pydantic costs more
than the 150 ms a command may take from the prompt (bench/bench_startup.py). These three commands
have almost no options, so this module parses the argument lists it fully understands and runs the
same code as the typer commands (`cli/repo_views.py`); anything else (`--help`, an unknown or
malformed option, a stray `--`) returns None and goes to typer, which parses and reports as ever.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence

Run = Callable[[], None]

_COUNT = re.compile(r"\d+")


def _positional(arg: str) -> bool:
    return not arg.startswith("-")


def _status(args: Sequence[str]) -> Run | None:
    if args:
        return None
    from mcpz.cli import repo_views

    return repo_views.status


def _log(args: Sequence[str]) -> Run | None:
    """`log [REV] [-n N | --max-count N | -nN | --max-count=N]`, in either order."""
    rev: str | None = None
    count: str | None = None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("-n", "--max-count") and rest and count is None:
            count = rest.pop(0)
        elif arg.startswith("--max-count=") and count is None:
            count = arg.removeprefix("--max-count=")
        elif arg.startswith("-n") and len(arg) > 2 and count is None:
            count = arg[2:]
        elif _positional(arg) and rev is None:
            rev = arg
        else:
            return None
    if count is not None and not _COUNT.fullmatch(count):
        return None
    from mcpz.cli import repo_views

    max_count = None if count is None else int(count)
    return lambda: repo_views.log(rev or "HEAD", max_count)


def _diff(args: Sequence[str]) -> Run | None:
    if len(args) > 2 or not all(_positional(arg) for arg in args):
        return None
    from mcpz.cli import repo_views

    revs = list(args)
    return lambda: repo_views.diff(revs)


PARSERS: dict[str, Callable[[Sequence[str]], Run | None]] = {"status": _status, "log": _log, "diff": _diff}


def _width() -> int:
    try:
        return max(
            40,
            min(
                int(os.environ.get("COLUMNS", ""))
                if os.environ.get("COLUMNS")
                else os.get_terminal_size().columns,
                100,
            ),
        )
    except (OSError, ValueError):
        return 80


def run(argv: Sequence[str]) -> int | None:
    """Run `argv` here and return its exit code, or None when typer should take it."""
    from mcpz.cli.invocation import split_global_flags

    output, rest = split_global_flags(argv)
    if rest in (["--help"], ["-h"]):
        # The root help is the table of commands: no typer, no command module (cli/table.py).
        from mcpz.cli.table import root_help

        sys.stdout.write(root_help(_width()))
        return 0
    parse = PARSERS.get(rest[0]) if rest else None
    command = parse(rest[1:]) if parse is not None else None
    if command is None:
        return None
    from mcpz.cli.invocation import configure_logging, report_error
    from mcpz.cli.output import set_output
    from mcpz.errors import McpzError

    set_output(output)
    configure_logging(output)
    try:
        command()
    except McpzError as e:
        report_error(e, output)
        return e.exit_code
    except KeyboardInterrupt:
        return 130  # as everywhere (docs/errors.md), without importing exit_codes for it
    except BrokenPipeError:
        # The reader went away (`mcpz log | head -1`): as click does, exit 1 without a traceback,
        # and point stdout at /dev/null so the interpreter's last flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0
