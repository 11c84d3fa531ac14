"""Three registry replicas on one PostgreSQL database and NATS, a real node: any replica serves
any request, and the mesh survives kill -9 of its leader and of the node's replica
(registry_server.mesh.cluster, docs/scaling.md).

The node reaches the replicas through a TCP forwarder (tests/lbutil.py), the load balancer of a
real deployment: when the test kills the node's replica it points the forwarder at another, and
the node's own reconnection does the rest; its agent process must be the same throughout (its
replica reconciled, not restarted). Each call's request body has a size of its own, so every
usage event names the call it metered: none may be missing or counted twice.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import LiveRegistry, isolate
from lbutil import Forwarder
from mcputil import INITIALIZE, mcp_headers, padded_call
from meshutil import AGENT, Mesh, until
from registryproc import RegistryProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(sys.platform != "linux", reason="needs /proc"),
]

AGENT_SERVER = '''"""An echo agent for the replica tests."""

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("acme/tiny", version="1.0.0")


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


if __name__ == "__main__":
    mcp.run()
'''

ENV = {
    "MCPZ_REGISTRY_HEARTBEAT_INTERVAL": "0.5",
    "MCPZ_REGISTRY_HEARTBEAT_GRACE": "4",
    "MCPZ_REGISTRY_RESYNC_INTERVAL": "1",
    "MCPZ_REGISTRY_USAGE_FLUSH_INTERVAL": "0.5",
}


def nats_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=1):
            return True
    except OSError:
        return False


def leader(database_url: str) -> str | None:
    """The replica holding lease `deployments` and not past its expiry, from the database."""
    from sqlalchemy import text

    from registry_server.db import Database

    db = Database(database_url)
    try:
        with db.session() as session:
            row = session.execute(
                text(
                    "SELECT holder FROM leases WHERE name = 'deployments' AND "
                    "expires_us > (extract(epoch from clock_timestamp()) * 1000000)::bigint"
                )
            ).first()
    finally:
        db.dispose()
    return None if row is None else str(row[0])


class Caller:
    """MCP calls through one replica's gateway; each request body one byte longer than the last."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.size = 0
        self.answered: set[int] = set()

    def session(self, url: str) -> str | None:
        try:
            response = httpx2.post(
                f"{url}/mcp/{AGENT}", json=INITIALIZE, headers=mcp_headers(self.token), timeout=30
            )
        except httpx2.HTTPError:
            return None
        # 200 without a session: a JSON-RPC error (no replica reachable yet), as in one process.
        return response.headers.get("mcp-session-id") if response.status_code == 200 else None

    def call(self, url: str, session: str) -> bool:
        body = padded_call("echo", {"text": "hi"}, self.size)
        self.size = len(body) + 1
        try:
            response = httpx2.post(
                f"{url}/mcp/{AGENT}", content=body, headers=mcp_headers(self.token, session), timeout=30
            )
        except httpx2.HTTPError:
            return False
        if response.status_code != 200 or "hi" not in response.text:
            return False
        self.answered.add(len(body))
        return True

    def calls_work(self, url: str, count: int = 3) -> bool:
        """A new session on `url` and `count` calls on it, all answered."""
        session = self.session(url)
        return session is not None and all(self.call(url, session) for _ in range(count))


def usage_sizes(database_url: str, data: Path, account: str) -> Counter[int]:
    """bytes_in of every usage event of `account`: in the database, and in the replicas' journals
    for those not flushed yet (a replica killed -9 leaves its journal for the next to replay)."""
    from sqlalchemy import text

    from registry_server.db import Database

    db = Database(database_url)
    try:
        with db.session() as session:
            account_id = session.execute(
                text("SELECT id FROM accounts WHERE name = :n"), {"n": account}
            ).scalar_one()
            rows = session.execute(
                text("SELECT id, bytes_in FROM usage_events WHERE account_id = :a"), {"a": account_id}
            ).all()
    finally:
        db.dispose()
    events = {str(r[0]): int(r[1]) for r in rows}
    for path in (data / "usage").rglob("journal*"):
        for line in path.read_bytes().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if isinstance(event, dict) and event.get("account_id") == account_id:
                events.setdefault(str(event["id"]), int(event["bytes_in"]))
    return Counter(events.values())


@pytest.fixture
def lb() -> Iterator[Forwarder]:
    forwarder = Forwarder(0)
    yield forwarder
    forwarder.close()


@pytest.fixture
def replicas(
    postgres_url: str, tmp_path: Path, lb: Forwarder, request: pytest.FixtureRequest
) -> Iterator[list[RegistryProcess]]:
    """Three replicas on one database and data folder, behind one public URL (the forwarder's,
    which points at replica 3): what deployments are signed for and nodes fetch from. A test
    marked `lease_ttl(seconds)` gives the leases that long."""
    if not nats_reachable():
        pytest.skip("NATS is not reachable at 127.0.0.1:4222: run nats-server -js")
    data = (tmp_path / "registry").resolve()
    data.mkdir()
    env = ENV | {"MCPZ_REGISTRY_PUBLIC_URL": lb.url}
    ttl = request.node.get_closest_marker("lease_ttl")
    if ttl is not None:
        env["MCPZ_REGISTRY_LEASE_TTL"] = str(ttl.args[0])
    procs = [
        RegistryProcess(data, tmp_path / f"r{i}.log", env=env, database=postgres_url, args=["--replica"])
        for i in (1, 2, 3)
    ]
    try:
        procs[0].start()  # first alone: it takes the lease, so replica 1 leads at first
        until(lambda: leader(postgres_url), 30, "a replica to lead the mesh")
        for proc in procs[1:]:
            proc.start()
        lb.target = procs[2].port
        yield procs
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                os.kill(proc.proc.pid, signal.SIGCONT)
            proc.stop()


@pytest.mark.timeout(600)
def test_any_replica_serves_and_the_mesh_survives_kill_9_of_the_leader_and_of_the_nodes_replica(
    replicas: list[RegistryProcess],
    lb: Forwarder,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "home").mkdir()
    isolate(monkeypatch, tmp_path / "home")
    r1, r2, r3 = replicas
    first_leader = leader(postgres_url)
    assert first_leader is not None and first_leader.endswith(f"-{r1.port}")
    mesh = Mesh(tmp_path, LiveRegistry(r1.url, r1.data_dir, postgres_url, r1))
    try:
        mesh.write_agent(AGENT_SERVER)
        mesh.publish("1.0.0")
        node = mesh.node("node-0", url=lb.url)  # on replica 3, through the "load balancer"
        mesh.connected(1)
        mesh.deploy("1.0.0", replicas=1)  # through replica 1
        mesh.settled(1, "1.0.0", timeout=90)
        pids = node.agents()
        assert len(pids) == 1

        account = f"caller-{secrets.token_hex(3)}"
        caller = Caller(mesh.reg.account(account, "read,call"))
        # Calls through replica 2 (which leads nothing) to the node on replica 3.
        assert caller.calls_work(r2.url, 5), r2.tail()
        assert caller.calls_work(r3.url, 2), r3.tail()  # and through the node's own replica
        assert caller.calls_work(r1.url, 2), r1.tail()  # and the leader's

        # kill -9 the leader: another replica takes the lease, calls through replica 2 work again.
        r1.kill()
        until(lambda: (holder := leader(postgres_url)) and holder != first_leader, 30, "a new leader")
        mesh.reg = LiveRegistry(r2.url, r2.data_dir, postgres_url, r2)
        until(lambda: caller.calls_work(r2.url), 60, f"calls through replica 2, leader dead: {r2.tail()}")
        assert node.agents() == pids, "the agent was restarted after the leader changed"

        # kill -9 the node's replica: the load balancer sends the node to replica 2 instead.
        r3.kill()
        lb.target = r2.port
        until(lambda: caller.calls_work(r2.url), 60, f"calls after the node's replica died: {node.tail()}")
        assert node.agents() == pids, "the agent was restarted after its node moved to another replica"
        mesh.settled(1, "1.0.0")

        # Every answered call metered once, nothing metered twice (journals of killed replicas
        # included: replaying them is the usage recorder's at their next start).
        def metered() -> Counter[int] | None:
            sizes = usage_sizes(postgres_url, r1.data_dir, account)
            return sizes if set(sizes) >= caller.answered else None

        sizes = until(metered, 30, f"an event for each of {len(caller.answered)} answered calls")
        assert not [size for size, n in sizes.items() if n > 1], "a call was metered twice"
    finally:
        mesh.close()


@pytest.mark.timeout(300)
@pytest.mark.lease_ttl(60)  # the paused leader keeps its lease: nothing moves while it sleeps
def test_gateway_calls_go_from_replica_to_replica_without_the_leader(
    replicas: list[RegistryProcess],
    lb: Forwarder,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call arriving at replica 2 for the node on replica 3 goes 2 -> NATS -> 3 -> node, and
    one arriving at replica 3 straight to its socket: both work while the leader (replica 1) is
    paused with SIGSTOP. A session belongs to the replica that opened it: its requests through
    another replica are answered there."""
    (tmp_path / "home").mkdir()
    isolate(monkeypatch, tmp_path / "home")
    r1, r2, r3 = replicas
    mesh = Mesh(tmp_path, LiveRegistry(r1.url, r1.data_dir, postgres_url, r1))
    try:
        mesh.write_agent(AGENT_SERVER)
        mesh.publish("1.0.0")
        mesh.node("node-0", url=lb.url)  # on replica 3
        mesh.connected(1)
        mesh.deploy("1.0.0", replicas=1)
        mesh.settled(1, "1.0.0", timeout=90)
        caller = Caller(mesh.reg.account(f"caller-{secrets.token_hex(3)}", "read,call"))
        # Each replica has the leader's placements before the leader stops.
        until(lambda: caller.calls_work(r2.url, 1) and caller.calls_work(r3.url, 1), 30, "calls")
        before = set(caller.answered)

        os.kill(r1.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            assert (leader(postgres_url) or "").endswith(f"-{r1.port}")  # it still leads, asleep
            on_r2 = caller.session(r2.url)
            assert on_r2 is not None, r2.tail()
            assert all(caller.call(r2.url, on_r2) for _ in range(5)), r2.tail()  # 2 -> 3 -> node
            on_r3 = caller.session(r3.url)
            assert on_r3 is not None, r3.tail()
            assert all(caller.call(r3.url, on_r3) for _ in range(3)), r3.tail()  # 3 -> node
            assert caller.call(r3.url, on_r2), r3.tail()  # replica 2's session, through replica 3
            assert caller.call(r2.url, on_r3), r2.tail()
        finally:
            os.kill(r1.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        assert len(caller.answered - before) == 10
    finally:
        mesh.close()


def test_a_replica_without_a_leader_answers_503_not_a_hang(
    replicas: list[RegistryProcess], postgres_url: str
) -> None:
    """While no replica leads (between a leader's death and its lease's expiry), a relayed
    request is refused at once with 503 and Retry-After, never left waiting."""
    r1, r2, _ = replicas
    os.kill(r1.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        response = httpx2.get(f"{r2.url}/v1/nodes", timeout=30)
        assert response.status_code in (401, 503), response.text
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
    finally:
        os.kill(r1.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]


def haproxy_config(port: int, backends: list[int]) -> str:
    """The HAProxy configuration of docs/scaling.md, on `port`, in front of `backends`."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "scaling.md").read_text()
    found = re.search(r"```\n(defaults\n.*?)```", text, re.S)
    assert found, "docs/scaling.md has no HAProxy configuration"
    config = found.group(1).replace("bind :8080", f"bind 127.0.0.1:{port}")
    for i, backend in enumerate(backends, 1):
        config = config.replace(f"127.0.0.1:808{i}", f"127.0.0.1:{backend}")
    return config


def healthy(url: str) -> bool:
    """`url` answers its health check (False while nothing listens there yet)."""
    try:
        return httpx2.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx2.TransportError:
        return False


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (apt install haproxy)")
def test_the_haproxy_example_of_the_docs_serves_the_replicas_and_drops_a_dead_one(
    replicas: list[RegistryProcess], postgres_url: str, tmp_path: Path
) -> None:
    from registry_server.serve import free_port

    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(port, [r.port for r in replicas]))
    log = (tmp_path / "haproxy.log").open("wb")
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    mesh = Mesh(tmp_path, LiveRegistry(url, replicas[0].data_dir, postgres_url, replicas[0]))
    try:
        until(lambda: healthy(url), 30, "haproxy to serve")
        mesh.node("node-0", url=url)  # a WebSocket through the balancer
        mesh.connected(1)  # /v1/nodes through the balancer, relayed to the leader
        replicas[1].kill()
        # The dead replica leaves the rotation: every request answered again.
        until(
            lambda: all(healthy(url) for _ in range(6)),
            30,
            "haproxy to drop the dead replica",
        )
        mesh.connected(1)
    finally:
        mesh.close()
        proxy.terminate()
        proxy.wait(timeout=10)
        log.close()


def mesh_rows(database_url: str) -> list[Any]:
    """What the mesh leader writes: deployments, replicas, the epoch counter."""
    from sqlalchemy import text

    from registry_server.db import Database

    db = Database(database_url)
    try:
        with db.session() as session:
            return [
                session.execute(text(f"SELECT * FROM {table} ORDER BY 1")).all()
                for table in ("deployments", "replicas", "mesh_counters")
            ]
    finally:
        db.dispose()


@pytest.mark.timeout(600)
def test_a_mesh_leader_paused_past_its_lease_and_resumed_writes_nothing_and_follows(
    replicas: list[RegistryProcess], lb: Forwarder, postgres_url: str, tmp_path: Path
) -> None:
    r1, r2, _ = replicas
    mesh = Mesh(tmp_path, LiveRegistry(r2.url, r2.data_dir, postgres_url, r2))
    try:
        mesh.write_agent(AGENT_SERVER)
        mesh.publish("1.0.0")
        node = mesh.node("node-0", url=lb.url)
        mesh.connected(1)
        mesh.deploy("1.0.0", replicas=1)
        mesh.settled(1, "1.0.0", timeout=90)
        pids = node.agents()
        paused_leader = leader(postgres_url)
        assert paused_leader is not None and paused_leader.endswith(f"-{r1.port}")

        os.kill(r1.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            until(lambda: (h := leader(postgres_url)) and h != paused_leader, 30, "another leader")
            mesh.deploy("1.0.0", replicas=2)  # the new leader writes
            mesh.settled(2, "1.0.0", timeout=90)
            before = mesh_rows(postgres_url)
        finally:
            os.kill(r1.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        until(lambda: "no longer leading the mesh" in r1.tail(), 30, f"replica 1 to step down: {r1.tail()}")
        assert mesh_rows(postgres_url) == before, "the former leader wrote after it resumed"
        mesh.settled(2, "1.0.0")
        assert set(pids) <= set(node.agents()), "the first replica's agent was restarted"
        caller = Caller(mesh.reg.account(f"caller-{secrets.token_hex(3)}", "read,call"))
        assert caller.calls_work(r1.url), r1.tail()  # the former leader relays now
    finally:
        mesh.close()


def test_a_replica_without_nats_refuses_to_start_in_one_line(postgres_url: str, tmp_path: Path) -> None:
    from registry_server.serve import free_port

    closed = free_port()  # nothing listens there
    env = dict(os.environ) | {
        "MCPZ_DATABASE_URL": postgres_url,
        "MCPZ_NATS_URL": f"nats://127.0.0.1:{closed}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "mcpz", "registry", "serve", "--replica", "--data", str(tmp_path / "d"),
         "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: cannot reach NATS at nats://127.0.0.1:{closed}: Connection refused "
        "(start nats-server, or point MCPZ_NATS_URL at one (docs/scaling.md))"
    ]
