"""The mesh hub and the deployment API against a live registry, driven by simulated nodes.

`SimNode` is a tiny node written with the protocol module and a real WebSocket client: hello,
heartbeats, acks, and (when `auto`) the statuses of a replica that starts at once. Everything
else is real: the registry in a thread on loopback, its database, its git repositories. Waits
are bounded conditions, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx2
import pytest
from conftest import LiveRegistry, start_registry
from gitutil import git, init_agent, set_version
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from mcpz.mesh import (
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_HELLO_TIMEOUT,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    MAX_FRAME_SIZE,
    Ack,
    Deploy,
    Error,
    Frame,
    Heartbeat,
    Hello,
    Log,
    LogStream,
    ReplicaReport,
    ReplicaStatus,
    Status,
    Stop,
    Welcome,
    decode,
    encode,
)

T = TypeVar("T")
AGENT = "acme/echo"
# A grace of 15 heartbeats: a loaded 2-core CI machine must not lose nodes that are alive.
FAST = {"heartbeat_interval": 0.2, "heartbeat_grace": 3.0, "resync_interval": 1.0, "hello_timeout": 1.0}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- a simulated node ------------------------------------------------------------------------------


@dataclass
class Held:
    deployment: str
    epoch: int
    commit: str
    version: str
    status: ReplicaStatus


@dataclass
class Cluster:
    """What the simulated nodes run, across all of them, with the extremes seen."""

    nodes: list[SimNode] = field(default_factory=list)
    most: int = 0
    least_after: int | None = None  # fewest running once `watch_from` was set
    watch_from: bool = False

    def running(self) -> int:
        return sum(1 for n in self.nodes for h in n.held.values() if h.status is ReplicaStatus.RUNNING)

    def copies(self) -> int:
        return sum(len(n.held) for n in self.nodes)

    def changed(self) -> None:
        self.most = max(self.most, self.copies())
        if self.watch_from:
            running = self.running()
            self.least_after = running if self.least_after is None else min(self.least_after, running)


class SimNode:
    def __init__(
        self,
        name: str,
        token: str,
        *,
        capacity: int = 4,
        labels: dict[str, str] | None = None,
        auto: bool = True,
        cluster: Cluster | None = None,
    ) -> None:
        self.name = name
        self.token = token
        self.capacity = capacity
        self.labels = labels or {}
        self.auto = auto
        self.cluster = cluster
        if cluster is not None:
            cluster.nodes.append(self)
        self.node_id: str | None = None
        self.held: dict[str, Held] = {}
        self.frames: list[Frame] = []
        self.beating = True
        self.closed_code: int | None = None
        self.ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._send_lock = asyncio.Lock()

    async def connect(self, url: str) -> Welcome:
        self.closed_code = None
        self.ws = await open_ws(url, self.token)
        await self.send(
            Hello(
                id=0,
                node_name=self.name,
                node_id=self.node_id,
                labels=self.labels,
                capacity=self.capacity,
                replicas=self.reports(),
                software_version="0.0.0",
            )
        )
        welcome = decode(await self.ws.recv())
        assert isinstance(welcome, Welcome), welcome
        self.node_id = welcome.node_id
        self._tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._beat(welcome.heartbeat_interval)),
        ]
        return welcome

    def reports(self) -> tuple[ReplicaReport, ...]:
        return tuple(
            ReplicaReport(
                deployment=h.deployment, replica_id=r, epoch=h.epoch, commit=h.commit, status=h.status
            )
            for r, h in sorted(self.held.items())
        )

    async def send(self, frame: Frame) -> None:
        assert self.ws is not None
        frame = dataclasses.replace(frame, id=next(self._ids))
        async with self._send_lock:
            await self.ws.send(encode(frame))

    async def _beat(self, interval: float) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                if self.beating:
                    await self.send(
                        Heartbeat(
                            id=0,
                            cpu_percent=1.5,
                            memory_used=1 << 30,
                            memory_total=4 << 30,
                            load=0.1,
                            replicas=self.reports(),
                        )
                    )
        except ConnectionClosed:
            pass

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                frame = decode(data)
                self.frames.append(frame)
                if isinstance(frame, Deploy):
                    await self._deploy(frame)
                elif isinstance(frame, Stop):
                    await self._stop(frame)
        except ConnectionClosed as e:
            self.closed_code = e.rcvd.code if e.rcvd else 1006
        finally:
            if self.closed_code is None:
                self.closed_code = self.ws.close_code or 1006

    async def _deploy(self, frame: Deploy) -> None:
        held = self.held.get(frame.replica_id)
        if held is not None and held.epoch > frame.epoch:
            await self.send(Error(id=0, code="stale-epoch", message="older epoch", ref=frame.id))
            return
        await self.send(Ack(id=0, ref=frame.id))
        if held is not None and held.epoch == frame.epoch:
            return
        self.held[frame.replica_id] = Held(
            frame.deployment, frame.epoch, frame.commit, frame.version, ReplicaStatus.PENDING
        )
        self._changed()
        if self.auto:
            for status in (ReplicaStatus.PULLING, ReplicaStatus.STARTING, ReplicaStatus.RUNNING):
                await self.set_status(frame.replica_id, status)

    async def _stop(self, frame: Stop) -> None:
        await self.send(Ack(id=0, ref=frame.id))
        held = self.held.get(frame.replica_id)
        if held is not None and held.epoch <= frame.epoch:
            del self.held[frame.replica_id]
            self._changed()
            await self.send(
                Status(id=0, replica_id=frame.replica_id, epoch=held.epoch, status=ReplicaStatus.STOPPED)
            )

    async def set_status(self, replica_id: str, status: ReplicaStatus, epoch: int | None = None) -> None:
        held = self.held[replica_id]
        held.status = status
        self._changed()
        await self.send(Status(id=0, replica_id=replica_id, epoch=epoch or held.epoch, status=status))

    async def log(self, replica_id: str, *lines: str, epoch: int | None = None) -> None:
        epoch = epoch or self.held[replica_id].epoch
        await self.send(
            Log(
                id=0,
                replica_id=replica_id,
                epoch=epoch,
                stream=LogStream.STDERR,
                lines=lines,
                timestamp=time.time(),
            )
        )

    def _changed(self) -> None:
        if self.cluster is not None:
            self.cluster.changed()

    def received(self, kind: type[T]) -> list[T]:
        return [f for f in self.frames if isinstance(f, kind)]

    async def drop(self) -> None:
        """Lose the connection abruptly (no close frame), as a network failure would."""
        assert self.ws is not None
        self.ws.transport.abort()
        await until(lambda: self.closed_code is not None)
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            await self.ws.close()
        for task in self._tasks:
            with _suppress_cancel():
                await task


class _suppress_cancel:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *rest: object) -> bool:
        return kind is asyncio.CancelledError


async def open_ws(url: str, token: str | None, **kw: Any) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await connect(
        url.replace("http://", "ws://") + "/v1/mesh",
        additional_headers=headers,
        max_size=MAX_FRAME_SIZE * 2,
        proxy=None,
        open_timeout=5,
        **kw,
    )


async def until(predicate: Callable[[], bool], timeout: float = 8.0, what: str = "condition") -> None:
    """Wait for `predicate` (polled), at most `timeout` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def until_api(
    client: httpx2.AsyncClient, path: str, predicate: Callable[[Any], bool], timeout: float = 8.0
) -> Any:
    """GET `path` until `predicate(json)` holds; return that json."""
    with anyio.fail_after(timeout):
        while True:
            response = await client.get(path)
            if response.status_code == 200 and predicate(response.json()):
                return response.json()
            await asyncio.sleep(0.02)


# --- the registry ----------------------------------------------------------------------------------


@dataclass
class Mesh:
    reg: LiveRegistry
    token: str  # acme: every scope
    commits: dict[str, str]
    data_dir: Path
    database_url: str | None

    def client(self, token: str | None = None) -> httpx2.AsyncClient:
        secret = self.token if token is None else token
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx2.AsyncClient(base_url=self.reg.url, headers=headers, timeout=30)


def publish(
    reg: LiveRegistry, token: str, folder: Path, name: str, versions: tuple[str, ...]
) -> dict[str, str]:
    commits = {}
    for version in versions:
        if (folder / ".git").exists():
            commits[version] = set_version(folder, version, name)
        else:
            commits[version] = init_agent(folder, name, version)
        git("tag", f"v{version}", cwd=folder)
        git("push", "-q", reg.git_url(name, token), "main", f"v{version}", cwd=folder)
    return commits


def _mesh(tmp_path: Path, database_url: str | None = None, **settings: Any) -> Iterator[Mesh]:
    reg = start_registry(tmp_path / "registry", database_url, **{**FAST, **settings})
    try:
        token = reg.account("acme", "read,publish,deploy,call,node,admin")
        commits = publish(reg, token, tmp_path / "echo", AGENT, ("1.0.0", "2.0.0"))
        yield Mesh(reg, token, commits, tmp_path / "registry", database_url)
    finally:
        reg.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield from _mesh(tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mesh]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    yield from _mesh(tmp_path, url, heartbeat_grace=3.0)


@pytest.fixture
async def nodes(mesh: Mesh) -> AsyncIterator[Callable[..., Awaitable[SimNode]]]:
    """Connect simulated nodes to the mesh's registry; all closed at the end."""
    started: list[SimNode] = []

    async def start(name: str, **kw: Any) -> SimNode:
        node = SimNode(name, mesh.token, **kw)
        await node.connect(mesh.reg.url)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.close()


def by_status(view: dict[str, Any], status: str) -> list[dict[str, Any]]:
    return [r for r in view["instances"] if r["status"] == status and not r["stopping"]]


# --- hello, welcome, nodes ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_hello_welcome_and_the_node_keeps_its_id(mesh: Mesh) -> None:
    node = SimNode("worker 1", mesh.token, capacity=3, labels={"zone": "eu"})
    welcome = await node.connect(mesh.reg.url)
    assert welcome.node_id.startswith("worker-1-")
    assert (welcome.heartbeat_interval, welcome.grace) == (0.2, 3.0)
    assert abs(welcome.server_time - time.time()) < 5
    async with mesh.client() as client:
        [view] = await until_api(client, "/v1/nodes", lambda ns: ns and ns[0]["cpu_percent"] == 1.5)
        assert view["id"] == welcome.node_id
        assert (view["name"], view["state"], view["connected"]) == ("worker 1", "ready", True)
        assert (view["labels"], view["capacity"], view["replicas"]) == ({"zone": "eu"}, 3, 0)
        await node.drop()
        again = await node.connect(mesh.reg.url)  # the hello carries the id it was given
        assert again.node_id == welcome.node_id
        views = await until_api(client, "/v1/nodes", lambda ns: ns[0]["connected"])
        assert len(views) == 1
    await node.close()


@pytest.mark.anyio
async def test_a_second_connection_with_the_same_node_id_replaces_the_first(mesh: Mesh) -> None:
    first = SimNode("twin", mesh.token)
    await first.connect(mesh.reg.url)
    second = SimNode("twin", mesh.token)
    second.node_id = first.node_id
    await second.connect(mesh.reg.url)
    await until(lambda: first.closed_code is not None)
    assert first.closed_code == 4000
    assert second.closed_code is None
    await first.close()
    await second.close()


# --- refusals: auth, bad frames -------------------------------------------------------------------


@pytest.mark.anyio
async def test_node_connections_need_a_token_with_the_node_scope(mesh: Mesh) -> None:
    with pytest.raises(InvalidStatus) as no_token:
        await open_ws(mesh.reg.url, None)
    assert no_token.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as bad_token:
        await open_ws(mesh.reg.url, "mcpz_not-a-token")
    assert bad_token.value.response.status_code == 401
    deployer = mesh.reg.account("acme", "read,deploy")
    with pytest.raises(InvalidStatus) as no_scope:
        await open_ws(mesh.reg.url, deployer)
    assert no_scope.value.response.status_code == 403
    assert b"node" in no_scope.value.response.body


async def _closed_with(mesh: Mesh, payloads: list[bytes | str]) -> tuple[int, str]:
    ws = await open_ws(mesh.reg.url, mesh.token)
    try:
        for payload in payloads:
            await ws.send(payload)
        with anyio.fail_after(5):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""


def _hello(name: str = "bad") -> bytes:
    return encode(Hello(id=1, node_name=name, capacity=1, software_version="0"))


@pytest.mark.anyio
async def test_bad_frames_close_that_connection_with_the_right_code_and_the_hub_serves_on(
    mesh: Mesh, nodes: Callable[..., Awaitable[SimNode]]
) -> None:
    good = await nodes("good")
    import msgpack

    cases: list[tuple[list[bytes | str], int]] = [
        ([b"\xc1 not msgpack"], CLOSE_PROTOCOL_ERROR),
        (["a text message"], CLOSE_UNSUPPORTED),
        ([msgpack.packb({"v": 1, "type": "teleport", "id": 1})], CLOSE_UNSUPPORTED),
        ([msgpack.packb({"v": 2, "type": "hello", "id": 1})], CLOSE_UNSUPPORTED),
        ([msgpack.packb({"v": 1, "type": "hello", "id": 1, "capacity": "many"})], CLOSE_PROTOCOL_ERROR),
        ([b"\x00" * (MAX_FRAME_SIZE + 1)], CLOSE_TOO_BIG),
        # Legal frames in the wrong phase: a heartbeat before hello, a second hello.
        (
            [encode(Heartbeat(id=1, cpu_percent=0, memory_used=0, memory_total=0, load=0))],
            CLOSE_PROTOCOL_ERROR,
        ),
        ([_hello(), _hello()], CLOSE_PROTOCOL_ERROR),
        ([_hello(), encode(Welcome(id=2, node_id="x", heartbeat_interval=1, grace=1, server_time=1))], 1002),
    ]
    for payloads, code in cases:
        closed, reason = await _closed_with(mesh, payloads)
        assert closed == code, (payloads[-1][:40], reason)
        assert reason  # every close says why
    # Silence after the upgrade: closed when the hello timeout (1 s here) passes.
    assert (await _closed_with(mesh, []))[0] == CLOSE_HELLO_TIMEOUT
    # The well-behaved node was never disturbed: still connected and served.
    assert good.closed_code is None
    async with mesh.client() as client:
        created = await client.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0"})
        assert created.status_code == 201, created.text
        await until_api(client, f"/v1/deployments/{AGENT}", lambda v: v["state"] == "ready")
    assert [d.replica_id for d in good.received(Deploy)] == [created.json()["instances"][0]["id"]]


@pytest.mark.anyio
async def test_a_node_that_stops_reading_is_cut_off_and_the_others_are_served(
    mesh: Mesh, nodes: Callable[..., Awaitable[SimNode]]
) -> None:
    # A release whose deploy frames are about 3 MB each (a large [run].env).
    env = "".join(f'E{i} = "{"x" * 30_000}"\n' for i in range(100))
    manifest = '[agent]\nname = "acme/big"\nversion = "1.0.0"\n\n[run]\ncommand = ["python", "server.py"]\n'
    folder = mesh.data_dir.parent / "big"
    init_agent(folder, "acme/big", "1.0.0", files={"mcpz.toml": f"{manifest}\n[run.env]\n{env}"})
    git("tag", "v1.0.0", cwd=folder)
    git("push", "-q", mesh.reg.git_url("acme/big", mesh.token), "main", "v1.0.0", cwd=folder)

    # The slow node says hello, beats, and never reads again.
    slow = await open_ws(mesh.reg.url, mesh.token, max_queue=1)
    await slow.send(encode(Hello(id=1, node_name="slow", capacity=8, software_version="0")))
    welcome = decode(await slow.recv())
    assert isinstance(welcome, Welcome)

    async def beat() -> None:
        from websockets.exceptions import ConnectionClosed

        for i in itertools.count(2):
            try:
                await slow.send(encode(Heartbeat(id=i, cpu_percent=0, memory_used=0, memory_total=0, load=0)))
            except ConnectionClosed:
                return  # the hub cut it off: what this test expects
            await asyncio.sleep(0.2)

    beating = asyncio.create_task(beat())
    try:
        async with mesh.client() as client:
            created = await client.post("/v1/deployments", json={"agent": "acme/big", "replicas": 8})
            assert created.status_code == 201, created.text
            views = await until_api(client, "/v1/nodes", lambda ns: not ns[0]["connected"], timeout=20)
            assert (views[0]["name"], views[0]["state"]) == ("slow", "ready")  # cut off, not lost
            hub = mesh.reg._handle.server.config.app.state.mesh  # type: ignore[attr-defined]
            assert hub.stats.overflows == 1
            # The hub serves the others all along.
            fast = await nodes("fast")
            await client.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0"})
            await until(lambda: len(fast.received(Deploy)) == 1)
    finally:
        beating.cancel()
        with _suppress_cancel():
            await beating
        await slow.close()


# --- the deployment API ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_deployment_routes_need_tokens_with_the_right_scope(mesh: Mesh) -> None:
    reader = mesh.reg.account("acme", "read")
    outsider = mesh.reg.account("other", "read,deploy")
    async with mesh.client() as owner:
        assert (await owner.post("/v1/deployments", json={"agent": AGENT, "replicas": 0})).status_code == 201
    mutations = [
        ("POST", "/v1/deployments", {"agent": AGENT, "replicas": 1}),
        ("POST", f"/v1/deployments/{AGENT}/scale", {"replicas": 2}),
        ("POST", f"/v1/deployments/{AGENT}/rollback", {}),
        ("DELETE", f"/v1/deployments/{AGENT}", None),
    ]
    reads = ["/v1/deployments", f"/v1/deployments/{AGENT}", f"/v1/deployments/{AGENT}/logs", "/v1/nodes"]
    async with mesh.client("") as anonymous, mesh.client(reader) as read_only, mesh.client(outsider) as other:
        for method, path, body in mutations:
            response = await anonymous.request(method, path, json=body)
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"].startswith("Bearer")
            response = await read_only.request(method, path, json=body)
            assert response.status_code == 403, (method, path)
            assert "deploy" in response.json()["error"]["message"]
            assert (await other.request(method, path, json=body)).status_code == 403
        for path in reads:
            assert (await anonymous.get(path)).status_code == 401, path
            assert (await read_only.get(path)).status_code == 200, path
        assert (await other.get(f"/v1/deployments/{AGENT}")).status_code == 403
        assert (await other.get("/v1/deployments")).json() == []


@pytest.mark.anyio
async def test_deploy_refuses_what_cannot_run(mesh: Mesh) -> None:
    async with mesh.client() as client:
        cases = [
            ({"agent": "acme/nope", "version": "1.0.0"}, 404),
            ({"agent": AGENT, "version": "9.9.9"}, 404),
            ({"agent": "Not A Name"}, 400),
            ({"agent": AGENT, "replicas": -1}, 422),
            ({"agent": AGENT, "selector": {"bad key!": "x"}}, 400),
        ]
        for body, status in cases:
            response = await client.post("/v1/deployments", json=body)
            assert response.status_code == status, (body, response.text)
        assert (await client.get("/v1/deployments/acme/nope")).status_code == 404
        assert (await client.post("/v1/deployments/acme/nope/scale", json={"replicas": 1})).status_code == 404


@pytest.mark.anyio
async def test_deploy_scale_rolling_update_and_rollback(
    mesh: Mesh, nodes: Callable[..., Awaitable[SimNode]]
) -> None:
    cluster = Cluster()
    a = await nodes("a", capacity=4, cluster=cluster)
    b = await nodes("b", capacity=4, cluster=cluster)
    path = f"/v1/deployments/{AGENT}"
    async with mesh.client() as client:
        created = await client.post(
            "/v1/deployments", json={"agent": AGENT, "version": "1.0.0", "replicas": 2}
        )
        assert created.status_code == 201, created.text
        view = created.json()
        assert (view["revision"], view["replicas"], view["commit"]) == (1, 2, mesh.commits["1.0.0"])
        assert {r["node_name"] for r in view["instances"]} == {"a", "b"}  # spread
        view = await until_api(client, path, lambda v: v["state"] == "ready")
        assert view["by_status"]["running"] == 2
        [deploy] = a.received(Deploy)
        assert deploy.registry_url == f"{mesh.reg.url}/git/{AGENT}.git"
        assert (deploy.commit, deploy.agent, deploy.command) == (
            mesh.commits["1.0.0"],
            AGENT,
            ("python", "server.py"),
        )

        scaled = await client.post(f"{path}/scale", json={"replicas": 3})
        assert scaled.status_code == 200 and scaled.json()["replicas"] == 3
        view = await until_api(client, path, lambda v: v["state"] == "ready")
        assert len(by_status(view, "running")) == 3 and cluster.running() == 3

        # Rolling update: one at a time, a new replica running before an old one stops.
        cluster.most, cluster.watch_from, cluster.least_after = cluster.copies(), True, None
        updated = await client.post("/v1/deployments", json={"agent": AGENT, "version": "2.0.0"})
        assert updated.status_code == 200 and updated.json()["revision"] == 3  # the scale made 2
        # Ready once 3 run at 2.0.0; the last old replica may still be listed until its stop is acked.
        view = await until_api(
            client,
            path,
            lambda v: (
                v["state"] == "ready"
                and v["version"] == "2.0.0"
                and not any(r["stopping"] for r in v["instances"])
            ),
        )
        assert [r["version"] for r in view["instances"]] == ["2.0.0"] * 3
        await until(lambda: cluster.copies() == 3)
        assert cluster.most <= 4  # never more than replicas + 1
        assert cluster.least_after is not None and cluster.least_after >= 3  # never fewer running
        versions = {h.version for n in (a, b) for h in n.held.values()}
        assert versions == {"2.0.0"}

        # Rollback: a new revision with the previous release, rolled out the same way.
        cluster.least_after = None
        back = await client.post(f"{path}/rollback", json={})
        assert back.status_code == 200
        assert (back.json()["revision"], back.json()["version"]) == (4, "1.0.0")
        view = await until_api(
            client,
            path,
            lambda v: (
                v["state"] == "ready" and v["updated"] == 3 and not any(r["stopping"] for r in v["instances"])
            ),
        )
        assert {r["version"] for r in view["instances"]} == {"1.0.0"}
        assert [r["revision"] for r in view["revisions"]] == [4, 3, 2, 1]
        assert cluster.least_after is not None and cluster.least_after >= 3
        assert (await client.post(f"{path}/rollback", json={"revision": 99})).status_code == 404

        # Scale to zero, then remove: every replica stopped, then the deployment is gone.
        await client.post(f"{path}/scale", json={"replicas": 0})
        await until(lambda: cluster.copies() == 0)
        removed = await client.delete(path)
        assert removed.status_code == 200
        await until_api(client, "/v1/deployments", lambda vs: vs == [])
        assert (await client.get(path)).status_code == 404
        epochs = [d.epoch for n in (a, b) for d in n.received(Deploy)]
        assert len(epochs) == len(set(epochs))  # every assignment its own epoch


@pytest.mark.anyio
async def test_selector_and_capacity_decide_placement(
    mesh: Mesh, nodes: Callable[..., Awaitable[SimNode]]
) -> None:
    eu = await nodes("eu", capacity=2, labels={"zone": "eu"})
    us = await nodes("us", capacity=8, labels={"zone": "us"})
    async with mesh.client() as client:
        body = {"agent": AGENT, "version": "1.0.0", "replicas": 3, "selector": {"zone": "eu"}}
        view = (await client.post("/v1/deployments", json=body)).json()
        placed = [r for r in view["instances"] if r["node"]]
        assert [r["node_name"] for r in placed] == ["eu", "eu"]
        [waiting] = [r for r in view["instances"] if not r["node"]]
        assert (
            waiting["status"] == "pending"
            and waiting["detail"] == "waiting for capacity: every node that may run it is full"
        )
        assert not us.received(Deploy)
        nodes_view = (await client.get("/v1/nodes")).json()
        assert {n["name"]: n["free"] for n in nodes_view} == {"eu": 0, "us": 8}
        assert len(eu.received(Deploy)) == 2


@pytest.mark.anyio
async def test_failed_replica_halts_a_rollout_and_keeps_the_old_ones(
    mesh: Mesh, nodes: Callable[..., Awaitable[SimNode]]
) -> None:
    node = await nodes("a", capacity=5)
    path = f"/v1/deployments/{AGENT}"
    async with mesh.client() as client:
        await client.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0", "replicas": 2})
        await until_api(client, path, lambda v: v["state"] == "ready")
        node.auto = False
        await client.post("/v1/deployments", json={"agent": AGENT, "version": "2.0.0"})
        await until(lambda: any(h.version == "2.0.0" for h in node.held.values()))
        [new] = [r for r, h in node.held.items() if h.version == "2.0.0"]
        await node.set_status(new, ReplicaStatus.FAILED)
        view = await until_api(client, path, lambda v: v["state"] == "failed")
        assert len(by_status(view, "running")) == 2  # the old ones still serve
        assert [r["id"] for r in by_status(view, "failed")] == [new]
        assert len(node.held) == 3  # nothing more was started


# --- lost nodes, stale epochs -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_silent_node_is_lost_its_replicas_move_and_its_stale_copies_are_fenced(
    mesh: Mesh, nodes: Callable[..., Awaitable[SimNode]]
) -> None:
    a = await nodes("a", capacity=1)
    path = f"/v1/deployments/{AGENT}"
    async with mesh.client() as client:
        view = (await client.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0"})).json()
        [replica] = view["instances"]
        await until_api(client, path, lambda v: v["state"] == "ready")
        old_epoch = a.held[replica["id"]].epoch
        b = await nodes("b", capacity=1)

        a.beating = False  # silent past the grace
        await until(lambda: a.closed_code is not None)
        assert a.closed_code == CLOSE_HEARTBEAT_TIMEOUT
        view = await until_api(
            client, path, lambda v: v["state"] == "ready" and v["instances"][0]["node_name"] == "b"
        )
        [moved] = b.received(Deploy)
        assert moved.replica_id == replica["id"] and moved.epoch > old_epoch
        lost = {n["name"]: n for n in (await client.get("/v1/nodes")).json()}["a"]
        assert (lost["state"], lost["connected"]) == ("lost", False)

        # a comes back still running the old copy: it is stopped, never adopted.
        a.beating = True
        await a.connect(mesh.reg.url)
        await until(lambda: replica["id"] not in a.held)
        [stop] = a.received(Stop)
        assert (stop.replica_id, stop.epoch, stop.reason) == (replica["id"], old_epoch, "stale-epoch")
        # Anything it still says about the old epoch is dropped: status, logs.
        a.held[replica["id"]] = Held(AGENT, old_epoch, moved.commit, "1.0.0", ReplicaStatus.RUNNING)
        await a.set_status(replica["id"], ReplicaStatus.FAILED)
        await a.log(replica["id"], "from the stale copy")
        await b.log(replica["id"], "from the current copy")
        nodes_view = await until_api(
            client, "/v1/nodes", lambda ns: {n["name"]: n["stale_frames"] for n in ns}["a"] >= 3
        )
        assert {n["name"]: n["state"] for n in nodes_view} == {"a": "ready", "b": "ready"}
        logs = await until_api(client, f"{path}/logs", lambda body: len(body["lines"]) >= 1)
        assert [line["line"] for line in logs["lines"]] == ["from the current copy"]
        view = (await client.get(path)).json()
        [current] = view["instances"]
        assert (current["node_name"], current["status"], current["epoch"]) == ("b", "running", moved.epoch)
        assert len(view["instances"]) == 1


@pytest.mark.anyio
async def test_a_node_that_says_goodbye_is_lost_at_once(tmp_path: Path) -> None:
    for mesh in _mesh(tmp_path, heartbeat_grace=60.0):  # far beyond this test's bounds
        a, b = SimNode("a", mesh.token, capacity=1), SimNode("b", mesh.token, capacity=1)
        try:
            await a.connect(mesh.reg.url)
            async with mesh.client() as client:
                await client.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0"})
                await until_api(client, f"/v1/deployments/{AGENT}", lambda v: v["state"] == "ready")
                await b.connect(mesh.reg.url)
                await a.close()  # close code 1000: `mcpz node run` stopping
                view = await until_api(
                    client, f"/v1/deployments/{AGENT}", lambda v: v["instances"][0]["node_name"] == "b"
                )
                assert len(b.received(Deploy)) == 1 and len(view["instances"]) == 1
                states = {n["name"]: n["state"] for n in (await client.get("/v1/nodes")).json()}
                assert states == {"a": "lost", "b": "ready"}
        finally:
            await a.close()
            await b.close()


@pytest.mark.anyio
async def test_a_node_back_within_its_grace_is_adopted(
    mesh: Mesh, nodes: Callable[..., Awaitable[SimNode]]
) -> None:
    a = await nodes("a", capacity=2)
    await nodes("b", capacity=2)
    async with mesh.client() as client:
        view = (
            await client.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0", "replicas": 2})
        ).json()
        await until_api(client, f"/v1/deployments/{AGENT}", lambda v: v["state"] == "ready")
        before = {(r["id"], r["node"], r["epoch"]) for r in view["instances"]}
        await a.drop()
        await a.connect(mesh.reg.url)  # well within the grace: same assignments, nothing re-sent
        after = await until_api(client, "/v1/nodes", lambda ns: all(n["connected"] for n in ns))
        assert {n["state"] for n in after} == {"ready"}
        view = (await client.get(f"/v1/deployments/{AGENT}")).json()
        assert {(r["id"], r["node"], r["epoch"]) for r in view["instances"]} == before
        assert not a.received(Stop)
        assert len(a.received(Deploy)) == 1


@pytest.mark.anyio
async def test_hello_resends_assignments_the_node_lost(
    mesh: Mesh, nodes: Callable[..., Awaitable[SimNode]]
) -> None:
    a = await nodes("a", capacity=2)
    async with mesh.client() as client:
        await client.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0"})
        await until_api(client, f"/v1/deployments/{AGENT}", lambda v: v["state"] == "ready")
        await a.drop()
        a.held.clear()  # e.g. its data folder was wiped
        a.frames.clear()
        await a.connect(mesh.reg.url)
        await until(lambda: len(a.received(Deploy)) == 1)
        await until_api(client, f"/v1/deployments/{AGENT}", lambda v: v["state"] == "ready")


# --- logs -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_logs_recent_and_followed(mesh: Mesh, nodes: Callable[..., Awaitable[SimNode]]) -> None:
    from mcpz.client.registry import connect as registry

    a = await nodes("a")
    async with mesh.client() as client:
        await client.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0"})
        await until(lambda: bool(a.held))
        [replica_id] = a.held
        await a.log(replica_id, "one", "two")
        await until_api(client, f"/v1/deployments/{AGENT}/logs", lambda b: len(b["lines"]) == 2)
    async with registry(mesh.reg.url, mesh.token) as api:
        seen: list[str] = []

        async def follow() -> None:
            async for item in api.follow_logs(AGENT, tail=1):
                seen.append(item.line)
                if len(seen) == 3:
                    return

        with anyio.fail_after(8):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await until(lambda: seen == ["two"])
                await a.log(replica_id, "three", "four")
        assert seen == ["two", "three", "four"]
        assert [x.line for x in await api.logs(AGENT, tail=10)] == ["one", "two", "three", "four"]


@pytest.mark.anyio
async def test_log_history_outlives_a_registry_restart_and_filters(
    mesh: Mesh, nodes: Callable[..., Awaitable[SimNode]]
) -> None:
    from mcpz.client.registry import connect as registry

    a = await nodes("a")
    async with mesh.client() as client:
        await client.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0"})
        await until(lambda: bool(a.held))
        [replica_id] = a.held
        await a.log(replica_id, "one", "two")
        await until_api(client, f"/v1/deployments/{AGENT}/logs", lambda b: len(b["lines"]) == 2)
    await a.close()
    mesh.reg.stop()
    reg = start_registry(mesh.data_dir, mesh.database_url, **FAST)
    try:
        async with registry(reg.url, mesh.token) as api:
            # Memory is empty after the restart: these come from <data>/logs.
            assert [x.line for x in await api.logs(AGENT)] == ["one", "two"]
            assert [x.line for x in await api.logs(AGENT, tail=1)] == ["two"]
            assert [x.line for x in await api.logs(AGENT, replica=replica_id[:8])] == ["one", "two"]
            assert await api.logs(AGENT, replica="nobody") == []
            assert await api.logs(AGENT, since=time.time() + 3600) == []
            assert (reg.data_dir / "logs" / f"{AGENT}.jsonl").is_file()
    finally:
        reg.stop()


# --- restart ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_registry_restart_loses_nothing_and_doubles_nothing(any_db_mesh: Mesh) -> None:
    mesh = any_db_mesh
    a = SimNode("a", mesh.token, capacity=2)
    b = SimNode("b", mesh.token, capacity=2)
    for node in (a, b):
        await node.connect(mesh.reg.url)
    path = f"/v1/deployments/{AGENT}"
    async with mesh.client() as client:
        await client.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0", "replicas": 3})
        before = await until_api(client, path, lambda v: v["state"] == "ready")
    assignments = {(r["id"], r["node"], r["epoch"]) for r in before["instances"]}
    deploys = len(a.received(Deploy)) + len(b.received(Deploy))

    mesh.reg.stop()
    await until(lambda: a.closed_code is not None and b.closed_code is not None)
    reg = start_registry(mesh.data_dir, mesh.database_url, **{**FAST, "heartbeat_grace": 3.0})
    try:
        async with httpx2.AsyncClient(
            base_url=reg.url, headers={"Authorization": f"Bearer {mesh.token}"}, timeout=30
        ) as client:
            # Nothing is lost, and no node is declared lost before it had its grace to come back.
            view = (await client.get(path)).json()
            assert {(r["id"], r["node"], r["epoch"]) for r in view["instances"]} == assignments
            assert {n["state"] for n in (await client.get("/v1/nodes")).json()} == {"ready"}
            for node in (a, b):
                await node.close()
                await node.connect(reg.url)
            await until_api(client, "/v1/nodes", lambda ns: all(n["connected"] for n in ns))
            view = await until_api(client, path, lambda v: v["state"] == "ready")
            assert {(r["id"], r["node"], r["epoch"]) for r in view["instances"]} == assignments
            assert len(a.held) + len(b.held) == 3
            assert len(a.received(Deploy)) + len(b.received(Deploy)) == deploys
            assert not a.received(Stop) and not b.received(Stop)
            # And the mesh still works: scale up after the restart.
            await client.post(f"{path}/scale", json={"replicas": 4})
            view = await until_api(client, path, lambda v: v["state"] == "ready")
            assert len(a.held) + len(b.held) == 4
            epochs = [r["epoch"] for r in view["instances"]]
            assert max(epochs) > max(e for _, _, e in assignments)  # the counter survived too
    finally:
        for node in (a, b):
            await node.close()
        reg.stop()


# --- the CLI -----------------------------------------------------------------------------------


class NodesInThread:
    """Simulated nodes on their own event loop, so the CLI (which runs its own) can be waited on."""

    def __init__(self, url: str, token: str, names: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nodes = [SimNode(n, token, capacity=4) for n in names]
        for node in self.nodes:
            self.call(node.connect(url))

    def call(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=15)  # type: ignore[arg-type]

    def close(self) -> None:
        for node in self.nodes:
            self.call(node.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


def test_the_cli_deploys_scales_updates_rolls_back_and_removes(cli, mesh: Mesh, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MCPZ_REGISTRY", mesh.reg.url)
    monkeypatch.setenv("MCPZ_TOKEN", mesh.token)
    sims = NodesInThread(mesh.reg.url, mesh.token, ["a", "b"])
    try:
        done = cli("--json", "deploy", f"{AGENT}@1.0.0", "--replicas", "2", "--wait", "--timeout", "20")
        assert done.exit_code == 0, done.stderr
        state = json.loads(done.stdout)
        assert (state["state"], state["ready"], state["version"]) == ("ready", 2, "1.0.0")

        status = cli("deploy", "status", AGENT)
        assert status.exit_code == 0, status.stderr
        assert "acme/echo 1.0.0 (revision 1" in status.stdout and "2/2 ready, ready" in status.stdout
        rows = [line.split() for line in status.stdout.splitlines() if line.strip().startswith("acme.echo-")]
        assert sorted((r[1], r[2], r[3]) for r in rows) == [
            ("1.0.0", "a", "running"),
            ("1.0.0", "b", "running"),
        ]

        scaled = cli("--json", "deploy", "scale", AGENT, "3", "--wait")
        assert scaled.exit_code == 0, scaled.stderr
        assert json.loads(scaled.stdout)["ready"] == 3

        updated = cli("deploy", AGENT + "@2.0.0", "--wait", "--json")
        assert updated.exit_code == 0, updated.stderr
        state = json.loads(updated.stdout)
        # Revision 2 is the scale's: every change of what runs, or how many, is a revision.
        assert (state["version"], state["revision"], state["ready"], state["old"]) == ("2.0.0", 3, 3, 0)

        back = cli("--json", "deploy", "rollback", AGENT, "--wait")
        assert back.exit_code == 0, back.stderr
        assert (json.loads(back.stdout)["version"], json.loads(back.stdout)["revision"]) == ("1.0.0", 4)

        listed = cli("deployments")
        assert listed.exit_code == 0 and "acme/echo" in listed.stdout and "3/3" in listed.stdout
        assert json.loads(cli("--json", "deployments").stdout)[0]["name"] == AGENT
        shown = cli("nodes")
        assert shown.exit_code == 0 and " a " in f" {shown.stdout} " and "ready" in shown.stdout
        assert sorted(n["name"] for n in json.loads(cli("--json", "nodes").stdout)) == ["a", "b"]

        nothing = cli("logs", AGENT)
        assert (nothing.exit_code, nothing.stdout) == (0, ""), nothing.stderr
        assert nothing.stderr.strip() == f"no log lines yet for {AGENT}"
        assert cli("logs", AGENT, "--since", "soon").exit_code == 2
        node = sims.nodes[0]
        replica_id = next(iter(node.held))
        sims.call(node.log(replica_id, "hello from the replica"))
        logs = cli("logs", AGENT)
        for _ in range(200):
            if "hello from the replica" in logs.stdout:
                break
            logs = cli("logs", AGENT)
        assert f"{replica_id} hello from the replica" in logs.stdout
        mine = cli("logs", AGENT, "--since", "10m", "--replica", replica_id)
        assert mine.stdout == f"{replica_id} hello from the replica\n", mine.stderr
        other = cli("logs", AGENT, "--replica", "nobody")
        assert other.exit_code == 0 and "no log lines yet" in other.stderr

        removed = cli("deploy", "rm", AGENT)
        assert removed.exit_code == 0 and "remov" in removed.stdout
        missing = cli("deploy", "status", AGENT)
        for _ in range(200):
            if missing.exit_code != 0:
                break
            missing = cli("deploy", "status", AGENT)
        assert missing.exit_code == 5 and "no deployment" in missing.stderr

        bad = cli("deploy", "acme/echo@9.9.9")
        assert bad.exit_code == 5 and "not published" in bad.stderr
        usage = cli("deploy", f"{AGENT}@1.0.0", "--selector", "nokey")
        assert usage.exit_code == 2 and "k=v" in usage.stderr
    finally:
        sims.close()


def test_deploy_wait_reports_a_failed_replica_with_exit_code_7(cli, mesh: Mesh, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MCPZ_REGISTRY", mesh.reg.url)
    monkeypatch.setenv("MCPZ_TOKEN", mesh.token)
    sims = NodesInThread(mesh.reg.url, mesh.token, ["a"])
    node = sims.nodes[0]
    node.auto = False

    async def fail_when_deployed() -> None:
        await until(lambda: bool(node.held))
        await node.set_status(next(iter(node.held)), ReplicaStatus.FAILED)

    try:
        pending = asyncio.run_coroutine_threadsafe(fail_when_deployed(), sims.loop)
        failed = cli("--json", "deploy", f"{AGENT}@1.0.0", "--wait", "--timeout", "20")
        pending.result(timeout=10)
        assert failed.exit_code == 7, failed.stderr
        assert json.loads(failed.stdout)["state"] == "failed"
        assert "1 of 1 replica(s) failed" in failed.stderr, failed.stderr
        # Its first revision: the hint offers a restart, not a rollback to nothing.
        assert "mcpz deploy restart acme/echo" in failed.stderr and "rollback" not in failed.stderr
    finally:
        sims.close()
