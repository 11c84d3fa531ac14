"""The replicas' NATS connection (registry_server.bus): registries sharing one NATS server never
hear each other, and the replicas sharing a data folder agree on their cluster id."""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from registry_server.bus import Bus, cluster_id

NATS = "nats://127.0.0.1:4222"


def nats_reachable() -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", 4222)) == 0


def test_replicas_of_one_data_folder_agree_on_one_cluster_id(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: cluster_id(tmp_path / "data"), range(16)))
    assert len(ids) == 1
    assert ids == {cluster_id(tmp_path / "data")}
    assert cluster_id(tmp_path / "other") not in ids
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cluster-id"]  # no temporary left


@pytest.mark.skipif(not nats_reachable(), reason="NATS is not running on 127.0.0.1:4222")
def test_two_registries_on_one_nats_server_never_hear_each_other(tmp_path: Path) -> None:
    async def scenario() -> None:
        ours = cluster_id(tmp_path / "ours")
        a = await Bus.connect(NATS, "a", ours)
        b = await Bus.connect(NATS, "b", ours)
        stranger = await Bus.connect(NATS, "x", cluster_id(tmp_path / "theirs"))
        heard: dict[str, list[bytes]] = {"b": [], "stranger": []}

        async def on_b(msg: object) -> None:
            heard["b"].append(msg.data)  # type: ignore[attr-defined]

        async def on_stranger(msg: object) -> None:
            heard["stranger"].append(msg.data)  # type: ignore[attr-defined]

        try:
            await b.subscribe("mcpz.lead.http", on_b)
            await stranger.subscribe("mcpz.lead.http", on_stranger)
            await a.publish("mcpz.lead.http", b"for our leader")
            await a.client.flush()
            for _ in range(100):
                if heard["b"]:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # time for a stray delivery to arrive, were there one
            assert heard == {"b": [b"for our leader"], "stranger": []}
            assert a.scoped("mcpz.ws.1.up") == f"mcpz.{ours}.ws.1.up"
            assert a.scoped(a.scoped("mcpz.ws.1.up")) == a.scoped("mcpz.ws.1.up")
            assert a.scoped("_INBOX.abc") == "_INBOX.abc"
        finally:
            for bus in (a, b, stranger):
                await bus.close()

    asyncio.run(scenario())
