"""What the pages compute from data and show as text: the calls chart, the copy-paste snippets,
numbers and times for people. Pure: no database, no HTTP; the templates escape what this returns
unless it is `markupsafe.Markup`, which only `calls_chart` builds (from numbers and escaped text).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

CHART_WIDTH = 600
CHART_HEIGHT = 220
_SERVER_KEY = re.compile(r"[^a-zA-Z0-9_-]+")


@dataclass(frozen=True)
class DayCount:
    day: date
    calls: int


def fill_days(counts: Mapping[date, int], *, until: date, days: int = 30) -> list[DayCount]:
    """One entry per day of the `days` ending at `until`, zero where nothing was called."""
    first = until - timedelta(days=days - 1)
    return [DayCount(d, counts.get(d, 0)) for d in (first + timedelta(days=i) for i in range(days))]


def calls_chart(series: Sequence[DayCount], *, title: str) -> Markup:
    """An inline SVG bar chart of calls per day, with a title and a description for screen readers.

    Scales to its container (viewBox); each bar has a <title>, so hovering shows the day's count.
    """
    peak = max((d.calls for d in series), default=0)
    total = sum(d.calls for d in series)
    n = max(len(series), 1)
    slot = CHART_WIDTH / n
    bar = max(slot * 0.8, 1.0)
    inner = CHART_HEIGHT - 32
    bars = []
    for i, d in enumerate(series):
        height = 0.0 if peak == 0 else max(inner * d.calls / peak, 1.0 if d.calls else 0.0)
        x = i * slot + (slot - bar) / 2
        y = inner - height
        label = f"{d.day.isoformat()}: {d.calls} call{'s' if d.calls != 1 else ''}"
        bars.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}">'
            f"<title>{escape(label)}</title></rect>"
        )
    first = series[0].day.isoformat() if series else ""
    last = series[-1].day.isoformat() if series else ""
    desc = f"{total} calls from {first} to {last}; the busiest day had {peak}."
    svg = (
        f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-labelledby="chart-title chart-desc">'
        f'<title id="chart-title">{escape(title)}</title><desc id="chart-desc">{escape(desc)}</desc>'
        f'<line class="axis" x1="0" y1="{inner}" x2="{CHART_WIDTH}" y2="{inner}"/>'
        f"{''.join(bars)}"
        f'<text x="0" y="{CHART_HEIGHT - 6}">{escape(first)}</text>'
        f'<text x="{CHART_WIDTH}" y="{CHART_HEIGHT - 4}" text-anchor="end">{escape(last)}</text>'
        "</svg>"
    )
    return Markup(svg)


def example_value(schema: Mapping[str, Any]) -> str:
    """A placeholder value for one argument of a tool's input schema, as `mcpz call` reads it."""
    if "default" in schema:
        value = schema["default"]
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        first = schema["enum"][0]
        return first if isinstance(first, str) else json.dumps(first)
    kind = schema.get("type")
    return {"integer": "1", "number": "1.5", "boolean": "true", "array": "[]", "object": "{}"}.get(
        kind if isinstance(kind, str) else "", "..."
    )


def call_snippet(agent: str, tool: Mapping[str, Any] | None) -> str:
    """`mcpz call NAME TOOL key=value...` for the tool's required arguments (all shell-quoted)."""
    if tool is None:
        return f"mcpz call {agent} TOOL key=value"
    schema = tool.get("inputSchema") or tool.get("input_schema") or {}
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    required = schema.get("required") if isinstance(schema, Mapping) else None
    words = ["mcpz", "call", agent, str(tool.get("name", "TOOL"))]
    if isinstance(properties, Mapping) and isinstance(required, list):
        for key in required:
            if isinstance(key, str) and isinstance(properties.get(key), Mapping):
                words.append(f"{key}={example_value(properties[key])}")
    return " ".join(shlex.quote(w) for w in words)


def server_key(agent: str) -> str:
    """The agent's name as a key in an MCP client's configuration (letters, digits, - and _)."""
    return _SERVER_KEY.sub("-", agent).strip("-") or "mcpz-agent"


def vscode_config(agent: str, gateway_url: str) -> str:
    """`.vscode/mcp.json` for the gateway URL: the API key is asked for once and kept by VS Code."""
    config = {
        "servers": {
            server_key(agent): {
                "type": "http",
                "url": gateway_url,
                "headers": {"Authorization": "Bearer ${input:mcpz-key}"},
            }
        },
        "inputs": [
            {"type": "promptString", "id": "mcpz-key", "description": "mcpz API key", "password": True}
        ],
    }
    return json.dumps(config, indent=2)


def claude_desktop_config(agent: str, gateway_url: str) -> str:
    """`claude_desktop_config.json`: Claude Desktop reaches a remote server through `mcp-remote`."""
    config = {
        "mcpServers": {
            server_key(agent): {
                "command": "npx",
                "args": ["-y", "mcp-remote", gateway_url, "--header", "Authorization:Bearer ${MCPZ_KEY}"],
                "env": {"MCPZ_KEY": "mcpz_... (an API key with the call scope)"},
            }
        }
    }
    return json.dumps(config, indent=2)


def schema_text(schema: Any) -> str:
    """A tool's schema as indented JSON, keys in the order given."""
    return json.dumps(schema, indent=2, ensure_ascii=False)


def count(n: int | None) -> str:
    """1234 -> "1,234"; 1_500_000 -> "1.5M"."""
    if n is None:
        return "-"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    return f"{n:,}"


def milliseconds(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """ "3 days ago"; a date past a year."""
    if moment is None:
        return "-"
    now = now or datetime.now(UTC)
    seconds = (now - moment).total_seconds()
    for unit, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            if unit == "year":
                return moment.date().isoformat()
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def stars(rating: float | None) -> str:
    """ "★★★★☆" for 4.2; empty for no rating. Screen readers get the number beside it."""
    if rating is None:
        return ""
    full = max(0, min(5, round(rating)))
    return "★" * full + "☆" * (5 - full)
