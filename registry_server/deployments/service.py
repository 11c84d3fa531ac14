"""Deployments: desired state and replicas in the database, a mirror of them in memory, and the
reconciler that keeps actual state converging to desired state.

The database is the truth: every change is written in one transaction before the mirror and the
nodes see it, so a registry restart loses nothing (`load` rebuilds the mirror). The mirror lets the
hub check each frame from a node without a query.

Reconciliation runs in *rounds*, one at a time, in the event loop's reconciler task. Events (an API
change, a node's hello, a node lost, a status report) queue their input and wake it; one round takes
everything queued, plans with `scheduler.plan`, writes the result in one transaction (the database
work runs in a worker thread), then updates the mirror and hands the frames to send to the
transport (the mesh hub). Bursts are batched for free: what arrives during a round waits for the
next. A periodic resync plans every deployment again, so nothing waits for an event that was lost.

Every change of desired state that changes what runs or how many (deploy, scale, rollback) makes
a new revision, whose number only grows — also across a removal and a new deployment of the same
name — and whose canonical `mcpz.keys.signing.DeploymentStatement` is kept with the deployers'
signatures over it (`Change`, `Signed`). Deploy frames carry that statement, so nodes can check
that the namespace's key asked for what they run, and refuse a revision older than one they saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

import anyio.to_thread
from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from mcpz.errors import McpzError, NotFoundError, RefusedError, UsageError
from mcpz.keys import signing
from mcpz.mesh import Heartbeat, Hello, LockedDependency, Log, ReplicaStatus, Status
from registry_server.accounts.models import Account, Namespace, NamespaceMember
from registry_server.db import Database, chunks
from registry_server.deployments import scheduler
from registry_server.deployments.models import (
    EPOCH_COUNTER,
    Deployment,
    DeploymentRevision,
    DeploymentSignature,
    DeploymentStatementRow,
    MeshCounter,
    MeshNode,
    MeshReplica,
)
from registry_server.deployments.scheduler import Desired, NodeView, Replica
from registry_server.orm import utcnow

log = logging.getLogger("registry_server.deployments")
_T = TypeVar("_T")

STOP_GRACE = 10.0
"""Seconds a node gives a replica between SIGTERM and SIGKILL when the hub stops it."""
MAX_REVISIONS = 10
SLOW_ROUND = 0.1
"""A reconciliation round longer than this (seconds) is logged with the time of each phase."""
MAX_REPLICAS = 10_000
FIGURES_INTERVAL = 30.0
"""How often nodes' heartbeat figures (load, memory, last seen) are written to the database. The
mirror always has the live ones; the database needs them only after a restart."""


# --- the mirror's records ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    memory_bytes: int | None = None
    open_files: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return {"memory_bytes": self.memory_bytes, "open_files": self.open_files}


@dataclass(frozen=True, slots=True)
class Template:
    """What a revision's replicas run, and where they may run."""

    agent: str
    version: str
    commit: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = Limits()
    selector: Mapping[str, str] = field(default_factory=dict)
    dependencies: tuple[LockedDependency, ...] = ()


@dataclass(frozen=True, slots=True)
class Revision:
    number: int
    template: Template
    created_at: datetime
    statement: str = ""  # canonical DeploymentStatement text; "" for revisions made before 0005
    signatures: tuple[tuple[str, str], ...] = ()  # (signer, signature), checked when kept


@dataclass(frozen=True, slots=True)
class DeploymentState:
    name: str
    namespace: str
    revision: int
    replicas: int
    deleted: bool
    created_at: datetime
    updated_at: datetime
    revisions: Mapping[int, Revision]

    @property
    def template(self) -> Template:
        return self.revisions[self.revision].template

    def desired(self, accounts: frozenset[int] | None = None) -> Desired:
        """Desired state; `accounts`: those whose nodes may run it (None: any node's)."""
        target = self.template
        same = frozenset(n for n, r in self.revisions.items() if r.template == target)
        return Desired(
            self.name, self.revision, self.replicas, self.template.selector, same, self.deleted, accounts
        )


@dataclass
class NodeState:
    node_id: str
    name: str
    account_id: int
    labels: dict[str, str]
    capacity: int
    software_version: str
    state: str  # "ready" or "lost"
    created_at: datetime
    shared: bool = False  # it said `--shared` in its hello: it runs every account's deployments
    last_seen_at: datetime | None = None
    lost_at: datetime | None = None
    cpu_percent: float = 0.0
    memory_used: int = 0
    memory_total: int = 0
    load: float = 0.0
    stale_frames: int = 0  # frames of epochs that are not current, dropped (since this hub started)

    @property
    def live(self) -> bool:
        return self.state == "ready"


# --- what the transport (the mesh hub) is asked to send ----------------------------------------


@dataclass(frozen=True, slots=True)
class DeployIntent:
    node_id: str
    deployment: str
    replica_id: str
    epoch: int
    template: Template
    statement: str = ""  # the signed deployment statement the node checks (see `_statement_for`)
    signatures: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StopIntent:
    node_id: str
    deployment: str
    replica_id: str
    epoch: int
    reason: str
    grace: float = STOP_GRACE


Intent = DeployIntent | StopIntent


class Transport(Protocol):
    def is_connected(self, node_id: str) -> bool: ...

    def deliver(self, intents: Sequence[Intent]) -> None: ...


class _Nowhere:
    def is_connected(self, node_id: str) -> bool:
        return False

    def deliver(self, intents: Sequence[Intent]) -> None:
        pass


# --- logs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    seq: int
    ts: float
    replica: str
    stream: str
    line: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "replica": self.replica,
            "stream": self.stream,
            "line": self.line,
        }


class LogBook:
    """The last lines of each deployment's replicas, in memory, and live followers.

    A follower's queue is bounded: when it cannot keep up, its oldest lines are dropped.
    """

    def __init__(self, max_lines: int = 1000, max_line: int = 4096, follower_queue: int = 1000) -> None:
        self.max_lines = max_lines
        self.max_line = max_line
        self.follower_queue = follower_queue
        self._lines: dict[str, deque[LogLine]] = {}
        self._followers: dict[str, set[asyncio.Queue[LogLine]]] = defaultdict(set)
        self._seq = 0

    def append(self, deployment: str, replica_id: str, stream: str, lines: Iterable[str], ts: float) -> None:
        buffer = self._lines.get(deployment)
        if buffer is None:
            buffer = self._lines[deployment] = deque(maxlen=self.max_lines)
        followers = self._followers.get(deployment, ())
        for text in lines:
            self._seq += 1
            entry = LogLine(self._seq, ts, replica_id, stream, text[: self.max_line])
            buffer.append(entry)
            for queue in followers:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(entry)

    def tail(self, deployment: str, n: int, after: int = 0) -> list[LogLine]:
        lines = [x for x in self._lines.get(deployment, ()) if x.seq > after]
        return lines[-n:] if n > 0 else []

    def subscribe(self, deployment: str) -> asyncio.Queue[LogLine]:
        queue: asyncio.Queue[LogLine] = asyncio.Queue(self.follower_queue)
        self._followers[deployment].add(queue)
        return queue

    def unsubscribe(self, deployment: str, queue: asyncio.Queue[LogLine]) -> None:
        followers = self._followers.get(deployment)
        if followers is not None:
            followers.discard(queue)
            if not followers:
                del self._followers[deployment]

    def forget(self, deployment: str) -> None:
        self._lines.pop(deployment, None)


# --- round inputs and outputs --------------------------------------------------------------------


@dataclass(slots=True)
class _Registration:
    hello: Hello
    account_id: int
    on_ready: Callable[[NodeState], None]
    future: asyncio.Future[NodeState]


@dataclass(frozen=True, slots=True)
class _StatusUpdate:
    node_id: str
    epoch: int
    status: ReplicaStatus
    detail: str = ""
    exit_code: int | None = None


@dataclass
class _Changes:
    """Everything one round writes, in one transaction."""

    node_inserts: list[dict[str, Any]] = field(default_factory=list)
    node_updates: list[dict[str, Any]] = field(default_factory=list)
    node_deletes: list[str] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    creates: list[dict[str, Any]] = field(default_factory=list)
    assigns: list[dict[str, Any]] = field(default_factory=list)
    stops: list[dict[str, Any]] = field(default_factory=list)
    forgets: list[str] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)
    epoch: tuple[int, int] | None = None  # (last used before, last used after)

    def __bool__(self) -> bool:
        return any(
            (
                self.node_inserts,
                self.node_updates,
                self.node_deletes,
                self.statuses,
                self.creates,
                self.assigns,
                self.stops,
                self.forgets,
                self.drops,
                self.epoch,
            )
        )


class ConflictError(McpzError):
    """Another process changed the mesh's tables under this one."""


class StatementChanged(RefusedError):
    """The statement signed is not the one the change makes now: the deployment moved meanwhile
    (or the signer saw another registry URL). Prepare and sign again."""


@dataclass(frozen=True, slots=True)
class Signed:
    """A deployer's signature over the statement of the change asked for; `signer` is the address
    it recovers to, already checked to be the namespace's owner or a member."""

    statement: str
    signature: str
    signer: str


@dataclass(frozen=True, slots=True)
class Change:
    """What a change of desired state made (or, prepared, would make)."""

    created: bool  # a new deployment
    revision: int  # the revision the deployment is at afterwards
    new_revision: bool  # False: nothing changed, the current revision stands
    statement: str  # that revision's canonical statement ("" when no registry URL was given)
    signers: tuple[str, ...]  # who signed that statement, this change included


# --- the service ---------------------------------------------------------------------------------


class DeploymentService:
    """Deployments, replicas and nodes: the database, its mirror, and the reconciler."""

    def __init__(
        self,
        db: Database,
        *,
        resync_interval: float = 30.0,
        stop_grace: float = STOP_GRACE,
        max_revisions: int = MAX_REVISIONS,
        shared_nodes: bool = False,
        shared_node_owners: Sequence[str] = (),
    ) -> None:
        self.db = db
        self.resync_interval = resync_interval
        self.stop_grace = stop_grace
        self.max_revisions = max_revisions
        # Who a node serves (see `scheduler`): the operator may make every node, or the nodes of
        # some accounts, a pool shared by all; each node may opt in with `--shared`.
        self.shared_nodes = shared_nodes
        self.shared_node_owners = tuple(shared_node_owners)
        self.pool: frozenset[int] = frozenset()  # ids of the accounts named in shared_node_owners
        # Per namespace, the accounts whose nodes may run its deployments: read before each plan.
        self.access: dict[str, frozenset[int]] = {}
        self.transport: Transport = _Nowhere()
        self.logs = LogBook()
        self.deployments: dict[str, DeploymentState] = {}
        self.replicas: dict[str, Replica] = {}
        self.nodes: dict[str, NodeState] = {}
        self.next_epoch = 1
        self._by_node: dict[str, set[str]] = defaultdict(set)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._registrations: list[_Registration] = []
        self._statuses: dict[str, _StatusUpdate] = {}
        self._lost: set[str] = set()
        self._prune: set[str] = set()
        self._dirty: set[str] = set()
        self._figures_due: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.rounds = 0
        # Per deployment name, the highest revision ever made (kept in deployment_statements):
        # a name deployed again after removal numbers on from there.
        self._floors: dict[str, int] = {}

    # -- life cycle

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self._load)
        self._dirty.update(self.deployments)
        self._tasks = [
            asyncio.create_task(self._reconciler(), name="mesh-reconciler"),
            asyncio.create_task(self._ticker(), name="mesh-resync"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        # What nodes reported last is written before the process goes; nothing new is planned.
        self._dirty.clear()
        with contextlib.suppress(SQLAlchemyError, McpzError):
            await self._round(plan_all=False)
            await self._flush_figures()

    def _load(self) -> None:
        with self.db.session() as session:
            revisions: dict[str, dict[int, Revision]] = defaultdict(dict)
            same_revision = and_(
                DeploymentStatementRow.deployment == DeploymentRevision.deployment,
                DeploymentStatementRow.revision == DeploymentRevision.revision,
            )
            statements = {
                (row.deployment, row.revision): row.statement
                for row in session.scalars(
                    select(DeploymentStatementRow).join(DeploymentRevision, same_revision)
                )
            }
            signed: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
            signature_of_revision = and_(
                DeploymentSignature.deployment == DeploymentRevision.deployment,
                DeploymentSignature.revision == DeploymentRevision.revision,
            )
            for sig in session.scalars(
                select(DeploymentSignature)
                .join(DeploymentRevision, signature_of_revision)
                .order_by(DeploymentSignature.id)
            ):
                signed[sig.deployment, sig.revision].append((sig.signer, sig.signature))
            for row in session.scalars(select(DeploymentRevision)):
                key = (row.deployment, row.revision)
                revisions[row.deployment][row.revision] = Revision(
                    row.revision,
                    _template_of(row),
                    row.created_at,
                    statements.get(key, ""),
                    tuple(signed[key]),
                )
            self._floors = {
                name: int(top)
                for name, top in session.execute(
                    select(
                        DeploymentStatementRow.deployment, func.max(DeploymentStatementRow.revision)
                    ).group_by(DeploymentStatementRow.deployment)
                )
            }
            self.deployments = {
                row.name: DeploymentState(
                    row.name,
                    row.namespace,
                    row.revision,
                    row.replicas,
                    row.deleted,
                    row.created_at,
                    row.updated_at,
                    revisions[row.name],
                )
                for row in session.scalars(select(Deployment))
            }
            self.replicas = {
                row.id: Replica(
                    row.id,
                    row.deployment,
                    row.revision,
                    row.node_id,
                    row.epoch,
                    ReplicaStatus(row.status),
                    row.stopping,
                    row.detail,
                    row.exit_code,
                )
                for row in session.scalars(select(MeshReplica))
            }
            self.nodes = {
                row.id: NodeState(
                    row.id,
                    row.name,
                    row.account_id,
                    json.loads(row.labels),
                    row.capacity,
                    row.software_version,
                    row.state,
                    row.created_at,
                    row.shared,
                    row.last_seen_at,
                    row.lost_at,
                    row.cpu_percent,
                    row.memory_used,
                    row.memory_total,
                    row.load,
                )
                for row in session.scalars(select(MeshNode))
            }
            counter = session.get(MeshCounter, EPOCH_COUNTER)
            self.next_epoch = (counter.value if counter else 0) + 1
        self._reindex()

    def _reindex(self, old: Mapping[str, Replica] | None = None, touched: Iterable[str] = ()) -> None:
        """Keep `_by_node` (replica ids per node) in step: from scratch, or for `touched` replicas."""
        if old is None:
            self._by_node = defaultdict(set)
            for replica in self.replicas.values():
                if replica.node_id is not None:
                    self._by_node[replica.node_id].add(replica.replica_id)
            return
        for replica_id in touched:
            was, now = old.get(replica_id), self.replicas.get(replica_id)
            if was is not None and was.node_id is not None:
                self._by_node[was.node_id].discard(replica_id)
            if now is not None and now.node_id is not None:
                self._by_node[now.node_id].add(replica_id)

    # -- reading the mirror

    def assigned_to(self, node_id: str) -> list[Replica]:
        return [self.replicas[r] for r in self._by_node.get(node_id, ()) if r in self.replicas]

    def replicas_of(self, deployment: str) -> list[Replica]:
        return [r for r in self.replicas.values() if r.deployment == deployment]

    def is_shared(self, node: NodeState) -> bool:
        """Whether `node` runs every account's deployments: it opted in, or the operator said so."""
        return node.shared or self.shared_nodes or node.account_id in self.pool

    def node_view(self, node: NodeState, *, connected: bool | None = None) -> NodeView:
        """What the scheduler knows of `node`."""
        if connected is None:
            connected = self.transport.is_connected(node.node_id)
        return NodeView(
            node.node_id,
            node.labels,
            node.capacity,
            node.live,
            connected,
            node.account_id,
            self.is_shared(node),
        )

    def unplaced_reason(self, deployment: DeploymentState) -> str:
        """Why a replica of `deployment` waits for a node, in one line (as of the last round)."""
        usage = {node_id: len(held) for node_id, held in self._by_node.items()}
        views = [self.node_view(n) for n in self.nodes.values()]
        desired = deployment.desired(self.access.get(deployment.namespace, frozenset()))
        return scheduler.unplaced_reason(desired, views, usage)

    def template_of(self, replica: Replica) -> Template | None:
        deployment = self.deployments.get(replica.deployment)
        revision = deployment.revisions.get(replica.revision) if deployment else None
        return revision.template if revision else None

    def _deploy_intent(
        self, node_id: str, replica: Replica, epoch: int, deployments: Mapping[str, DeploymentState]
    ) -> DeployIntent | None:
        deployment = deployments.get(replica.deployment)
        revision = deployment.revisions.get(replica.revision) if deployment else None
        if deployment is None or revision is None:
            return None
        statement, signatures = _statement_for(deployment, revision.template)
        return DeployIntent(
            node_id, replica.deployment, replica.replica_id, epoch, revision.template, statement, signatures
        )

    # -- events from the hub (called in the event loop; none of them waits)

    async def register(
        self, hello: Hello, account_id: int, on_ready: Callable[[NodeState], None]
    ) -> NodeState:
        """Record a node's hello; `on_ready(node)` runs (and must send welcome) before any frame
        for that node leaves. Returns once the node is written and reconciled."""
        future: asyncio.Future[NodeState] = asyncio.get_running_loop().create_future()
        self._registrations.append(_Registration(hello, account_id, on_ready, future))
        self._wake.set()
        return await future

    def prune(self, node_id: str) -> None:
        """Forget a lost node (its retention ran out): its row goes, its replicas wait unplaced."""
        node = self.nodes.get(node_id)
        if node is not None and not node.live:
            self._prune.add(node_id)
            self._wake.set()

    def mark_lost(self, node_id: str) -> None:
        node = self.nodes.get(node_id)
        if node is not None and node.live:
            self._lost.add(node_id)
            self._wake.set()

    def on_heartbeat(self, node_id: str, frame: Heartbeat, stop_acked: set[tuple[str, int]]) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            return
        node.cpu_percent = frame.cpu_percent
        node.memory_used = frame.memory_used
        node.memory_total = frame.memory_total
        node.load = frame.load
        node.last_seen_at = utcnow()
        self._figures_due.add(node_id)
        assigned = self.assigned_to(node_id)
        if not frame.replicas and not assigned:
            return
        outcome = scheduler.reconcile_reports(
            node_id, frame.replicas, self.replicas, assigned, complete=False, stop_acked=stop_acked
        )
        if outcome:
            self._take_outcome(node_id, outcome)

    def on_status(self, node_id: str, frame: Status) -> bool:
        """Queue a status report; False (and nothing changes) when its epoch is not current."""
        if not scheduler.accepts(self.replicas, node_id, frame.replica_id, frame.epoch):
            self._count_stale(node_id)
            return False
        self._statuses[frame.replica_id] = _StatusUpdate(
            node_id, frame.epoch, frame.status, frame.detail, frame.exit_code
        )
        if frame.status not in (ReplicaStatus.PULLING, ReplicaStatus.STARTING):  # the rest may change a plan
            self._dirty.add(self.replicas[frame.replica_id].deployment)
        self._wake.set()
        return True

    def on_deploy_refused(self, node_id: str, replica_id: str, epoch: int, code: str, message: str) -> None:
        if scheduler.accepts(self.replicas, node_id, replica_id, epoch):
            detail = f"the node refused it: {code}: {message}"[:4096]
            self._statuses[replica_id] = _StatusUpdate(node_id, epoch, ReplicaStatus.FAILED, detail)
            self._dirty.add(self.replicas[replica_id].deployment)
            self._wake.set()

    def on_log(self, node_id: str, frame: Log) -> bool:
        """Keep a log frame's lines; False (and nothing kept) when its epoch is not current."""
        if not scheduler.accepts(self.replicas, node_id, frame.replica_id, frame.epoch):
            self._count_stale(node_id)
            return False
        deployment = self.replicas[frame.replica_id].deployment
        self.logs.append(deployment, frame.replica_id, frame.stream.value, frame.lines, frame.timestamp)
        return True

    def _count_stale(self, node_id: str) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.stale_frames += 1

    def _take_outcome(self, node_id: str, outcome: scheduler.ReportOutcome) -> None:
        if outcome.stop:
            self.transport.deliver(
                [
                    StopIntent(node_id, s.deployment, s.replica_id, s.epoch, "stale-epoch", self.stop_grace)
                    for s in outcome.stop
                ]
            )
        for replica_id, status in outcome.adopt:
            epoch = self.replicas[replica_id].epoch
            self._statuses[replica_id] = _StatusUpdate(node_id, epoch, status)
            self._dirty.add(self.replicas[replica_id].deployment)
        for replica_id in outcome.stopped:
            epoch = self.replicas[replica_id].epoch
            self._statuses[replica_id] = _StatusUpdate(node_id, epoch, ReplicaStatus.STOPPED)
            self._dirty.add(self.replicas[replica_id].deployment)
        if outcome.adopt or outcome.stopped:
            self._wake.set()

    # -- changes of desired state (from the API)

    async def apply(
        self,
        name: str,
        namespace: str,
        template: Template,
        replicas: int | None,
        *,
        registry: str | None = None,
        signed: Signed | None = None,
        prepare: bool = False,
    ) -> Change:
        """Create or update a deployment. Returns once reconciled.

        A new template or replica count makes a new revision. `registry` (the registry's public
        URL, canonical) is what the revision's statement names; `signed` is the deployer's
        signature over that statement (StatementChanged if it is over another); with `prepare`
        nothing changes and the Change says what would.
        """
        if replicas is not None and not 0 <= replicas <= MAX_REPLICAS:
            raise UsageError(f"replicas must be between 0 and {MAX_REPLICAS}")
        async with self._lock:
            now = utcnow()
            current = self.deployments.get(name)
            if current is None:
                number = self._floors.get(name, 0) + 1
                state = DeploymentState(
                    name, namespace, number, 1 if replicas is None else replicas, False, now, now,
                    {number: Revision(number, template, now)},
                )  # fmt: skip
            else:
                wanted = current.replicas if replicas is None else replicas
                state = self._with_template(current, template, now, force=wanted != current.replicas)
                state = replace(state, replicas=wanted, deleted=False)
            change = await self._commit(current, state, registry, signed, prepare)
        if not prepare:
            await self.reconcile([name])
        return change

    async def scale(
        self,
        name: str,
        replicas: int,
        *,
        registry: str | None = None,
        signed: Signed | None = None,
        prepare: bool = False,
    ) -> Change:
        """Change the replica count: a new revision with the same template (no replica is replaced)."""
        if not 0 <= replicas <= MAX_REPLICAS:
            raise UsageError(f"replicas must be between 0 and {MAX_REPLICAS}")
        async with self._lock:
            current = self._existing(name)
            now = utcnow()
            if replicas == current.replicas:
                state = replace(current, updated_at=now)
            else:
                state = self._with_template(current, current.template, now, force=True)
                state = replace(state, replicas=replicas)
            change = await self._commit(current, state, registry, signed, prepare)
        if not prepare:
            await self.reconcile([name])
        return change

    async def rollback(
        self,
        name: str,
        to_revision: int | None = None,
        *,
        registry: str | None = None,
        signed: Signed | None = None,
        prepare: bool = False,
    ) -> Change:
        """Make a new revision with the template of `to_revision` (default: the newest earlier
        revision that differs from the current one)."""
        async with self._lock:
            current = self._existing(name)
            if to_revision is None:
                earlier = [
                    n
                    for n, r in current.revisions.items()
                    if n < current.revision and r.template != current.template
                ]
                if not earlier:
                    raise UsageError(
                        f"{name} has no earlier revision to roll back to",
                        hint=f"see its revisions with `mcpz deploy status {name}`",
                    )
                to_revision = max(earlier)
            target = current.revisions.get(to_revision)
            if target is None:
                kept = ", ".join(str(n) for n in sorted(current.revisions))
                raise NotFoundError(f"{name} has no revision {to_revision} (kept: {kept})")
            state = self._with_template(current, target.template, utcnow())
            change = await self._commit(current, state, registry, signed, prepare)
        if not prepare:
            await self.reconcile([name])
        return change

    async def remove(self, name: str) -> None:
        async with self._lock:
            current = self._existing(name)
            await self._save_deployment(current, replace(current, deleted=True, updated_at=utcnow()))
        await self.reconcile([name])

    def _existing(self, name: str) -> DeploymentState:
        current = self.deployments.get(name)
        if current is None or current.deleted:
            raise NotFoundError(f"no deployment {name}", hint="see `mcpz deployments`")
        return current

    def _with_template(
        self, current: DeploymentState, template: Template, now: datetime, *, force: bool = False
    ) -> DeploymentState:
        """`current` running `template`: a new revision unless it runs it already (and `force` is off)."""
        if current.template == template and not current.deleted and not force:
            return replace(current, updated_at=now)
        number = max(max(current.revisions), self._floors.get(current.name, 0)) + 1
        revisions = dict(current.revisions)
        revisions[number] = Revision(number, template, now)
        in_use = {r.revision for r in self.replicas_of(current.name)}
        while len(revisions) > self.max_revisions:
            # Forget the oldest revision nothing runs, those whose template a newer one repeats
            # (e.g. made by a scale) first: the history keeps what a rollback can return to.
            spare = [n for n in sorted(revisions) if n not in in_use and n not in (current.revision, number)]
            if not spare:
                break
            repeated = [
                n
                for n in spare
                if any(m > n and revisions[m].template == revisions[n].template for m in revisions)
            ]
            del revisions[(repeated or spare)[0]]
        return replace(current, revision=number, revisions=revisions, updated_at=now)

    async def _commit(
        self,
        before: DeploymentState | None,
        after: DeploymentState,
        registry: str | None,
        signed: Signed | None,
        prepare: bool,
    ) -> Change:
        """Attach the statement (and the signature) to the revision `after` is at, and save."""
        number = after.revision
        revision = after.revisions[number]
        statement = revision.statement
        if not statement and registry is not None:
            t = revision.template
            statement = signing.DeploymentStatement(
                registry=registry, deployment=after.name, name=t.agent, version=t.version,
                commit=t.commit, replicas=after.replicas, revision=number,
            ).to_text()  # fmt: skip
        signatures = revision.signatures
        if signed is not None:
            if signed.statement != statement:
                raise StatementChanged(
                    f"the statement signed is not the one this change makes now (revision {number} of "
                    f"{after.name})",
                    status=409,
                    hint="the deployment changed meanwhile: run the command again to sign the new statement",
                )
            if all(signer != signed.signer for signer, _ in signatures):
                signatures = (*signatures, (signed.signer, signed.signature))
        change = Change(
            created=before is None,
            revision=number,
            new_revision=before is None or number not in before.revisions,
            statement=statement,
            signers=tuple(signer for signer, _ in signatures),
        )
        if prepare:
            return change
        new_statement = statement if statement != revision.statement else ""
        new_signatures = signatures[len(revision.signatures) :]
        if new_statement or new_signatures:
            revisions = dict(after.revisions)
            revisions[number] = replace(revision, statement=statement, signatures=signatures)
            after = replace(after, revisions=revisions)
        await self._save_deployment(before, after, new_statement, new_signatures)
        if new_statement:
            self._floors[after.name] = max(self._floors.get(after.name, 0), number)
        return change

    async def _save_deployment(
        self,
        before: DeploymentState | None,
        after: DeploymentState,
        statement: str = "",
        signatures: Sequence[tuple[str, str]] = (),
    ) -> None:
        await anyio.to_thread.run_sync(self._write_deployment, before, after, statement, signatures)
        self.deployments[after.name] = after

    def _write_deployment(
        self,
        before: DeploymentState | None,
        after: DeploymentState,
        statement: str = "",
        signatures: Sequence[tuple[str, str]] = (),
    ) -> None:
        with self.db.session() as session:
            row = session.get(Deployment, after.name)
            if row is None:
                row = Deployment(name=after.name, namespace=after.namespace, created_at=after.created_at)
                session.add(row)
            row.revision = after.revision
            row.replicas = after.replicas
            row.deleted = after.deleted
            row.updated_at = after.updated_at
            session.flush()
            old = set(before.revisions) if before else set()
            gone = old - set(after.revisions)
            if gone:
                session.execute(
                    delete(DeploymentRevision).where(
                        DeploymentRevision.deployment == after.name, DeploymentRevision.revision.in_(gone)
                    )
                )
            for number in sorted(set(after.revisions) - old):
                session.add(_revision_row(after.name, after.revisions[number]))
            now = utcnow()
            if statement:
                session.add(
                    DeploymentStatementRow(
                        deployment=after.name, revision=after.revision, statement=statement, created_at=now
                    )
                )
            for signer, signature in signatures:
                session.add(
                    DeploymentSignature(
                        deployment=after.name,
                        revision=after.revision,
                        signer=signer,
                        signature=signature,
                        created_at=now,
                    )
                )

    # -- reconciliation

    async def reconcile(self, names: Iterable[str] = ()) -> None:
        """Plan the named deployments (and whatever else is queued); return once that round ended."""
        self._dirty.update(names)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        await future

    async def _reconciler(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiters, self._waiters = self._waiters, []
            try:
                await self._round()
            except Exception:  # the boundary of a task that must outlive any one bad round
                log.exception("reconciliation round failed; retrying at the next event or resync")
                self._dirty.update(self.deployments)
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _ticker(self) -> None:
        """Resync every `resync_interval`; write nodes' heartbeat figures every FIGURES_INTERVAL."""
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self.resync_interval
        next_figures = loop.time() + FIGURES_INTERVAL
        while True:
            await asyncio.sleep(max(0.01, min(next_resync, next_figures) - loop.time()))
            now = loop.time()
            if now >= next_resync:
                next_resync = now + self.resync_interval
                self._dirty.update(self.deployments)
                self._wake.set()
            if now >= next_figures:
                next_figures = now + FIGURES_INTERVAL
                await self._flush_figures()

    async def _flush_figures(self) -> None:
        """Write what heartbeats said (load, memory, last seen), in small transactions and outside
        the rounds: the mirror has the live figures, the database only needs them for a restart."""
        due, self._figures_due = self._figures_due, set()
        rows = [_figures_row(self.nodes[n]) for n in sorted(due) if n in self.nodes]
        for chunk in chunks(rows, 500):
            try:
                await anyio.to_thread.run_sync(self._write_figures, chunk)
            except SQLAlchemyError as e:
                log.warning("cannot write node figures: %s", e)
                return

    def _write_figures(self, rows: Sequence[dict[str, Any]]) -> None:
        with self.db.session() as session:
            session.execute(update(MeshNode), list(rows))

    async def _round(self, *, plan_all: bool = True) -> None:
        async with self._lock:
            registrations, self._registrations = self._registrations, []
            statuses, self._statuses = self._statuses, {}
            lost, self._lost = self._lost, set()
            prune, self._prune = self._prune, set()
            dirty, self._dirty = self._dirty, set()
            try:
                await self._round_locked(registrations, statuses, lost, dirty, plan_all, prune)
            except BaseException as e:
                for registration in registrations:
                    if not registration.future.done():
                        registration.future.set_exception(
                            e if isinstance(e, McpzError | SQLAlchemyError) else McpzError(str(e))
                        )
                raise

    async def _round_locked(
        self,
        registrations: list[_Registration],
        statuses: dict[str, _StatusUpdate],
        lost: set[str],
        dirty: set[str],
        plan_all: bool,
        prune: Iterable[str] = (),
    ) -> None:
        """One round. Its writes go in two transactions: first the nodes and the epoch counter, then
        (after the frames left) the replicas. An epoch is thus durable before any node sees it, so
        none is ever used twice; should the process die between the two, a node holds an
        assignment the database does not know, and the epoch rules stop it at its next report."""
        started = time.perf_counter()
        now = utcnow()
        before, after = _Changes(), _Changes()
        nodes = dict(self.nodes)
        replicas = dict(self.replicas)
        intents: list[Intent] = []
        ready: list[tuple[_Registration, NodeState]] = []
        touched: set[str] = set()  # replicas whose node may have changed

        # 1. Nodes: hellos, then losses (a node that said hello in this round is not lost).
        for registration in registrations:
            node, created = self._registered(registration, nodes, now)
            nodes[node.node_id] = node
            ready.append((registration, node))
            (before.node_inserts if created else before.node_updates).append(_node_row(node))
        welcomed = {node.node_id for _, node in ready}
        for node_id in lost - welcomed:
            silent = nodes.get(node_id)
            if silent is not None and silent.live:
                nodes[node_id] = silent = replace(silent, state="lost", lost_at=now)
                before.node_updates.append(_node_row(silent))
                log.warning("node lost", extra={"node": node_id, "node_name": silent.name})
        for node_id in sorted(set(prune) - welcomed):
            silent = nodes.get(node_id)
            if silent is not None and not silent.live:
                del nodes[node_id]
                before.node_deletes.append(node_id)
                log.info("lost node pruned", extra={"node": node_id, "node_name": silent.name})
                for replica_id in self._by_node.get(node_id, ()):
                    replica = replicas.get(replica_id)
                    if replica is None:
                        continue
                    # Unassigned, its epoch kept: a copy still running somewhere stays fenced off.
                    replicas[replica_id] = replace(
                        replica, node_id=None, status=ReplicaStatus.PENDING, detail="", exit_code=None
                    )
                    after.assigns.append(
                        {
                            "id": replica_id, "node_id": None, "epoch": replica.epoch,
                            "status": ReplicaStatus.PENDING.value, "detail": "", "exit_code": None,
                            "updated_at": now,
                        }
                    )  # fmt: skip
                    touched.add(replica_id)
                    dirty.add(replica.deployment)

        # 2. What the welcomed nodes hold, by the epoch rules.
        for registration, node in ready:
            held = [self.replicas[r] for r in self._by_node.get(node.node_id, ()) if r in self.replicas]
            outcome = scheduler.reconcile_reports(
                node.node_id, registration.hello.replicas, replicas, held, complete=True
            )
            for copy in outcome.stop:
                intents.append(
                    StopIntent(
                        node.node_id,
                        copy.deployment,
                        copy.replica_id,
                        copy.epoch,
                        "stale-epoch",
                        self.stop_grace,
                    )
                )
            for replica_id in outcome.redeploy:
                replica = replicas[replica_id]
                intent = self._deploy_intent(node.node_id, replica, replica.epoch, self.deployments)
                if intent is not None:
                    intents.append(intent)
            for replica_id, status in outcome.adopt:
                statuses[replica_id] = _StatusUpdate(node.node_id, replicas[replica_id].epoch, status)
                dirty.add(replicas[replica_id].deployment)
            for replica_id in outcome.stopped:
                epoch = replicas[replica_id].epoch
                statuses[replica_id] = _StatusUpdate(node.node_id, epoch, ReplicaStatus.STOPPED)
                dirty.add(replicas[replica_id].deployment)

        # 3. Status reports, checked again against the epochs of now.
        for replica_id, report in statuses.items():
            row = replicas.get(replica_id)
            if row is None or not scheduler.accepts(replicas, report.node_id, replica_id, report.epoch):
                continue
            if row.stopping and report.status is ReplicaStatus.STOPPED:
                del replicas[replica_id]
                after.forgets.append(replica_id)
                touched.add(replica_id)
                dirty.add(row.deployment)
                continue
            if (row.status, row.detail, row.exit_code) == (report.status, report.detail, report.exit_code):
                continue
            replicas[replica_id] = replace(
                row, status=report.status, detail=report.detail, exit_code=report.exit_code
            )
            after.statuses.append(
                {
                    "id": replica_id,
                    "status": report.status.value,
                    "detail": report.detail,
                    "exit_code": report.exit_code,
                    "updated_at": now,
                }
            )

        # 4. Plan what is dirty (everything when nodes came or went).
        deployments = dict(self.deployments)
        result = scheduler.Plan((), self.next_epoch)
        everything = plan_all and bool(registrations or lost - welcomed)
        if everything or dirty:
            planned_namespaces = {d.namespace for d in deployments.values() if everything or d.name in dirty}
            access, self.pool = await anyio.to_thread.run_sync(self._read_access, planned_namespaces)
            self.access.update(access)
            views = [
                self.node_view(n, connected=n.node_id in welcomed or self.transport.is_connected(n.node_id))
                for n in nodes.values()
            ]
            taken: set[str] = set(replicas)

            def new_id(name: str) -> str:
                replica_id = _new_replica_id(name, taken)
                taken.add(replica_id)
                return replica_id

            result = scheduler.plan(
                [d.desired(self.access.get(d.namespace, frozenset())) for d in deployments.values()],
                replicas.values(),
                views,
                next_epoch=self.next_epoch,
                new_id=new_id,
                only=None if everything else dirty,
            )
            self._record_plan(result, replicas, deployments, after, intents, now)
            replicas = scheduler.apply(replicas, result.actions)
            for action in result.actions:
                if isinstance(action, scheduler.Create):
                    touched.add(action.replica.replica_id)
                elif not isinstance(action, scheduler.Drop):
                    touched.add(action.replica_id)
        if result.next_epoch != self.next_epoch:
            before.epoch = (self.next_epoch - 1, result.next_epoch - 1)

        # 5. Nodes and epochs durable; then the mirror, welcome, the frames; then the replicas.
        planned = time.perf_counter()
        if before:
            await anyio.to_thread.run_sync(self._write, before)
        reserved = time.perf_counter()
        old = self.replicas
        self.nodes = nodes
        self.replicas = replicas
        self.deployments = deployments
        self.next_epoch = result.next_epoch
        self.rounds += 1
        self._reindex(old, touched)
        for registration, node in ready:
            registration.on_ready(node)
            if not registration.future.done():
                registration.future.set_result(node)
        if intents:
            self.transport.deliver(intents)
        sent = time.perf_counter()
        if after:
            try:
                await anyio.to_thread.run_sync(self._write, after)
            except (SQLAlchemyError, McpzError):
                log.exception("cannot record a round's replicas; reloading from the database")
                await anyio.to_thread.run_sync(self._load)
                self._dirty.update(self.deployments)
                self._wake.set()
        done = time.perf_counter()
        if done - started > SLOW_ROUND:
            log.info(
                "slow reconciliation round",
                extra={
                    "ms": round((done - started) * 1000, 1),
                    "plan_ms": round((planned - started) * 1000, 1),
                    "reserve_ms": round((reserved - planned) * 1000, 1),
                    "send_ms": round((sent - reserved) * 1000, 1),
                    "write_ms": round((done - sent) * 1000, 1),
                    "actions": len(result.actions),
                    "statuses": len(after.statuses),
                    "hellos": len(registrations),
                },
            )

    def _registered(
        self, registration: _Registration, nodes: Mapping[str, NodeState], now: datetime
    ) -> tuple[NodeState, bool]:
        hello = registration.hello
        known = nodes.get(hello.node_id) if hello.node_id else None
        if known is not None and known.account_id != registration.account_id:
            log.warning(
                "a node claimed the id of another account's node; it gets a new id",
                extra={"node": hello.node_id, "node_name": hello.node_name},
            )
            known = None
        node = NodeState(
            node_id=known.node_id if known else _new_node_id(hello.node_name, nodes),
            name=hello.node_name,
            account_id=registration.account_id,
            labels=dict(hello.labels),
            capacity=hello.capacity,
            software_version=hello.software_version,
            state="ready",
            created_at=known.created_at if known else now,
            shared=hello.shared,
            last_seen_at=now,
            lost_at=None,
        )
        if known is not None:
            node.cpu_percent, node.memory_used = known.cpu_percent, known.memory_used
            node.memory_total, node.load, node.stale_frames = (
                known.memory_total,
                known.load,
                known.stale_frames,
            )
        return node, known is None

    def _record_plan(
        self,
        result: scheduler.Plan,
        replicas: Mapping[str, Replica],
        deployments: dict[str, DeploymentState],
        changes: _Changes,
        intents: list[Intent],
        now: datetime,
    ) -> None:
        for action in result.actions:
            if isinstance(action, scheduler.Create):
                replica = action.replica
                changes.creates.append(_replica_row(replica, now))
                if replica.node_id is not None:
                    intent = self._deploy_intent(replica.node_id, replica, replica.epoch, deployments)
                    if intent is not None:
                        intents.append(intent)
            elif isinstance(action, scheduler.Assign):
                replica = replicas[action.replica_id]
                changes.assigns.append(
                    {
                        "id": action.replica_id,
                        "node_id": action.node_id,
                        "epoch": action.epoch,
                        "status": ReplicaStatus.PENDING.value,
                        "detail": "",
                        "exit_code": None,
                        "updated_at": now,
                    }
                )
                moved = self._deploy_intent(action.node_id, replica, action.epoch, self.deployments)
                if moved is not None:
                    intents.append(moved)
                log.info(
                    "replica assigned",
                    extra={"replica": action.replica_id, "node": action.node_id, "reason": action.reason},
                )
            elif isinstance(action, scheduler.StopReplica):
                replica = replicas[action.replica_id]
                changes.stops.append(
                    {"id": action.replica_id, "stopping": True, "detail": action.reason, "updated_at": now}
                )
                intents.append(
                    StopIntent(
                        action.node_id, replica.deployment, action.replica_id, action.epoch, action.reason,
                        self.stop_grace,
                    )
                )  # fmt: skip
            elif isinstance(action, scheduler.Forget):
                changes.forgets.append(action.replica_id)
            elif isinstance(action, scheduler.Drop):
                changes.drops.append(action.deployment)
                deployments.pop(action.deployment, None)
                self.logs.forget(action.deployment)

    def _read_access(self, names: Collection[str]) -> tuple[dict[str, frozenset[int]], frozenset[int]]:
        """Per namespace in `names`, its owner's and members' account ids; and the shared pool's."""
        found: dict[str, set[int]] = {name: set() for name in names}
        with self.db.session() as session:
            for chunk in chunks(sorted(names), 500):
                rows = session.execute(
                    select(Namespace.name, Namespace.owner_id).where(Namespace.name.in_(chunk))
                )
                members = session.execute(
                    select(NamespaceMember.namespace, NamespaceMember.account_id).where(
                        NamespaceMember.namespace.in_(chunk)
                    )
                )
                for name, account_id in [*rows, *members]:
                    found[name].add(account_id)
            pool: frozenset[int] = frozenset()
            if self.shared_node_owners:
                pool = frozenset(
                    session.scalars(select(Account.id).where(Account.name.in_(self.shared_node_owners)))
                )
        return {name: frozenset(ids) for name, ids in found.items()}, pool

    def _write(self, changes: _Changes) -> None:
        with self.db.session() as session:
            if changes.node_inserts:
                session.execute(insert(MeshNode), changes.node_inserts)
            if changes.node_updates:
                session.execute(update(MeshNode), changes.node_updates)
            for chunk in chunks(changes.node_deletes, 500):
                session.execute(delete(MeshNode).where(MeshNode.id.in_(chunk)))
            if changes.statuses:
                session.execute(update(MeshReplica), changes.statuses)
            if changes.creates:
                session.execute(insert(MeshReplica), changes.creates)
            if changes.assigns:
                session.execute(update(MeshReplica), changes.assigns)
            if changes.stops:
                session.execute(update(MeshReplica), changes.stops)
            for chunk in chunks(changes.forgets, 500):
                session.execute(delete(MeshReplica).where(MeshReplica.id.in_(chunk)))
            for name in changes.drops:
                session.execute(delete(MeshReplica).where(MeshReplica.deployment == name))
                session.execute(delete(DeploymentRevision).where(DeploymentRevision.deployment == name))
                session.execute(delete(Deployment).where(Deployment.name == name))
            if changes.epoch is not None:
                before, after = changes.epoch
                moved = session.execute(
                    update(MeshCounter)
                    .where(MeshCounter.name == EPOCH_COUNTER, MeshCounter.value == before)
                    .values(value=after)
                )
                if moved.rowcount != 1:  # type: ignore[attr-defined]
                    raise ConflictError(
                        "the epoch counter moved under this registry: another process schedules on "
                        "this database",
                        hint="run one registry process per database: the mesh hub keeps its state in memory",
                    )


# --- releases as templates -------------------------------------------------------------------------


def release_template(
    db: Database,
    repos: Any,
    agent: str,
    version: str | None,
    *,
    limits: Limits,
    selector: Mapping[str, str],
) -> Template:
    """The template that runs release `agent` `version` (default: the newest that is not yanked
    nor a pre-release), with the manifest's command and env and the release's locked dependencies."""
    from packaging.version import Version

    from mcpz.manifest import parse_manifest
    from registry_server.releases.models import Agent, Release

    with db.session() as session:
        row = session.scalar(select(Agent).where(Agent.name == agent))
        if row is None:
            raise NotFoundError(f"no agent {agent} in this registry", hint="publish it with `mcpz push`")
        releases = list(session.scalars(select(Release).where(Release.agent_id == row.id)))
    if version is None:
        candidates = [r for r in releases if not r.yanked and not Version(r.version).is_prerelease]
        if not candidates:
            raise NotFoundError(f"{agent} has no release to deploy", hint="name a version: NAME@VERSION")
        release = max(candidates, key=lambda r: Version(r.version))
    else:
        found = [r for r in releases if r.version == version]
        if not found:
            raise NotFoundError(f"{agent} {version} is not published", hint=f"see `mcpz versions {agent}`")
        release = found[0]
    manifest = parse_manifest(release.manifest)
    if manifest.run is None:
        raise UsageError(f"{agent} is a {manifest.kind}, which is not run on its own; deploy an agent")
    return Template(
        agent=agent,
        version=release.version,
        commit=release.commit,
        command=tuple(manifest.run.command),
        env=dict(manifest.run.env),
        limits=limits,
        selector=dict(selector),
        dependencies=_locked_dependencies(repos, agent, release.commit),
    )


def _locked_dependencies(repos: Any, agent: str, commit: str) -> tuple[LockedDependency, ...]:
    """The agents in the release's `mcpz.lock`, if its tree has one."""
    from dulwich.objects import Blob, Commit, Tree

    from mcpz.lockfile import LOCK_FILE, parse_lock

    repo = repos.open(agent)
    if repo is None:
        return ()
    try:
        obj = repo.object_store[commit.encode()]
        tree = repo.object_store[obj.tree] if isinstance(obj, Commit) else None
        if not isinstance(tree, Tree) or LOCK_FILE.encode() not in tree:
            return ()
        _mode, sha = tree[LOCK_FILE.encode()]
        blob = repo.object_store[sha]
        if not isinstance(blob, Blob):
            return ()
        text = blob.as_raw_string().decode("utf-8")
    except (KeyError, UnicodeDecodeError) as e:
        raise RefusedError(f"cannot read {LOCK_FILE} of {agent} at {commit[:12]}: {e}") from e
    finally:
        repo.close()
    lock = parse_lock(text)
    return tuple(LockedDependency(name=a.name, version=a.version, commit=a.commit) for a in lock.agents)


# --- statements ------------------------------------------------------------------------------------


def _statement_for(
    deployment: DeploymentState, template: Template
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The statement a deploy of `template` carries, with its signatures: that of the newest
    revision with this template, preferring a signed one. A node that saw a newer revision
    refuses it: what the deployer signed last is what runs."""
    same = [r for r in deployment.revisions.values() if r.template == template and r.statement]
    if not same:
        return "", ()
    best = max([r for r in same if r.signatures] or same, key=lambda r: r.number)
    return best.statement, best.signatures


# --- rows and ids ----------------------------------------------------------------------------------


def _template_of(row: DeploymentRevision) -> Template:
    limits = json.loads(row.limits)
    return Template(
        agent=row.agent,
        version=row.version,
        commit=row.commit,
        command=tuple(json.loads(row.command)),
        env=json.loads(row.env),
        limits=Limits(limits.get("memory_bytes"), limits.get("open_files")),
        selector=json.loads(row.selector),
        dependencies=tuple(
            LockedDependency(name=n, version=v, commit=c) for n, v, c in json.loads(row.dependencies)
        ),
    )


def _revision_row(deployment: str, revision: Revision) -> DeploymentRevision:
    t = revision.template
    return DeploymentRevision(
        deployment=deployment,
        revision=revision.number,
        agent=t.agent,
        version=t.version,
        commit=t.commit,
        command=json.dumps(list(t.command)),
        env=json.dumps(dict(t.env), sort_keys=True),
        limits=json.dumps(t.limits.to_dict()),
        selector=json.dumps(dict(t.selector), sort_keys=True),
        dependencies=json.dumps([[d.name, d.version, d.commit] for d in t.dependencies]),
        created_at=revision.created_at,
    )


def _node_row(node: NodeState) -> dict[str, Any]:
    return {
        "id": node.node_id,
        "name": node.name,
        "account_id": node.account_id,
        "labels": json.dumps(node.labels, sort_keys=True),
        "capacity": node.capacity,
        "software_version": node.software_version,
        "state": node.state,
        "shared": node.shared,
        "created_at": node.created_at,
        "last_seen_at": node.last_seen_at,
        "lost_at": node.lost_at,
        "cpu_percent": node.cpu_percent,
        "memory_used": node.memory_used,
        "memory_total": node.memory_total,
        "load": node.load,
    }


def _figures_row(node: NodeState) -> dict[str, Any]:
    return {
        "id": node.node_id,
        "last_seen_at": node.last_seen_at,
        "cpu_percent": node.cpu_percent,
        "memory_used": node.memory_used,
        "memory_total": node.memory_total,
        "load": node.load,
    }


def _replica_row(replica: Replica, now: datetime) -> dict[str, Any]:
    return {
        "id": replica.replica_id,
        "deployment": replica.deployment,
        "revision": replica.revision,
        "node_id": replica.node_id,
        "epoch": replica.epoch,
        "status": replica.status.value,
        "stopping": replica.stopping,
        "detail": replica.detail,
        "exit_code": replica.exit_code,
        "created_at": now,
        "updated_at": now,
    }


_NOT_IDENT = re.compile(r"[^A-Za-z0-9._-]+")


def _new_node_id(name: str, taken: Container[str]) -> str:
    """`<name as an ident>-<6 hex>`: readable, a valid file name, and unique."""
    base = _NOT_IDENT.sub("-", name).strip("-._")[:40] or "node"
    while True:
        node_id = f"{base}-{secrets.token_hex(3)}"
        if node_id not in taken:
            return node_id


def _new_replica_id(deployment: str, taken: Container[str]) -> str:
    """`<namespace>.<name>-<8 hex>`, e.g. `acme.weather-3f9a1c2b`."""
    base = deployment.replace("/", ".")[:110]
    while True:
        replica_id = f"{base}-{secrets.token_hex(4)}"
        if replica_id not in taken:
            return replica_id
