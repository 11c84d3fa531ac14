"""What a command shows: data on stdout (plain JSON with --json), talk on stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
