"""Rating exactly once across real registry processes: two registries on one PostgreSQL rating the
same backlog, and a registry killed with SIGKILL in the middle of rating, then started again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from billingutil import World, open_world, usage_event
from meshutil import until
from registryproc import RegistryProcess
from sqlalchemy import func, select

from registry_server.billing import ledger, service
from registry_server.billing.models import Charge
from registry_server.usage.models import UsageEventRow
from registry_server.usage.service import UsageRecorder

pytestmark = pytest.mark.slow


def backlog(world: World, count: int) -> tuple[str, int]:
    """`count` priced events of one consumer under one hold, written but not rated: (hold, total)."""
    with world.state.db.session() as session:
        service.credit(session, world.consumer, 10**12)
        hold = service.take_hold(session, "test-gate", world.consumer, 10**12, 1, 1)
        assert hold is not None
        hold_id = hold.id
    events = [
        usage_event(n, world.consumer, price=1_000 + n % 13, plan="per-call", hold=hold_id)
        for n in range(count)
    ]
    recorder = UsageRecorder(world.state)
    for start in range(0, count, 5000):
        recorder.record_many(events[start : start + 5000])
    return hold_id, sum(e.price for e in events)


def rated(world: World) -> int:
    with world.state.db.session() as session:
        return int(session.scalar(select(func.count()).where(UsageEventRow.rated.is_not(None))) or 0)


def assert_charged_once(world: World, hold_id: str, count: int, total: int) -> None:
    with world.state.db.session() as session:
        events, charged = session.execute(
            select(func.count(func.distinct(Charge.event_id)), func.coalesce(func.sum(Charge.price), 0))
        ).one()
        rows = session.scalar(select(func.count()).select_from(Charge))
        check = service.verify_ledger(session)
        assert (events, rows, int(charged)) == (count, count, total)
        assert check.ok, check
        # The consumer's money moved exactly once: what left the hold is what the charges say.
        assert service.balances(session, [ledger.consumer_reserved(world.consumer)]) == {
            ledger.consumer_reserved(world.consumer): 10**12 - total
        }
        assert service.release_hold(session, hold_id, count, 2)
    with world.state.db.session() as session:
        assert service.balance_of(session, world.consumer).available == 10**12 - total


@pytest.fixture
def pg_world(tmp_path: Path, postgres_url: str) -> Iterator[World]:
    world = open_world(tmp_path / "test", postgres_url)
    yield world
    world.state.close()


@pytest.mark.postgres
def test_two_registries_on_one_postgresql_rate_each_event_once(
    tmp_path: Path, pg_world: World, postgres_url: str
) -> None:
    count = 30_000
    hold_id, total = backlog(pg_world, count)
    registries = [
        RegistryProcess(tmp_path / f"registry-{i}", tmp_path / f"registry-{i}.log", database=postgres_url)
        for i in range(2)
    ]
    for registry in registries:
        registry.start()
    try:
        until(lambda: rated(pg_world) == count, 120, "every event rated")
    finally:
        for registry in registries:
            registry.stop()
    assert_charged_once(pg_world, hold_id, count, total)
    with pg_world.state.db.session() as session:
        batches = session.scalar(select(func.count(func.distinct(Charge.txn))))
    assert batches and batches >= count // service.RATE_BATCH


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_registry_killed_while_rating_loses_and_doubles_nothing(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    data = tmp_path / "registry"
    world = open_world(data, url)
    try:
        count = 60_000
        hold_id, total = backlog(world, count)
        # Small batches: the backlog takes hundreds of transactions, so a kill lands between two.
        registry = RegistryProcess(
            data, tmp_path / "registry.log", database=url, env={"MCPZ_TEST_RATE_BATCH": "100"}
        )
        at_kills: list[int] = []
        for _ in range(3):  # each time: killed once part of the backlog is rated
            before = rated(world)
            if before == count:
                break
            registry.start()
            until(lambda: rated(world) > before, 60, "some events rated")  # noqa: B023
            registry.kill()
            at_kills.append(rated(world))
            time.sleep(0.05)
        assert any(0 < n < count for n in at_kills), f"no kill landed mid-backlog: {at_kills}"
        registry.start()
        until(lambda: rated(world) == count, 120, "every event rated after the restarts")
        registry.stop()
        assert_charged_once(world, hold_id, count, total)
    finally:
        world.state.close()
