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
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeVar

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError

from mcpz.errors import McpzError, NotFoundError, UsageError
from mcpz.keys import signing
from mcpz.mesh import Heartbeat, Hello, Log, ReplicaStatus, Status
from registry_server.db import Database, chunks
from registry_server.deployments import scheduler, store
from registry_server.deployments.logbook import LogBook
from registry_server.deployments.records import (
    STOP_GRACE,
    Change,
    DeployIntent,
    DeploymentState,
    Intent,
    NodeState,
    Nowhere,
    Revision,
    Signed,
    StatementChanged,
    StopIntent,
    Template,
    Transport,
    new_node_id,
    new_replica_id,
    statement_for,
)
from registry_server.deployments.retries import Backoff, RetryBook
from registry_server.deployments.scheduler import NodeView, Replica
from registry_server.orm import utcnow
from registry_server.tasks import cancel

log = logging.getLogger("registry_server.deployments")
_T = TypeVar("_T")

MAX_REVISIONS = 10
SLOW_ROUND = 0.1
"""A reconciliation round longer than this (seconds) is logged with the time of each phase."""
MAX_REPLICAS = 10_000
RETRY_TICK = 1.0
"""How often (seconds) the ticker looks for failed replicas whose retry is due."""
FIGURES_INTERVAL = 30.0
"""How often nodes' heartbeat figures (load, memory, last seen) are written to the database. The
mirror always has the live ones; the database needs them only after a restart."""


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


@dataclass(slots=True)
class _Round:
    """One reconciliation round's working copy of the mirror, what it will write (`before`: nodes
    and the epoch counter, durable before any frame leaves; `after`: replicas) and send."""

    started: float
    now: datetime
    clock: float  # monotonic, for retries
    nodes: dict[str, NodeState]
    replicas: dict[str, Replica]
    deployments: dict[str, DeploymentState]
    statuses: dict[str, _StatusUpdate]
    dirty: set[str]
    plan: scheduler.Plan
    before: store.Changes = field(default_factory=store.Changes)
    after: store.Changes = field(default_factory=store.Changes)
    intents: list[Intent] = field(default_factory=list)
    ready: list[tuple[_Registration, NodeState]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # replicas whose node may have changed
    planned: float = 0.0
    reserved: float = 0.0
    sent: float = 0.0

    @property
    def welcomed(self) -> set[str]:
        return {node.node_id for _, node in self.ready}


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
        backoff: Backoff | None = None,
        logs: LogBook | None = None,
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
        self.transport: Transport = Nowhere()
        self.logs = logs if logs is not None else LogBook()
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
        # Failed replicas are tried again: at once when what failed them may have changed, else
        # after a backoff (see `retries`).
        self.retries = RetryBook(backoff or Backoff())
        # Registry replicas: only the replica leading the mesh runs this service, and each of its
        # writes checks that lease in its own transaction (`registry_server.mesh.cluster`).
        self.fence: store.Fence | None = None
        # ...and before it sends frames: False once this replica no longer believes it leads.
        self.acting: Callable[[], bool] = lambda: True

    # -- life cycle

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self._load)
        self._dirty.update(self.deployments)
        self._tasks = [
            asyncio.create_task(self._reconciler(), name="mesh-reconciler"),
            asyncio.create_task(self._ticker(), name="mesh-resync"),
        ]

    async def halt(self) -> None:
        """Stop at once, writing nothing (a replica that lost the lease to lead the mesh): the
        mirror and everything queued are dropped; `start` loads them again from the database."""
        await cancel(*self._tasks)
        self._tasks = []
        for registration in self._registrations:
            if not registration.future.done():
                registration.future.set_exception(McpzError("this registry replica stopped leading the mesh"))
        self._registrations = []
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(McpzError("this registry replica stopped leading the mesh"))
        self._waiters = []
        self._statuses.clear()
        self._lost.clear()
        self._prune.clear()
        self._dirty.clear()
        self._figures_due.clear()
        self.deployments, self.replicas, self.nodes = {}, {}, {}
        self._reindex()

    async def close(self) -> None:
        await cancel(*self._tasks)
        self._tasks = []
        # What nodes reported last is written before the process goes; nothing new is planned.
        self._dirty.clear()
        with contextlib.suppress(SQLAlchemyError, McpzError):
            await self._round(plan_all=False)
            await self._flush_figures()

    def _load(self) -> None:
        mirror = store.load(self.db)
        self.deployments, self.replicas, self.nodes = mirror.deployments, mirror.replicas, mirror.nodes
        self.next_epoch, self._floors = mirror.next_epoch, mirror.floors
        clock = time.monotonic()
        for replica in self.replicas.values():
            if replica.status is ReplicaStatus.FAILED and not self.retries.failures(replica.replica_id):
                self.retries.failed(replica.replica_id, clock)
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

    def any_node_up(self) -> bool:
        """Whether any node is live and connected now."""
        return any(n.live and self.transport.is_connected(n.node_id) for n in self.nodes.values())

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
        statement, signatures = statement_for(deployment, revision.template)
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

    def release_run_by(self, node_id: str, replica_id: str, epoch: int) -> tuple[str, str] | None:
        """(agent, version) the replica runs, if `node_id` holds it at `epoch`; else None."""
        if not scheduler.accepts(self.replicas, node_id, replica_id, epoch):
            self._count_stale(node_id)
            return None
        template = self.template_of(self.replicas[replica_id])
        return (template.agent, template.version) if template is not None else None

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
                # Deployed again (signed again, or its release signed meanwhile): what failed its
                # replicas may have changed, so they are tried again now.
                self.retries.force(self._failed_of(name), time.monotonic())
        if not prepare:
            await self.reconcile([name])
        return change

    async def restart(self, name: str) -> int:
        """Try every failed replica of `name` again now, its backoff forgotten; returns how many."""
        async with self._lock:
            self._existing(name)
            failed = self._failed_of(name)
            self.retries.force(failed, time.monotonic(), reset=True)
        await self.reconcile([name])
        return len(failed)

    def _failed_of(self, name: str) -> list[str]:
        return [
            r.replica_id
            for r in self.replicas_of(name)
            if r.status is ReplicaStatus.FAILED and not r.stopping
        ]

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
                to_revision = current.rollback_target()
                if to_revision is None:
                    raise UsageError(
                        f"{name} has no earlier revision to roll back to",
                        hint=f"see its revisions with `mcpz deploy status {name}`",
                    )
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
                allow_tool_drift=t.allow_tool_drift,
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
        await anyio.to_thread.run_sync(
            store.write_deployment, self.db, before, after, statement, signatures, self.fence
        )
        self.deployments[after.name] = after

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
            await asyncio.sleep(
                max(0.01, min(next_resync, next_figures, loop.time() + RETRY_TICK) - loop.time())
            )
            now = loop.time()
            due = self.retries.next_due()
            if due is not None and due <= time.monotonic():
                self._dirty.update(
                    r.deployment for r in map(self.replicas.get, self.retries.due(time.monotonic())) if r
                )
                self._wake.set()
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
        rows = [store.figures_row(self.nodes[n]) for n in sorted(due) if n in self.nodes]
        for chunk in chunks(rows, 500):
            try:
                await anyio.to_thread.run_sync(store.write_figures, self.db, chunk, self.fence)
            except SQLAlchemyError as e:
                log.warning("cannot write node figures: %s", e)
                return

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
        """One round, in named steps over a working copy of the mirror (`_Round`). Its writes go
        in two transactions: first the nodes and the epoch counter, then (after the frames left)
        the replicas. An epoch is thus durable before any node sees it, so none is ever used twice;
        should the process die between the two, a node holds an assignment the database does not
        know, and the epoch rules stop it at its next report."""
        r = _Round(
            started=time.perf_counter(),
            now=utcnow(),
            clock=time.monotonic(),
            nodes=dict(self.nodes),
            replicas=dict(self.replicas),
            deployments=dict(self.deployments),
            statuses=statuses,
            dirty=dirty,
            plan=scheduler.Plan((), self.next_epoch),
        )
        self._welcome(r, registrations)
        self._lose(r, lost - r.welcomed)
        self._prune_nodes(r, set(prune) - r.welcomed)
        self._adopt_held(r)
        self._take_statuses(r)
        everything = plan_all and bool(registrations or lost - r.welcomed)
        await self._plan(
            r, everything=everything, retry_all=plan_all and bool(registrations), plan_all=plan_all
        )
        await self._publish(r)
        self._log_if_slow(r, len(registrations))

    def _welcome(self, r: _Round, registrations: list[_Registration]) -> None:
        """Nodes that said hello: known ones updated, new ones given an id."""
        for registration in registrations:
            node, created = self._registered(registration, r.nodes, r.now)
            r.nodes[node.node_id] = node
            r.ready.append((registration, node))
            (r.before.node_inserts if created else r.before.node_updates).append(store.node_row(node))

    def _lose(self, r: _Round, lost: Iterable[str]) -> None:
        """Nodes silent past their grace (and that did not say hello in this round) are lost."""
        for node_id in lost:
            silent = r.nodes.get(node_id)
            if silent is not None and silent.live:
                r.nodes[node_id] = silent = replace(silent, state="lost", lost_at=r.now)
                r.before.node_updates.append(store.node_row(silent))
                log.warning("node lost", extra={"node": node_id, "node_name": silent.name})

    def _prune_nodes(self, r: _Round, prune: set[str]) -> None:
        """Lost nodes past their retention go; their replicas wait unplaced, their epochs kept."""
        for node_id in sorted(prune):
            silent = r.nodes.get(node_id)
            if silent is None or silent.live:
                continue
            del r.nodes[node_id]
            r.before.node_deletes.append(node_id)
            log.info("lost node pruned", extra={"node": node_id, "node_name": silent.name})
            for replica_id in self._by_node.get(node_id, ()):
                replica = r.replicas.get(replica_id)
                if replica is None:
                    continue
                # Unassigned, its epoch kept: a copy still running somewhere stays fenced off.
                r.replicas[replica_id] = replace(
                    replica, node_id=None, status=ReplicaStatus.PENDING, detail="", exit_code=None
                )
                r.after.assigns.append(
                    {
                        "id": replica_id, "node_id": None, "epoch": replica.epoch,
                        "status": ReplicaStatus.PENDING.value, "detail": "", "exit_code": None,
                        "updated_at": r.now,
                    }
                )  # fmt: skip
                r.touched.add(replica_id)
                r.dirty.add(replica.deployment)

    def _adopt_held(self, r: _Round) -> None:
        """What the welcomed nodes say they hold, by the epoch rules: stale copies stopped,
        missing assignments sent again, the statuses of current ones adopted."""
        for registration, node in r.ready:
            held = [self.replicas[x] for x in self._by_node.get(node.node_id, ()) if x in self.replicas]
            outcome = scheduler.reconcile_reports(
                node.node_id, registration.hello.replicas, r.replicas, held, complete=True
            )
            for copy in outcome.stop:
                r.intents.append(
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
                replica = r.replicas[replica_id]
                intent = self._deploy_intent(node.node_id, replica, replica.epoch, self.deployments)
                if intent is not None:
                    r.intents.append(intent)
            for replica_id, status in outcome.adopt:
                r.statuses[replica_id] = _StatusUpdate(node.node_id, r.replicas[replica_id].epoch, status)
                r.dirty.add(r.replicas[replica_id].deployment)
            for replica_id in outcome.stopped:
                epoch = r.replicas[replica_id].epoch
                r.statuses[replica_id] = _StatusUpdate(node.node_id, epoch, ReplicaStatus.STOPPED)
                r.dirty.add(r.replicas[replica_id].deployment)

    def _take_statuses(self, r: _Round) -> None:
        """Status reports, checked again against the epochs of now; failures start a backoff."""
        for replica_id, report in r.statuses.items():
            row = r.replicas.get(replica_id)
            if row is None or not scheduler.accepts(r.replicas, report.node_id, replica_id, report.epoch):
                continue
            if row.stopping and report.status is ReplicaStatus.STOPPED:
                del r.replicas[replica_id]
                r.after.forgets.append(replica_id)
                r.touched.add(replica_id)
                r.dirty.add(row.deployment)
                self.retries.forget(replica_id)
                continue
            if (row.status, row.detail, row.exit_code) == (report.status, report.detail, report.exit_code):
                continue
            if report.status is ReplicaStatus.FAILED and row.status is not ReplicaStatus.FAILED:
                due = self.retries.failed(replica_id, r.clock)
                log.info(
                    "replica failed; retried later",
                    extra={
                        "replica": replica_id,
                        "detail": report.detail,
                        "retry_in_s": round(due - r.clock, 1),
                    },
                )
            elif report.status is ReplicaStatus.RUNNING:
                self.retries.running(replica_id, r.clock)
            r.replicas[replica_id] = replace(
                row, status=report.status, detail=report.detail, exit_code=report.exit_code
            )
            r.after.statuses.append(
                {
                    "id": replica_id,
                    "status": report.status.value,
                    "detail": report.detail,
                    "exit_code": report.exit_code,
                    "updated_at": r.now,
                }
            )

    async def _plan(self, r: _Round, *, everything: bool, retry_all: bool, plan_all: bool) -> None:
        """Plan what is dirty (`everything` when nodes came or went). Failed replicas are tried
        again when due, and all of them when a node joined (`retry_all`: it may be the one they need)."""
        retry = self.retries.due(r.clock)
        if retry_all:
            retry |= {x.replica_id for x in r.replicas.values() if x.status is ReplicaStatus.FAILED}
        retry = {x for x in retry if x in r.replicas}
        if plan_all:
            r.dirty.update(r.replicas[x].deployment for x in retry)
        if not (everything or r.dirty):
            return
        planned = {d.namespace for d in r.deployments.values() if everything or d.name in r.dirty}
        access, self.pool = await anyio.to_thread.run_sync(
            store.read_access, self.db, planned, self.shared_node_owners
        )
        self.access.update(access)
        views = [
            self.node_view(n, connected=n.node_id in r.welcomed or self.transport.is_connected(n.node_id))
            for n in r.nodes.values()
        ]
        taken: set[str] = set(r.replicas)

        def new_id(name: str) -> str:
            replica_id = new_replica_id(name, taken)
            taken.add(replica_id)
            return replica_id

        r.plan = scheduler.plan(
            [d.desired(self.access.get(d.namespace, frozenset())) for d in r.deployments.values()],
            r.replicas.values(),
            views,
            next_epoch=self.next_epoch,
            new_id=new_id,
            only=None if everything else r.dirty,
            retry=retry,
        )
        self._record_plan(r.plan, r.replicas, r.deployments, r.after, r.intents, r.now)
        placed = {a.replica_id for a in r.plan.actions if isinstance(a, scheduler.Assign)}
        for replica_id in retry:
            if replica_id in placed:
                self.retries.retried(replica_id)
            else:
                self.retries.postpone(replica_id, r.clock)
        r.replicas = scheduler.apply(r.replicas, r.plan.actions)
        for action in r.plan.actions:
            if isinstance(action, scheduler.Create):
                r.touched.add(action.replica.replica_id)
            elif not isinstance(action, scheduler.Drop):
                r.touched.add(action.replica_id)
                if isinstance(action, scheduler.Forget):
                    self.retries.forget(action.replica_id)
        if r.plan.next_epoch != self.next_epoch:
            r.before.epoch = (self.next_epoch - 1, r.plan.next_epoch - 1)

    async def _publish(self, r: _Round) -> None:
        """Nodes and epochs made durable; then the mirror, the welcomes, the frames; then the
        replicas written (a failure there reloads the mirror from the database)."""
        r.planned = time.perf_counter()
        if r.before:
            await anyio.to_thread.run_sync(store.write_changes, self.db, r.before, self.fence)
        r.reserved = time.perf_counter()
        if not self.acting():  # a replica resumed past its lease: nothing leaves, nothing changes
            raise McpzError("this registry replica no longer leads the mesh")
        old = self.replicas
        self.nodes = r.nodes
        self.replicas = r.replicas
        self.deployments = r.deployments
        self.next_epoch = r.plan.next_epoch
        self.rounds += 1
        self._reindex(old, r.touched)
        for registration, node in r.ready:
            registration.on_ready(node)
            if not registration.future.done():
                registration.future.set_result(node)
        if r.intents:
            self.transport.deliver(r.intents)
        r.sent = time.perf_counter()
        if r.after:
            try:
                await anyio.to_thread.run_sync(store.write_changes, self.db, r.after, self.fence)
            except (SQLAlchemyError, McpzError):
                log.exception("cannot record a round's replicas; reloading from the database")
                await anyio.to_thread.run_sync(self._load)
                self._dirty.update(self.deployments)
                self._wake.set()

    def _log_if_slow(self, r: _Round, hellos: int) -> None:
        done = time.perf_counter()
        if done - r.started > SLOW_ROUND:
            log.info(
                "slow reconciliation round",
                extra={
                    "ms": round((done - r.started) * 1000, 1),
                    "plan_ms": round((r.planned - r.started) * 1000, 1),
                    "reserve_ms": round((r.reserved - r.planned) * 1000, 1),
                    "send_ms": round((r.sent - r.reserved) * 1000, 1),
                    "write_ms": round((done - r.sent) * 1000, 1),
                    "actions": len(r.plan.actions),
                    "statuses": len(r.after.statuses),
                    "hellos": hellos,
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
            node_id=known.node_id if known else new_node_id(hello.node_name, nodes),
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
        changes: store.Changes,
        intents: list[Intent],
        now: datetime,
    ) -> None:
        for action in result.actions:
            if isinstance(action, scheduler.Create):
                replica = action.replica
                changes.creates.append(store.replica_row(replica, now))
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
