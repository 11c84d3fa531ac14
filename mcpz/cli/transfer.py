"""Bytes and rate of a transfer (push, clone, install) on a terminal: a transient rich progress line
on stderr, and nothing at all with --json, --quiet or when stderr is not a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mcpz.cli.output import out


@dataclass
class Transfer:
    """Callbacks for a library call: `moved(n)` adds n bytes; `step(done, total)` counts items."""

    moved: Callable[[int], None] | None = None
    step: Callable[[int, int | None], None] | None = None


@contextmanager
def transfer(label: str, unit: str = "objects") -> Iterator[Transfer]:
    """`with transfer("pushing") as t:` then pass `t.moved` / `t.step` to the library (None off a
    terminal, so the library does no bookkeeping for nobody)."""
    output = out()
    if not output.interactive:
        yield Transfer()
        return
    from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn, TransferSpeedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn(label),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[items]}"),
        console=output.stderr,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None, items="")

        def moved(n: int) -> None:
            bar.update(task, advance=n)

        def step(done: int, total: int | None) -> None:
            shown = f"{done}/{total}" if total is not None else str(done)
            bar.update(task, items=f"{shown} {unit}")

        yield Transfer(moved, step)
