"""Placement and reconciliation of deployments over mesh nodes. Pure: data in, actions out.

`plan` takes desired state (one `Desired` per deployment), the replicas that exist and the nodes
the hub knows, and returns the actions that move actual state one step towards desired state:

- **Placement** spreads a deployment's replicas over *eligible* nodes (live, connected, allowed to run
  it, carrying every label of the selector, with free capacity): fewest replicas of that deployment
  first, then most free capacity, then node id, so equal inputs give equal plans.
- **Who a node serves**: a node may run a deployment when its owner (the account whose token
  connected it) is one of the deployment's `accounts` (its namespace's owner and members), or when
  the node is `shared`. Replicas on a node that may no longer run them (a member removed, a node no
  longer shared) are stopped and placed again, so a caller's arguments never cross an outsider's node.
- **Epochs** are fencing tokens: every assignment of a replica to a node takes the next value of one
  counter (`next_epoch` in, the new high-water mark out), so they only grow; the caller keeps the
  counter in the database.
- **A lost node's replicas** move to eligible nodes at new epochs (same replica id); when nothing is
  eligible they stay where they were, so a node that comes back in time is adopted, not replaced.
- **Rolling update** (surge 1, unavailable 0): one replica of the target revision at a time beyond
  the desired count, and an old replica is stopped only once a new one runs in its place, so a
  deployment never has more than `replicas + 1` replicas during a rollout, and never fewer running
  than before it. Replicas of the old revision that do not run are stopped at once. A replica of a
  revision whose template equals the target's counts as current, so a rollback re-adopts the
  replicas of the revision it returns to instead of replacing them.
- **Stopping** replicas stay counted until their node confirms they stopped, or the node is lost.

`reconcile_reports` applies the epoch rules to what a node reports in `hello` and `heartbeat`: a
report at the replica's current epoch from the node that holds it is adopted; anything else is
stopped, never adopted. `accepts` is the same rule for `status` and `log` frames.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Container, Iterable, Mapping
from dataclasses import dataclass, field, replace

from mcpz.mesh import ReplicaReport, ReplicaStatus

__all__ = [
    "Action",
    "Assign",
    "Create",
    "Desired",
    "Drop",
    "Forget",
    "NodeView",
    "Plan",
    "Replica",
    "ReportOutcome",
    "StaleCopy",
    "StopReplica",
    "accepts",
    "apply",
    "plan",
    "reconcile_reports",
    "unplaced_reason",
]

_REMOVAL_RANK = {
    ReplicaStatus.FAILED: 0,
    ReplicaStatus.STOPPED: 0,
    ReplicaStatus.PENDING: 1,
    ReplicaStatus.PULLING: 2,
    ReplicaStatus.STARTING: 3,
    ReplicaStatus.RUNNING: 4,
}


@dataclass(frozen=True, slots=True)
class NodeView:
    """What placement needs to know of a node."""

    node_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    capacity: int = 1
    live: bool = True  # not declared lost
    connected: bool = True  # holds a welcomed connection now, so a deploy frame can reach it
    owner: int | None = None  # the account whose token connected it
    shared: bool = False  # serves every account's deployments (opted in, or the operator's pool)

    def matches(self, selector: Mapping[str, str]) -> bool:
        return all(self.labels.get(key) == value for key, value in selector.items())

    def serves(self, desired: Desired) -> bool:
        """Whether this node may run `desired`'s replicas at all (whatever its state)."""
        return self.shared or desired.accounts is None or self.owner in desired.accounts


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica and its current assignment. `epoch` 0 and `node_id` None: never assigned."""

    replica_id: str
    deployment: str
    revision: int
    node_id: str | None = None
    epoch: int = 0
    status: ReplicaStatus = ReplicaStatus.PENDING
    stopping: bool = False  # asked to stop; kept until its node confirms or is lost
    detail: str = ""
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class Desired:
    """A deployment's desired state."""

    name: str
    revision: int  # the revision to converge to
    replicas: int
    selector: Mapping[str, str] = field(default_factory=dict)
    # Other revisions whose template equals the target's: their replicas are current too.
    same_as_target: frozenset[int] = frozenset()
    deleted: bool = False
    # The accounts whose nodes may run it (its namespace's owner and members); None: any node.
    accounts: frozenset[int] | None = None

    def is_current(self, revision: int) -> bool:
        return revision == self.revision or revision in self.same_as_target


# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Create:
    """A new replica; assigned (`node_id`, `epoch`) when a node was eligible, else unassigned."""

    replica: Replica


@dataclass(frozen=True, slots=True)
class Assign:
    """(Re)assign a replica to `node_id` at a new `epoch`; its status starts over at pending."""

    replica_id: str
    node_id: str
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class StopReplica:
    """Ask the replica's node to stop it; the replica is kept (stopping) until confirmed."""

    replica_id: str
    node_id: str
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class Forget:
    """The replica is gone: stopped, fenced off on a lost node, or never placed."""

    replica_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Drop:
    """A removed deployment has no replicas left: remove it."""

    deployment: str


Action = Create | Assign | StopReplica | Forget | Drop


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    next_epoch: int  # the first epoch not yet used

    def __bool__(self) -> bool:
        return bool(self.actions)


def apply(replicas: Mapping[str, Replica], actions: Iterable[Action]) -> dict[str, Replica]:
    """The replicas after `actions` (a new dict; `replicas` is left as it was)."""
    out = dict(replicas)
    for action in actions:
        if isinstance(action, Create):
            out[action.replica.replica_id] = action.replica
        elif isinstance(action, Assign):
            out[action.replica_id] = replace(
                out[action.replica_id],
                node_id=action.node_id,
                epoch=action.epoch,
                status=ReplicaStatus.PENDING,
                detail="",
                exit_code=None,
            )
        elif isinstance(action, StopReplica):
            out[action.replica_id] = replace(out[action.replica_id], stopping=True, detail=action.reason)
        elif isinstance(action, Forget):
            out.pop(action.replica_id, None)
    return out


# --- planning --------------------------------------------------------------------------------


def plan(
    desired: Iterable[Desired],
    replicas: Iterable[Replica],
    nodes: Iterable[NodeView],
    *,
    next_epoch: int,
    new_id: Callable[[str], str],
    only: Collection[str] | None = None,
    retry: Collection[str] = (),
) -> Plan:
    """The actions that bring the deployments named in `only` (default: all) towards `desired`.

    Replicas whose deployment has no `Desired` are treated as removed. `new_id(deployment)` names
    a new replica; it must not return an id in use. Failed replicas named in `retry` are placed
    again at a new epoch (see `retries`); other failed replicas stay as they are.
    """
    if next_epoch < 1:
        raise ValueError(f"next_epoch must be >= 1, got {next_epoch}")
    planner = _Planner({n.node_id: n for n in nodes}, next_epoch, new_id, retry)
    by_deployment: dict[str, list[Replica]] = defaultdict(list)
    for replica in replicas:
        by_deployment[replica.deployment].append(replica)
        if replica.node_id is not None:
            planner.usage[replica.node_id] += 1
    wanted = {d.name: d for d in desired}
    for name in sorted(set(wanted) | set(by_deployment)):
        if only is None or name in only:
            planner.deployment(name, wanted.get(name), by_deployment.get(name, []))
    return Plan(tuple(planner.actions), planner.next_epoch)


class _Planner:
    def __init__(
        self,
        nodes: dict[str, NodeView],
        next_epoch: int,
        new_id: Callable[[str], str],
        retry: Collection[str] = (),
    ) -> None:
        self.nodes = nodes
        self.retry = retry
        self.next_epoch = next_epoch
        self.new_id = new_id
        self.usage: Counter[str] = Counter()  # replicas (any deployment, stopping too) per node
        self.actions: list[Action] = []
        self.spread: Counter[str] = Counter()  # this deployment's replicas per node
        self.retiring = 0  # this deployment's replicas stopping, not yet confirmed
        self.heap: list[tuple[int, int, str]] | None = None  # eligible nodes for this deployment
        self.eligible: set[str] = set()

    # -- helpers

    def reachable(self, replica: Replica) -> bool:
        """Assigned to a node that is not lost: a stop frame can still reach it, now or later."""
        node = self.nodes.get(replica.node_id) if replica.node_id is not None else None
        return node is not None and node.live

    def trespassing(self, replica: Replica, desired: Desired) -> bool:
        """On a known node that may not run `desired` (any more)."""
        node = self.nodes.get(replica.node_id) if replica.node_id is not None else None
        return node is not None and not node.serves(desired)

    def epoch(self) -> int:
        value = self.next_epoch
        self.next_epoch += 1
        return value

    def key(self, node_id: str) -> tuple[int, int, str]:
        """Placement order: fewest replicas of this deployment, then most free capacity, then id."""
        return (self.spread[node_id], self.usage[node_id] - self.nodes[node_id].capacity, node_id)

    def pick(self, desired: Desired) -> NodeView | None:
        """The best eligible node, or None. A heap of the eligible nodes, built at the deployment's
        first pick and kept up to date lazily, so placing R replicas on N nodes is O((N + R) log N)."""
        if self.heap is None:
            self.eligible = {
                n.node_id
                for n in self.nodes.values()
                if n.live
                and n.connected
                and n.capacity > 0
                and n.serves(desired)
                and n.matches(desired.selector)
            }
            self.heap = [self.key(n) for n in self.eligible if self.usage[n] < self.nodes[n].capacity]
            heapq.heapify(self.heap)
        while self.heap:
            entry = heapq.heappop(self.heap)
            node_id = entry[2]
            if self.usage[node_id] >= self.nodes[node_id].capacity:
                continue  # full: it comes back when a replica leaves it
            current = self.key(node_id)
            if entry != current:  # an entry from before the node's figures changed
                heapq.heappush(self.heap, current)
                continue
            return self.nodes[node_id]
        return None

    def take(self, node_id: str) -> None:
        self.usage[node_id] += 1
        self.spread[node_id] += 1
        self.refresh(node_id)

    def release(self, replica: Replica) -> None:
        if replica.node_id is not None:
            self.usage[replica.node_id] -= 1
            self.spread[replica.node_id] -= 1
            self.refresh(replica.node_id)

    def refresh(self, node_id: str) -> None:
        if self.heap is not None and node_id in self.eligible:
            if self.usage[node_id] < self.nodes[node_id].capacity:
                heapq.heappush(self.heap, self.key(node_id))

    def forget(self, replica: Replica, reason: str) -> None:
        self.release(replica)
        self.actions.append(Forget(replica.replica_id, reason))

    def stop(self, replica: Replica, reason: str) -> None:
        """Stop a replica: through its node when it can be reached, else forget it (fenced)."""
        if replica.node_id is not None and self.reachable(replica):
            self.actions.append(StopReplica(replica.replica_id, replica.node_id, replica.epoch, reason))
            self.retiring += 1
        else:
            self.forget(replica, reason)

    # -- one deployment

    def deployment(self, name: str, desired: Desired | None, rows: list[Replica]) -> None:
        self.spread = Counter(r.node_id for r in rows if r.node_id is not None)
        self.retiring = 0
        self.heap = None
        for replica in rows:
            if replica.stopping:
                if self.reachable(replica):
                    self.retiring += 1
                else:
                    self.forget(replica, "node lost while stopping")
        active = [r for r in rows if not r.stopping]

        if desired is None or desired.deleted:
            for replica in sorted(active, key=_by_id):
                self.stop(replica, "removed")
            if desired is not None and not self.retiring:
                self.actions.append(Drop(name))
            return

        # Before anything else: a replica on a node that may not run it goes, serving or not.
        for replica in sorted(active, key=_by_id):
            if self.trespassing(replica, desired):
                self.stop(replica, f"its node {replica.node_id} may not run {name}")
        active = [r for r in active if not self.trespassing(r, desired)]

        current = [r for r in active if desired.is_current(r.revision)]
        old: list[Replica] = []
        for replica in sorted(active, key=_by_id):
            if desired.is_current(replica.revision):
                continue
            if self.reachable(replica) and replica.status is ReplicaStatus.RUNNING:
                old.append(replica)
            else:  # not serving: nothing is lost by stopping it now
                self.stop(replica, "replaced")

        # Scale down: the least useful first (unplaced, on lost nodes, failed, ..., running).
        if len(current) > desired.replicas:
            ranked = sorted(current, key=self._removal_key)
            for replica in ranked[: len(current) - desired.replicas]:
                self.stop(replica, "scaled-down")
            current = ranked[len(current) - desired.replicas :]

        # Move replicas off lost nodes, place unplaced ones, restart those that stopped on their own,
        # and try again the failed ones that are due.
        for replica in sorted(current, key=_by_id):
            retrying = replica.status is ReplicaStatus.FAILED and replica.replica_id in self.retry
            if self.reachable(replica) and replica.status is not ReplicaStatus.STOPPED and not retrying:
                continue
            self.release(replica)  # its own slot may be taken again
            node = self.pick(desired)
            if node is None:
                if replica.node_id is not None:
                    self.take(replica.node_id)
                continue
            if replica.node_id is None:
                reason = "placed"
            elif replica.status is ReplicaStatus.STOPPED and self.reachable(replica):
                reason = "restarted: it stopped on its own"
            elif retrying and self.reachable(replica):
                reason = "retried: it had failed"
            else:
                reason = f"moved off lost node {replica.node_id}"
            self.take(node.node_id)
            self.actions.append(Assign(replica.replica_id, node.node_id, self.epoch(), reason))

        # Create replicas of the target revision, one beyond the desired count during a rollout.
        # Stopping replicas still count: they may run until their node confirms.
        ceiling = desired.replicas + (1 if old else 0)
        missing = min(desired.replicas - len(current), ceiling - len(current) - len(old) - self.retiring)
        for _ in range(max(0, missing)):
            node = self.pick(desired)
            replica = Replica(self.new_id(name), name, desired.revision)
            if node is not None:
                self.take(node.node_id)
                replica = replace(replica, node_id=node.node_id, epoch=self.epoch())
            self.actions.append(Create(replica))

        # Retire old replicas once as many current ones run in their place.
        running = sum(1 for r in current if r.status is ReplicaStatus.RUNNING and self.reachable(r))
        surplus = running + len(old) - desired.replicas
        for replica in old[: max(0, surplus)]:
            self.stop(replica, "replaced")

    def _removal_key(self, replica: Replica) -> tuple[int, int, int, str]:
        placed = 0 if replica.node_id is None else 1 if not self.reachable(replica) else 2
        return (placed, _REMOVAL_RANK[replica.status], -replica.epoch, replica.replica_id)


def _by_id(replica: Replica) -> str:
    return replica.replica_id


def unplaced_reason(desired: Desired, nodes: Iterable[NodeView], usage: Mapping[str, int]) -> str:
    """Why a replica of `desired` has no node, in one line: the first filter that leaves no node.

    `usage` is the number of replicas (any deployment) on each node.
    """
    up = [n for n in nodes if n.live and n.connected and n.capacity > 0]
    if not up:
        return "waiting for a node: none is connected"
    namespace = desired.name.split("/")[0]
    allowed = [n for n in up if n.serves(desired)]
    if not allowed:
        return (
            f"waiting for a node that may run it: none of the connected nodes belongs to the owner or "
            f'a member of "{namespace}", and none is shared'
        )
    matching = [n for n in allowed if n.matches(desired.selector)]
    if not matching:
        labels = ",".join(f"{k}={v}" for k, v in sorted(desired.selector.items()))
        return f"no node matches {labels}: none of the nodes that may run it has these labels"
    if all(usage.get(n.node_id, 0) >= n.capacity for n in matching):
        return "waiting for capacity: every node that may run it is full"
    return "waiting for an eligible node"


# --- what nodes report -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaleCopy:
    """A copy a node runs that is not (or no longer) a current assignment of that node."""

    deployment: str
    replica_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    adopt: tuple[tuple[str, ReplicaStatus], ...] = ()  # current assignments whose status changed
    stop: tuple[StaleCopy, ...] = ()  # copies to stop (stale, unknown, or asked to stop)
    stopped: tuple[str, ...] = ()  # stopping replicas the node no longer runs
    redeploy: tuple[str, ...] = ()  # assignments of this node it does not hold (hello only)

    def __bool__(self) -> bool:
        return bool(self.adopt or self.stop or self.stopped or self.redeploy)


def accepts(replicas: Mapping[str, Replica], node_id: str, replica_id: str, epoch: int) -> bool:
    """Whether a frame about (`replica_id`, `epoch`) from `node_id` may change state: only when
    that is the replica's current assignment and `node_id` holds it."""
    replica = replicas.get(replica_id)
    return replica is not None and replica.node_id == node_id and replica.epoch == epoch


def reconcile_reports(
    node_id: str,
    reports: Iterable[ReplicaReport],
    replicas: Mapping[str, Replica],
    assigned: Iterable[Replica],
    *,
    complete: bool,
    stop_acked: Container[tuple[str, int]] = (),
) -> ReportOutcome:
    """Compare what `node_id` says it holds with the replicas assigned to it (`assigned`).

    `complete` is True for a `hello`, whose list is authoritative: an assignment missing from it is
    re-sent, a stopping replica missing from it is gone. A `heartbeat` may race with frames in
    flight, so there a missing stopping replica counts as gone only once its stop was acked on
    this connection (`stop_acked`), and nothing is re-sent.
    """
    adopt: list[tuple[str, ReplicaStatus]] = []
    stop: list[StaleCopy] = []
    stopped: list[str] = []
    held: set[str] = set()
    for report in reports:
        current = replicas.get(report.replica_id)
        if current is not None and current.node_id == node_id and current.epoch == report.epoch:
            held.add(report.replica_id)
            if current.stopping:
                if report.status is ReplicaStatus.STOPPED:
                    stopped.append(report.replica_id)
                else:
                    stop.append(StaleCopy(report.deployment, report.replica_id, report.epoch))
            elif report.status is not current.status:
                adopt.append((report.replica_id, report.status))
        elif report.status is not ReplicaStatus.STOPPED:
            # An older epoch, a replica no longer wanted, or one assigned elsewhere: never adopted.
            stop.append(StaleCopy(report.deployment, report.replica_id, report.epoch))
    redeploy: list[str] = []
    for replica in assigned:
        if replica.replica_id in held or replica.node_id != node_id:
            continue
        if replica.stopping:
            if complete or (replica.replica_id, replica.epoch) in stop_acked:
                stopped.append(replica.replica_id)
        elif complete and replica.epoch > 0:
            redeploy.append(replica.replica_id)
    return ReportOutcome(tuple(adopt), tuple(stop), tuple(stopped), tuple(redeploy))
