"""Sign-in nonces are rate-limited per client address, and expired ones do not pile up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from conftest import LiveRegistry, start_registry
from sqlalchemy import func, select

from registry_server.accounts.models import AuthNonce
from registry_server.db import Database
from registry_server.rate_limit import RateLimiter


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[LiveRegistry]:
    live = start_registry(tmp_path / "registry", nonce_rate_limit=3, nonce_rate_window=60.0)
    yield live
    live.stop()


def _client(reg: LiveRegistry, source: str = "127.0.0.1") -> httpx2.Client:
    # Another loopback source address is another client address to the registry.
    transport = httpx2.HTTPTransport(local_address=source)
    return httpx2.Client(base_url=reg.url, transport=transport, timeout=10)


def test_nonces_are_rate_limited_per_client_address(limited: LiveRegistry) -> None:
    with _client(limited) as one, _client(limited, "127.0.0.2") as other:
        for _ in range(3):
            assert one.post("/v1/auth/nonce").status_code == 200
        refused = one.post("/v1/auth/nonce")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 20  # one token per 20 s
        error = refused.json()["error"]
        assert "too many" in error["message"] and error["request_id"]
        # Another address has its own budget, and the registry serves everything else as before.
        assert other.post("/v1/auth/nonce").status_code == 200
        assert one.get("/healthz").status_code == 200


def test_expired_nonces_are_removed_when_one_is_issued(limited: LiveRegistry) -> None:
    db = Database(limited.database_url)
    try:
        past = datetime.now(UTC) - timedelta(minutes=1)
        with db.session() as session:
            for i in range(50):
                session.add(AuthNonce(nonce=f"stale{i:04d}", address=None, created_at=past, expires_at=past))
        with _client(limited) as client:
            fresh = client.post("/v1/auth/nonce").json()["nonce"]
        with db.session() as session:
            left = session.scalars(select(AuthNonce.nonce)).all()
            assert left == [fresh]
            assert session.scalar(select(func.count()).select_from(AuthNonce)) == 1
    finally:
        db.dispose()


def test_the_limiter_refills_over_its_window_and_bounds_its_keys() -> None:
    limiter = RateLimiter(2, 10.0, max_keys=3)
    assert limiter.hit("a", 0.0) == 0.0
    assert limiter.hit("a", 0.0) == 0.0
    assert limiter.hit("a", 0.0) == pytest.approx(5.0)
    assert limiter.hit("a", 4.0) == pytest.approx(1.0)  # refused hits take nothing
    assert limiter.hit("a", 5.0) == 0.0
    for key in "bcde":
        limiter.hit(key, 5.0)
    assert len(limiter) == 3
    assert limiter.hit("a", 5.0) == 0.0  # forgotten, so a full bucket again
