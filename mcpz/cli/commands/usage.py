"""`mcpz usage`: calls through the gateway, summed per agent and tool (GET /v1/usage)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from mcpz.cli.common import RegistryOpt, TokenOpt, with_client
from mcpz.cli.output import out
from mcpz.instants import parse_since
from mcpz.names import AgentName

if TYPE_CHECKING:
    from mcpz.client.models import Usage

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()


@app.command("usage")
def usage(
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent", help="namespace/name: every caller's calls of your agent (else: your own calls)."
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only calls since: 30m, 1h, 7d, or an ISO date/time.")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only calls before this (same forms).")] = None,
    events: Annotated[
        int, typer.Option("--events", "-n", min=0, max=1000, help="Also list the newest N calls.")
    ] = 0,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Calls through the gateway, summed per agent and tool: calls, errors, time, bytes."""
    who = str(AgentName.parse(agent)) if agent is not None else None
    start = parse_since(since) if since is not None else None
    end = parse_since(until) if until is not None else None
    view = with_client(
        registry,
        token,
        lambda c: c.usage(agent=who, since=start, until=end, events=events),
        need_token=True,
    )
    out().data(view.to_dict(), lambda console: _render(console, view))


def _render(console: Console, view: Usage) -> None:
    whose = f"every caller of {view.agent}" if view.scope == "agent" else "your calls"
    bounds = (("since", view.since), ("until", view.until))
    window = "".join(f" {key} {_moment(moment)}" for key, moment in bounds if moment)
    rows = view.summary
    if not rows:
        console.print(f"no usage ({whose}{window})", markup=False)
        return
    console.print(f"usage: {whose}{window}", markup=False)
    table = Table("agent", "tool", "calls", "ok", "errors", "time", "avg", "in", "out", box=None)
    for column in table.columns[2:]:
        column.justify = "right"
    for r in rows:
        table.add_row(
            r.agent,
            r.tool,
            str(r.calls),
            str(r.ok),
            str(r.errors),
            _duration(r.duration_ms_total),
            _duration(r.duration_ms_total / r.calls) if r.calls else "-",
            _size(r.bytes_in),
            _size(r.bytes_out),
        )
    if len(rows) > 1:
        calls = sum(r.calls for r in rows)
        total_ms = sum(r.duration_ms_total for r in rows)
        table.add_row(
            "total",
            "",
            str(calls),
            str(sum(r.ok for r in rows)),
            str(sum(r.errors for r in rows)),
            _duration(total_ms),
            _duration(total_ms / calls) if calls else "-",
            _size(sum(r.bytes_in for r in rows)),
            _size(sum(r.bytes_out for r in rows)),
            style="bold",
        )
    console.print(table)
    if view.events:
        console.print()
        calls_table = Table(
            "started (UTC)", "account", "agent", "tool", "version", "outcome", "time", box=None
        )
        calls_table.columns[0].no_wrap = True
        for e in view.events:
            calls_table.add_row(
                datetime.fromtimestamp(e.started_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                e.account,
                e.agent,
                e.tool,
                e.version,
                e.outcome,
                _duration(e.duration_us / 1000),
            )
        console.print(calls_table)


def _moment(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.1f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f}s"
    return f"{ms / 60_000:.1f}m"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    value = n / 1024
    for unit in ("K", "M"):
        if value < 1024:
            return f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"
