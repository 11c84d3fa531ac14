"""Registry replicas: any replica serves any request, one of them leads the mesh.

The mesh's state (the deployment service's mirror, its reconciler and liveness sweeper, the calls
waiting for a node's answer, the gateway's sessions) lives in the memory of one replica: the one
holding lease `deployments` (`registry_server.leases`). Every other replica relays to it over NATS
(`registry_server.bus`):

- **node sockets**: a node connects to any replica. A replica that does not lead accepts the
  socket (after checking its token) and relays its frames, as bytes, to the leader, whose hub
  runs the connection as if it were its own (`RelayedSocket`, the hub's `Socket`). A deploy
  accepted anywhere thus reaches the node, and a node's hello through a relay is reconciled as
  any hello (its running replicas are kept);
- **requests** (`registry_server.mesh.http`): `/v1/deployments...` and `/v1/nodes` are relayed
  whole to the leader (method, path, headers, body), and its answer streamed back as it is
  written; the client's going away is relayed as `http.disconnect`;
- **gateway calls** (`registry_server.mesh.placements`) do not involve the leader: every replica
  runs the gateway, reads where replicas run from the leader's placement table (published each
  second), and sends a call's frames to the replica holding the node's socket (`mcpz.node.<A>`),
  which injects them into that socket and sends the answers back (`mcpz.back.<B>.<call id>`). A gateway
  session belongs to the replica that opened it (its id starts `<replica>~`): its requests landing
  on another replica are relayed whole to the owner (`mcpz.http.to.<replica>`).

A replica that wins the lease loads the mirror from the database and says so (`mcpz.leader`):
every replica closes the sockets it relays to a former leader with 1013, and their nodes
reconnect (to the same replica) and say hello to the new leader, which reconciles what they
report without restarting anything. A replica that loses the lease stops at once: the service
halts without writing, its connections close, and its writes were fenced by the lease's epoch
anyway (`service.fence`). Replicas say they are alive every second (`mcpz.alive.<name>`); the
leader ends the relayed sockets of a replica silent for `SILENT_AFTER` seconds, so the calls on
them fail at once rather than at their timeout.

Subjects (docs/scaling.md): `mcpz.lead.http` and `mcpz.lead.ws` (queue group `lead`, only the
leader subscribes), `mcpz.http.in.<id>` (the rest of a request body, the client's disconnect),
`mcpz.ws.<id>.up` / `.down` (a relayed socket's frames), `mcpz.leader`, `mcpz.alive.<replica>`,
`mcpz.placements[.get]`, `mcpz.node.<replica>`, `mcpz.back.<replica>.<call id>`, `mcpz.http.to.<replica>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mcpz.mesh import CLOSE_TRY_AGAIN_LATER, Call, Cancel, Notify, ProtocolError, Result, decode
from registry_server import leases
from registry_server.bus import MAX_PAYLOAD, Bus, header, meta, no_responders
from registry_server.leases import Held, Leadership
from registry_server.mesh.connector import ConnectorConnection
from registry_server.mesh.hub import ConnectionFactory, MeshHub, Socket
from registry_server.mesh.placements import (
    BACK,
    NODE,
    PLACEMENTS,
    PLACEMENTS_GET,
    ClusterRouter,
    table_message,
    table_of,
)

log = logging.getLogger("registry_server.cluster")

LEASE = "deployments"
LEAD_HTTP = "mcpz.lead.http"
LEAD_WS = "mcpz.lead.ws"
LEADER = "mcpz.leader"
ALIVE = "mcpz.alive"
RELAYED_PREFIXES = ("/v1/deployments", "/v1/nodes")
"""Paths answered from the mesh's memory: relayed to the leader. (The gateway, `/mcp/...`, runs
on every replica: `registry_server.mesh.placements`; a session's requests go to the replica that
opened it, `owner_of`.)"""
OWNED_HTTP = "mcpz.http.to"
"""`mcpz.http.to.<replica>`: a request for a gateway session that replica owns."""
SESSION_MARK = "~"
"""A registry replica's gateway session ids are `<replica>~<random>`."""
ACCEPT_WAIT = 3.0
"""Seconds a relay waits for the leader to take a request or socket before answering 503."""
TICK = 2.0
"""While a relayed request runs, the leader says so this often..."""
SILENT_LIMIT = 10.0
"""...and the relaying replica gives up on it after this long without a word."""
ALIVE_EVERY = 1.0
SILENT_AFTER = 3.0
"""Seconds without an alive message before the leader treats a replica's relayed sockets as gone."""


def relayed(path: str) -> bool:
    return path.startswith(RELAYED_PREFIXES)


def owner_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The replica owning the gateway session a request names ("" for none)."""
    for key, value in headers:
        if key.lower() == b"mcp-session-id":
            sid = value.decode("latin-1")
            return sid.split(SESSION_MARK, 1)[0] if SESSION_MARK in sid else ""
    return ""


def pieces(data: bytes) -> list[bytes]:
    """`data` in parts NATS takes (one empty part for no data)."""
    return [data[i : i + MAX_PAYLOAD] for i in range(0, len(data), MAX_PAYLOAD)] or [b""]


class Cluster:
    """This replica's part: leading the mesh when it holds the lease, relaying to the leader when not."""

    def __init__(self, bus: Bus, leadership: Leadership, hub: MeshHub) -> None:
        self.bus = bus
        self.leadership = leadership
        self.hub = hub
        # The leader's side of relayed requests (`registry_server.mesh.http`, which holds the
        # web framework's part): set by the app.
        self.serve_http: Callable[[Msg], Awaitable[None]] | None = None
        self.serve_owned: Callable[[Msg], Awaitable[None]] | None = None  # this replica's sessions
        self.name = bus.name
        self.lease: Held | None = None
        self.leader = ""  # the replica that said last it leads
        self.alive: dict[str, float] = {}  # replica -> monotonic time last heard
        self.relays: dict[str, _Relay] = {}  # sockets this replica relays, by id
        self.relayed_in: dict[str, RelayedSocket] = {}  # sockets the leader runs for others, by id
        self._lead_subs: list[Subscription] = []
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._switch = asyncio.Lock()
        # Gateway calls go from the replica they arrive at to the one holding the node's socket.
        self.router = ClusterRouter(hub.calls, self.name)
        hub.calls = self.router
        self.router.leading = lambda: self.leading
        self.router.send = self._send_down
        self.router.back = self._send_back
        self.router.fetch = self._fetch_table
        # Until this replica wins the lease, its service writes nothing.
        hub.service.fence = partial(leases.fence, held=None)
        hub.service.acting = lambda: self.leading

    @property
    def leading(self) -> bool:
        return self.lease is not None and self.leadership.leads(LEASE)

    async def start(self) -> None:
        self._subs = [
            await self.bus.subscribe(LEADER, self._on_leader),
            await self.bus.subscribe(f"{ALIVE}.*", self._on_alive),
            await self.bus.subscribe(PLACEMENTS, self._on_table),
            await self.bus.subscribe(f"{NODE}.{self.name}", self._on_node),
            await self.bus.subscribe(f"{BACK}.{self.name}.*", self.router.on_back),
            await self.bus.subscribe(f"{OWNED_HTTP}.{self.name}", self._on_owned_http),
        ]
        self._ticker = asyncio.create_task(self._beat(), name="cluster-alive")
        self.leadership.want(LEASE, on_won=self._won, on_lost=self._lost)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for relay in list(self.relays.values()):
            relay.end(CLOSE_TRY_AGAIN_LATER, "this registry replica is stopping")
        for sub in [*self._subs, *self._lead_subs]:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs, self._lead_subs = [], []
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- leading

    async def _won(self, held: Held) -> None:
        async with self._switch:
            self.hub.service.fence = partial(leases.fence, held=held)
            await self.hub.lead()
            self.lease = held
            self._lead_subs = [
                await self.bus.subscribe(LEAD_HTTP, self._on_http, queue="lead"),
                await self.bus.subscribe(LEAD_WS, self._on_socket, queue="lead"),
                await self.bus.subscribe(PLACEMENTS_GET, self._on_table_asked, queue="lead"),
            ]
            self.leader = self.name
            await self.bus.publish(LEADER, headers={"m": header({"leader": self.name, "epoch": held.epoch})})
        log.warning("leading the mesh", extra={"epoch": held.epoch})

    async def _lost(self, held: Held) -> None:
        async with self._switch:
            self.lease = None
            self.hub.service.fence = partial(leases.fence, held=None)
            for sub in self._lead_subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self._lead_subs = []
            await self.hub.follow("this registry replica no longer leads the mesh; reconnect")
            for sock in list(self.relayed_in.values()):
                sock.gone(CLOSE_TRY_AGAIN_LATER)
        log.warning("no longer leading the mesh", extra={"epoch": held.epoch})

    async def _on_leader(self, msg: Msg) -> None:
        leader = str(meta(msg).get("leader", ""))
        self.leader = leader
        # Sockets relayed to a former leader: their nodes say hello to the new one.
        for relay in list(self.relays.values()):
            if relay.leader != leader:
                relay.end(CLOSE_TRY_AGAIN_LATER, "the registry replica leading the mesh changed; reconnect")

    async def _beat(self) -> None:
        subject = f"{ALIVE}.{self.name}"
        while True:
            with contextlib.suppress(Exception):  # NATS away: it reconnects; others see us silent
                await self.bus.publish(subject)
                if self.leading:
                    await self.bus.publish(PLACEMENTS, table_message(table_of(self.router, self.name)))
            now = time.monotonic()
            for sock in list(self.relayed_in.values()):
                if now - self.alive.get(sock.holder, now) > SILENT_AFTER:
                    sock.gone(1006)
            for holder in set(self.router.holder_of.values()):
                if holder != self.name and now - self.alive.get(holder, now) > SILENT_AFTER:
                    self.router.holder_silent(holder)
            await asyncio.sleep(ALIVE_EVERY)

    async def _on_alive(self, msg: Msg) -> None:
        self.alive[msg.subject.rsplit(".", 1)[-1]] = time.monotonic()

    async def _on_http(self, msg: Msg) -> None:
        if self.serve_http is not None:
            self._spawn(self.serve_http(msg))

    async def _on_owned_http(self, msg: Msg) -> None:
        if self.serve_owned is not None:
            self._spawn(self.serve_owned(msg))

    def owns_elsewhere(self, owner: str) -> bool:
        """Whether replica `owner` is another one, alive: a session it owns is answered there."""
        heard = self.alive.get(owner)
        return owner != self.name and heard is not None and time.monotonic() - heard <= SILENT_AFTER

    # -- gateway calls (registry_server.mesh.placements)

    async def _on_table(self, msg: Msg) -> None:
        if not self.leading:
            self.router.table.load(json.loads(msg.data))

    async def _on_table_asked(self, msg: Msg) -> None:
        if self.leading and msg.reply:
            await self.bus.publish(msg.reply, table_message(table_of(self.router, self.name)))

    async def _fetch_table(self) -> None:
        with contextlib.suppress(Exception):  # no leader right now: the cached table stays
            answer = await self.bus.request(PLACEMENTS_GET, timeout=1.0)
            if answer.data and not self.leading:
                self.router.table.load(json.loads(answer.data))

    async def _send_down(self, holder: str, relay: str, data: bytes, head: dict[str, str]) -> None:
        if holder == self.name:
            await self._inject(relay, data, head)
        else:
            # A call's reply subject is where its answers come back: with the holder gone, the
            # server's no-responders status arrives there at once (the call fails: replica-lost).
            reply = f"{BACK}.{self.name}.{head['call']}" if head.get("t") == Call.TYPE else ""
            await self.bus.publish(f"{NODE}.{holder}", data, reply=reply, headers={**head, "relay": relay})

    async def _on_node(self, msg: Msg) -> None:
        head = dict(msg.headers or {})
        await self._inject(head.get("relay", ""), msg.data, head)

    async def _inject(self, relay_id: str, data: bytes, head: dict[str, str]) -> None:
        """A frame from replica head["from"] for the node whose socket this replica holds."""
        origin, call_id, kind = head.get("from", ""), int(head.get("call", "0") or 0), head.get("t", "")
        why = ""
        if relay_id:
            relay = self.relays.get(relay_id)
            if relay is None:
                why = "lost"
            else:
                if kind == Call.TYPE:
                    relay.remote[call_id] = origin
                elif kind == Cancel.TYPE:
                    relay.remote.pop(call_id, None)
                try:
                    await relay.socket.send_bytes(data)
                except (OSError, RuntimeError):
                    relay.remote.pop(call_id, None)
                    why = "lost"
        elif self.leading:
            conn = self.hub.connections.get(head.get("node", ""))
            try:
                why = "lost" if conn is None else self.router.carry(origin, conn, decode(data))
            except ProtocolError:
                why = "lost"
        else:
            why = "lost"
        if why and kind == Call.TYPE:
            await self._send_back(origin, call_id, b"", why)

    async def _send_back(self, origin: str, call_id: int, data: bytes, kind: str) -> None:
        if origin == self.name:
            self.router.answer(kind, call_id, data)
        else:
            await self.bus.publish(f"{BACK}.{origin}.{call_id}", data, headers={"t": kind})

    # -- node sockets: the relaying side

    async def relay_socket(self, socket: Socket, account_id: int, url: str, agent: str | None) -> None:
        """Run an accepted node (or connector) socket through the leader until either ends."""
        relay = _Relay(self, socket)
        self.relays[relay.id] = relay
        try:
            await relay.run(account_id, url, agent)
        finally:
            self.relays.pop(relay.id, None)

    # -- node sockets: the leader's side

    async def _on_socket(self, msg: Msg) -> None:
        head = meta(msg)
        reply = msg.reply
        if not self.leading:
            await self.bus.publish(reply, headers={"t": "c", "code": str(CLOSE_TRY_AGAIN_LATER)})
            return
        sock = RelayedSocket(self.bus, str(head["id"]), str(head["holder"]), reply)
        await sock.open()
        self.relayed_in[sock.id] = sock
        self.alive.setdefault(sock.holder, time.monotonic())
        await self.bus.publish(reply, headers={"t": "ok", "leader": self.name})
        agent = head.get("agent")
        factory: ConnectionFactory | None = partial(ConnectorConnection, agent=agent) if agent else None
        self._spawn(self._run_socket(sock, int(head["account"]), str(head["url"]), factory))

    async def _run_socket(
        self, sock: RelayedSocket, account_id: int, url: str, factory: ConnectionFactory | None
    ) -> None:
        try:
            await self.hub.attach(sock, account_id, url, factory)
        finally:
            self.relayed_in.pop(sock.id, None)
            await sock.dispose()


class _Relay:
    """One socket accepted here and run by the leader: frames up, frames and close down."""

    def __init__(self, cluster: Cluster, socket: Socket) -> None:
        self.cluster = cluster
        self.socket = socket
        self.id = secrets.token_hex(8)
        self.leader = ""
        self.down: asyncio.Queue[Msg | tuple[int, str]] = asyncio.Queue()
        self.remote: dict[int, str] = {}  # calls injected for other replicas: call id -> origin

    def end(self, code: int, reason: str) -> None:
        self.down.put_nowait((code, reason))

    async def run(self, account_id: int, url: str, agent: str | None) -> None:
        bus = self.cluster.bus

        async def on_down(msg: Msg) -> None:
            self.down.put_nowait(msg)

        sub = await bus.subscribe(f"mcpz.ws.{self.id}.down", on_down)
        up = f"mcpz.ws.{self.id}.up"
        try:
            head = {
                "id": self.id,
                "account": account_id,
                "url": url,
                "agent": agent,
                "holder": self.cluster.name,
            }
            await bus.publish(LEAD_WS, reply=f"mcpz.ws.{self.id}.down", headers={"m": header(head)})
            try:
                async with asyncio.timeout(ACCEPT_WAIT):
                    first = await self.down.get()
            except TimeoutError:
                first = (CLOSE_TRY_AGAIN_LATER, "")
            if isinstance(first, tuple) or no_responders(first) or (first.headers or {}).get("t") != "ok":
                await self._close(
                    CLOSE_TRY_AGAIN_LATER, "no registry replica leads the mesh right now; try again"
                )
                return
            self.leader = (first.headers or {}).get("leader", "")
            if self.cluster.leader and self.leader != self.cluster.leader:
                self.cluster.leader = self.leader
            pump = asyncio.create_task(self._pump_up(up))
            try:
                await self._pump_down(pump)
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            for call_id, origin in list(self.remote.items()):  # the node is gone: so are its answers
                with contextlib.suppress(Exception):
                    await self.cluster._send_back(origin, call_id, b"", "lost")
            self.remote.clear()

    async def _back(self, data: bytes) -> bool:
        """Whether `data` answers a call injected here (sent back to its replica, not to the leader)."""
        try:
            frame = decode(data)
        except ProtocolError:
            return False
        if not isinstance(frame, Result | Notify) or frame.call_id is None:
            return False
        origin = (
            self.remote.pop(frame.call_id, None)
            if isinstance(frame, Result)
            else self.remote.get(frame.call_id)
        )
        if origin is None:
            return False
        await self.cluster._send_back(origin, frame.call_id, data, "frame")
        return True

    async def _pump_up(self, up: str) -> None:
        bus = self.cluster.bus
        while True:
            message = await self.socket.receive()
            if message["type"] == "websocket.disconnect":
                await bus.publish(up, headers={"t": "x", "code": str(message.get("code") or 1006)})
                self.down.put_nowait((0, ""))
                return
            data = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode()
            if self.remote and await self._back(data):
                continue
            chunks = pieces(data)
            for i, chunk in enumerate(chunks):
                await bus.publish(up, chunk, headers={"t": "b", "more": "1" if i < len(chunks) - 1 else "0"})

    async def _pump_down(self, pump: asyncio.Task[None]) -> None:
        partial_frame = bytearray()
        while True:
            getter = asyncio.ensure_future(self.down.get())
            await asyncio.wait({getter, pump}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():  # the node went away (told to the leader already)
                getter.cancel()
                return
            item = getter.result()
            if isinstance(item, tuple):
                code, reason = item
                if code:
                    with contextlib.suppress(Exception):
                        await self.cluster.bus.publish(
                            f"mcpz.ws.{self.id}.up", headers={"t": "x", "code": "1006"}
                        )
                    await self._close(code, reason)
                return
            headers = item.headers or {}
            kind = headers.get("t")
            if kind == "b":
                partial_frame += item.data
                if headers.get("more") != "1":
                    data, partial_frame = bytes(partial_frame), bytearray()
                    try:
                        await self.socket.send_bytes(data)
                    except OSError:
                        return
            elif kind == "c":
                await self._close(int(headers.get("code", CLOSE_TRY_AGAIN_LATER)), headers.get("reason", ""))
                return

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(TimeoutError, OSError, RuntimeError):
            async with asyncio.timeout(1.0):
                await self.socket.close(code, reason)


class RelayedSocket:
    """On the leader: a node socket accepted by replica `holder`, as the hub's `Socket`."""

    def __init__(self, bus: Bus, sid: str, holder: str, down: str) -> None:
        self.bus = bus
        self.id = sid
        self.holder = holder
        self.down = down
        self.closed = False
        self._inbox: asyncio.Queue[Msg | int] = asyncio.Queue()
        self._partial = bytearray()
        self._sub: Subscription | None = None

    async def open(self) -> None:
        async def on_up(msg: Msg) -> None:
            self._inbox.put_nowait(msg)

        self._sub = await self.bus.subscribe(f"mcpz.ws.{self.id}.up", on_up)

    def gone(self, code: int) -> None:
        """The relaying replica went silent (or this one stopped leading): the node is away."""
        self._inbox.put_nowait(code)

    async def dispose(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def receive(self) -> Mapping[str, Any]:
        while True:
            item = await self._inbox.get()
            if isinstance(item, int):
                self.closed = True
                return {"type": "websocket.disconnect", "code": item}
            headers = item.headers or {}
            if headers.get("t") == "x":
                self.closed = True
                return {"type": "websocket.disconnect", "code": int(headers.get("code", 1006))}
            self._partial += item.data
            if headers.get("more") == "1":
                continue
            data, self._partial = bytes(self._partial), bytearray()
            return {"type": "websocket.receive", "bytes": data}

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("the relayed node socket is closed")
        chunks = pieces(data)
        try:
            for i, chunk in enumerate(chunks):
                more = "1" if i < len(chunks) - 1 else "0"
                await self.bus.publish(self.down, chunk, headers={"t": "b", "more": more})
        except Exception as e:  # NATS closed or away: to the hub, a socket whose peer is gone
            raise ConnectionResetError(f"cannot relay to the node: {e}") from e

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.bus.publish(self.down, headers={"t": "c", "code": str(code), "reason": reason})
        except Exception as e:
            raise ConnectionResetError(f"cannot relay to the node: {e}") from e
