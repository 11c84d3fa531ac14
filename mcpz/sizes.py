"""Sizes and durations as operators type and read them: `1.5 MiB`, `2w`, `now`.

Shared by the garbage collectors (`mcpz registry gc`, `mcpz node gc`, `mcpz cache clean`) so each
prints bytes and takes a grace period the same way.
"""

from __future__ import annotations

__all__ = ["human_bytes", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def human_bytes(n: int) -> str:
    """1536 -> "1.5 KiB": binary units, one decimal past bytes."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def parse_duration(text: str) -> float:
    """Seconds: `now` or `0` -> 0; `90s`, `30m`, `12h`, `7d`, `2w`, or plain seconds. ValueError else."""
    value = text.strip().lower()
    if value == "now":
        return 0.0
    if value and value[-1] in _UNITS and value[:-1].isdigit():
        return float(int(value[:-1]) * _UNITS[value[-1]])
    seconds = float(value)
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{text!r} is not 0 or more seconds")
    return seconds
