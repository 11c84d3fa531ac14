"""A node given two replicas of one registry (`mcpz node run --registry A --registry B`) moves to B
when A is killed (-9), and the agent it runs keeps running: same process, not restarted. Two
`mcpz registry serve --replica` processes on one PostgreSQL and one data folder, a real node."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import LiveRegistry
from meshutil import Mesh, until
from registryproc import RegistryProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(sys.platform != "linux", reason="finds agent processes in /proc"),
]

ENV = {
    "MCPZ_REGISTRY_REPLICA": "true",
    "MCPZ_REGISTRY_HEARTBEAT_INTERVAL": "0.3",
    "MCPZ_REGISTRY_HEARTBEAT_GRACE": "2",
    "MCPZ_REGISTRY_RESYNC_INTERVAL": "1",
    "MCPZ_REGISTRY_LEASE_TTL": "2",
}


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    """Replicas a and b of one registry, not started; b's port is known before it starts."""
    from registry_server.serve import free_port

    data = tmp_path / "data"
    a, b = (
        RegistryProcess(
            data,
            tmp_path / f"{name}.log",
            port=port,
            env=ENV | {"MCPZ_REGISTRY_REPLICA_NAME": name},
            database=postgres_url,
        )
        for name, port in (("a", 0), ("b", free_port()))
    )
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def nodes_on(registry: RegistryProcess, token: str) -> list[dict[str, Any]]:
    with httpx2.Client(
        base_url=registry.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as http:
        response = http.get("/v1/nodes")
        if response.status_code == 503:  # between leaders: b takes the mesh once a's lease ran out
            return []
        assert response.status_code == 200, response.text
        return [n for n in response.json() if n["connected"]]  # type: ignore[no-any-return]


def test_a_node_moves_to_the_next_replica_and_keeps_its_agent_running(
    tmp_path: Path, postgres_url: str, replicas: tuple[RegistryProcess, RegistryProcess]
) -> None:
    a, b = replicas
    a.start()
    mesh = Mesh(tmp_path, LiveRegistry(a.url, a.data_dir, postgres_url, a))
    try:
        mesh.publish("1.0.0")
        node = mesh.node("node-0", "--registry", b.url)  # a first, then b
        mesh.connected(1)
        mesh.deploy("1.0.0", replicas=1)
        mesh.settled(1, "1.0.0")
        # b starts after the deploy: its deployments' mirror, read from the database at its start,
        # knows the replica (a replica started before learns of it through the other replicas'
        # messages, registry_server.mesh, not through this test).
        b.start()
        before = node.agents()
        assert len(before) == 1
        a.kill()
        until(lambda: nodes_on(b, mesh.token), 60, f"the node to connect to b; node log:\n{node.tail()}")
        assert "next registry" in node.log.read_text()

        def reconciled_on_b() -> bool:
            with httpx2.Client(base_url=b.url, headers={"Authorization": f"Bearer {mesh.token}"}) as http:
                response = http.get("/v1/deployments/acme/tiny", timeout=10)
            if response.status_code == 503:
                return False
            view = response.json()
            live = [i for i in view["instances"] if not i["stopping"]]
            return view["state"] == "ready" and [i["status"] for i in live] == ["running"]

        until(reconciled_on_b, 60, "b to see the replica running")
        # Still the same agent process: the node's hello told b what it runs.
        assert node.proc.poll() is None
        assert node.agents() == before
    finally:
        mesh.close()
