"""Billing on real databases (SQLite and PostgreSQL): credit, prices, holds, rating exactly once,
earnings maturing, subscriptions, and the ledger's invariants checked in SQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from billingutil import AGENT, World, open_world, usage_event

from mcpz.errors import UsageError
from registry_server.billing import ledger, service
from registry_server.billing.models import Credit
from registry_server.billing.pricing import Pricing
from registry_server.usage.events import UsageEvent
from registry_server.usage.service import UsageRecorder

FEE = 2000
DAY = service.DAY_US


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    w = open_world(tmp_path / "registry", url)
    yield w
    w.state.close()


def record(world: World, events: list[UsageEvent]) -> None:
    UsageRecorder(world.state).record_many(events)


def balance(world: World, account_id: int) -> service.Balance:
    with world.state.db.session() as session:
        return service.balance_of(session, account_id)


def check(world: World) -> service.LedgerCheck:
    with world.state.db.session() as session:
        result = service.verify_ledger(session)
    assert result.ok, result
    return result


def test_a_credit_is_posted_once_under_its_key(world: World) -> None:
    with world.state.db.session() as session:
        assert service.credit(session, world.consumer, 5_000_000, key="credit:promo-1")[1]
    with world.state.db.session() as session:
        assert not service.credit(session, world.consumer, 5_000_000, key="credit:promo-1")[1]
        with pytest.raises(ledger.LedgerError, match="already used"):
            service.credit(session, world.consumer, 1, key="credit:promo-1")
    assert balance(world, world.consumer).available == 5_000_000
    check(world)


def test_paid_calls_are_rated_once_split_and_the_hold_rest_comes_back(world: World) -> None:
    with world.state.db.session() as session:
        service.credit(session, world.consumer, 1_000_000)
        hold = service.take_hold(session, "g1", world.consumer, 10_000, 2_000, 1)
        assert hold is not None
        hold_id = hold.id
    assert balance(world, world.consumer) == service.Balance(990_000, 10_000, 0, 0)
    events = [usage_event(n, world.consumer, price=2_000, plan="per-call", hold=hold_id) for n in range(3)]
    record(world, [*events, usage_event(9, world.consumer)])  # and one free call
    with world.state.db.session() as session:  # not yet rated: the hold cannot be released
        assert not service.release_hold(session, hold_id, 3, 2)
    first = service.rate_all(world.state.db, FEE)
    assert (first.events, first.amount) == (3, 6_000)
    assert service.rate_all(world.state.db, FEE).events == 0  # rating again changes nothing
    record(world, events)  # a retried flush of the same events
    assert service.rate_all(world.state.db, FEE).events == 0
    with world.state.db.session() as session:
        assert service.release_hold(session, hold_id, 3, 3)
        assert service.release_hold(session, hold_id, 3, 4)  # twice: nothing more happens
    assert balance(world, world.consumer) == service.Balance(994_000, 0, 0, 0)
    creator = balance(world, world.creator)
    assert (creator.pending, creator.earned) == (4_800, 0)  # 80 % of 6,000
    with world.state.db.session() as session:
        assert service.balances(session, [ledger.PLATFORM_FEES])[ledger.PLATFORM_FEES] == 1_200
        # Past the refund window, pending earnings become available, once.
        assert service.mature_earnings(session, 7 * DAY, events[-1].started_us + 8 * DAY) == 4_800
        assert service.mature_earnings(session, 7 * DAY, events[-1].started_us + 9 * DAY) == 0
    assert balance(world, world.creator) == service.Balance(0, 0, 0, 4_800)
    check(world)


def test_concurrent_raters_charge_each_event_once(world: World) -> None:
    with world.state.db.session() as session:
        service.credit(session, world.consumer, 10**9)
        hold = service.take_hold(session, "g1", world.consumer, 10**9, 1, 1)
        assert hold is not None
        hold_id = hold.id
    record(
        world,
        [
            usage_event(n, world.consumer, price=1_000 + n % 7, hold=hold_id, plan="per-call")
            for n in range(3000)
        ],
    )
    results: list[service.Rated] = []
    errors: list[BaseException] = []

    def rater() -> None:
        try:
            while True:
                done = service.rate_pending(world.state.db, FEE, limit=250)
                results.append(done)
                if done.events == 0:
                    return
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=rater) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = sum(1_000 + n % 7 for n in range(3000))
    assert sum(r.events for r in results) == 3000
    assert sum(r.amount for r in results) == expected
    with world.state.db.session() as session:
        assert service.release_hold(session, hold_id, 3000, 2)
    assert balance(world, world.consumer).available == 10**9 - expected
    check(world)


def test_a_price_increase_waits_for_its_notice_and_a_decrease_applies_at_once(world: World) -> None:
    notice = 14 * DAY
    with world.state.db.session() as session:
        prices = service.set_prices(
            session, AGENT, Pricing(per_call=2_000), by=world.creator, notice_us=notice, at_us=DAY
        )
        assert prices.current.free and [p.per_call for _, p in prices.pending] == [2_000]
        assert prices.pending[0][0] == DAY + notice
    with world.state.db.session() as session:
        assert service.prices_of(session, AGENT, DAY + notice).current.per_call == 2_000
        lower = service.set_prices(
            session,
            AGENT,
            Pricing(per_call=1_000),
            by=world.creator,
            notice_us=notice,
            at_us=DAY + notice + 1,
        )
        assert lower.current.per_call == 1_000 and not lower.pending
        # Raising one tool and lowering the rest: the decrease now, the increase after the notice.
        mixed = service.set_prices(
            session,
            AGENT,
            Pricing(per_call=500, tools={"search": 3_000}),
            by=world.creator,
            notice_us=notice,
            at_us=DAY + notice + 2,
        )
        assert mixed.current.per_call_price("echo") == 500
        assert mixed.current.per_call_price("search") == 1_000
        assert mixed.pending[0][1].per_call_price("search") == 3_000


def test_a_subscription_charges_its_month_once(world: World) -> None:
    with world.state.db.session() as session:
        service.set_prices(
            session,
            AGENT,
            Pricing(monthly_fee=5_000_000, included=100, overage=1_000),
            by=world.creator,
            notice_us=0,
            at_us=1,
        )
    with pytest.raises(UsageError, match="does not cover"), world.state.db.session() as session:
        service.subscribe(session, world.consumer, AGENT, "monthly", FEE, 2)
    with world.state.db.session() as session:
        service.credit(session, world.consumer, 6_000_000)
        subscription = service.subscribe(session, world.consumer, AGENT, "monthly", FEE, 2)
        service.charge_fee(session, subscription, 5_000_000, FEE, 3)  # the same month again: nothing
    assert balance(world, world.consumer).available == 1_000_000
    assert balance(world, world.creator).pending == 4_000_000
    check(world)


def test_promotional_credit_expires_unspent_once(world: World) -> None:
    with world.state.db.session() as session:
        service.credit(session, world.consumer, 3_000_000, reason="paid")
        service.credit(session, world.consumer, 1_000_000, reason="promo", expires_us=1_000 * DAY)
        hold = service.take_hold(session, "g1", world.consumer, 400_000, 1, 1)
        assert hold is not None
        hold_id = hold.id
    started = 999 * DAY  # spent before the expiry, after the grant
    record(
        world,
        [
            usage_event(n, world.consumer, price=100_000, hold=hold_id, started_us=started + n)
            for n in range(3)
        ],
    )
    service.rate_all(world.state.db, FEE)
    with world.state.db.session() as session:
        service.release_hold(session, hold_id, 3, 2)
        for grant in session.query(Credit).all():
            grant.created_us = 1  # the grants came before the calls
    with world.state.db.session() as session:
        assert service.expire_credits(session, 999 * DAY) == 0  # not yet
        assert service.expire_credits(session, 1_000 * DAY) == 700_000  # 1.00 promo, 0.30 of it spent
        assert service.expire_credits(session, 1_001 * DAY) == 0  # once
    assert balance(world, world.consumer).available == 4_000_000 - 300_000 - 700_000
    check(world)
