"""The node itself: one outbound WebSocket to the registry's hub, and the replicas it deploys.

    Node.run()
     ├── ReplicaManager.run()        the replicas' tasks (mcpz.node.replicas)
     └── the connection loop         connect ─► hello ─► welcome ─► heartbeats, frames ─► closed
                                        ▲                                                 │
                                        └──────── backoff(attempt), full jitter ◄─────────┘

The connection (`{registry}/v1/mesh`, `Authorization: Bearer <token>`, binary frames, `max_size`
the protocol's frame limit) follows docs/mesh-protocol.md: `hello` with every replica the node
holds, `welcome` within 10 s or a fresh attempt, a `heartbeat` every `heartbeat_interval`, `ack`
or `error` for each `deploy` and `stop` (under the epoch rules of `mcpz.node.rules`), `status`
on every status change and `log` frames for the replicas' stderr. Reconnects wait
`backoff(attempt)` seconds (capped exponential, full jitter), `attempt` back to 0 once welcomed.

Failover: `NodeConfig.registries` names other replicas of the same registry. After a drop or a
failed attempt the node tries the next URL in turn (same backoff); the replicas it runs keep
running, and its `hello` to the new replica lists them, which reconciles them there. The first
URL stays the registry's identity (what releases and deployments are signed for).

How it ends: 401/403 at the upgrade raises AuthError, 404 NotFoundError (no hub there), close
4000 NodeReplaced; close 1000 from the hub ends the node quietly; every other close or network
failure is retried. `shutdown()` (the CLI wires SIGINT and SIGTERM to it) stops every replica
(SIGTERM, then SIGKILL after the grace) and closes the socket with 1001. Replicas keep running
while the node is disconnected: the hub decides what becomes of them when it is back.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from mcpz._version import __version__
from mcpz.errors import AuthError, McpzError, NotFoundError, UsageError
from mcpz.keys.trust import TrustStore, Verifier
from mcpz.mesh import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_REPLACED,
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    MAX_FRAME_SIZE,
    Ack,
    Call,
    Cancel,
    ConnectionState,
    Deploy,
    EndSession,
    Error,
    ErrorCode,
    Frame,
    Heartbeat,
    Hello,
    LogStream,
    Notify,
    ProtocolError,
    Role,
    Stop,
    Welcome,
    backoff,
    decode,
    encode,
)
from mcpz.node.channel import StdioChannel
from mcpz.node.errors import NodeReplaced
from mcpz.node.fetch import ObjectCache
from mcpz.node.outbox import AckItem, ErrorItem, Outbox, StatusItem, ToolsItem
from mcpz.node.pull import RegistryAccess, base_environment
from mcpz.node.relay import CallRelay
from mcpz.node.replicalogs import DEFAULT_FILE_BYTES, DEFAULT_FILES, ReplicaLogs
from mcpz.node.replicas import ReplicaManager
from mcpz.node.sessions import SessionPool
from mcpz.node.state import Assignment, NodeState, lock_data_dir
from mcpz.node.supervisor import SupervisorSettings
from mcpz.node.sysinfo import SystemSampler
from mcpz.tooldefs import MAX_CANONICAL_BYTES

if TYPE_CHECKING:
    from websockets.exceptions import ConnectionClosed

logger = logging.getLogger(__name__)

MESH_PATH = "/v1/mesh"
TRUST_FILE = "trust.json"  # in the data folder: the pinned namespace keys (mcpz.keys.trust.TrustStore)
WELCOME_TIMEOUT = 10.0
NODE_FEATURES = ("sessions",)  # isolated session mode: `end_session` (docs/mesh-protocol.md)


@dataclass(frozen=True)
class NodeConfig:
    """Everything `mcpz node run` is told. Times in seconds."""

    registry: str
    token: str
    data_dir: Path
    name: str = field(default_factory=socket.gethostname)
    labels: Mapping[str, str] = field(default_factory=dict)
    capacity: int = 10
    ca_file: Path | None = None
    stop_grace: float = 10.0
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    welcome_timeout: float = WELCOME_TIMEOUT
    open_timeout: float = 10.0
    environ: Mapping[str, str] | None = field(default=None, repr=False)  # replicas' base (os.environ)
    allow_unsigned: bool = False  # run releases without signatures (a wrong signature is still refused)
    shared: bool = False  # offer this node to every account's deployments, not only its owner's
    metrics_port: int | None = None  # serve Prometheus metrics on 127.0.0.1:port (0: any free port)
    metrics_host: str = "127.0.0.1"
    replica_log_bytes: int = DEFAULT_FILE_BYTES  # per file of each replica's log under <data>/logs
    replica_log_files: int = DEFAULT_FILES  # files kept per replica (0: none on disk)
    gc_interval: float = 0.0  # seconds between `mcpz node gc` runs inside the node; 0: only by hand
    registries: tuple[str, ...] = ()  # other replicas of `registry`, tried in turn when one fails


def mesh_url(registry: str) -> str:
    """The hub's WebSocket URL for a registry given as http(s):// or ws(s):// (UsageError otherwise)."""
    parts = urllib.parse.urlsplit(registry.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise UsageError(
            f'"{registry}" is not a registry URL', hint="give one like https://registry.example or wss://..."
        )
    path = parts.path.rstrip("/")
    if not path.endswith(MESH_PATH):
        path += MESH_PATH
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def http_base(registry: str) -> str:
    """The registry's HTTP base URL (for git), from an http(s):// or ws(s):// URL."""
    parts = urllib.parse.urlsplit(mesh_url(registry))
    scheme = "https" if parts.scheme == "wss" else "http"
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.removesuffix(MESH_PATH), "", ""))


class CloseAction(StrEnum):
    RECONNECT = "reconnect"
    EXIT = "exit"
    REPLACED = "replaced"


def close_action(code: int | None) -> CloseAction:
    """What the node does after the hub closed the connection with `code` (docs/mesh-protocol.md)."""
    if code == CLOSE_NORMAL:
        return CloseAction.EXIT
    if code == CLOSE_REPLACED:
        return CloseAction.REPLACED
    return CloseAction.RECONNECT


def hello_frame(config: NodeConfig, state: NodeState, frame_id: int = 1) -> Hello:
    return Hello(
        id=frame_id,
        node_name=config.name,
        node_id=state.node_id,
        labels=dict(config.labels),
        capacity=config.capacity,
        replicas=state.reports(),
        software_version=__version__,
        shared=config.shared,
        features=NODE_FEATURES,
    )


def check_config(config: NodeConfig) -> None:
    """UsageError for a setting the hub would refuse, before the node connects."""
    for url in (config.registry, *config.registries):
        mesh_url(url)
    try:
        encode(hello_frame(config, NodeState(config.data_dir / "unused")))
    except ProtocolError as e:
        raise UsageError(
            f"invalid node setting: {e.message}", hint="check --name, --label and --capacity"
        ) from e
    if config.ca_file is not None and not config.ca_file.is_file():
        raise UsageError(f"no CA bundle at {config.ca_file}", hint="give --ca-file the path of a PEM file")


@dataclass
class _Outcome:
    welcomed: bool
    action: CloseAction = CloseAction.RECONNECT
    detail: str = ""


def open_mesh_socket(url: str, token: str, client: str, ca_file: Path | None, open_timeout: float) -> Any:
    """The WebSocket to a registry's hub as nodes and connectors open it (an async context manager):
    bearer token, the protocol's frame limit, no compression, TLS trusting `ca_file` for wss://."""
    from websockets.asyncio.client import connect

    context = None
    if url.startswith("wss://"):
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    return connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        user_agent_header=f"{client}/{__version__}",
        max_size=MAX_FRAME_SIZE,
        compression=None,
        open_timeout=open_timeout,
        ssl=context,
    )


class MeshSocket:
    """One WebSocket: its phase, its frame ids, and one lock so frames go out whole and in order."""

    def __init__(self, ws: object) -> None:
        self.ws = ws
        self.state = ConnectionState(Role.NODE)
        self.ids = itertools.count(1)
        self.lock = anyio.Lock()
        self.closing = False

    def next_id(self) -> int:
        return next(self.ids)

    async def send(self, frame: Frame) -> None:
        async with self.lock:
            await self.send_locked(frame)

    async def send_locked(self, frame: Frame) -> None:
        data = encode(frame)
        self.state.on_send(frame)
        await self.ws.send(data)  # type: ignore[attr-defined]

    async def receive(self) -> Frame:
        data = await self.ws.recv()  # type: ignore[attr-defined]
        frame = decode(data, max_size=MAX_FRAME_SIZE)
        self.state.on_receive(frame)
        return frame

    async def close(self, code: int, reason: str) -> None:
        self.closing = True
        self.state.close()
        await self.ws.close(code, reason)  # type: ignore[attr-defined]


class Node:
    """A mesh node. `await Node(config).run()` until `shutdown()` or a fatal close."""

    def __init__(self, config: NodeConfig) -> None:
        check_config(config)
        self.config = config
        self.urls = [config.registry, *config.registries]
        self._current = 0
        self.url = mesh_url(config.registry)
        self.access = RegistryAccess(
            http_base(config.registry), config.token, str(config.ca_file) if config.ca_file else None
        )
        self.state = NodeState.load(config.data_dir)
        self.verifier = Verifier(
            http_base(config.registry),
            TrustStore(config.data_dir / TRUST_FILE),
            allow_unsigned=config.allow_unsigned,
        )
        self.outbox = Outbox()
        self.relay = CallRelay(self._channel_for, pool_for=self._pool_for)
        self.sampler = SystemSampler()
        self.cache: ObjectCache | None = None
        self.manager: ReplicaManager | None = None
        self.welcome: Welcome | None = None
        self.connections = 0  # how many times the node was welcomed
        self.connected = anyio.Event()  # set while welcomed; a fresh one after each drop
        self._conn: MeshSocket | None = None
        self._reporting = False  # whether status changes are queued for the hub
        self._stopping = False
        self._shutdown = anyio.Event()

    # -- life ------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the node: replicas stopped, socket closed with 1001. Safe to call from any task."""
        self._stopping = True
        self._shutdown.set()

    async def run(self, *, handle_signals: bool = False) -> None:
        """Run until `shutdown()`; raises AuthError, NotFoundError or NodeReplaced on a fatal end.

        With `handle_signals` (main thread only), SIGINT and SIGTERM call `shutdown()`.
        """
        with lock_data_dir(self.config.data_dir):
            # Read again under the lock: another process may have written it before we held it.
            self.state = NodeState.load(self.config.data_dir)
            self.cache = ObjectCache.open(self.config.data_dir / "objects.git")
            try:
                await self._run(handle_signals)
            finally:
                self.cache.close()

    async def _on_signals(self) -> None:
        import signal

        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for signum in received:
                logger.info("%s: stopping the replicas and disconnecting", signal.Signals(signum).name)
                self.shutdown()

    async def _run(self, handle_signals: bool) -> None:
        assert self.cache is not None
        # The MCP client costs about a second to import: paid once here, not by the first health
        # check, which would hold up every other replica's start on the event loop.
        import mcp.client.client  # noqa: F401

        self.manager = ReplicaManager(
            data_dir=self.config.data_dir,
            state=self.state,
            cache=self.cache,
            access=self.access,
            capacity=self.config.capacity,
            base_env=base_environment(self.config.environ),
            supervisor_settings=self.config.supervisor,
            replace_grace=self.config.stop_grace,
            on_status=self._on_status,
            on_log=self._on_log,
            verifier=self.verifier,
            on_tools=self._on_tools,
            replica_logs=ReplicaLogs(
                self.config.data_dir / "logs", self.config.replica_log_bytes, self.config.replica_log_files
            ),
        )
        if self.config.allow_unsigned:
            logger.warning(
                "WARNING: this node runs UNSIGNED releases and deployments (--allow-unsigned): "
                "for development only"
            )
        metrics_server: Any = None
        if self.config.metrics_port is not None:
            from mcpz.node import metrics

            metrics_server, bound = metrics.serve(
                self.manager, self.config.metrics_host, self.config.metrics_port
            )
            logger.info("metrics on http://%s:%d/metrics", self.config.metrics_host, bound)
        try:
            await self._run_manager(handle_signals)
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()

    async def _run_manager(self, handle_signals: bool) -> None:
        assert self.manager is not None
        failure: McpzError | None = None
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(self._on_signals)
            tg.start_soon(self.manager.run)
            await self.manager.ready()
            if self.config.gc_interval > 0:
                tg.start_soon(self._collect_garbage, self.config.gc_interval)

            async def connection() -> None:
                nonlocal failure
                try:
                    await self._connect_loop()
                except (AuthError, NotFoundError, NodeReplaced) as e:
                    failure = e
                finally:
                    self._shutdown.set()

            tg.start_soon(connection)
            await self._shutdown.wait()
            self._stopping = True
            logger.info("stopping %d replica(s)", len(self.manager.live))
            await self.manager.shutdown(self.config.stop_grace)
            await self._close(CLOSE_GOING_AWAY, "the node is shutting down")
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _collect_garbage(self, interval: float) -> None:
        """`mcpz node gc` on a schedule: releases and checkouts no replica runs (mcpz.node.gc keeps
        whatever was written in the last 10 minutes while the node runs)."""
        from mcpz.node.gc import collect_node_garbage

        while True:
            await anyio.sleep(interval)
            try:
                report = await anyio.to_thread.run_sync(collect_node_garbage, self.config.data_dir)
            except Exception as e:  # a failed collection must never stop the node
                logger.warning("node gc failed: %s", e)
                continue
            if report.freed_bytes:
                logger.info(
                    "node gc freed %d bytes: %d releases, %d checkouts",
                    report.freed_bytes, len(report.releases), len(report.checkouts),
                )  # fmt: skip

    async def _close(self, code: int, reason: str) -> None:
        conn = self._conn
        if conn is None or conn.closing:
            return
        with anyio.move_on_after(5), anyio.CancelScope(shield=True):
            if conn.state.is_open:
                async with conn.lock:
                    await self._flush(conn)
            try:
                await conn.close(code, reason)
            except Exception as e:  # the socket may already be gone: closing is best effort
                logger.debug("closing the connection: %s", e)

    # -- the connection loop ---------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        attempt = 0
        while not self._stopping:
            outcome = await self._connect_once()
            if outcome.action is CloseAction.REPLACED:
                raise NodeReplaced(
                    f"the registry closed this node's connection: {outcome.detail or 'replaced'}",
                    hint=f"another node process uses the node id {self.state.node_id}: "
                    "give each node its own --data folder",
                )
            if outcome.action is CloseAction.EXIT or self._stopping:
                return
            if outcome.welcomed:
                attempt = 0
            self._next_registry()
            delay = backoff(attempt, self.config.backoff_base, self.config.backoff_cap)
            attempt += 1
            logger.info(
                "reconnecting in %.2fs (attempt %d)%s",
                delay,
                attempt,
                f": {outcome.detail}" if outcome.detail else "",
            )
            with anyio.move_on_after(delay):
                await self._shutdown.wait()

    def _next_registry(self) -> None:
        """Point the next attempt at the next replica given (`NodeConfig.registries`), if any."""
        if len(self.urls) < 2:
            return
        self._current = (self._current + 1) % len(self.urls)
        registry = self.urls[self._current]
        self.url = mesh_url(registry)
        # Releases are fetched from the replica the node is on (the token goes to it alone).
        self.access = replace(self.access, base_url=http_base(registry))
        if self.manager is not None:
            self.manager.access = self.access
        logger.info("next registry: %s", self.url)

    async def _connect_once(self) -> _Outcome:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        config = self.config
        try:
            async with open_mesh_socket(
                self.url, config.token, "mcpz-node", config.ca_file, config.open_timeout
            ) as ws:
                conn = MeshSocket(ws)
                self._conn = conn
                try:
                    return await self._session(conn)
                except ConnectionClosed as e:  # while saying hello
                    return self._closed(conn, e)
                finally:
                    self._conn = None
                    self._reporting = False
                    if self.connected.is_set():
                        self.connected = anyio.Event()
        except InvalidStatus as e:
            status = e.response.status_code
            message = body_message(e.response.body) or e.response.reason_phrase
            if status in (401, 403):
                raise AuthError(
                    f"the registry refused the node's token (HTTP {status}): {message}",
                    hint="a node needs a token with scope node: mcpz keys create --scope node",
                ) from None
            if status == 404:
                raise NotFoundError(
                    f"{self.url} is not a mesh hub (HTTP 404)",
                    hint="check --registry: it is the registry's URL",
                ) from None
            return _Outcome(False, detail=f"HTTP {status}: {message}")
        except (OSError, TimeoutError, InvalidHandshake) as e:
            return _Outcome(False, detail=str(e) or type(e).__name__)
        return _Outcome(False, detail="the connection ended")  # only if the socket swallowed an error

    def _closed(self, conn: MeshSocket, closed: ConnectionClosed) -> _Outcome:
        code = closed.rcvd.code if closed.rcvd is not None else None
        reason = closed.rcvd.reason if closed.rcvd is not None else str(closed)
        welcomed = self.welcome is not None
        if conn.closing:
            return _Outcome(welcomed, CloseAction.RECONNECT, f"closed by the node ({code}) {reason}".strip())
        action = close_action(code)
        logger.info("the registry closed the connection: %s %s", code, reason)
        return _Outcome(welcomed, action, f"{code} {reason}".strip())

    async def _session(self, conn: MeshSocket) -> _Outcome:
        from websockets.exceptions import ConnectionClosed

        assert self.manager is not None
        self.welcome = None
        self.outbox.reset()
        await conn.send(hello_frame(self.config, self.state, conn.next_id()))
        # From the hello's snapshot on, status changes are queued; they go once welcomed.
        self._reporting = True
        try:
            with anyio.fail_after(self.config.welcome_timeout):
                first = await conn.receive()
        except TimeoutError:
            await conn.close(CLOSE_NORMAL, "no welcome")
            return _Outcome(False, detail=f"no welcome within {self.config.welcome_timeout:g}s")
        except ProtocolError as e:
            await conn.close(e.close_code, e.reason)
            return _Outcome(False, detail=f"protocol error: {e.message}")
        if isinstance(first, Error):
            logger.warning("the registry refused the hello: %s: %s", first.code, first.message)
            await conn.close(CLOSE_NORMAL, "hello refused")
            return _Outcome(False, detail=f"hello refused: {first.code}: {first.message}")
        assert isinstance(first, Welcome)
        self.welcome = first
        self.connections += 1
        if self.state.node_id != first.node_id:
            self.state.node_id = first.node_id
            self.state.save()
        logger.info(
            "connected to %s as node %s (heartbeat every %gs)",
            self.url,
            first.node_id,
            first.heartbeat_interval,
        )
        self.connected.set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeats, conn, first.heartbeat_interval)
            tg.start_soon(self._sender, conn)
            tg.start_soon(self.relay.serve, conn.send, conn.next_id)
            try:
                while True:
                    try:
                        frame = await conn.receive()
                    except ConnectionClosed as e:
                        return self._closed(conn, e)
                    except ProtocolError as e:
                        logger.warning("closing the connection: %s", e.message)
                        await conn.close(e.close_code, e.reason)
                        return _Outcome(True, detail=f"protocol error: {e.message}")
                    self._dispatch(conn, frame)
            finally:
                tg.cancel_scope.cancel()
        return _Outcome(True)  # not reached: the loop above ends by return or ConnectionClosed

    # -- frames ----------------------------------------------------------------------------------

    def _dispatch(self, conn: MeshSocket, frame: Frame) -> None:
        """Handle one frame from the hub. Synchronous: replies are queued in order, work runs elsewhere."""
        assert self.manager is not None
        if isinstance(frame, Deploy):
            try:
                decision = self.manager.deploy(frame)
            except (McpzError, OSError) as e:
                logger.exception("deploy %s@%d failed", frame.replica_id, frame.epoch)
                self.outbox.put(ErrorItem(frame.id, ErrorCode.INTERNAL, f"the node could not accept it: {e}"))
                return
            code = decision.error_code
            if code is None:
                self.outbox.put(AckItem(frame.id))
            else:
                self.outbox.put(ErrorItem(frame.id, code, decision.message))
        elif isinstance(frame, Stop):
            self.outbox.put(AckItem(frame.id))  # before the statuses the stop causes
            try:
                self.manager.stop(frame)
            except (McpzError, OSError):
                logger.exception("stop %s@%d failed", frame.replica_id, frame.epoch)
        elif isinstance(frame, Call):
            self.relay.call(frame)
        elif isinstance(frame, Cancel):
            self.relay.cancel(frame)
        elif isinstance(frame, Notify):
            self.relay.notify(frame)
        elif isinstance(frame, EndSession):
            self.relay.end_session(frame)
        elif isinstance(frame, Error):
            logger.warning(
                "the registry reports an error about frame %s: %s: %s", frame.ref, frame.code, frame.message
            )
        elif isinstance(frame, Ack):
            logger.debug("ignoring %s frame %d", frame.TYPE, frame.id)

    async def _sender(self, conn: MeshSocket) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                async with conn.lock:
                    await self._flush(conn)
                    delay = self.outbox.log_delay()
                    if delay == 0:
                        for log in self.outbox.take_logs(conn.next_id):
                            await conn.send_locked(log)
                        continue
                await self.outbox.wait(delay)
        except ConnectionClosed:
            return  # the receiving side sees the close too, and decides what comes next

    async def _flush(self, conn: MeshSocket) -> None:
        """Send every queued reply and status (the caller holds `conn.lock`)."""
        for item in self.outbox.take_control():
            try:
                await conn.send_locked(item.frame(conn.next_id()))
            except ProtocolError as e:  # a bug of ours; the frame is dropped, the connection kept
                logger.error("cannot send %s: %s", type(item).__name__, e.message)

    async def _heartbeats(self, conn: MeshSocket, interval: float) -> None:
        from websockets.exceptions import ConnectionClosed

        assert self.manager is not None
        while True:
            await anyio.sleep(interval)
            figures = self.sampler.sample()
            frame = Heartbeat(
                id=conn.next_id(),
                cpu_percent=figures.cpu_percent,
                memory_used=figures.memory_used,
                memory_total=figures.memory_total,
                load=figures.load,
                replicas=self.manager.reports(),
            )
            try:
                await conn.send(frame)
            except ConnectionClosed:
                return
            except ProtocolError as e:  # a bug of ours: skip this beat, keep the connection
                logger.error("cannot send a heartbeat: %s", e.message)

    # -- from the replicas -----------------------------------------------------------------------

    def _channel_for(self, replica_id: str, epoch: int) -> StdioChannel | None:
        return self.manager.channel(replica_id, epoch) if self.manager is not None else None

    def _pool_for(self, replica_id: str, epoch: int) -> SessionPool | None:
        return self.manager.pool(replica_id, epoch) if self.manager is not None else None

    def _on_status(self, assignment: Assignment, exit_code: int | None) -> None:
        if self._reporting:
            self.outbox.put(
                StatusItem(
                    assignment.replica_id, assignment.epoch, assignment.status, assignment.detail, exit_code
                )
            )

    def _on_log(self, replica_id: str, epoch: int, stream: LogStream, line: str) -> None:
        self.outbox.log(replica_id, epoch, stream, line)

    def _on_tools(self, assignment: Assignment, answered: list[dict[str, Any]]) -> None:
        """Report a replica's tools, for a release the hub has none recorded of (observed ones)."""
        payload = json.dumps(answered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(payload) > MAX_CANONICAL_BYTES:
            logger.warning(
                "%s: its tools/list is too large to report (%d bytes)", assignment.replica_id, len(payload)
            )
            return
        if self._reporting:
            self.outbox.put(ToolsItem(assignment.replica_id, assignment.epoch, payload))


def body_message(body: bytes | bytearray) -> str:
    text = bytes(body[:2000]).decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text.splitlines()[0][:200] if text else ""
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data))
        if isinstance(error, dict):
            return str(error.get("message", error))[:200]
        return str(error)[:200]
    return text[:200]
