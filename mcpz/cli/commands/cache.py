"""`mcpz cache ...`: the client's caches (registry index answers, fetched release objects)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mcpz.cli.output import out

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
cache_app = typer.Typer(help="The client's caches: index answers and fetched releases.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("clean")
def clean(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")] = False,
) -> None:
    """Empty the client's caches; the next lock or install fetches again what it needs."""
    from mcpz.caches import clean_caches
    from mcpz.config import cache_dir
    from mcpz.sizes import human_bytes

    report = clean_caches(cache_dir(), dry_run=dry_run)

    def render(c: Any) -> None:
        for name, size in sorted(report.folders.items()):
            c.print(f"{name}: {human_bytes(size)}", markup=False)
        verb = "would free" if dry_run else "freed"
        c.print(f"{verb} {human_bytes(report.freed_bytes)} in {report.root}", markup=False)

    out().data(report.to_dict(), render)
