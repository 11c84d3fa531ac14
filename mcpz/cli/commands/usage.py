"""`mcpz usage`: calls through the gateway, summed per agent and tool (GET /v1/usage)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mcpz.cli.common import RegistryOpt, TokenOpt, call_registry
from mcpz.cli.output import out
from mcpz.instants import parse_instant
from mcpz.names import AgentName


def parse_since(text: str, now: datetime | None = None) -> str:
    """`30m`, `1h`, `7d` (before now), Unix seconds, or an ISO 8601 date/time -> an ISO 8601 instant
    in UTC; UsageError (exit 2) for anything else, out-of-range times included.

    Ages are turned into instants here, so "the last hour" is the user's hour, not the server's; a
    date or time without a zone is the user's local time.
    """
    return parse_instant(text, now or datetime.now(UTC), naive=None).isoformat()


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
    params: dict[str, Any] = {"events": events}
    if agent is not None:
        params["agent"] = str(AgentName.parse(agent))
    if since is not None:
        params["since"] = parse_since(since)
    if until is not None:
        params["until"] = parse_since(until)
    view: dict[str, Any] = call_registry(
        registry, token, "json", "GET", "/v1/usage", params=params, need_token=True
    )
    out().data(view, lambda console: _render(console, view))


def _render(console: Console, view: dict[str, Any]) -> None:
    whose = f"every caller of {view['agent']}" if view["scope"] == "agent" else "your calls"
    window = "".join(f" {key} {_moment(view[key])}" for key in ("since", "until") if view.get(key))
    rows = view["summary"]
    if not rows:
        console.print(f"no usage ({whose}{window})", markup=False)
        return
    console.print(f"usage: {whose}{window}", markup=False)
    table = Table("agent", "tool", "calls", "ok", "errors", "time", "avg", "in", "out", box=None)
    for column in table.columns[2:]:
        column.justify = "right"
    for r in rows:
        table.add_row(
            r["agent"],
            r["tool"],
            str(r["calls"]),
            str(r["ok"]),
            str(r["errors"]),
            _duration(r["duration_ms_total"]),
            _duration(r["duration_ms_total"] / r["calls"]) if r["calls"] else "-",
            _size(r["bytes_in"]),
            _size(r["bytes_out"]),
        )
    if len(rows) > 1:
        calls = sum(r["calls"] for r in rows)
        total_ms = sum(r["duration_ms_total"] for r in rows)
        table.add_row(
            "total",
            "",
            str(calls),
            str(sum(r["ok"] for r in rows)),
            str(sum(r["errors"] for r in rows)),
            _duration(total_ms),
            _duration(total_ms / calls) if calls else "-",
            _size(sum(r["bytes_in"] for r in rows)),
            _size(sum(r["bytes_out"] for r in rows)),
            style="bold",
        )
    console.print(table)
    if view.get("events"):
        console.print()
        calls_table = Table(
            "started (UTC)", "account", "agent", "tool", "version", "outcome", "time", box=None
        )
        calls_table.columns[0].no_wrap = True
        for e in view["events"]:
            calls_table.add_row(
                datetime.fromtimestamp(e["started_us"] / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                e["account"],
                e["agent"],
                e["tool"],
                e["version"],
                e["outcome"],
                _duration(e["duration_us"] / 1000),
            )
        console.print(calls_table)


def _moment(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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
