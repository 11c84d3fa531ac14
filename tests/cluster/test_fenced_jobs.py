"""Each leased job's writes are fenced: given a lease another replica has since taken, gc, the
market sweep, rating and the payout batch writes refuse (LeaseLost) and write nothing; with the
lease still held they go through. Real SQLite and PostgreSQL databases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from registry_server import leases
from registry_server.accounts.models import AuthNonce
from registry_server.billing import service as billing
from registry_server.maintenance.service import collect_garbage
from registry_server.market.upkeep import MarketUpkeep
from registry_server.settings import RegistrySettings
from registry_server.settlement import payouts
from registry_server.settlement.models import PayoutBatch
from registry_server.state import RegistryState


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryState]:
    env = (
        {"MCPZ_DATABASE_URL": request.getfixturevalue("postgres_url")} if request.param == "postgres" else {}
    )
    registry = RegistryState.open(RegistrySettings.load(data_dir=tmp_path / "data", env=env))
    yield registry
    registry.close()


def lost_and_current(state: RegistryState, name: str) -> tuple[leases.Held, leases.Held]:
    """A lease as replica a held it, and as replica b took it over after it ran out."""
    old = leases.acquire(state.db, name, "a", 0.1)
    assert old is not None
    time.sleep(0.2)
    new = leases.acquire(state.db, name, "b", 30)
    assert new is not None and new.epoch == old.epoch + 1
    return old, new


def expired_nonce(state: RegistryState) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    with state.db.session() as session:
        session.add(AuthNonce(nonce="n1", address=None, created_at=past, expires_at=past))


def nonces(state: RegistryState) -> int:
    with state.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(AuthNonce)) or 0)


def test_gc_with_a_lost_lease_deletes_nothing(state: RegistryState) -> None:
    old, new = lost_and_current(state, "gc")
    expired_nonce(state)
    with pytest.raises(leases.LeaseLost, match="epoch 1 is no longer held by a"):
        collect_garbage(state, lease=old)
    assert nonces(state) == 1
    collect_garbage(state, lease=new)
    assert nonces(state) == 0


def test_the_market_sweep_with_a_lost_lease_is_refused(state: RegistryState) -> None:
    old, new = lost_and_current(state, "market")
    upkeep = MarketUpkeep(state)
    with pytest.raises(leases.LeaseLost):
        upkeep.sweep(old)
    assert upkeep.sweep(new) == 0


def test_rating_with_a_lost_lease_is_refused(state: RegistryState) -> None:
    old, new = lost_and_current(state, "billing")
    with pytest.raises(leases.LeaseLost):
        billing.rate_all(state.db, 0, lease=old)
    assert billing.rate_all(state.db, 0, lease=new).events == 0


def test_a_payout_batch_write_with_a_lost_lease_is_refused(state: RegistryState) -> None:
    old, new = lost_and_current(state, "settlement")
    with pytest.raises(leases.LeaseLost):
        payouts.build(state.db, 31337, "0x" + "11" * 20, 1, lease=old)
    assert payouts.build(state.db, 31337, "0x" + "11" * 20, 1, lease=new) is None  # nobody is owed
    with state.db.session() as session:
        assert session.scalar(select(func.count()).select_from(PayoutBatch)) == 0
