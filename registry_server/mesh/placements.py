"""Gateway calls between registry replicas without the leader in their path.

Every replica serves the gateway itself (`registry_server.mesh.cluster`). The leader knows where
things run (its deployment service's mirror and its hub); after each second it publishes its
**placement table** on `mcpz.placements` (and answers `mcpz.placements.get`): every running
replica of every deployment as a `Target`, with the registry replica that holds its node's socket
(`holder`) and, when that socket is relayed, the relay's id. Every replica caches the last table.

A call arriving at replica B for a `Target` whose node socket is held by replica A goes
B -> `mcpz.node.<A>` -> A -> node, and the node's `result` (and the call's `notify`s) come back
A -> `mcpz.back.<B>.<call id>` -> B; A == B writes to the local socket, no NATS. A intercepts, among the
frames its node sends, those of the calls it injected (their call ids, which B draws far above
the leader's own) and does not relay them to the leader. A `cancel` follows the same way down.
Timeouts and the client's going away are B's (the gateway's own code); overload: B bounds its
calls per replica as in one process, and A answers `busy` when the node's send queue is half
full (on the leader's own sockets). The node's socket ending, or A going silent, fails B's calls
on it at once (`ReplicaLost`).

`ClusterRouter` is the hub's `CallRouter` on a replica: while its replica leads, it is the plain
router (plus the calls it carries for others); while not, it reads the cached table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from mcpz.mesh import Call, Cancel, EndSession, Frame, Notify, ProtocolError, Result, decode, encode
from registry_server.bus import no_responders
from registry_server.mesh.calls import (
    DEV_VERSION,
    Busy,
    CallRouter,
    PendingCall,
    ReplicaLost,
    Target,
)

if TYPE_CHECKING:
    from registry_server.mesh.hub import NodeConnection

log = logging.getLogger("registry_server.cluster")

PLACEMENTS = "mcpz.placements"
PLACEMENTS_GET = "mcpz.placements.get"
NODE = "mcpz.node"
BACK = "mcpz.back"
FIRST_REMOTE_ID = 1 << 48
"""Call ids a non-leading replica draws start here (plus a random offset): the leader's own count
from 1, and a node keys its calls by id."""

Send = Callable[[str, str, bytes, dict[str, str]], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    target: Target
    holder: str  # the registry replica holding the node's socket
    relay: str  # that socket's relay id ("" when the holder is the leader and the socket its own)


class Table:
    """The last placement table this replica heard of."""

    def __init__(self) -> None:
        self.by_deployment: dict[str, list[Placement]] = {}
        self.deployments: dict[str, tuple[str, frozenset[str]]] = {}  # name -> current, versions
        self.received = 0.0

    def load(self, data: dict[str, Any]) -> None:
        found: dict[str, list[Placement]] = {}
        for row in data.get("targets", []):
            target = Target(
                str(row["deployment"]),
                str(row["replica_id"]),
                int(row["epoch"]),
                str(row["node_id"]),
                str(row["agent"]),
                str(row["version"]),
                bool(row["isolated"]),
            )
            found.setdefault(target.deployment, []).append(
                Placement(target, str(row["holder"]), str(row["relay"]))
            )
        self.by_deployment = found
        self.deployments = {
            name: (str(d["current"]), frozenset(d["versions"]))
            for name, d in data.get("deployments", {}).items()
        }
        self.received = time.monotonic()

    def placement(self, target: Target) -> Placement | None:
        for p in self.by_deployment.get(target.deployment, ()):
            if p.target == target:
                return p
        return None


def table_of(router: CallRouter, leader: str) -> dict[str, Any]:
    """The leader's placement table (see the module's docstring)."""
    from registry_server.mesh.cluster import RelayedSocket  # cluster imports this module

    rows: list[dict[str, Any]] = []
    targets: list[Target] = []
    deployments: dict[str, Any] = {}
    for name, deployment in router.service.deployments.items():
        if deployment.deleted:
            continue
        deployments[name] = {
            "current": deployment.template.version,
            "versions": sorted({r.template.version for r in deployment.revisions.values()}),
        }
        targets.extend(router.targets(name))
    for name in router.dev:
        targets.extend(router.targets(name, DEV_VERSION))
    for t in targets:
        conn = router.hub.connections.get(t.node_id)
        if conn is None:
            continue
        sock = conn.ws
        holder, relay = (sock.holder, sock.id) if isinstance(sock, RelayedSocket) else (leader, "")
        rows.append({**dataclasses.asdict(t), "holder": holder, "relay": relay})
    return {"targets": rows, "deployments": deployments}


class ClusterRouter(CallRouter):
    """The gateway's router on a registry replica (see the module's docstring)."""

    def __init__(self, base: CallRouter, name: str) -> None:
        super().__init__(base.hub, base.service, per_replica=base.per_replica)
        self.name = name
        self.table = Table()
        self.leading: Callable[[], bool] = lambda: False
        self.send: Send | None = None  # set by the cluster: (holder, relay, frame bytes, headers)
        self.fetch: Callable[[], Awaitable[None]] | None = None  # asks the leader for its table
        self.holder_of: dict[int, str] = {}  # a remote call's id -> the replica holding its node
        # Calls this replica (as leader) carries for others on its own sockets: id -> origin, conn.
        self.carried: dict[int, tuple[str, NodeConnection]] = {}
        self.back: Callable[[str, int, bytes, str], Awaitable[None]] | None = None  # to a replica
        self._fetching = False
        self._remote_ids = itertools.count(FIRST_REMOTE_ID + secrets.randbelow(1 << 40))

    # -- choosing a replica

    def targets(self, deployment: str, version: str | None = None) -> list[Target]:
        if self.leading():
            return super().targets(deployment, version)
        return [
            p.target
            for p in self.table.by_deployment.get(deployment, ())
            if (version is None and p.target.version != DEV_VERSION) or p.target.version == version
        ]

    def alive(self, target: Target) -> bool:
        if self.leading():
            return super().alive(target)
        return not self._suspected(target) and self.table.placement(target) is not None

    def versions_of(self, deployment: str) -> tuple[str, frozenset[str]] | None:
        if self.leading():
            return super().versions_of(deployment)
        return self.table.deployments.get(deployment)

    async def refresh(self) -> None:
        """Ask the leader for its table now (a deployment not in the cached one may just have started)."""
        if not self.leading() and self.fetch is not None:
            await self.fetch()

    # -- calls

    def start(
        self,
        target: Target,
        payload: bytes,
        session_id: str | None,
        on_notify: Callable[[bytes], None] | None = None,
    ) -> PendingCall:
        if self.leading():
            return super().start(target, payload, session_id, on_notify)
        key = (target.replica_id, target.epoch)
        if self.outstanding.get(key, 0) >= self.per_replica:
            raise Busy(f"replica {target.replica_id} has {self.per_replica} calls waiting")
        where = self.table.placement(target)
        if where is None or self.send is None:
            raise ReplicaLost(f"the node running replica {target.replica_id} is not connected")
        call = PendingCall(next(self._remote_ids), target, None, on_notify)  # type: ignore[arg-type]
        frame = Call(
            id=1,
            call_id=call.call_id,
            replica_id=target.replica_id,
            epoch=target.epoch,
            session_id=session_id,
            payload=payload,
        )
        self.calls[call.call_id] = call
        self.outstanding[key] = self.outstanding.get(key, 0) + 1
        self.holder_of[call.call_id] = where.holder
        self._down(where, frame, call.call_id)
        return call

    def cancel(self, call: PendingCall, reason: str) -> None:
        if call.conn is not None:
            super().cancel(call, reason)
            return
        if self._finish(call):
            where = self.table.placement(call.target)
            if where is not None:
                self._down(where, Cancel(id=1, call_id=call.call_id, reason=reason[:200]), call.call_id)

    def notify_agent(self, target: Target, payload: bytes, session_id: str | None) -> None:
        if self.leading():
            super().notify_agent(target, payload, session_id)
            return
        where = self.table.placement(target)
        if where is not None:
            frame = Notify(
                id=1, session_id=session_id, replica_id=target.replica_id, epoch=target.epoch, payload=payload
            )
            self._down(where, frame, 0)

    def end_session(self, target: Target, session_id: str) -> None:
        if self.leading():
            super().end_session(target, session_id)
            return
        where = self.table.placement(target)
        if where is not None:
            frame = EndSession(id=1, replica_id=target.replica_id, epoch=target.epoch, session_id=session_id)
            self._down(where, frame, 0)

    def _down(self, where: Placement, frame: Frame, call_id: int) -> None:
        assert self.send is not None
        head = {"node": where.target.node_id, "from": self.name, "call": str(call_id), "t": frame.TYPE}
        task = asyncio.ensure_future(self.send(where.holder, where.relay, encode(frame), head))
        task.add_done_callback(_quiet)

    def _finish(self, call: PendingCall) -> bool:
        self.holder_of.pop(call.call_id, None)
        return super()._finish(call)

    # -- answers from the holder (`mcpz.back.<this replica>`)

    async def on_back(self, msg: Msg) -> None:
        """`mcpz.back.<this replica>.<call id>`: from the holder, or the server's no-responders."""
        kind = "lost" if no_responders(msg) else (msg.headers or {}).get("t", "")
        tail = msg.subject.rsplit(".", 1)[-1]
        self.answer(kind, int(tail) if tail.isdigit() else 0, msg.data)

    def answer(self, kind: str, call_id: int, data: bytes) -> None:
        """What the holder says of call `call_id`: a `frame` of it, or `busy`/`lost`."""
        call = self.calls.get(call_id)
        if call is None or call.conn is not None:
            return
        if kind == "frame":
            try:
                frame = decode(data)
            except ProtocolError:
                return
            if isinstance(frame, Result):
                self._finish(call)
                if not call.future.done():
                    call.future.set_result(frame.payload)
            elif isinstance(frame, Notify) and call.on_notify is not None:
                call.on_notify(frame.payload)
            return
        self._finish(call)
        if kind == "lost" and self.fetch is not None and not self._fetching:
            # The placement is stale (the node moved, or its holder died): ask for the table now.
            self._fetching = True
            task = asyncio.ensure_future(self._refetch())
            task.add_done_callback(_quiet)
        if not call.future.done():
            error = Busy if kind == "busy" else ReplicaLost
            why = "is not keeping up" if kind == "busy" else "went away"
            call.future.set_exception(error(f"the node running replica {call.target.replica_id} {why}"))

    async def _refetch(self) -> None:
        try:
            assert self.fetch is not None
            await self.fetch()
        finally:
            self._fetching = False

    def holder_silent(self, holder: str) -> None:
        """Replica `holder` said nothing for a while: the calls on its sockets will not be answered."""
        for call_id in [c for c, h in self.holder_of.items() if h == holder]:
            call = self.calls.get(call_id)
            if call is not None:
                self._finish(call)
                if not call.future.done():
                    call.future.set_exception(ReplicaLost(f"registry replica {holder} went silent mid-call"))

    # -- the leader carrying calls for others on its own sockets

    def carry(self, origin: str, conn: NodeConnection, frame: Frame) -> str:
        """Send `frame` from replica `origin` on `conn`: "" when it went, else why not ("busy"/"lost")."""
        if not conn.welcomed or conn.closing:
            return "lost"
        if isinstance(frame, Call) and conn.queued_bytes > self.hub.send_queue_bytes // 2:
            return "busy"
        if isinstance(frame, Call):
            self.carried[frame.call_id] = (origin, conn)
        elif isinstance(frame, Cancel):
            self.carried.pop(frame.call_id, None)
        return "" if conn.send(dataclasses.replace(frame, id=conn.next_id())) else "lost"

    def on_result(self, conn: NodeConnection, frame: Result) -> None:
        carried = self.carried.get(frame.call_id)
        if carried is not None and carried[1] is conn:
            del self.carried[frame.call_id]
            self._back(carried[0], frame.call_id, encode(frame))
            return
        super().on_result(conn, frame)

    def on_notify(self, conn: NodeConnection, frame: Notify) -> None:
        if frame.call_id is not None:
            carried = self.carried.get(frame.call_id)
            if carried is not None and carried[1] is conn:
                self._back(carried[0], frame.call_id, encode(frame))
                return
        super().on_notify(conn, frame)

    def on_closed(self, conn: NodeConnection) -> None:
        for call_id, (origin, c) in list(self.carried.items()):
            if c is conn:
                del self.carried[call_id]
                self._back(origin, call_id, b"", "lost")
        super().on_closed(conn)

    def _back(self, origin: str, call_id: int, data: bytes, kind: str = "frame") -> None:
        if self.back is not None:
            task = asyncio.ensure_future(self.back(origin, call_id, data, kind))
            task.add_done_callback(_quiet)


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("relaying a call frame: %s", task.exception())


def table_message(table: dict[str, Any]) -> bytes:
    return json.dumps(table, separators=(",", ":")).encode()
