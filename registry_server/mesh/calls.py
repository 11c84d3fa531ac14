"""The hub's side of relayed calls: which replica answers, and the calls waiting for a `result`.

The gateway asks for a `Target` (a running replica of a deployment, on a connected node), starts a
call on it, and awaits the answer. `CallRouter`:

- **picks** the replica with the fewest calls outstanding among those running and reachable (a
  session keeps its replica while it stays so; `prefer`), optionally only those of one version;
- **sends** one `call` frame per request and keeps the call until its `result` comes back on the
  same connection (a `result` from anywhere else is ignored), the call is cancelled (a `cancel`
  frame follows), or the connection closes (every call on it fails: `ReplicaLost`);
- **bounds** what waits: `per_replica` calls outstanding on one replica at most, and none sent to
  a node whose send queue is half full. Past that `Busy`, which the gateway answers with 503.

It never sends a call twice: a `tools/call` may not be idempotent.

A replica in isolated session mode (its template's `sessions`, on a node that speaks the
`sessions` extension) runs a process per client session: its `Target` says `isolated`, the gateway
keeps each session on its replica, and `end_session` tells the node when a session ends. What
such a node sends for one session (`notify` with a `session_id`) goes to `on_session`, for that
session alone; the gateway checks the session is bound to that replica.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mcpz.mesh import Call, Cancel, EndSession, Notify, ReplicaStatus, Result

if TYPE_CHECKING:
    from registry_server.deployments.service import DeploymentService
    from registry_server.mesh.hub import MeshHub, NodeConnection

log = logging.getLogger("registry_server.gateway")

DEV_VERSION = "dev"
"""The version under which `mcpz connect` serves an agent from a user's machine."""
PER_REPLICA = 256
"""Calls outstanding on one replica before the gateway answers 503 (its agent is one process)."""
SUSPECT_FOR = 10.0
"""Seconds a replica whose agent just exited is avoided, while its node reports what became of it."""


class CallFailed(Exception):
    """A call that got no answer from the agent; `reason` is its usage outcome."""

    reason = "replica-lost"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ReplicaLost(CallFailed):
    reason = "replica-lost"


class Busy(CallFailed):
    """Too much is waiting already: the client should retry later (HTTP 503)."""

    reason = "busy"


class Shutdown(CallFailed):
    reason = "shutdown"


@dataclass(frozen=True, slots=True)
class Target:
    """One replica at one epoch, and what it runs."""

    deployment: str
    replica_id: str
    epoch: int
    node_id: str
    agent: str
    version: str
    isolated: bool = False  # a process per client session (isolated session mode)


NotifySink = Callable[[bytes], None]


class PendingCall:
    __slots__ = ("call_id", "conn", "future", "on_notify", "target")

    def __init__(
        self, call_id: int, target: Target, conn: NodeConnection, on_notify: NotifySink | None
    ) -> None:
        self.call_id = call_id
        self.target = target
        self.conn = conn
        self.on_notify = on_notify
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()


class CallRouter:
    def __init__(self, hub: MeshHub, service: DeploymentService, *, per_replica: int = PER_REPLICA) -> None:
        self.hub = hub
        self.service = service
        self.per_replica = per_replica
        self.calls: dict[int, PendingCall] = {}
        self.outstanding: dict[tuple[str, int], int] = {}
        self.on_broadcast: Callable[[Target | tuple[str, int], bytes], None] | None = None
        # (session id, (replica, epoch) it came from, payload): an isolated session's own message
        self.on_session: Callable[[str, tuple[str, int], bytes], None] | None = None
        self._ids = itertools.count(1)
        self._suspects: dict[tuple[str, int], float] = {}  # replica, epoch -> avoided until
        self.dev: dict[str, Target] = {}  # agents attached by `mcpz connect`, served at @dev
        self.pinned: dict[tuple[str, int], int] = {}  # replica, epoch -> sessions bound to it

    # -- choosing a replica

    def targets(self, deployment: str, version: str | None = None) -> list[Target]:
        """Every replica of `deployment` that is running on a connected node (of `version`)."""
        if version == DEV_VERSION:
            dev = self.dev.get(deployment)
            return [dev] if dev is not None and self.hub.is_connected(dev.node_id) else []
        found = []
        for replica in self.service.replicas_of(deployment):
            if replica.status != ReplicaStatus.RUNNING or replica.stopping or replica.node_id is None:
                continue
            if not self.hub.is_connected(replica.node_id):
                continue
            template = self.service.template_of(replica)
            if template is None or (version is not None and template.version != version):
                continue
            conn = self.hub.connections.get(replica.node_id)
            isolated = (
                template.sessions.mode == "isolated" and conn is not None and "sessions" in conn.features
            )
            found.append(
                Target(
                    deployment,
                    replica.replica_id,
                    replica.epoch,
                    replica.node_id,
                    template.agent,
                    template.version,
                    isolated,
                )
            )
        return found

    def versions_of(self, deployment: str) -> tuple[str, frozenset[str]] | None:
        """The version `deployment` runs and every version it ran (None: no such deployment)."""
        found = self.service.deployments.get(deployment)
        if found is None or found.deleted:
            return None
        return found.template.version, frozenset(r.template.version for r in found.revisions.values())

    async def refresh(self) -> None:
        """Before answering that nothing runs: bring what is known up to date (in one process it is)."""

    def suspect(self, target: Target) -> None:
        """The replica's agent exited under a call: route around it until its status catches up."""
        self._suspects[(target.replica_id, target.epoch)] = time.monotonic() + SUSPECT_FOR

    def _suspected(self, target: Target) -> bool:
        until = self._suspects.get((target.replica_id, target.epoch))
        if until is None:
            return False
        if until < time.monotonic():
            del self._suspects[(target.replica_id, target.epoch)]
            return False
        return True

    def alive(self, target: Target) -> bool:
        if target.version == DEV_VERSION:
            return self.dev.get(target.deployment) == target and self.hub.is_connected(target.node_id)
        replica = self.service.replicas.get(target.replica_id)
        return (
            not self._suspected(target)
            and replica is not None
            and replica.epoch == target.epoch
            and replica.status == ReplicaStatus.RUNNING
            and not replica.stopping
            and self.hub.is_connected(target.node_id)
        )

    def pick(
        self, deployment: str, version: str | None = None, prefer: Target | None = None
    ) -> Target | None:
        if prefer is not None and self.alive(prefer):
            return prefer
        choices = self.targets(deployment, version)
        if not choices:
            return None
        if self._suspects:
            choices = [t for t in choices if not self._suspected(t)] or choices
        # Calls outstanding first; between calls (sessions open one after another) every count is
        # 0, so the sessions already bound decide: new sessions spread over the replicas.
        return min(
            choices,
            key=lambda t: (
                self.outstanding.get((t.replica_id, t.epoch), 0),
                self.pinned.get((t.replica_id, t.epoch), 0),
            ),
        )

    def pin(self, new: Target | None, old: Target | None) -> None:
        """A session moved from replica `old` to `new` (either may be None)."""
        if old is not None:
            key = (old.replica_id, old.epoch)
            left = self.pinned.get(key, 0) - 1
            if left > 0:
                self.pinned[key] = left
            else:
                self.pinned.pop(key, None)
        if new is not None:
            key = (new.replica_id, new.epoch)
            self.pinned[key] = self.pinned.get(key, 0) + 1

    # -- calls

    def start(
        self, target: Target, payload: bytes, session_id: str | None, on_notify: NotifySink | None = None
    ) -> PendingCall:
        """Send one call; Busy or ReplicaLost when it cannot go."""
        key = (target.replica_id, target.epoch)
        if self.outstanding.get(key, 0) >= self.per_replica:
            raise Busy(f"replica {target.replica_id} has {self.per_replica} calls waiting")
        conn = self.hub.connections.get(target.node_id)
        if conn is None or not conn.welcomed or conn.closing:
            raise ReplicaLost(f"the node running replica {target.replica_id} is not connected")
        if conn.queued_bytes > self.hub.send_queue_bytes // 2:
            raise Busy(f"the node running replica {target.replica_id} is not keeping up")
        call = PendingCall(next(self._ids), target, conn, on_notify)
        frame = Call(
            id=conn.next_id(),
            call_id=call.call_id,
            replica_id=target.replica_id,
            epoch=target.epoch,
            session_id=session_id,
            payload=payload,
        )
        if not conn.send(frame):
            raise ReplicaLost(f"the node running replica {target.replica_id} went away")
        self.calls[call.call_id] = call
        self.outstanding[key] = self.outstanding.get(key, 0) + 1
        return call

    def cancel(self, call: PendingCall, reason: str) -> None:
        """The client gave up (or the call timed out): the node is told, no result is awaited."""
        if self._finish(call):
            call.conn.send(Cancel(id=call.conn.next_id(), call_id=call.call_id, reason=reason[:200]))

    def notify_agent(self, target: Target, payload: bytes, session_id: str | None) -> None:
        conn = self.hub.connections.get(target.node_id)
        if conn is not None and conn.welcomed:
            conn.send(
                Notify(
                    id=conn.next_id(),
                    session_id=session_id,
                    replica_id=target.replica_id,
                    epoch=target.epoch,
                    payload=payload,
                )
            )

    def end_session(self, target: Target, session_id: str) -> None:
        """The client's session ended: its replica ends the process it ran for it."""
        conn = self.hub.connections.get(target.node_id)
        if conn is not None and conn.welcomed and not conn.closing and "sessions" in conn.features:
            conn.send(
                EndSession(
                    id=conn.next_id(), replica_id=target.replica_id, epoch=target.epoch, session_id=session_id
                )
            )

    def _finish(self, call: PendingCall) -> bool:
        if self.calls.pop(call.call_id, None) is None:
            return False
        key = (call.target.replica_id, call.target.epoch)
        left = self.outstanding.get(key, 1) - 1
        if left > 0:
            self.outstanding[key] = left
        else:
            self.outstanding.pop(key, None)
        return True

    # -- frames from nodes (called by the hub)

    def on_result(self, conn: NodeConnection, frame: Result) -> None:
        call = self.calls.get(frame.call_id)
        if call is None or call.conn is not conn:
            return  # cancelled already, or not this connection's to answer
        self._finish(call)
        if not call.future.done():
            call.future.set_result(frame.payload)

    def on_notify(self, conn: NodeConnection, frame: Notify) -> None:
        if frame.call_id is not None:
            call = self.calls.get(frame.call_id)
            if call is not None and call.conn is conn and call.on_notify is not None:
                call.on_notify(frame.payload)
                return
            if frame.session_id is None or "sessions" not in conn.features:
                return
        if frame.session_id is not None and "sessions" in conn.features:
            # An isolated session's message, on no open call stream: its GET stream. Only from the
            # node that holds the replica (the gateway checks the session is bound to it).
            replica = self.service.replicas.get(frame.replica_id)
            held = replica is not None and replica.node_id == conn.node_id and replica.epoch == frame.epoch
            if held and self.on_session is not None:
                self.on_session(frame.session_id, (frame.replica_id, frame.epoch), frame.payload)
            return
        if self.on_broadcast is not None:
            self.on_broadcast((frame.replica_id, frame.epoch), frame.payload)

    def on_closed(self, conn: NodeConnection) -> None:
        """The connection ended: every call on it fails now (they will not be answered)."""
        for call in [c for c in self.calls.values() if c.conn is conn]:
            self._finish(call)
            if call.future.done():
                continue
            if conn.server_stopping:  # the registry is stopping, not the node: say so
                call.future.set_exception(Shutdown("the registry is shutting down"))
            else:
                call.future.set_exception(
                    ReplicaLost(f"the node running replica {call.target.replica_id} went away mid-call")
                )

    def fail_all(self, error: CallFailed) -> None:
        for call in list(self.calls.values()):
            self._finish(call)
            if not call.future.done():
                call.future.set_exception(error)
