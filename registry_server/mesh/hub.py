"""The mesh hub: the registry's side of the node connections (their endpoint, `/v1/mesh`, is
`registry_server.mesh.routes`; the hub sees each accepted socket through the `Socket` protocol and
imports no web framework).

One `NodeConnection` per socket: a reader task (decodes each binary message with the protocol's
`decode`, checks it against the connection's `ConnectionState`, dispatches it) and a writer task
draining a bounded send queue. A frame that breaks the protocol closes that connection with the
`ProtocolError`'s close code and reason; nothing a node sends can stop the hub serving the others.

The hub checks the upgrade's token (scope `node` in `Authorization`; the endpoint answers 401/403
before the upgrade otherwise), hands the hello to the deployment service, which registers the node and
reconciles what it reports, and sends `welcome`. Liveness: a sweeper declares a node lost when no
heartbeat came for `grace` seconds (counted from the hub's own start for nodes it has not heard
from since), closes its connection with 4001 and tells the service, which moves its replicas. The
same sweeper has the service forget a node lost for longer than `lost_node_retention`.

Backpressure: frames for a node wait in its send queue while the socket cannot take more (the
writer awaits the transport). A node that lets `send_queue_bytes` pile up is too slow or stuck:
its connection is closed with 1013 and it reconciles from its next hello, which costs less than
buffering without bound.

The wire protocol is `mcpz.mesh` and docs/mesh-protocol.md; the service is `deployments`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio.to_thread
import pydantic_core
from sqlalchemy.exc import SQLAlchemyError

from mcpz import jsonlimits
from mcpz.errors import McpzError
from mcpz.mesh import (
    CLOSE_GOING_AWAY,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_HELLO_TIMEOUT,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_REPLACED,
    CLOSE_TRY_AGAIN_LATER,
    MAX_FRAME_SIZE,
    Ack,
    ConnectionState,
    Deploy,
    Error,
    Frame,
    Heartbeat,
    Hello,
    Log,
    Notify,
    ProtocolError,
    ReleaseSignature,
    ResourceLimits,
    Result,
    Role,
    Status,
    Stop,
    Tools,
    Welcome,
    decode,
    encode,
    truncate_reason,
)
from mcpz.tooldefs import MAX_CANONICAL_BYTES, ToolDefinitionsError
from registry_server.accounts import namespaces
from registry_server.accounts.auth import Forbidden, Unauthenticated, principal_from_headers, require
from registry_server.accounts.service import Principal
from registry_server.deployments.logbook import LogBook
from registry_server.deployments.records import DeployIntent, Intent, NodeState
from registry_server.deployments.retries import Backoff
from registry_server.deployments.service import DeploymentService
from registry_server.mesh.calls import CallRouter, ReplicaLost
from registry_server.orm import utcnow
from registry_server.releases import signatures as release_signatures
from registry_server.settings import public_url
from registry_server.state import RegistryState

log = logging.getLogger("registry_server.mesh")

GOODBYES = (CLOSE_NORMAL, CLOSE_GOING_AWAY)
CLOSE_SERVICE_RESTART = 1012
"""Close codes with which a node says it is stopping (`mcpz node run` ending)."""
SEND_QUEUE_BYTES = 2 * MAX_FRAME_SIZE
"""Bytes of frames that may wait for one node (about 28,000 deploy frames) before its connection
is closed with 1013: a node that reads nothing (stopped, or stuck) must not grow the hub's memory."""
HUB_FEATURES = frozenset({"sessions"})
"""Protocol extensions the hub uses when a node offers them: `sessions`, isolated session mode
(the `end_session` frame; docs/mesh-protocol.md)."""


class Socket(Protocol):
    """An accepted WebSocket as the hub uses it. A socket whose peer is gone raises OSError (a
    `ConnectionError`) from `send_bytes` and `close`; `receive` returns ASGI websocket messages."""

    async def receive(self) -> Mapping[str, Any]: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


ConnectionFactory = Callable[["MeshHub", Socket, int, str], "NodeConnection"]


@dataclass
class HubStats:
    """Counters since the hub started (for logs, tests and benchmarks)."""

    welcomed: int = 0
    protocol_errors: int = 0
    deploys_sent: int = 0
    deploys_acked: int = 0
    stops_sent: int = 0
    stale_dropped: int = 0
    overflows: int = 0


@dataclass(frozen=True, slots=True)
class ReleaseTrust:
    """What a deploy frame carries about its release besides the release itself."""

    signatures: tuple[ReleaseSignature, ...]
    keys: str  # the namespace's keys document, JSON
    tools_digest: str  # of the tools signed with it; "" when none were
    report_tools: bool  # no tools recorded yet: ask the node for the first healthy tools/list


class MeshHub:
    def __init__(
        self,
        state: RegistryState,
        service: DeploymentService,
        *,
        heartbeat_interval: float = 5.0,
        grace: float = 15.0,
        hello_timeout: float = 10.0,
        send_queue_bytes: int = SEND_QUEUE_BYTES,
        max_frame: int = MAX_FRAME_SIZE,
        lost_node_retention: float = 86400.0,
    ) -> None:
        self.state = state
        self.service = service
        self.heartbeat_interval = heartbeat_interval
        self.grace = max(grace, heartbeat_interval)
        self.hello_timeout = hello_timeout
        self.lost_node_retention = lost_node_retention
        self.send_queue_bytes = send_queue_bytes
        self.max_frame = max_frame
        self.connections: dict[str, NodeConnection] = {}  # welcomed, by node id
        self.everyone: set[NodeConnection] = set()
        self.last_beat: dict[str, float] = {}
        self.started = time.monotonic()
        self.stats = HubStats()
        self.public_url = advertised_url(state)
        """The URL nodes are told to fetch from; "" when each is told the one it connected to."""
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()  # observed tools being recorded
        self.calls = CallRouter(self, service)  # the gateway's calls, relayed over the connections
        service.transport = self

    # -- life cycle

    async def start(self) -> None:
        self.started = time.monotonic()
        await self.service.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="mesh-liveness")

    async def lead(self) -> None:
        """This replica won the lease to lead the mesh (`registry_server.mesh.cluster`): the
        service loads its mirror from the database and the sweeper counts every node's grace from
        now, as the start of a registry does."""
        self.started = time.monotonic()
        self.last_beat.clear()
        await self.service.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="mesh-liveness")

    async def follow(self, reason: str) -> None:
        """This replica does not lead the mesh (any more): stop at once, write nothing, and close
        every node connection with 1013, so its nodes come back through the leader."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.service.halt()
        self.calls.fail_all(ReplicaLost(reason))
        for conn in list(self.everyone):
            conn.close(CLOSE_TRY_AGAIN_LATER, reason)
        self.connections.clear()
        self.last_beat.clear()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for conn in list(self.everyone):
            conn.close(CLOSE_GOING_AWAY, "the registry is shutting down")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while self.everyone:
                    await asyncio.sleep(0.01)
        await self.service.close()

    # -- the transport the deployment service sends through

    def is_connected(self, node_id: str) -> bool:
        conn = self.connections.get(node_id)
        return conn is not None and conn.welcomed and not conn.closing

    def release_trust(self, agent: str, version: str) -> ReleaseTrust:
        """The release's signatures, its namespace's keys document (as GET
        /v1/namespaces/{ns}/keys serves it) and its tools' state, for a deploy frame; nothing if
        they cannot be read."""
        from registry_server.releases.tools import tools_for_releases

        try:
            with self.state.db.session() as session:
                release = release_signatures.find_release(session, agent, version)
                rows = release_signatures.signatures_by_release(session, [release.id]).get(release.id, [])
                signatures = tuple(ReleaseSignature(signer=r.signer, signature=r.signature) for r in rows)
                document = namespaces.keys_document(
                    session, agent.split("/")[0], public_url(self.state.settings)
                )
                pinned = tools_for_releases(session, [release.id]).get(release.id)
            keys = pydantic_core.to_json(document).decode()
        except (McpzError, SQLAlchemyError) as e:
            log.warning("cannot read the signatures of %s %s: %s", agent, version, e)
            return ReleaseTrust((), "", "", False)
        digest = pinned.digest if pinned is not None and not pinned.observed else ""
        return ReleaseTrust(signatures, keys, digest, pinned is None)

    def record_observed_tools(self, node_id: str, frame: Tools) -> None:
        """A replica's first healthy tools/list, for a release that had none recorded: kept as
        observed (not signed), in a worker thread; a frame of a replica the node does not hold at
        that epoch, or that is not a JSON list, is dropped."""
        from registry_server.releases.tools import record_observed

        release = self.service.release_run_by(node_id, frame.replica_id, frame.epoch)
        if release is None:
            self.stats.stale_dropped += 1
            return
        try:
            tools = jsonlimits.loads(frame.payload)
        except ValueError:  # JSONError included: not JSON, or nested too deep
            tools = None
        if not isinstance(tools, list) or len(frame.payload) > MAX_CANONICAL_BYTES:
            log.info("node sent unreadable tools", extra={"node": node_id, "replica": frame.replica_id})
            return

        def record() -> None:
            try:
                with self.state.db.session() as session:
                    record_observed(session, release[0], release[1], tools)
            except (McpzError, SQLAlchemyError, ToolDefinitionsError) as e:
                log.warning("cannot record the observed tools of %s %s: %s", release[0], release[1], e)

        task = asyncio.get_running_loop().create_task(anyio.to_thread.run_sync(record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def deliver(self, intents: Sequence[Intent]) -> None:
        trust: dict[tuple[str, str], ReleaseTrust] = {}  # once per round
        for intent in intents:
            conn = self.connections.get(intent.node_id)
            if conn is None or not conn.welcomed or conn.closing:
                continue  # the node's next hello brings it up to date
            frame_id = conn.next_id()
            frame: Frame
            if isinstance(intent, DeployIntent):
                t = intent.template
                if (t.agent, t.version) not in trust:
                    trust[t.agent, t.version] = self.release_trust(t.agent, t.version)
                release = trust[t.agent, t.version]
                frame = Deploy(
                    id=frame_id,
                    deployment=intent.deployment,
                    replica_id=intent.replica_id,
                    epoch=intent.epoch,
                    agent=t.agent,
                    version=t.version,
                    commit=t.commit,
                    registry_url=f"{conn.public_url}/git/{t.agent}.git",
                    command=t.command,
                    env=t.env,
                    limits=ResourceLimits(memory_bytes=t.limits.memory_bytes, open_files=t.limits.open_files),
                    dependencies=t.dependencies,
                    signatures=release.signatures,
                    namespace_keys=release.keys,
                    tools_digest=release.tools_digest,
                    report_tools=release.report_tools,
                    sessions=t.sessions,
                    deployment_statement=intent.statement,
                    deployment_signatures=tuple(
                        ReleaseSignature(signer=signer, signature=signature)
                        for signer, signature in intent.signatures
                    ),
                )
                if conn.send(frame):
                    conn.outstanding[frame_id] = ("deploy", intent.replica_id, intent.epoch)
                    self.stats.deploys_sent += 1
            else:
                key = (intent.replica_id, intent.epoch)
                if key in conn.sent_stops:
                    continue
                frame = Stop(
                    id=frame_id,
                    deployment=intent.deployment,
                    replica_id=intent.replica_id,
                    epoch=intent.epoch,
                    grace=intent.grace,
                    reason=intent.reason,
                )
                if conn.send(frame):
                    conn.sent_stops.add(key)
                    conn.outstanding[frame_id] = ("stop", intent.replica_id, intent.epoch)
                    self.stats.stops_sent += 1

    # -- connections

    async def authenticate(
        self, headers: Mapping[str, str], scope: str = "node", namespace: str | None = None
    ) -> Principal:
        """The upgrade's caller, with `scope` (in `namespace`): Unauthenticated or Forbidden if not,
        McpzError when the tokens cannot be checked."""
        try:
            principal = await anyio.to_thread.run_sync(principal_from_headers, self.state.db, headers)
            return await anyio.to_thread.run_sync(
                lambda: require(principal, scope, namespace, db=self.state.db)
            )
        except (Unauthenticated, Forbidden):
            raise
        except (McpzError, SQLAlchemyError) as e:
            log.error("cannot check a node's token: %s", e)
            raise McpzError("the registry cannot check tokens right now") from e

    async def attach(
        self,
        socket: Socket,
        account_id: int,
        url: str,
        connection: ConnectionFactory | None = None,
    ) -> None:
        """Run an accepted socket of `account_id` until it ends; `url` is the registry's URL as the
        node reached it (told to the node when no public URL is configured)."""
        conn = (connection or NodeConnection)(self, socket, account_id, self.public_url or url)
        self.everyone.add(conn)
        try:
            await conn.run()
        finally:
            self.everyone.discard(conn)
            self.calls.on_closed(conn)
            conn.detach()
            if conn.node_id is not None and self.connections.get(conn.node_id) is conn:
                del self.connections[conn.node_id]

    def welcome(self, conn: NodeConnection, node: NodeState) -> None:
        """Called by the service once the node is registered, before any frame for it leaves."""
        if conn.closing:
            return
        old = self.connections.get(node.node_id)
        if old is not None and old is not conn:
            old.close(CLOSE_REPLACED, "another connection came in with this node id")
        self.connections[node.node_id] = conn
        conn.node_id = node.node_id
        self.last_beat[node.node_id] = time.monotonic()
        conn.send(
            Welcome(
                id=conn.next_id(),
                node_id=node.node_id,
                heartbeat_interval=self.heartbeat_interval,
                grace=self.grace,
                server_time=time.time(),
                features=tuple(sorted(conn.features)),
            )
        )
        conn.welcomed = True
        self.stats.welcomed += 1
        log.info("node welcomed", extra={"node": node.node_id, "node_name": node.name})

    def left(self, conn: NodeConnection) -> None:
        """The node closed its current connection in order (it is stopping): lost now, not after
        its grace, so its replicas move at once."""
        if conn.node_id is not None and self.connections.get(conn.node_id) is conn:
            log.info("node left", extra={"node": conn.node_id})
            self.service.mark_lost(conn.node_id)

    def dispatch(self, conn: NodeConnection, frame: Frame) -> None:
        node_id = conn.node_id
        assert node_id is not None
        if isinstance(frame, Heartbeat):
            self.last_beat[node_id] = time.monotonic()
            self.service.on_heartbeat(node_id, frame, conn.acked_stops)
        elif isinstance(frame, Status):
            if not self.service.on_status(node_id, frame):
                self.stats.stale_dropped += 1
        elif isinstance(frame, Log):
            if not self.service.on_log(node_id, frame):
                self.stats.stale_dropped += 1
        elif isinstance(frame, Tools):
            self.record_observed_tools(node_id, frame)
        elif isinstance(frame, Ack):
            what = conn.outstanding.pop(frame.ref, None)
            if what is not None and what[0] == "stop":
                conn.acked_stops.add((what[1], what[2]))
            elif what is not None:
                self.stats.deploys_acked += 1
        elif isinstance(frame, Result):
            self.calls.on_result(conn, frame)
        elif isinstance(frame, Notify):
            self.calls.on_notify(conn, frame)
        elif isinstance(frame, Error):
            what = conn.outstanding.pop(frame.ref, None) if frame.ref is not None else None
            if what is not None and what[0] == "deploy":
                self.service.on_deploy_refused(node_id, what[1], what[2], frame.code, frame.message)
            elif what is not None:
                conn.acked_stops.add((what[1], what[2]))
            else:
                log.info("node error", extra={"node": node_id, "code": frame.code, "error": frame.message})

    async def _sweep(self) -> None:
        period = max(0.02, min(1.0, self.grace / 10))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            # Lost nodes are kept for a while, as they may come back; a lost_at in the database
            # survives restarts, so retention counts in wall-clock time.
            forget_before = utcnow() - timedelta(seconds=self.lost_node_retention)
            if not self.service.acting():  # a replica that lost the lease and does not know it yet
                continue
            for node_id, node in list(self.service.nodes.items()):
                if not node.live:
                    if (node.lost_at or node.last_seen_at or node.created_at) < forget_before:
                        self.last_beat.pop(node_id, None)
                        self.service.prune(node_id)
                    continue
                if now - self.last_beat.get(node_id, self.started) > self.grace:
                    conn = self.connections.get(node_id)
                    if conn is not None:
                        conn.close(CLOSE_HEARTBEAT_TIMEOUT, f"no heartbeat for {self.grace:g} s")
                    self.service.mark_lost(node_id)


class NodeConnection:
    """One node's socket: reader, writer, send queue, and what is outstanding on it."""

    def __init__(self, hub: MeshHub, socket: Socket, account_id: int, public_url: str) -> None:
        self.hub = hub
        self.ws = socket
        self.account_id = account_id
        self.public_url = public_url.rstrip("/")
        self.state = ConnectionState(Role.HUB)
        self.node_id: str | None = None
        self.welcomed = False
        self.closing = False
        self.close_code = 0
        self.close_reason = ""
        self.outstanding: dict[int, tuple[str, str, int]] = {}  # frame id -> (kind, replica, epoch)
        self.server_stopping = False
        self.sent_stops: set[tuple[str, int]] = set()
        self.acked_stops: set[tuple[str, int]] = set()
        self.features: frozenset[str] = frozenset()  # the extensions both ends use (welcome's)
        self._ids = 0
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes in _queue
        self._has_data = asyncio.Event()
        self._done = asyncio.Event()

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    async def on_hello(self, hello: Hello) -> None:
        """Register the node with the deployment service, which reconciles it and welcomes it."""
        self.features = frozenset(hello.features) & HUB_FEATURES
        await self.hub.service.register(hello, self.account_id, lambda node: self.hub.welcome(self, node))

    def on_frame(self, frame: Frame) -> None:
        self.hub.dispatch(self, frame)

    def detach(self) -> None:
        """The connection ended (after its calls failed): a node's state is the service's to keep."""

    @property
    def queued_bytes(self) -> int:
        """Bytes of frames waiting to be written to this node."""
        return self._queued

    def send(self, frame: Frame) -> bool:
        """Queue `frame`; False when the connection is closing or was closed for falling behind."""
        if self.closing:
            return False
        try:
            self.state.on_send(frame)
            data = encode(frame, max_size=self.hub.max_frame)
        except ProtocolError as e:  # a frame of ours that breaks the protocol: log it, send nothing
            log.error("not sending an invalid %s frame: %s", frame.TYPE, e.message)
            return False
        if self._queued + len(data) > self.hub.send_queue_bytes:
            self.hub.stats.overflows += 1
            self.close(CLOSE_TRY_AGAIN_LATER, "send queue full: the node does not read fast enough")
            return False
        self._queue.append(data)
        self._queued += len(data)
        self._has_data.set()
        return True

    def close(self, code: int, reason: str) -> None:
        """End the connection with `code`; frames still queued are dropped."""
        if self.closing:
            return
        self.closing = True
        self.close_code, self.close_reason = code, truncate_reason(reason)
        self._queue.clear()
        self._queued = 0
        self._done.set()

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        writer = asyncio.create_task(self._write())
        try:
            await self._done.wait()
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            self.state.close()
            if self.close_code:
                # A stuck peer (its window full) must not hold the hub: bounded, then dropped.
                with contextlib.suppress(TimeoutError, OSError, RuntimeError):
                    async with asyncio.timeout(1.0):
                        await self.ws.close(self.close_code, self.close_reason)

    def _peer_closed(self) -> None:
        self.closing = True
        self._done.set()

    async def _write(self) -> None:
        try:
            while not self.closing:
                await self._has_data.wait()
                while self._queue:
                    data = self._queue.popleft()
                    self._queued -= len(data)
                    await self.ws.send_bytes(data)
                self._has_data.clear()
        except (OSError, RuntimeError):
            self._peer_closed()

    async def _read(self) -> None:
        try:
            try:
                async with asyncio.timeout(self.hub.hello_timeout):
                    hello = await self._next()
            except TimeoutError:
                self.close(CLOSE_HELLO_TIMEOUT, f"no hello within {self.hub.hello_timeout:g} s")
                return
            if hello is None:
                return
            if not isinstance(hello, Hello):
                raise ProtocolError(f"the first frame must be hello, not {hello.TYPE}")
            await self.on_hello(hello)
            while not self.closing:
                frame = await self._next()
                if frame is None or self.closing:
                    return
                self.on_frame(frame)
        except ProtocolError as e:
            self.hub.stats.protocol_errors += 1
            log.warning(
                "closing a node connection: %s",
                e.message,
                extra={"node": self.node_id, "close_code": e.close_code},
            )
            self.close(e.close_code, e.reason)
        except (McpzError, SQLAlchemyError) as e:
            log.error("cannot register a node: %s", e, extra={"node": self.node_id})
            self.close(CLOSE_TRY_AGAIN_LATER, "the registry cannot register nodes right now")
        except OSError:  # the peer went away (the socket's ConnectionError)
            self._peer_closed()
        except Exception:  # the boundary of one connection: a bug here must not end the hub
            log.exception("node connection failed", extra={"node": self.node_id})
            self.close(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            self._done.set()

    async def _next(self) -> Frame | None:
        """The next frame, checked against the phase; None when the peer went away."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            if message.get("code") in GOODBYES and not self.closing:
                self.hub.left(self)
            # uvicorn closes every WebSocket with 1012 when the registry itself is stopping.
            self.server_stopping = message.get("code") == CLOSE_SERVICE_RESTART
            self._peer_closed()
            return None
        data: Any = message.get("bytes")
        if data is None:
            data = message.get("text")
        frame = decode(data, max_size=self.hub.max_frame)
        self.state.on_receive(frame)
        return frame


def advertised_url(state: RegistryState) -> str:
    """The registry's public URL from the settings, or "" when it names a wildcard address (then
    each node is told the URL it connected to)."""
    url = state.settings.base_url
    host = urlsplit(url).hostname or ""
    return "" if host in ("0.0.0.0", "::", "") else url


async def start_mesh(state: RegistryState, *, lead: bool = True) -> MeshHub:
    """The hub and its deployment service, started (for the app's lifespan); with `lead` False
    (a registry replica) only made: `lead()` starts it once this replica leads the mesh."""
    settings = state.settings
    service = DeploymentService(
        state.db,
        resync_interval=settings.resync_interval,
        shared_nodes=settings.shared_nodes,
        shared_node_owners=settings.shared_node_owners,
        backoff=Backoff(settings.retry_base, max(settings.retry_cap, settings.retry_base)),
        logs=LogBook(
            folder=settings.data_dir / "logs", file_bytes=settings.log_file_bytes, files=settings.log_files
        ),
    )
    hub = MeshHub(
        state,
        service,
        heartbeat_interval=settings.heartbeat_interval,
        grace=settings.heartbeat_grace,
        hello_timeout=settings.hello_timeout,
        lost_node_retention=settings.lost_node_retention,
    )
    if lead:
        await hub.start()
    _tune_gc()
    return hub


GC_THRESHOLDS = (10_000, 50, 1000)


def _tune_gc() -> None:
    """In a registry process of its own: freeze the start-up heap and space collections out.

    With thousands of node connections, a full collection walks every object they hold and
    stops the event loop for 150-300 ms (measured with 1,000 nodes), which is what a fan-out's
    slowest deploys were made of; see bench/bench_fanout.py. Frozen start-up objects are never
    walked again, and rarer collections leave garbage that refcounting misses a little longer.
    Only when the app runs on the main thread (`mcpz registry serve`): an embedded registry
    (tests, the demo) leaves its host process's collector alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
