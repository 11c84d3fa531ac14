"""What `mcpz status`, `log` and `diff` do once parsed: open the repository, render the result.

Typer-free, so that the start-up fast path (`cli/fast.py`) and the typer commands (`commands/repo.py`)
run the same code; rich is imported only to colour a diff on a terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mcpz.cli.output import out

if TYPE_CHECKING:
    from rich.console import Console

    from mcpz.client.remote_status import RemoteStatus
    from mcpz.repo.repository import AgentRepo


def open_repo() -> AgentRepo:
    from mcpz.repo.repository import AgentRepo

    return AgentRepo.open(Path.cwd())


def decorated(refs: tuple[str, ...]) -> str:
    return f" ({', '.join(refs)})" if refs else ""


def print_patch(console: Console, patch: str) -> None:
    if not console.is_terminal or console.no_color:
        sys.stdout.write(patch)
        sys.stdout.flush()
        return
    styles = {"+": "green", "-": "red", "@": "cyan"}
    for line in patch.splitlines():
        style = "bold" if line.startswith(("diff --git", "--- ", "+++ ")) else styles.get(line[:1])
        console.print(line, style=style, markup=False, highlight=False)


def _may_colour() -> bool:
    """Whether rich could colour stdout (its own test, short of building a console to ask)."""
    if "NO_COLOR" in os.environ or out().json or os.environ.get("TTY_COMPATIBLE") == "0":
        return False
    if os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR") is not None:
        return True
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def status(remote: RemoteStatus | None = None) -> None:
    """The work tree's status; with `remote` (`status --remote`), where it stands on the registry too."""
    with open_repo() as repo:
        result = repo.status()

    def lines() -> Iterator[str]:
        head = result.branch or f"HEAD (detached at {(result.head or '')[:7]})"
        yield f"## {head}" + ("" if result.head else " (no commits yet)")
        yield from result.porcelain()
        if remote is not None:
            yield from (f"## {line}" for line in remote.summary())

    payload = result.to_dict()
    if remote is not None:
        payload["remote"] = remote.to_dict()
        for warning in remote.warnings:
            out().warn(warning)
    out().lines(payload, lines)
    if result.clean:
        out().info("nothing to commit, working tree clean")


def log(rev: str, max_count: int | None) -> None:
    with open_repo() as repo:
        entries = repo.log(rev, limit=max_count)

    def lines() -> Iterator[str]:
        for entry in entries:
            c = entry.commit
            date = entry.to_dict()["commit_date"][:10]
            yield f"{c.short_id} {date}{decorated(entry.refs)} {c.summary}"

    out().lines([e.to_dict() for e in entries], lines)
    if not entries:
        out().info("no commits yet")


def diff(revs: list[str]) -> None:
    if len(revs) > 2:
        from mcpz.errors import UsageError

        raise UsageError("diff takes at most two revisions", hint="e.g. mcpz diff v0.1.0 HEAD")
    with open_repo() as repo:
        result = repo.diff(*revs)
    if out().json:
        out().data(result.to_dict())
    elif _may_colour():
        out().data(result.to_dict(), lambda c: print_patch(c, result.patch))
    else:
        sys.stdout.write(result.patch)
        sys.stdout.flush()
    if not result.files:
        out().info("no changes")
