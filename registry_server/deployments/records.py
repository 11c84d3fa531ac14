"""The deployment mirror's records (what the database holds, in memory), what the mesh hub is asked
to send, and the results of a change of desired state. Pure: data only, no database or network.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from mcpz.errors import McpzError, RefusedError
from mcpz.mesh import LockedDependency, SessionPolicy
from registry_server.deployments.scheduler import Desired

STOP_GRACE = 10.0
"""Seconds a node gives a replica between SIGTERM and SIGKILL when the hub stops it."""


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
    allow_tool_drift: bool = False  # replicas may answer other tools than those signed with the release
    # The manifest's [run] sessions, max_sessions and session_idle.
    sessions: SessionPolicy = field(default_factory=SessionPolicy)


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

    def rollback_target(self) -> int | None:
        """The revision a rollback returns to by default: the newest earlier one that runs another
        template; None when there is none."""
        earlier = [n for n, r in self.revisions.items() if n < self.revision and r.template != self.template]
        return max(earlier) if earlier else None

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
    statement: str = ""  # the signed deployment statement the node checks (see `statement_for`)
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


class Nowhere:
    def is_connected(self, node_id: str) -> bool:
        return False

    def deliver(self, intents: Sequence[Intent]) -> None:
        pass


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


# --- statements ------------------------------------------------------------------------------------


def statement_for(deployment: DeploymentState, template: Template) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The statement a deploy of `template` carries, with its signatures: that of the newest
    revision with this template, preferring a signed one. A node that saw a newer revision
    refuses it: what the deployer signed last is what runs."""
    same = [r for r in deployment.revisions.values() if r.template == template and r.statement]
    if not same:
        return "", ()
    best = max([r for r in same if r.signatures] or same, key=lambda r: r.number)
    return best.statement, best.signatures


# --- ids----------------------------------------------------------------------------------------------


_NOT_IDENT = re.compile(r"[^A-Za-z0-9._-]+")


def new_node_id(name: str, taken: Container[str]) -> str:
    """`<name as an ident>-<6 hex>`: readable, a valid file name, and unique."""
    base = _NOT_IDENT.sub("-", name).strip("-._")[:40] or "node"
    while True:
        node_id = f"{base}-{secrets.token_hex(3)}"
        if node_id not in taken:
            return node_id


def new_replica_id(deployment: str, taken: Container[str]) -> str:
    """`<namespace>.<name>-<8 hex>`, e.g. `acme.weather-3f9a1c2b`."""
    base = deployment.replace("/", ".")[:110]
    while True:
        replica_id = f"{base}-{secrets.token_hex(4)}"
        if replica_id not in taken:
            return replica_id
