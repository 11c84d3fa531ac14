"""The gateway's enforcer of platform tiers: it decides, at the call, whether a `tools/call` or a
new session fits the caller's tier, and counts it when it does.

State, all in this process's memory:

- each account's tier, read from `billing_tiers` in a worker thread and kept `ttl` seconds, so a
  tier the operator changed applies within that;
- a token bucket per key (token id) for calls per second; a full bucket is the same as none, so
  full ones are forgotten when there are many;
- a counter per account for calls this calendar month (UTC), seeded once per account from
  `usage_events` (each row a call that reached an agent) and counted here from then on;
- sessions being opened per account, so two concurrent `initialize`s cannot both take the last slot.

Exactness: the asyncio event loop runs one task at a time, and every check counts what it allows
with no `await` between the check and the count; the awaits (loading a tier, seeding a counter)
come before. One registry process enforces its own counters: replicas behind one database would
each allow the whole quota (docs/tiers.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError

from mcpz.errors import McpzError
from registry_server.billing import service_tiers
from registry_server.billing.tiers import (
    SECOND,
    MonthCounter,
    Refusal,
    Tier,
    TokenBucket,
    check_session,
    month_of,
    ratelimit_fields,
    take_call,
    tightest,
)

if TYPE_CHECKING:
    from registry_server.accounts.service import Principal
    from registry_server.state import RegistryState

log = logging.getLogger("registry_server.billing.quotas")

TIER_TTL = 5.0
"""Seconds an account's tier is used before it is read again."""
MAX_BUCKETS = 100_000
"""Buckets kept before the full ones (which hold nothing) are dropped."""
QUOTA_EXCEEDED = -32029
"""The JSON-RPC error code of a call or session refused by a tier's limit."""


class QuotasUnavailable(McpzError):
    """The database could not say an account's tier or its calls this month: the gateway answers
    503 rather than guess (a guess would let calls past a quota, or refuse calls within it)."""


@dataclass(frozen=True)
class Grant:
    """A call or a session allowed: the RateLimit fields to answer with, and what to give back if
    it never reaches an agent (`Quotas.refund`) or once the session is open (`Quotas.release`)."""

    account_id: int
    month_start: int = 0  # the month counted in; 0: nothing was counted
    opening: bool = False  # a session slot was reserved
    fields: list[tuple[str, str]] = field(default_factory=list)

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return encode(self.fields)


class Quotas:
    def __init__(
        self, state: RegistryState, *, ttl: float = TIER_TTL, max_buckets: int = MAX_BUCKETS
    ) -> None:
        self.state = state
        self.tiers = state.settings.tiers
        self.default = state.settings.default_tier
        self.ttl = ttl
        self.max_buckets = max_buckets
        self._tier: dict[int, tuple[Tier, float]] = {}  # by account: the tier, when it was read
        self._loading: dict[int, asyncio.Future[Tier]] = {}
        self._buckets: dict[int, TokenBucket] = {}
        self._months: dict[int, MonthCounter] = {}
        self._seeding: dict[int, asyncio.Future[MonthCounter]] = {}
        self._opening: dict[int, int] = {}

    # -- what the gateway asks

    async def check_call(self, principal: Principal, now_ns: int | None = None) -> Grant | Refusal:
        """One `tools/call` of `principal`: counted and granted, or refused (nothing counted)."""
        tier = await self.tier(principal.account_id)
        counter = await self._counter(principal.account_id)
        now_ns = time.time_ns() if now_ns is None else now_ns
        # From here to the return: no await, so no other call sees the counts half taken.
        bucket = None
        if tier.calls_per_second:
            bucket = self._buckets.get(principal.token_id)
            if bucket is None:
                if len(self._buckets) >= self.max_buckets:
                    self._forget_full_buckets(now_ns)
                bucket = self._buckets[principal.token_id] = TokenBucket.full(tier.calls_per_second, now_ns)
        verdict = take_call(tier, bucket, counter, now_ns)
        if isinstance(verdict, Refusal):
            return verdict
        return Grant(
            principal.account_id, counter.month_start, fields=ratelimit_fields(verdict, tightest(verdict))
        )

    def refund(self, grant: Grant | None) -> None:
        """Give back a granted call that reached no agent (no replica, refused before relaying):
        the month counts calls that reached one. Its token per second stays taken."""
        if grant is None or not grant.month_start:
            return
        counter = self._months.get(grant.account_id)
        if counter is not None and counter.month_start == grant.month_start and counter.count > 0:
            counter.count -= 1

    async def check_session(
        self, principal: Principal, open_sessions: Callable[[], Sequence[float]], now_ns: int | None = None
    ) -> Grant | Refusal:
        """One more session of `principal`. `open_sessions()` gives, for each session it holds,
        the seconds until it would end idle; it is asked after any wait, so it is current. A grant
        reserves the slot until `release`: call it once the session is open, or is not."""
        tier = await self.tier(principal.account_id)
        now_ns = time.time_ns() if now_ns is None else now_ns
        if not tier.sessions:
            return Grant(principal.account_id)
        idle = open_sessions()
        opening = self._opening.get(principal.account_id, 0)
        # A slot frees when the first open session ends idle; one being opened settles sooner.
        frees_in = SECOND if opening or not idle else max(SECOND, int(min(idle) * SECOND))
        verdict = check_session(tier, len(idle) + opening, frees_in, now_ns)
        if isinstance(verdict, Refusal):
            return verdict
        self._opening[principal.account_id] = opening + 1
        standings = [verdict] if verdict is not None else []
        return Grant(principal.account_id, opening=True, fields=ratelimit_fields(standings, verdict))

    def release(self, grant: Grant | None) -> None:
        if grant is None or not grant.opening:
            return
        left = self._opening.get(grant.account_id, 0) - 1
        if left > 0:
            self._opening[grant.account_id] = left
        else:
            self._opening.pop(grant.account_id, None)

    # -- what the tier route asks

    async def calls_this_month(self, account_id: int) -> MonthCounter:
        """The account's counter as the gateway enforces it, brought to the current month."""
        counter = await self._counter(account_id)
        counter.roll(time.time_ns())
        return counter

    # -- state

    @property
    def buckets(self) -> int:
        """Keys with a bucket held: those that called within the last second or so."""
        return len(self._buckets)

    async def tier(self, account_id: int) -> Tier:
        hit = self._tier.get(account_id)
        if hit is not None and hit[1] + self.ttl > time.monotonic():
            return hit[0]
        loading = self._loading.get(account_id)
        if loading is None:
            # One read per account at a time: the calls that find the entry expired share it.
            loading = asyncio.ensure_future(anyio.to_thread.run_sync(self._read_tier, account_id))
            self._loading[account_id] = loading
            loading.add_done_callback(lambda done: self._loaded(account_id, done))
        try:
            return await asyncio.shield(loading)
        except (SQLAlchemyError, McpzError) as e:
            if hit is not None:  # the tier read before: better than refusing every call
                log.warning("cannot read an account's tier; using the last one read: %s", e)
                return hit[0]
            log.error("cannot read an account's tier: %s", e)
            raise QuotasUnavailable("the registry cannot check tiers right now") from None

    def _read_tier(self, account_id: int) -> Tier:
        with self.state.db.session() as session:
            name = service_tiers.tier_name(session, account_id)
        tier = service_tiers.resolve(self.tiers, self.default, name)
        if name is not None and tier.name != name:
            log.warning(
                "an account's tier is not configured: it has the default tier",
                extra={"account_id": account_id, "tier": name, "default": self.default},
            )
        return tier

    def _loaded(self, account_id: int, done: asyncio.Future[Tier]) -> None:
        if self._loading.get(account_id) is done:
            del self._loading[account_id]
        if not done.cancelled() and done.exception() is None:
            self._tier[account_id] = (done.result(), time.monotonic())

    async def _counter(self, account_id: int) -> MonthCounter:
        counter = self._months.get(account_id)
        if counter is not None:
            return counter
        seeding = self._seeding.get(account_id)
        if seeding is None:
            seeding = asyncio.ensure_future(self._seed(account_id))
            self._seeding[account_id] = seeding
            seeding.add_done_callback(lambda _: self._seeding.pop(account_id, None))
        try:
            return await asyncio.shield(seeding)
        except (SQLAlchemyError, McpzError) as e:  # not kept: the next call counts again
            log.error("cannot count an account's calls this month: %s", e)
            raise QuotasUnavailable("the registry cannot count calls right now") from None

    async def _seed(self, account_id: int) -> MonthCounter:
        now_ns = time.time_ns()
        start, end = month_of(now_ns)

        def count() -> int:
            with self.state.db.session() as session:
                return service_tiers.calls_in(session, account_id, start // 1000, end // 1000)

        counter = MonthCounter(start, end, await anyio.to_thread.run_sync(count))
        # Kept for the month: a counter forgotten and seeded again would miss the calls still on
        # their way to the database.
        return self._months.setdefault(account_id, counter)

    def _forget_full_buckets(self, now_ns: int) -> None:
        for key, bucket in list(self._buckets.items()):
            bucket.refill(now_ns, bucket.rate)
            if bucket.full_in_ns() == 0:
                del self._buckets[key]


def refusal_message(refusal: Refusal) -> str:
    """One line: the limit, the tier, when it resets, and what to do."""
    what = {
        "calls_per_second": f"{refusal.standing.quota} calls per second per key",
        "calls_per_month": f"{refusal.standing.quota} calls per month",
        "sessions": f"{refusal.standing.quota} open sessions",
    }[refusal.limit]
    when = refusal.reset_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    advice = "end a session (DELETE) or wait until" if refusal.limit == "sessions" else "retry after"
    return (
        f"tier {refusal.tier!r} allows {what}: {advice} {when}"
        f" (in {refusal.retry_after} s), or ask the operator for a higher tier"
    )


def refusal_data(refusal: Refusal) -> dict[str, object]:
    return {
        "limit": refusal.limit,
        "tier": refusal.tier,
        "reset": refusal.reset_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "retry_after": refusal.retry_after,
    }


def refusal_headers(refusal: Refusal) -> list[tuple[bytes, bytes]]:
    """The RateLimit fields of the refused limit, nothing remaining (Retry-After is the caller's)."""
    return encode(ratelimit_fields([refusal.standing], refusal.standing))


def encode(fields: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in fields]
