"""Platform tiers, pure: what a tier allows, a token bucket per key, a calendar-month counter per
account, and the decision to refuse a call or a session.

A tier sets calls per month (per account, calendar month in UTC), calls per second (per key: a
token bucket holding `calls_per_second` tokens, refilled continuously) and concurrent sessions
(per account); 0 means unlimited. Time is passed in as Unix nanoseconds and every quantity is an
integer, so a bucket never drifts and tests drive the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from registry_server.tier_settings import (
    CALLS_PER_MONTH,
    CALLS_PER_SECOND,
    LIMITS,
    SESSIONS,
    Tier,
    parse_tiers,
)

__all__ = ["CALLS_PER_MONTH", "CALLS_PER_SECOND", "LIMITS", "SESSIONS", "Tier", "parse_tiers"]

SECOND = 1_000_000_000  # nanoseconds


# --- calendar months ------------------------------------------------------------------------------


def month_of(now_ns: int) -> tuple[int, int]:
    """The calendar month (UTC) holding `now_ns`: its first and the next month's first nanosecond."""
    moment = datetime.fromtimestamp(now_ns // SECOND, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    after = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()) * SECOND, int(after.timestamp()) * SECOND


@dataclass
class MonthCounter:
    """Calls of one account in the month starting at `month_start` (UTC)."""

    month_start: int
    month_end: int
    count: int = 0

    @classmethod
    def seeded(cls, now_ns: int, count: int) -> MonthCounter:
        start, end = month_of(now_ns)
        return cls(start, end, count)

    def roll(self, now_ns: int) -> None:
        """A new month starts from zero."""
        if now_ns >= self.month_end or now_ns < self.month_start:
            self.month_start, self.month_end = month_of(now_ns)
            self.count = 0


# --- the token bucket -----------------------------------------------------------------------------


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `rate` held. `level` is tokens x SECOND, so the refill of
    `rate` tokens a second is exactly `rate` units per elapsed nanosecond: no rounding, no drift."""

    rate: int
    level: int
    at: int  # the nanosecond `level` was measured at

    @classmethod
    def full(cls, rate: int, now_ns: int) -> TokenBucket:
        return cls(rate, rate * SECOND, now_ns)

    def refill(self, now_ns: int, rate: int) -> None:
        if rate != self.rate:  # the tier changed: the same fill, in the new capacity
            self.level = min(self.level, rate * SECOND)
            self.rate = rate
        if now_ns > self.at:
            self.level = min(self.rate * SECOND, self.level + (now_ns - self.at) * self.rate)
            self.at = now_ns

    @property
    def tokens(self) -> int:
        return self.level // SECOND

    def next_token_ns(self) -> int:
        """Nanoseconds until one whole token is held (0 when one is)."""
        missing = SECOND - self.level
        return 0 if missing <= 0 else -(-missing // self.rate)

    def full_in_ns(self) -> int:
        """Nanoseconds until the bucket is full again."""
        return -(-(self.rate * SECOND - self.level) // self.rate)


# --- decisions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """One limit as the RateLimit fields state it: its quota, window, what remains, when it resets."""

    limit: str
    quota: int
    window_s: int | None  # None: not a window (concurrent sessions)
    remaining: int
    reset_ns: int  # nanoseconds from now until the quota is whole again (or a slot frees)


@dataclass(frozen=True)
class Refusal:
    """A call or session refused: which limit of which tier, and when to try again."""

    tier: str
    standing: Standing
    retry_ns: int  # nanoseconds until a retry can succeed
    now_ns: int

    @property
    def limit(self) -> str:
        return self.standing.limit

    @property
    def retry_after(self) -> int:
        """Whole seconds, at least 1: the Retry-After value."""
        return max(1, -(-self.retry_ns // SECOND))

    @property
    def reset_at(self) -> datetime:
        return datetime.fromtimestamp((self.now_ns + self.retry_ns) / SECOND, UTC)


def take_call(
    tier: Tier, bucket: TokenBucket | None, counter: MonthCounter, now_ns: int
) -> Refusal | list[Standing]:
    """Count one call against `tier` if both its limits allow it (the bucket is the key's, the
    counter the account's, both brought up to `now_ns` here): the standings after it, or the
    refusal. A refused call takes nothing. Past both limits, the month is named: retrying sooner
    than its reset is pointless."""
    counter.roll(now_ns)
    month_reset = counter.month_end - now_ns
    if bucket is not None:
        bucket.refill(now_ns, tier.calls_per_second)
    month = None
    if tier.calls_per_month:
        month = Standing(
            CALLS_PER_MONTH,
            tier.calls_per_month,
            (counter.month_end - counter.month_start) // SECOND,
            max(0, tier.calls_per_month - counter.count),
            month_reset,
        )
        if month.remaining == 0:
            return Refusal(tier.name, month, month_reset, now_ns)
    second = None
    if bucket is not None and tier.calls_per_second:
        if bucket.tokens == 0:
            standing = Standing(CALLS_PER_SECOND, tier.calls_per_second, 1, 0, bucket.full_in_ns())
            return Refusal(tier.name, standing, bucket.next_token_ns(), now_ns)
        bucket.level -= SECOND
        second = Standing(CALLS_PER_SECOND, tier.calls_per_second, 1, bucket.tokens, bucket.full_in_ns())
    counter.count += 1
    if month is not None:
        month = Standing(month.limit, month.quota, month.window_s, month.remaining - 1, month_reset)
    return [s for s in (second, month) if s is not None]


def check_session(tier: Tier, open_sessions: int, frees_in_ns: int, now_ns: int) -> Refusal | Standing | None:
    """Whether one more session fits `tier` with `open_sessions` open: None when unlimited, its
    standing once opened, else the refusal (retry when the first of them frees, `frees_in_ns`)."""
    if not tier.sessions:
        return None
    remaining = tier.sessions - open_sessions
    if remaining <= 0:
        standing = Standing(SESSIONS, tier.sessions, None, 0, frees_in_ns)
        return Refusal(tier.name, standing, frees_in_ns, now_ns)
    return Standing(SESSIONS, tier.sessions, None, remaining - 1, 0)


def tightest(standings: list[Standing]) -> Standing | None:
    """The limit a burst would run out of first: the least remaining, then the latest reset."""
    return min(standings, key=lambda s: (s.remaining, -s.reset_ns), default=None)


def ratelimit_fields(standings: list[Standing], current: Standing | None) -> list[tuple[str, str]]:
    """The RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers): every
    policy, and the live counter of `current` (the tightest, or the refused one)."""
    if not standings:
        return []
    policies = []
    for s in standings:
        window = f";w={s.window_s}" if s.window_s is not None else ""
        policies.append(f'"{s.limit}";q={s.quota}{window}')
    fields = [("RateLimit-Policy", ", ".join(policies))]
    if current is not None:
        reset = -(-current.reset_ns // SECOND)
        fields.append(("RateLimit", f'"{current.limit}";r={current.remaining};t={reset}'))
    return fields
