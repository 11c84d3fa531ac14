"""`mcpz demo`: the main job, the whole loop run for real."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mcpz.cli.output import out

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()


@app.command("demo")
def demo(
    keep: Annotated[
        Path | None,
        typer.Option("--keep", help="Run in this folder and keep it, instead of a temporary one."),
    ] = None,
) -> None:
    """Run the whole loop for real: init ... call, registry, wallet, login, namespace, push, verify, info."""
    from mcpz.demo import run_demo

    output = out()
    result = run_demo(say=output.step, show=output.info, keep=keep)
    output.data({"ok": True, **result}, lambda c: c.print("demo: all steps passed"))
