"""The deployments' tables: the mirror loaded from them, and each write a round or a change makes.

Every function takes the `Database` and runs in a worker thread (the service calls them through
`anyio.to_thread`); each write is one transaction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.orm import Session

from mcpz.mesh import LockedDependency, ReplicaStatus, SessionPolicy
from registry_server.accounts.models import Account, Namespace, NamespaceMember
from registry_server.db import Database, chunks
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
from registry_server.deployments.records import (
    ConflictError,
    DeploymentState,
    Limits,
    NodeState,
    Revision,
    Template,
)
from registry_server.deployments.scheduler import Replica
from registry_server.orm import utcnow


@dataclass
class Changes:
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


@dataclass
class Mirror:
    """Everything the service keeps in memory, as loaded from the database."""

    deployments: dict[str, DeploymentState]
    replicas: dict[str, Replica]
    nodes: dict[str, NodeState]
    next_epoch: int
    floors: dict[str, int] = field(default_factory=dict)  # per name, the highest revision ever made


def load(db: Database) -> Mirror:
    """The mirror as the database has it (at start, and after a round failed to write)."""
    with db.session() as session:
        revisions: dict[str, dict[int, Revision]] = defaultdict(dict)
        same_revision = and_(
            DeploymentStatementRow.deployment == DeploymentRevision.deployment,
            DeploymentStatementRow.revision == DeploymentRevision.revision,
        )
        statements = {
            (row.deployment, row.revision): row.statement
            for row in session.scalars(select(DeploymentStatementRow).join(DeploymentRevision, same_revision))
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
                row_template(row),
                row.created_at,
                statements.get(key, ""),
                tuple(signed[key]),
            )
        floors = {
            name: int(top)
            for name, top in session.execute(
                select(DeploymentStatementRow.deployment, func.max(DeploymentStatementRow.revision)).group_by(
                    DeploymentStatementRow.deployment
                )
            )
        }
        deployments = {
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
        replicas = {
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
        nodes = {
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
        next_epoch = (counter.value if counter else 0) + 1
    return Mirror(deployments, replicas, nodes, next_epoch, floors)


Fence = Callable[[Session], None]
"""Called first in a write's transaction by a registry replica: raises (`leases.LeaseLost`) unless
this replica still leads the mesh, so a paused former leader writes nothing."""


def write_changes(db: Database, changes: Changes, fence: Fence | None = None) -> None:
    """Write one round's changes in one transaction; ConflictError when another process moved the
    epoch counter."""
    with db.session() as session:
        if fence is not None:
            fence(session)
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
                    "the epoch counter moved under this registry: another process schedules on this database",
                    hint="run one registry process per database: the mesh hub keeps its state in memory",
                )


def write_deployment(
    db: Database,
    before: DeploymentState | None,
    after: DeploymentState,
    statement: str = "",
    signatures: Sequence[tuple[str, str]] = (),
    fence: Fence | None = None,
) -> None:
    """Save `after` (a change from `before`): its row, its new revisions, the statement and
    signatures of its current revision."""
    with db.session() as session:
        if fence is not None:
            fence(session)
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
            session.add(revision_row(after.name, after.revisions[number]))
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


def write_figures(db: Database, rows: Sequence[dict[str, Any]], fence: Fence | None = None) -> None:
    with db.session() as session:
        if fence is not None:
            fence(session)
        session.execute(update(MeshNode), list(rows))


def read_access(
    db: Database, names: Collection[str], shared_node_owners: Sequence[str]
) -> tuple[dict[str, frozenset[int]], frozenset[int]]:
    """Per namespace in `names`, its owner's and members' account ids; and the shared pool's."""
    found: dict[str, set[int]] = {name: set() for name in names}
    with db.session() as session:
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
        if shared_node_owners:
            pool = frozenset(session.scalars(select(Account.id).where(Account.name.in_(shared_node_owners))))
    return {name: frozenset(ids) for name, ids in found.items()}, pool


# --- rows -----------------------------------------------------------------------------------------


def row_template(row: DeploymentRevision) -> Template:
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
        allow_tool_drift=bool(row.allow_tool_drift),
        sessions=_sessions_of(limits.get("sessions")),
    )


def _limits_json(t: Template) -> str:
    """The limits column's JSON. An isolated session policy rides in it under `sessions` (a policy
    bounds the processes a replica runs); a shared one, the default, is left out, so the revisions
    of before it read back as they were written."""
    limits: dict[str, object] = dict(t.limits.to_dict())
    if t.sessions != SessionPolicy():
        s = t.sessions
        limits["sessions"] = {"mode": s.mode, "max_processes": s.max_processes, "idle": s.idle}
    return json.dumps(limits)


def _sessions_of(value: object) -> SessionPolicy:
    if not isinstance(value, dict):
        return SessionPolicy()
    default = SessionPolicy()
    return SessionPolicy(
        mode=str(value.get("mode", default.mode)),
        max_processes=int(value.get("max_processes", default.max_processes)),
        idle=float(value.get("idle", default.idle)),
    )


def revision_row(deployment: str, revision: Revision) -> DeploymentRevision:
    t = revision.template
    return DeploymentRevision(
        deployment=deployment,
        revision=revision.number,
        agent=t.agent,
        version=t.version,
        commit=t.commit,
        command=json.dumps(list(t.command)),
        env=json.dumps(dict(t.env), sort_keys=True),
        limits=_limits_json(t),
        selector=json.dumps(dict(t.selector), sort_keys=True),
        dependencies=json.dumps([[d.name, d.version, d.commit] for d in t.dependencies]),
        allow_tool_drift=t.allow_tool_drift,
        created_at=revision.created_at,
    )


def node_row(node: NodeState) -> dict[str, Any]:
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


def figures_row(node: NodeState) -> dict[str, Any]:
    return {
        "id": node.node_id,
        "last_seen_at": node.last_seen_at,
        "cpu_percent": node.cpu_percent,
        "memory_used": node.memory_used,
        "memory_total": node.memory_total,
        "load": node.load,
    }


def replica_row(replica: Replica, now: datetime) -> dict[str, Any]:
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


def counts_for_metrics(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """(nodes by state, replicas by status): what the metrics' gauges show at each scrape."""
    nodes = session.execute(select(MeshNode.state, func.count()).group_by(MeshNode.state))
    replicas = session.execute(select(MeshReplica.status, func.count()).group_by(MeshReplica.status))
    return {str(k): int(v) for k, v in nodes}, {str(k): int(v) for k, v in replicas}
