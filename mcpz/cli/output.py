"""What a command shows: data on stdout (plain JSON with --json), talk on stderr.

Plain lines are written directly; rich is imported only for what needs it (styles, tables, progress),
so that the read-only commands start without it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Output:
    json: bool = False
    quiet: bool = False
    verbose: int = 0
    _stdout: Console | None = field(default=None, repr=False)
    _stderr: Console | None = field(default=None, repr=False)

    @property
    def stdout(self) -> Console:
        if self._stdout is None:
            from rich.console import Console

            self._stdout = Console(
                file=sys.stdout,
                no_color=self.json or "NO_COLOR" in os.environ,
                highlight=False,
                soft_wrap=True,
            )
        return self._stdout

    @property
    def stderr(self) -> Console:
        if self._stderr is None:
            from rich.console import Console

            self._stderr = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        return self._stderr

    @property
    def interactive(self) -> bool:
        """Whether progress bars and spinners may be shown."""
        return not self.json and not self.quiet and self.stderr.is_terminal

    def data(self, payload: Any, render: Callable[[Console], None] | None = None) -> None:
        """Print the command's result: `payload` as JSON with --json, else `render`."""
        if self.json:
            sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
            sys.stdout.flush()
        elif render is not None:
            render(self.stdout)

    def lines(self, payload: Any, lines: Callable[[], Iterable[str]]) -> None:
        """Print the command's result: `payload` as JSON with --json, else each of `lines()`."""
        if self.json:
            self.data(payload)
        else:
            write_plain(sys.stdout, lines())

    def line(self, text: str) -> None:
        """A line of plain data on stdout (not in --json mode)."""
        if not self.json:
            write_plain(sys.stdout, [text])

    def info(self, message: str) -> None:
        """Talk on stderr, silenced by --quiet."""
        if not self.quiet:
            write_plain(sys.stderr, [message])

    def step(self, message: str) -> None:
        if not self.quiet:
            self.stderr.print(f"[bold cyan]==>[/] {message}", highlight=False)

    def warn(self, message: str) -> None:
        self.stderr.print(f"[yellow]warning:[/] {message}", highlight=False)


# The control characters rich drops from printed text, dropped here too: a file name or a commit
# message cannot move the cursor or ring the bell.
_CONTROL = str.maketrans(dict.fromkeys((7, 8, 11, 12, 13)))


def write_plain(stream: Any, lines: Iterable[str]) -> None:
    stream.write("".join(line.translate(_CONTROL) + "\n" for line in lines))
    stream.flush()


_current = Output()


def out() -> Output:
    return _current


def set_output(output: Output) -> None:
    global _current
    _current = output


class _LineHandler(logging.Handler):
    """The node's progress on stderr: one line per event, or one JSON object per line with --json."""

    def __init__(self, as_json: bool) -> None:
        super().__init__(logging.INFO)
        self.as_json = as_json

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if self.as_json:
                line = json.dumps(
                    {"time": round(record.created, 3), "level": record.levelname.lower(), "message": message}
                )
            else:
                line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {message}"
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:  # a logging handler must never raise into the code that logs
            self.handleError(record)


def attach_log(output: Output, name: str = "mcpz.node") -> logging.Handler | None:
    """Progress lines of logger `name` on stderr (a long-running command's own log)."""
    if output.quiet or output.verbose:  # -v already sends every mcpz log to stderr
        return None
    handler = _LineHandler(output.json)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler
