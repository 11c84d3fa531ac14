"""The gateway's token cache: one database check per token per TTL, however many requests wait."""

from __future__ import annotations

import asyncio

from conftest import LiveRegistry

from registry_server.gateway.asgi import TokenCache


def test_concurrent_requests_with_one_uncached_token_share_one_database_check(
    sqlite_registry: LiveRegistry,
) -> None:
    # Under overload, 200 sessions of one token found its cache entry expired at the same moment
    # and each ran its own check in a worker thread: 40 threads busy on the same query every TTL,
    # and the registry's resident memory grew with every round (bench/bench_gateway.py).
    token = sqlite_registry.account("tokens")
    app = sqlite_registry._handle.server.config.app  # type: ignore[attr-defined]
    cache = TokenCache(app.state.registry)
    headers = {"authorization": f"Bearer {token}"}

    async def many() -> list[object]:
        return list(await asyncio.gather(*(cache.principal(headers) for _ in range(50))))

    for _ in range(2):  # a cold cache, then an expired entry
        cache._cache.clear()
        principals = asyncio.run(many())
        assert all(p is not None and p == principals[0] for p in principals)
    assert cache.checks == 2
    assert not cache._checking  # nothing left waiting once the check is done


def test_a_bad_token_is_refused_to_every_request_that_shared_its_check(sqlite_registry: LiveRegistry) -> None:
    app = sqlite_registry._handle.server.config.app  # type: ignore[attr-defined]
    cache = TokenCache(app.state.registry)
    headers = {"authorization": "Bearer mcpz_not_a_token"}

    async def many() -> list[object]:
        return list(
            await asyncio.gather(*(cache.principal(headers) for _ in range(20)), return_exceptions=True)
        )

    answers = asyncio.run(many())
    assert len(answers) == 20
    assert all(a is None or isinstance(a, Exception) for a in answers)
    assert len({type(a) for a in answers}) == 1
    assert not cache._checking
