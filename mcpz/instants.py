"""Points in time as people type them: ISO 8601, Unix seconds, or an age before now (`30m`, `7d`).

One parser for the CLI (`mcpz usage --since`) and the registry (`GET /v1/usage?since=`), so both
accept the same forms and refuse the same way: a `UsageError` of one line, also for times that
parse but fall outside what a `datetime` can hold once moved to UTC (`99999999999999w`, or
`0001-01-01T00:00:00+05:00`, which is in year 0 in UTC).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, tzinfo

from mcpz.errors import UsageError

__all__ = ["MAX_INSTANT_TEXT", "parse_instant", "parse_since"]

MAX_INSTANT_TEXT = 64
"""Longest text taken: the longest ISO 8601 form is 32 characters."""

_AGE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_FORMS = "use ISO 8601 (2025-01-31T12:00Z), Unix seconds, or an age such as 30m, 1h, 7d"


def parse_instant(text: str, now: datetime, *, naive: tzinfo | None = UTC) -> datetime:
    """The instant `text` names, in UTC. An age counts back from `now`; an ISO time without a
    zone is in `naive` (None: this machine's local zone)."""
    value = text.strip()
    if len(value) > MAX_INSTANT_TEXT:
        raise UsageError(f"{_shown(value[:20])}... is too long to be a time", hint=_FORMS)
    try:
        age = _AGE.fullmatch(value.lower())
        if age:
            return (now - timedelta(seconds=int(age.group(1)) * _UNITS[age.group(2)])).astimezone(UTC)
        seconds = _number(value)
        if seconds is not None:
            return datetime.fromtimestamp(seconds, UTC)
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise UsageError(f"{_shown(text)} is not a time", hint=_FORMS) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=naive) if naive is not None else moment.astimezone()
        return moment.astimezone(UTC)
    except (OverflowError, OSError, ValueError):
        # timedelta, fromtimestamp and astimezone refuse results outside years 1..9999 (OSError:
        # the platform's own limit on timestamps).
        raise UsageError(
            f"{_shown(text)} is out of range: a time must fall between the years 1 and 9999 in UTC",
            hint=_FORMS,
        ) from None


def parse_since(text: str, now: datetime | None = None) -> str:
    """`30m`, `1h`, `7d` (before now), Unix seconds, or an ISO 8601 date/time -> an ISO 8601 instant
    in UTC, as `GET /v1/usage?since=` takes it; UsageError (exit 2) for anything else.

    Ages are turned into instants on the caller's side, so "the last hour" is the user's hour, not
    the server's; a date or time without a zone is this machine's local time.
    """
    return parse_instant(text, now or datetime.now(UTC), naive=None).isoformat()


def _shown(text: str) -> str:
    """`text` in double quotes, control characters escaped: an error stays one line."""
    return json.dumps(text, ensure_ascii=False)


def _number(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        raise OverflowError(value)
    return seconds
