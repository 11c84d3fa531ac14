"""What a command shows: data on stdout (plain JSON with --json), talk on stderr."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
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

    def line(self, text: str) -> None:
        """A line of plain data on stdout (not in --json mode)."""
        if not self.json:
            self.stdout.print(text, markup=False, highlight=False)

    def info(self, message: str) -> None:
        """Talk on stderr, silenced by --quiet."""
        if not self.quiet:
            self.stderr.print(message, markup=False, highlight=False)

    def step(self, message: str) -> None:
        if not self.quiet:
            self.stderr.print(f"[bold cyan]==>[/] {message}", highlight=False)

    def warn(self, message: str) -> None:
        self.stderr.print(f"[yellow]warning:[/] {message}", highlight=False)


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
