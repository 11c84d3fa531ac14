"""Leases across replicas: one holder at a time, takeover after expiry, and the epoch fence that
keeps a former holder from writing (registry_server.leases)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from registry_server import leases
from registry_server.db import Database, migrate


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = (
        request.getfixturevalue("postgres_url")
        if request.param == "postgres"
        else f"sqlite:///{tmp_path}/r.db"
    )
    db = Database(url)
    migrate(db.engine)
    db.dispose()
    yield url


def test_one_holder_then_takeover_after_expiry_with_a_new_epoch(db_url: str) -> None:
    a, b = Database(db_url), Database(db_url)
    try:
        first = leases.acquire(a, "payouts", "replica-a", 0.3)
        assert first == leases.Held("payouts", "replica-a", 1)
        assert leases.acquire(b, "payouts", "replica-b", 0.3) is None
        again = leases.acquire(a, "payouts", "replica-a", 0.3)
        assert again == first  # renewed, same epoch
        time.sleep(0.4)
        taken = leases.acquire(b, "payouts", "replica-b", 5)
        assert taken == leases.Held("payouts", "replica-b", 2)
        assert not leases.renew(a, first, 5)
        assert leases.renew(b, taken, 5)
        assert leases.acquire(a, "gc", "replica-a", 5) == leases.Held("gc", "replica-a", 1)  # names apart
    finally:
        a.dispose()
        b.dispose()


def test_fence_refuses_a_former_holder_and_rolls_its_write_back(db_url: str) -> None:
    a, b = Database(db_url), Database(db_url)
    try:
        with a.session() as s:
            s.execute(text("CREATE TABLE fenced_writes (v INTEGER)"))
        old = leases.acquire(a, "job", "a", 0.2)
        assert old is not None
        with a.session() as s:
            leases.fence(s, old)
            s.execute(text("INSERT INTO fenced_writes VALUES (1)"))
        time.sleep(0.3)
        new = leases.acquire(b, "job", "b", 5)
        assert new is not None and new.epoch == old.epoch + 1
        with pytest.raises(leases.LeaseLost, match="no longer held"), a.session() as s:
            s.execute(text("INSERT INTO fenced_writes VALUES (2)"))
            leases.fence(s, old)
        with b.session() as s:
            leases.fence(s, new)
            assert [r[0] for r in s.execute(text("SELECT v FROM fenced_writes"))] == [1]
        with pytest.raises(leases.LeaseLost), a.session() as s:
            leases.fence(s, None)
    finally:
        a.dispose()
        b.dispose()


@pytest.mark.postgres
def test_a_takeover_waits_for_a_fenced_write_in_flight(postgres_url: str) -> None:
    """The share lock of `fence`: the new holder's takeover cannot slip between the old holder's
    check and its commit."""
    db = Database(postgres_url)
    migrate(db.engine)
    other = Database(postgres_url)
    try:
        old = leases.acquire(db, "job", "a", 0.2)
        assert old is not None
        order: list[str] = []
        checked = threading.Event()

        def writer() -> None:
            with db.session() as s:
                # Checked just before it ran out: valid now; the commit comes after the expiry.
                leases.fence(s, old)
                checked.set()
                time.sleep(0.5)
                order.append("old holder committed")

        thread = threading.Thread(target=writer)
        thread.start()
        checked.wait(5)
        time.sleep(0.25)  # the lease has expired by now, but its fenced write is still open
        new = leases.acquire(other, "job", "b", 5)
        order.append("taken over")
        thread.join()
        assert new is not None and new.epoch == 2
        assert order == ["old holder committed", "taken over"]
    finally:
        db.dispose()
        other.dispose()


def test_leadership_moves_to_the_survivor_and_reports_it(db_url: str) -> None:
    async def scenario() -> None:
        a = leases.Leadership(Database(db_url), "a", ttl=0.6)
        b = leases.Leadership(Database(db_url), "b", ttl=0.6)
        events: list[tuple[str, str, int]] = []
        for who, lead in (("a", a), ("b", b)):
            lead.want(
                "sweeper",
                on_won=lambda h, who=who: events.append((who, "won", h.epoch)),  # type: ignore[misc]
                on_lost=lambda h, who=who: events.append((who, "lost", h.epoch)),  # type: ignore[misc]
            )
        await a.start()
        for _ in range(100):
            if a.leads("sweeper"):
                break
            await asyncio.sleep(0.02)
        await b.start()
        await asyncio.sleep(0.5)
        assert a.leads("sweeper") and not b.leads("sweeper")
        await a.stop()  # gives the lease up: b takes it at its next round, without waiting the ttl
        for _ in range(100):
            if b.leads("sweeper"):
                break
            await asyncio.sleep(0.02)
        assert b.held("sweeper") == leases.Held("sweeper", "b", 2)
        await b.stop()
        assert events == [("a", "won", 1), ("b", "won", 2)]
        for lead in (a, b):
            assert lead.db is not None
            lead.db.dispose()

    asyncio.run(scenario())


def test_solo_holds_everything_and_never_fences() -> None:
    solo = leases.Leadership.solo()
    solo.want("payouts")
    held = solo.held("payouts")
    assert held is not None and held.epoch == 0
    leases.fence(None, held)  # type: ignore[arg-type]  # epoch 0 never touches the database
    assert not solo.clustered and solo.held("gc") is None


@pytest.mark.postgres
def test_a_holder_paused_inside_a_fenced_write_is_cut_off_and_cannot_commit(postgres_url: str) -> None:
    """A SIGSTOPped holder in the middle of a fenced transaction: its share lock would hold the
    takeover off for as long as it sleeps, so the server ends the idle transaction once it has been
    idle for the lease's time; the next replica takes over, and the write never lands."""
    db, other = Database(postgres_url), Database(postgres_url)
    migrate(db.engine)
    try:
        with db.session() as s:
            s.execute(text("CREATE TABLE fenced_writes (v INTEGER)"))
        old = leases.acquire(db, "job", "a", 1.0)
        assert old is not None
        outcome: list[str] = []

        def paused_writer() -> None:
            try:
                with db.session() as s:
                    leases.fence(s, old)
                    s.execute(text("INSERT INTO fenced_writes VALUES (1)"))
                    time.sleep(3)  # paused, its transaction open and idle
            except Exception as e:  # the server ended the session meanwhile
                outcome.append(type(e).__name__)
            else:
                outcome.append("committed")

        thread = threading.Thread(target=paused_writer)
        thread.start()
        new = None
        deadline = time.monotonic() + 10
        while new is None and time.monotonic() < deadline:
            new = leases.acquire(other, "job", "b", 5)  # None while the lock is held: never stuck
        thread.join()
        assert new is not None and new.epoch == 2
        assert outcome and outcome != ["committed"]
        with other.session() as s:
            assert s.execute(text("SELECT count(*) FROM fenced_writes")).scalar_one() == 0
    finally:
        db.dispose()
        other.dispose()
