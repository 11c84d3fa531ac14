"""The gateway's tier enforcer (`billing.quotas.Quotas`) on real databases (SQLite, PostgreSQL): the
month seeded from usage events, exactness when many calls and sessions arrive together, refunds, a
changed tier, and a database that cannot answer."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from registry_server.accounts import service as accounts
from registry_server.accounts.service import Principal
from registry_server.billing import service_tiers
from registry_server.billing.quotas import Grant, Quotas, QuotasUnavailable
from registry_server.billing.tiers import SECOND, Refusal, Tier, month_of
from registry_server.settings import RegistrySettings
from registry_server.state import RegistryState
from registry_server.usage.events import Outcome, UsageEvent
from registry_server.usage.service import UsageRecorder

TIERS = {
    "open": {},
    "month": {"calls_per_month": 5},
    "second": {"calls_per_second": 3},
    "two": {"sessions": 2},
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryState]:
    env = (
        {"MCPZ_DATABASE_URL": request.getfixturevalue("postgres_url")} if request.param == "postgres" else {}
    )
    settings = RegistrySettings.load(
        data_dir=tmp_path / "registry", env=env, tiers=TIERS, default_tier="open"
    )
    opened = RegistryState.open(settings)
    yield opened
    opened.close()


def principal(state: RegistryState, tier: str | None = None) -> Principal:
    name = f"acct-{secrets.token_hex(3)}"
    with state.db.session() as session:
        account = accounts.create_account(session, name)
        account_id = account.id
        if tier is not None:
            service_tiers.set_tier(session, name, tier, state.settings.tiers, state.settings.default_tier)
    return Principal(account_id, name, secrets.randbelow(10**9), frozenset({"call"}), None)


def events(state: RegistryState, who: Principal, *started_us: int) -> None:
    UsageRecorder(state).record_many(
        [
            UsageEvent(
                id=secrets.token_hex(16), account_id=who.account_id, token_id=who.token_id, agent="acme/a",
                version="1.0.0", tool="echo", deployment="acme/a", replica_id="r", node_id="n",
                started_us=at, duration_us=1, outcome=Outcome.OK, bytes_in=1, bytes_out=1,
            )
            for at in started_us
        ]
    )  # fmt: skip


def test_the_month_starts_from_the_accounts_usage_events_of_this_month_only(state: RegistryState) -> None:
    who, other = principal(state, "month"), principal(state, "month")
    start, _ = month_of(time.time_ns())
    this_month = start // 1000
    events(state, who, this_month, this_month + 1, time.time_ns() // 1000)  # 3 of its 5
    events(state, who, this_month - 1, this_month - 10**9)  # last month: not counted
    events(state, other, this_month, this_month + 2)  # another account's: not counted

    async def main() -> list[Grant | Refusal]:
        quotas = Quotas(state)
        return [await quotas.check_call(who) for _ in range(4)]

    verdicts = asyncio.run(main())
    assert [isinstance(v, Grant) for v in verdicts] == [True, True, False, False]
    refused = verdicts[-1]
    assert isinstance(refused, Refusal) and refused.limit == "calls_per_month"
    assert refused.now_ns + refused.retry_ns == month_of(time.time_ns())[1]


def test_twenty_concurrent_calls_on_a_cold_account_pass_exactly_the_quota(state: RegistryState) -> None:
    """The first calls all wait for the tier and the month's count to load, then count one by one."""
    who = principal(state, "month")

    async def main() -> tuple[list[Grant | Refusal], int]:
        quotas = Quotas(state)
        verdicts = await asyncio.gather(*(quotas.check_call(who) for _ in range(20)))
        return list(verdicts), (await quotas.calls_this_month(who.account_id)).count

    verdicts, counted = asyncio.run(main())
    granted = [v for v in verdicts if isinstance(v, Grant)]
    assert len(granted) == 5 and counted == 5
    remaining = sorted(int(dict(g.fields)["RateLimit"].split("r=")[1].split(";")[0]) for g in granted)
    assert remaining == [0, 1, 2, 3, 4]


def test_a_refunded_call_is_given_back_to_the_month_but_not_to_the_second(state: RegistryState) -> None:
    monthly, per_second = principal(state, "month"), principal(state, "second")

    async def main() -> tuple[int, list[bool]]:
        quotas = Quotas(state)
        now = time.time_ns()
        for _ in range(5):
            grant = await quotas.check_call(monthly, now)
            assert isinstance(grant, Grant)
            quotas.refund(grant)
        month = (await quotas.calls_this_month(monthly.account_id)).count
        passed = []
        for _ in range(4):
            verdict = await quotas.check_call(per_second, now)
            if isinstance(verdict, Grant):
                quotas.refund(verdict)
            passed.append(isinstance(verdict, Grant))
        return month, passed

    month, passed = asyncio.run(main())
    assert month == 0
    assert passed == [True, True, True, False]  # a refund gives back no token per second


def test_concurrent_initializes_take_exactly_the_free_session_slots(state: RegistryState) -> None:
    who = principal(state, "two")

    async def main() -> tuple[list[Grant | Refusal], Grant | Refusal, Grant | Refusal]:
        quotas = Quotas(state)
        open_now: list[float] = []
        verdicts = await asyncio.gather(*(quotas.check_session(who, lambda: open_now) for _ in range(5)))
        # Slots are held until released: with none of them open yet, a sixth is refused all the same.
        sixth = await quotas.check_session(who, lambda: open_now)
        for verdict in verdicts:
            if isinstance(verdict, Grant):
                quotas.release(verdict)
                open_now.append(600.0)  # the session opened; it would end idle in 10 minutes
        full = await quotas.check_session(who, lambda: open_now)
        return list(verdicts), sixth, full

    verdicts, sixth, full = asyncio.run(main())
    assert sum(isinstance(v, Grant) for v in verdicts) == 2
    assert isinstance(sixth, Refusal) and sixth.retry_after == 1  # a slot being opened settles soon
    assert isinstance(full, Refusal) and full.limit == "sessions" and full.retry_after == 600


def test_a_changed_tier_applies_once_the_cached_one_expires(state: RegistryState) -> None:
    who = principal(state)  # the default tier, "open"

    async def main() -> tuple[Tier, Tier, Tier]:
        quotas = Quotas(state, ttl=3600)
        before = await quotas.tier(who.account_id)
        with state.db.session() as session:
            service_tiers.set_tier(session, who.account_name, "month", state.settings.tiers, "open")
        cached = await quotas.tier(who.account_id)
        quotas.ttl = 0  # as if the hour had passed
        return before, cached, await quotas.tier(who.account_id)

    before, cached, after = asyncio.run(main())
    assert (before.name, cached.name, after.name) == ("open", "open", "month")


def test_a_database_that_cannot_answer_is_unavailable_unless_the_tier_was_read_before(
    state: RegistryState,
) -> None:
    known, unknown = principal(state, "second"), principal(state, "second")

    async def main() -> tuple[Tier, str]:
        quotas = Quotas(state, ttl=0)
        await quotas.check_call(known)
        with state.db.session() as session:
            session.execute(text("ALTER TABLE billing_tiers RENAME TO billing_tiers_gone"))
        stale = await quotas.tier(known.account_id)
        try:
            await quotas.check_call(unknown)
        except QuotasUnavailable as e:
            return stale, e.message
        return stale, "no error"

    stale, message = asyncio.run(main())
    assert stale.name == "second"
    assert message == "the registry cannot check tiers right now"


def test_full_buckets_are_forgotten_when_there_are_many(state: RegistryState) -> None:
    who = principal(state, "second")

    async def main() -> int:
        quotas = Quotas(state, max_buckets=3)
        now = time.time_ns()
        for token in range(5):
            await quotas.check_call(Principal(who.account_id, who.account_name, token, who.scopes, None), now)
        # A second later every bucket is full again: the next new key finds room.
        later = Principal(who.account_id, who.account_name, 99, who.scopes, None)
        await quotas.check_call(later, now + SECOND)
        return quotas.buckets

    assert asyncio.run(main()) <= 3
