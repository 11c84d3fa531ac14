"""`mcpz connect`: run an agent on this machine and attach it to the mesh as a development deployment.

    Connector.run()
     ├── Supervisor.run()      the agent process from its folder: started, health-checked, restarted
     └── the connection loop   connect ─► hello ─► welcome ─► calls relayed ─► closed ─► backoff ─┐
                                  ▲──────────────────────────────────────────────────────────────┘

The registry's endpoint is `/v1/connect/{namespace}/{name}` (`registry_server.mesh.connector`); the
connector speaks the mesh protocol as a node with one replica and no capacity for deploys, so
the node's `CallRelay` relays the gateway's calls to the agent exactly as on a mesh node. Once
welcomed, the agent answers at `{registry}/mcp/{namespace}/{name}@dev`, to its namespace's owner
and members. The socket is outbound only: the machine needs no open port.

How it ends: `shutdown()` (Ctrl-C) closes the socket with 1000 and stops the agent; 401/403
raise AuthError; a registry not reached at the first attempt a NetworkError; close 4409 (the
agent is connected from elsewhere) a RefusedError; an agent that keeps failing its health check
an AgentError. Any other drop is retried with backoff, and the agent keeps running meanwhile.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from mcpz._version import __version__
from mcpz.errors import AgentError, AuthError, NetworkError, NotFoundError, RefusedError, UsageError
from mcpz.local.process import agent_process
from mcpz.mesh import (
    CLOSE_NORMAL,
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    Call,
    Cancel,
    Heartbeat,
    Hello,
    LogStream,
    Notify,
    ReplicaStatus,
    Welcome,
    backoff,
)
from mcpz.names import name_problem
from mcpz.node.agent import MeshSocket, body_message, http_base, mesh_url, open_mesh_socket
from mcpz.node.channel import StdioChannel
from mcpz.node.process import ProcessSpec
from mcpz.node.relay import CallRelay
from mcpz.node.supervisor import Supervisor, SupervisorSettings
from mcpz.node.sysinfo import SystemSampler

logger = logging.getLogger(__name__)

CONNECT_PATH = "/v1/connect"
DEV_VERSION = "dev"
CLOSE_TAKEN = 4409


@dataclass(frozen=True)
class ConnectConfig:
    registry: str
    token: str
    path: Path
    name: str = ""  # namespace/name; default: the manifest's name
    ca_file: Path | None = None
    open_timeout: float = 10.0
    welcome_timeout: float = 10.0
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP


class Connector:
    def __init__(self, config: ConnectConfig, *, on_log: Callable[[str], None] | None = None) -> None:
        process = agent_process(config.path)
        agent = config.name or process.name
        problem = name_problem(agent)
        if problem:
            raise UsageError(f'"{agent}" {problem}', hint="give --name NAMESPACE/NAME")
        self.config = config
        self.agent = agent
        base = http_base(config.registry)
        self.endpoint = mesh_url(config.registry).removesuffix("/v1/mesh") + f"{CONNECT_PATH}/{agent}"
        self.url = f"{base}/mcp/{agent}@{DEV_VERSION}"
        self.on_log = on_log
        self.supervisor = Supervisor(
            ProcessSpec(argv=process.argv, cwd=process.cwd, env=process.env),
            name=agent,
            settings=SupervisorSettings(liveness_interval=30.0),
            on_log=self._log,
        )
        self.relay = CallRelay(self._channel_for)
        self.sampler = SystemSampler()
        self.attached = anyio.Event()
        self._socket: MeshSocket | None = None
        self._stopping = False
        self._shutdown = anyio.Event()

    def shutdown(self) -> None:
        self._stopping = True
        self._shutdown.set()

    def _channel_for(self, replica_id: str, epoch: int) -> StdioChannel | None:
        del replica_id, epoch  # a connector holds one replica
        return self.supervisor.channel

    def _log(self, stream: LogStream, line: str) -> None:
        if self.on_log is not None:
            self.on_log(line)

    async def run(self) -> None:
        """Until `shutdown()`: AuthError, RefusedError or AgentError on a fatal end."""
        import mcp.client.client  # noqa: F401  (paid once here, not by the first health check)

        failure: Exception | None = None
        async with anyio.create_task_group() as tg:

            async def supervise() -> None:
                nonlocal failure
                if await self.supervisor.run() == ReplicaStatus.FAILED:
                    failure = AgentError(
                        f"{self.agent} keeps failing: {self.supervisor.detail}",
                        hint=f"try it with `mcpz call --local {self.config.path} TOOL`",
                    )
                    self._shutdown.set()

            async def connection() -> None:
                nonlocal failure
                try:
                    await self._connect_loop()
                except (AuthError, NetworkError, NotFoundError, RefusedError) as e:
                    failure = e
                finally:
                    self._shutdown.set()

            tg.start_soon(supervise)
            while self.supervisor.status != ReplicaStatus.RUNNING and not self._shutdown.is_set():
                if self.supervisor.status == ReplicaStatus.FAILED:
                    break
                await anyio.sleep(0.05)
            if not self._shutdown.is_set():
                tg.start_soon(connection)
            await self._shutdown.wait()
            with anyio.CancelScope(shield=True):
                await self._close()
                await self.supervisor.stop(5.0, "the connector is stopping")
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _close(self) -> None:
        sock = self._socket
        if sock is None or sock.closing:
            return
        with anyio.move_on_after(3):
            try:
                await sock.close(CLOSE_NORMAL, "the connector is stopping")
            except Exception as e:  # the socket may be gone already: closing is best effort
                logger.debug("closing the connection: %s", e)

    async def _connect_loop(self) -> None:
        attempt = 0
        while not self._stopping:
            welcomed, detail = await self._connect_once()
            if self._stopping:
                return
            attempt = 0 if welcomed else attempt
            delay = backoff(attempt, self.config.backoff_base, self.config.backoff_cap)
            attempt += 1
            logger.warning("disconnected (%s); reconnecting in %.1fs", detail, delay)
            with anyio.move_on_after(delay):
                await self._shutdown.wait()

    async def _connect_once(self) -> tuple[bool, str]:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        config = self.config
        try:
            async with open_mesh_socket(
                self.endpoint, config.token, "mcpz-connect", config.ca_file, config.open_timeout
            ) as ws:
                sock = MeshSocket(ws)
                self._socket = sock
                try:
                    return await self._session(sock)
                except ConnectionClosed as e:
                    return self._closed(e)
                finally:
                    self._socket = None
        except InvalidStatus as e:
            status = e.response.status_code
            message = body_message(e.response.body) or e.response.reason_phrase
            if status in (401, 403):
                raise AuthError(
                    f"the registry refused to attach {self.agent} (HTTP {status}): {message}",
                    hint="a token with scope deploy in the agent's namespace is needed: `mcpz login`",
                ) from None
            if status == 404:
                raise NotFoundError(
                    f"{self.endpoint} has no connector endpoint (HTTP 404)", hint="check --registry"
                ) from None
            return False, f"HTTP {status}: {message}"
        except (OSError, TimeoutError, InvalidHandshake) as e:
            if not self.attached.is_set():
                # Never attached: a wrong URL or a registry that is not up. Say so now rather than
                # retry forever; a connection that worked once is retried with backoff.
                raise NetworkError(
                    f"cannot reach the registry at {self.endpoint}: {str(e) or type(e).__name__}",
                    hint="check --registry / MCPZ_REGISTRY, or start one with `mcpz registry serve`",
                ) from None
            return False, str(e) or type(e).__name__

    def _closed(self, closed: object) -> tuple[bool, str]:
        rcvd = getattr(closed, "rcvd", None)
        code = rcvd.code if rcvd is not None else None
        reason = rcvd.reason if rcvd is not None else str(closed)
        if code == CLOSE_TAKEN:
            raise RefusedError(reason, hint="stop the other `mcpz connect`, or use --name for another name")
        if code == CLOSE_NORMAL and not self._stopping:
            raise RefusedError(f"the registry detached the agent: {reason}")
        return self.attached.is_set(), f"{code} {reason}".strip()

    async def _session(self, sock: MeshSocket) -> tuple[bool, str]:
        from websockets.exceptions import ConnectionClosed

        hello = Hello(
            id=sock.next_id(),
            node_name=socket.gethostname()[:253] or "connector",
            capacity=0,
            software_version=__version__,
            features=("connector",),
        )
        await sock.send(hello)
        with anyio.fail_after(self.config.welcome_timeout):
            first = await sock.receive()
        if not isinstance(first, Welcome):
            return False, f"expected welcome, got {first.TYPE}"
        self.attached.set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeats, sock, first.heartbeat_interval)
            tg.start_soon(self.relay.serve, sock.send, sock.next_id)
            try:
                while True:
                    frame = await sock.receive()
                    if isinstance(frame, Call):
                        self.relay.call(frame)
                    elif isinstance(frame, Cancel):
                        self.relay.cancel(frame)
                    elif isinstance(frame, Notify):
                        self.relay.notify(frame)
            except ConnectionClosed as e:
                outcome = self._closed(e)
            finally:
                tg.cancel_scope.cancel()
        return outcome

    async def _heartbeats(self, sock: MeshSocket, interval: float) -> None:
        from websockets.exceptions import ConnectionClosed

        while True:
            await anyio.sleep(interval)
            figures = self.sampler.sample()
            beat = Heartbeat(
                id=sock.next_id(),
                cpu_percent=figures.cpu_percent,
                memory_used=figures.memory_used,
                memory_total=figures.memory_total,
                load=figures.load,
            )
            try:
                await sock.send(beat)
            except ConnectionClosed:
                return


def print_agent_line(line: str) -> None:
    """The agent's stderr, on the connector's stderr: it runs here, its output belongs here."""
    print(line, file=sys.stderr, flush=True)
