"""The scheduler, pure: placement, rollouts, lost nodes and the epoch rules, with hypothesis.

A state machine drives a simulated mesh: nodes come, go silent, come back; deployments are
created, rolled out, scaled, rolled back and removed; nodes run what they are sent and report it.
After every plan the invariants of the issue are checked: epochs only grow, placements only on
eligible nodes within capacity, at most `replicas + 1` replicas during a rollout, no running replica
stopped unless another runs in its place, and stale copies stopped, never adopted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mcpz.mesh import ReplicaReport, ReplicaStatus
from registry_server.deployments import scheduler
from registry_server.deployments.scheduler import (
    Assign,
    Create,
    Desired,
    Drop,
    Forget,
    NodeView,
    Replica,
    StopReplica,
    accepts,
    plan,
    reconcile_reports,
    unplaced_reason,
)

RUNNING = ReplicaStatus.RUNNING
COMMIT = "c" * 40


def ids() -> Callable[[str], str]:
    count = 0

    def new_id(deployment: str) -> str:
        nonlocal count
        count += 1
        return f"{deployment}-{count}"

    return new_id


# --- examples ------------------------------------------------------------------------------------


def test_spreads_over_nodes_by_free_capacity_and_selector() -> None:
    nodes = [
        NodeView("a", {"zone": "eu"}, capacity=4),
        NodeView("b", {"zone": "eu"}, capacity=2),
        NodeView("c", {"zone": "us"}, capacity=8),
        NodeView("d", {"zone": "eu"}, capacity=8, connected=False),
        NodeView("e", {"zone": "eu"}, capacity=8, live=False),
    ]
    result = plan([Desired("x", 1, 4, {"zone": "eu"})], [], nodes, next_epoch=1, new_id=ids())  # type: ignore[arg-type]
    placed = Counter(a.replica.node_id for a in result.actions if isinstance(a, Create))
    assert placed == {"a": 2, "b": 2}
    assert sorted(a.replica.epoch for a in result.actions if isinstance(a, Create)) == [1, 2, 3, 4]
    assert result.next_epoch == 5


def test_nothing_eligible_leaves_replicas_unplaced_then_places_them() -> None:
    desired = [Desired("x", 1, 2)]
    first = plan(desired, [], [], next_epoch=7, new_id=ids())  # type: ignore[arg-type]
    assert [a.replica.node_id for a in first.actions if isinstance(a, Create)] == [None, None]
    assert first.next_epoch == 7
    replicas = scheduler.apply({}, first.actions)
    second = plan(desired, replicas.values(), [NodeView("a", capacity=5)], next_epoch=7, new_id=ids())  # type: ignore[arg-type]
    assert {(a.node_id, a.epoch) for a in second.actions if isinstance(a, Assign)} == {("a", 7), ("a", 8)}


def test_rolling_update_one_at_a_time_new_running_before_old_stops() -> None:
    nodes = [NodeView("a", capacity=10)]
    old = {f"o{i}": Replica(f"o{i}", "x", 1, "a", i, RUNNING) for i in range(1, 4)}
    target = Desired("x", 2, 3)
    step = plan([target], old.values(), nodes, next_epoch=10, new_id=ids())  # type: ignore[arg-type]
    assert [type(a) for a in step.actions] == [Create]  # one surge replica, nothing stopped yet
    replicas = scheduler.apply(old, step.actions)
    new = next(a.replica.replica_id for a in step.actions if isinstance(a, Create))
    again = plan([target], replicas.values(), nodes, next_epoch=step.next_epoch, new_id=ids())  # type: ignore[arg-type]
    assert not again  # the new one does not run yet: wait
    replicas[new] = replace(replicas[new], status=RUNNING)
    retire = plan([target], replicas.values(), nodes, next_epoch=step.next_epoch, new_id=ids())  # type: ignore[arg-type]
    assert [(type(a), a.replica_id) for a in retire.actions if isinstance(a, StopReplica)] == [
        (StopReplica, "o1")
    ]
    assert len(retire.actions) == 1


def test_rollback_readopts_the_replicas_of_an_equal_revision() -> None:
    nodes = [NodeView("a", capacity=10)]
    running = {f"o{i}": Replica(f"o{i}", "x", 1, "a", i, RUNNING) for i in range(1, 3)}
    failing = Replica("n1", "x", 2, "a", 5, ReplicaStatus.FAILED)
    replicas = {**running, "n1": failing}
    # revision 3 is a rollback to revision 1's template: its replicas are current again.
    result = plan(
        [Desired("x", 3, 2, same_as_target=frozenset({1}))],
        replicas.values(),
        nodes,
        next_epoch=9,
        new_id=ids(),  # type: ignore[arg-type]
    )
    assert [(type(a), getattr(a, "replica_id", None)) for a in result.actions] == [(StopReplica, "n1")]


def test_lost_node_replicas_move_at_new_epochs_and_stale_copies_are_stopped() -> None:
    replicas = {"r1": Replica("r1", "x", 1, "a", 7, RUNNING)}
    nodes = [NodeView("a", live=False, connected=False), NodeView("b", capacity=3)]
    result = plan([Desired("x", 1, 1)], replicas.values(), nodes, next_epoch=8, new_id=ids())  # type: ignore[arg-type]
    assert result.actions == (Assign("r1", "b", 8, "moved off lost node a"),)
    replicas = scheduler.apply(replicas, result.actions)
    # a comes back still running r1 at epoch 7: stopped, never adopted; its frames are refused.
    report = ReplicaReport(deployment="x", replica_id="r1", epoch=7, commit=COMMIT, status=RUNNING)
    outcome = reconcile_reports("a", [report], replicas, [], complete=True)
    assert outcome.stop == (scheduler.StaleCopy("x", "r1", 7),)
    assert not outcome.adopt
    assert not accepts(replicas, "a", "r1", 7)
    assert accepts(replicas, "b", "r1", 8)


def test_an_older_copy_on_the_node_that_now_holds_a_newer_epoch_is_stopped() -> None:
    # r1 stopped on its own on a and was restarted there at epoch 9; that deploy never arrived.
    replicas = {"r1": Replica("r1", "x", 1, "a", 9)}
    report = ReplicaReport(deployment="x", replica_id="r1", epoch=5, commit=COMMIT, status=RUNNING)
    outcome = reconcile_reports("a", [report], replicas, replicas.values(), complete=True)
    assert outcome.stop == (scheduler.StaleCopy("x", "r1", 5),)
    assert outcome.redeploy == ("r1",)
    assert not outcome.adopt


def test_a_replica_that_stopped_on_its_own_is_restarted_at_a_new_epoch() -> None:
    replicas = {"r1": Replica("r1", "x", 1, "a", 5, ReplicaStatus.STOPPED)}
    result = plan([Desired("x", 1, 1)], replicas.values(), [NodeView("a")], next_epoch=6, new_id=ids())  # type: ignore[arg-type]
    assert result.actions == (Assign("r1", "a", 6, "restarted: it stopped on its own"),)


def test_a_failed_replica_is_placed_again_only_when_its_retry_is_due() -> None:
    failed = Replica("r1", "x", 1, "a", 5, ReplicaStatus.FAILED, detail="verify-failed: not signed")
    nodes = [NodeView("a"), NodeView("b")]
    waiting = plan([Desired("x", 1, 1)], [failed], nodes, next_epoch=6, new_id=ids())
    assert waiting.actions == ()
    due = plan([Desired("x", 1, 1)], [failed], nodes, next_epoch=6, new_id=ids(), retry={"r1"})
    assert due.actions == (Assign("r1", "a", 6, "retried: it had failed"),)
    # Nowhere to go (its node is full of others' replicas, no other node is up): it stays failed.
    busy = [Replica(f"o{i}", "other", 1, "a", i + 1, RUNNING) for i in range(2)]
    full = plan(
        [Desired("x", 1, 1), Desired("other", 1, 2)],
        [failed, *busy],
        [NodeView("a", capacity=2), NodeView("b", live=False)],
        next_epoch=6,
        new_id=ids(),
        retry={"r1"},
    )
    assert full.actions == ()


def test_a_lost_node_whose_replicas_could_not_move_is_adopted_when_back() -> None:
    replicas = {"r1": Replica("r1", "x", 1, "a", 7, RUNNING)}
    nodes = [NodeView("a", live=False, connected=False)]
    assert not plan([Desired("x", 1, 1)], replicas.values(), nodes, next_epoch=8, new_id=ids())  # type: ignore[arg-type]
    report = ReplicaReport(deployment="x", replica_id="r1", epoch=7, commit=COMMIT, status=RUNNING)
    outcome = reconcile_reports("a", [report], replicas, replicas.values(), complete=True)
    assert not outcome  # same epoch, same node, same status: adopted as it is


def test_hello_resends_missing_assignments_and_confirms_missing_stops() -> None:
    replicas = {
        "r1": Replica("r1", "x", 1, "a", 3),
        "r2": Replica("r2", "x", 1, "a", 4, RUNNING, stopping=True),
    }
    outcome = reconcile_reports("a", [], replicas, replicas.values(), complete=True)
    assert outcome.redeploy == ("r1",)
    assert outcome.stopped == ("r2",)
    beat = reconcile_reports("a", [], replicas, replicas.values(), complete=False)
    assert not beat  # a heartbeat may race with frames in flight
    acked = reconcile_reports("a", [], replicas, replicas.values(), complete=False, stop_acked={("r2", 4)})
    assert acked.stopped == ("r2",)


def test_removed_deployment_is_dropped_once_its_replicas_are_gone() -> None:
    replicas = {"r1": Replica("r1", "x", 1, "a", 1, RUNNING)}
    nodes = [NodeView("a")]
    gone = Desired("x", 1, 1, deleted=True)
    first = plan([gone], replicas.values(), nodes, next_epoch=2, new_id=ids())  # type: ignore[arg-type]
    assert first.actions == (StopReplica("r1", "a", 1, "removed"),)
    replicas = scheduler.apply(replicas, first.actions)
    assert not plan([gone], replicas.values(), nodes, next_epoch=2, new_id=ids())  # type: ignore[arg-type]
    assert plan([gone], [], nodes, next_epoch=2, new_id=ids()).actions == (Drop("x"),)  # type: ignore[arg-type]


# --- who a node serves ------------------------------------------------------------------------------

ALICE, BOB, CAROL = 1, 2, 3


def test_a_node_runs_only_deployments_of_its_owners_namespaces_unless_shared() -> None:
    alice = NodeView("alice-node", capacity=10, owner=ALICE)
    bob_only = [Desired("bob/agent", 1, 3, accounts=frozenset({BOB}))]
    result = plan(bob_only, [], [alice], next_epoch=1, new_id=ids())  # type: ignore[arg-type]
    created = [a.replica for a in result.actions if isinstance(a, Create)]
    assert len(created) == 3 and all(r.node_id is None for r in created)
    assert unplaced_reason(bob_only[0], [alice], {}) == (
        "waiting for a node that may run it: none of the connected nodes belongs to the owner or a "
        'member of "bob", and none is shared'
    )

    # A member's node, and a shared node, may run it; Alice's still may not.
    carol = NodeView("carol-node", capacity=1, owner=CAROL)
    shared = NodeView("pool-node", capacity=10, owner=ALICE, shared=True)
    with_carol = [Desired("bob/agent", 1, 3, accounts=frozenset({BOB, CAROL}))]
    result = plan(with_carol, [], [alice, carol, shared], next_epoch=1, new_id=ids())  # type: ignore[arg-type]
    placed = Counter(a.replica.node_id for a in result.actions if isinstance(a, Create))
    assert placed == Counter({"carol-node": 1, "pool-node": 2})


def test_a_replica_on_a_node_that_may_no_longer_run_it_is_stopped_and_placed_again() -> None:
    # Carol was a member of bob's namespace and ran its replica; she no longer is.
    replicas = {"r1": Replica("r1", "bob/agent", 1, "carol-node", 4, RUNNING)}
    nodes = [NodeView("carol-node", owner=CAROL), NodeView("bob-node", owner=BOB)]
    desired = [Desired("bob/agent", 1, 1, accounts=frozenset({BOB}))]
    first = plan(desired, replicas.values(), nodes, next_epoch=9, new_id=ids())  # type: ignore[arg-type]
    assert first.actions == (StopReplica("r1", "carol-node", 4, "its node carol-node may not run bob/agent"),)
    replicas = scheduler.apply(replicas, first.actions)
    del replicas["r1"]  # carol's node confirmed the stop
    second = plan(desired, replicas.values(), nodes, next_epoch=9, new_id=ids())  # type: ignore[arg-type]
    (create,) = second.actions
    assert isinstance(create, Create) and create.replica.node_id == "bob-node"


def test_why_a_replica_waits_names_the_first_missing_condition() -> None:
    desired = Desired("bob/agent", 1, 1, {"gpu": "a100"}, accounts=frozenset({BOB}))
    assert unplaced_reason(desired, [], {}) == "waiting for a node: none is connected"
    assert "none is connected" in unplaced_reason(desired, [NodeView("b", owner=BOB, live=False)], {})
    bob = NodeView("b", owner=BOB, capacity=1)
    assert unplaced_reason(desired, [bob], {}).startswith("no node matches gpu=a100: ")
    gpu = replace(bob, labels={"gpu": "a100"})
    assert "full" in unplaced_reason(desired, [gpu], {"b": 1})


def test_next_epoch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="next_epoch"):
        plan([], [], [], next_epoch=0, new_id=ids())  # type: ignore[arg-type]


# --- the simulated mesh ------------------------------------------------------------------------


@dataclass
class Copy:
    """What a node runs for one replica id."""

    deployment: str
    epoch: int
    status: ReplicaStatus
    stop_asked: bool = False


TEMPLATES = ["t1", "t2", "t3"]


class Mesh(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, NodeView] = {}
        self.replicas: dict[str, Replica] = {}
        self.desired: dict[str, Desired] = {}
        self.access = {"x": frozenset({ALICE}), "y": frozenset({BOB})}  # whose nodes may run each
        self.templates: dict[str, dict[int, tuple[str, str | None]]] = {}
        self.world: dict[str, dict[str, Copy]] = {}  # node -> replica -> what it runs
        self.next_epoch = 1
        self.highest_epoch = 0
        self.count = 0

    def new_id(self, deployment: str) -> str:
        self.count += 1
        return f"{deployment}-{self.count}"

    @initialize(n=st.integers(1, 3))
    def start(self, n: int) -> None:
        for _ in range(n):
            self.add_node(3, "a", ALICE, False)

    # -- nodes

    @rule(
        capacity=st.integers(0, 4),
        zone=st.sampled_from(["a", "b"]),
        owner=st.sampled_from([ALICE, BOB]),
        shared=st.booleans(),
    )
    def add_node(self, capacity: int, zone: str, owner: int, shared: bool) -> None:
        node_id = f"n{len(self.nodes)}"
        self.nodes[node_id] = NodeView(node_id, {"zone": zone}, capacity, owner=owner, shared=shared)
        self.world[node_id] = {}

    @rule(data=st.data())
    def unshare(self, data: st.DataObject) -> None:
        shared = sorted(n for n, v in self.nodes.items() if v.shared)
        if shared:
            node_id = data.draw(st.sampled_from(shared))
            self.nodes[node_id] = replace(self.nodes[node_id], shared=False)

    @rule(name=st.sampled_from(["x", "y"]), accounts=st.sampled_from([{ALICE}, {BOB}, {ALICE, BOB}]))
    def change_members(self, name: str, accounts: set[int]) -> None:
        """The namespace of `name` gains or loses a member."""
        self.access[name] = frozenset(accounts)
        current = self.desired.get(name)
        if current is not None:
            self.desired[name] = replace(current, accounts=self.access[name])

    @rule(data=st.data())
    def lose_node(self, data: st.DataObject) -> None:
        live = sorted(n for n, v in self.nodes.items() if v.live)
        if live:
            node_id = data.draw(st.sampled_from(live))
            self.nodes[node_id] = replace(self.nodes[node_id], live=False, connected=False)

    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        connected = sorted(n for n, v in self.nodes.items() if v.connected)
        if connected:
            node_id = data.draw(st.sampled_from(connected))
            self.nodes[node_id] = replace(self.nodes[node_id], connected=False)

    @rule(data=st.data())
    def hello(self, data: st.DataObject) -> None:
        """A lost or disconnected node comes back and lists what it runs."""
        away = sorted(n for n, v in self.nodes.items() if not v.connected)
        if not away:
            return
        node_id = data.draw(st.sampled_from(away))
        self.nodes[node_id] = replace(self.nodes[node_id], live=True, connected=True)
        held = self.world[node_id]
        reports = [
            ReplicaReport(
                deployment=c.deployment, replica_id=r, epoch=c.epoch, commit=COMMIT, status=c.status
            )
            for r, c in sorted(held.items())
        ]
        assigned = [r for r in self.replicas.values() if r.node_id == node_id]
        outcome = reconcile_reports(node_id, reports, self.replicas, assigned, complete=True)
        stale = {
            (r.replica_id, r.epoch)
            for r in reports
            if not accepts(self.replicas, node_id, r.replica_id, r.epoch)
            and r.status is not ReplicaStatus.STOPPED
        }
        # Every stale copy is stopped; none is adopted.
        assert {(s.replica_id, s.epoch) for s in outcome.stop} >= stale
        for replica_id, _status in outcome.adopt:
            assert accepts(self.replicas, node_id, replica_id, held[replica_id].epoch)
        for copy in outcome.stop:
            held[copy.replica_id].stop_asked = True
        for replica_id, status in outcome.adopt:
            self.replicas[replica_id] = replace(self.replicas[replica_id], status=status)
        for replica_id in outcome.stopped:
            del self.replicas[replica_id]
        for replica_id in outcome.redeploy:
            replica = self.replicas[replica_id]
            held[replica_id] = Copy(replica.deployment, replica.epoch, ReplicaStatus.PENDING)

    @rule(data=st.data(), fail=st.booleans())
    def node_works(self, data: st.DataObject, fail: bool) -> None:
        """A connected node moves its copies on and reports each change in a status frame."""
        connected = sorted(n for n, v in self.nodes.items() if v.connected)
        if not connected:
            return
        node_id = data.draw(st.sampled_from(connected))
        held = self.world[node_id]
        for replica_id in sorted(held):
            copy = held[replica_id]
            if copy.stop_asked:
                del held[replica_id]
                self.report(node_id, replica_id, copy.epoch, ReplicaStatus.STOPPED)
            elif copy.status is ReplicaStatus.PENDING:
                copy.status = ReplicaStatus.FAILED if fail else RUNNING
                self.report(node_id, replica_id, copy.epoch, copy.status)

    @rule(data=st.data())
    def copy_stops_on_its_own(self, data: st.DataObject) -> None:
        """A running copy ends without being asked (the node reports it stopped)."""
        running = sorted(
            (n, r) for n, held in self.world.items() if self.nodes[n].connected for r, c in held.items()
            if c.status is RUNNING and not c.stop_asked
        )  # fmt: skip
        if running:
            node_id, replica_id = data.draw(st.sampled_from(running))
            copy = self.world[node_id][replica_id]
            copy.status = ReplicaStatus.STOPPED
            self.report(node_id, replica_id, copy.epoch, ReplicaStatus.STOPPED)

    def report(self, node_id: str, replica_id: str, epoch: int, status: ReplicaStatus) -> None:
        if not accepts(self.replicas, node_id, replica_id, epoch):
            return  # a stale epoch changes nothing
        replica = self.replicas[replica_id]
        if replica.stopping and status is ReplicaStatus.STOPPED:
            del self.replicas[replica_id]
        else:
            self.replicas[replica_id] = replace(replica, status=status)

    # -- desired state

    @rule(
        name=st.sampled_from(["x", "y"]),
        template=st.sampled_from(TEMPLATES),
        zone=st.sampled_from([None, "a"]),
        replicas=st.integers(0, 4),
    )
    def deploy(self, name: str, template: str, zone: str | None, replicas: int) -> None:
        revisions = self.templates.setdefault(name, {})
        current = self.desired.get(name)
        key = (template, zone)
        if current is None or current.deleted or revisions[current.revision] != key:
            number = max(revisions, default=0) + 1
            revisions[number] = key
        else:
            number = current.revision
        self.set_target(name, number, replicas)

    @rule(name=st.sampled_from(["x", "y"]))
    def rollback(self, name: str) -> None:
        current = self.desired.get(name)
        revisions = self.templates.get(name, {})
        if current is None or current.deleted:
            return
        earlier = [
            n for n, k in revisions.items() if n < current.revision and k != revisions[current.revision]
        ]
        if earlier:
            number = max(revisions) + 1
            revisions[number] = revisions[max(earlier)]
            self.set_target(name, number, current.replicas)

    @rule(name=st.sampled_from(["x", "y"]), replicas=st.integers(0, 4))
    def scale(self, name: str, replicas: int) -> None:
        current = self.desired.get(name)
        if current is not None and not current.deleted:
            self.set_target(name, current.revision, replicas)

    @rule(name=st.sampled_from(["x", "y"]))
    def remove(self, name: str) -> None:
        current = self.desired.get(name)
        if current is not None:
            self.desired[name] = replace(current, deleted=True)

    def set_target(self, name: str, number: int, replicas: int) -> None:
        revisions = self.templates[name]
        key = revisions[number]
        same = frozenset(n for n, k in revisions.items() if k == key)
        selector = {"zone": key[1]} if key[1] else {}
        self.desired[name] = Desired(name, number, replicas, selector, same, accounts=self.access[name])

    # -- the reconciler

    @rule(lossy=st.booleans())
    def reconcile(self, lossy: bool) -> None:
        """Plan and deliver; `lossy`: the connection of the first node sent to drops before its
        frames arrive (it will say hello again)."""
        before = dict(self.replicas)
        result = plan(
            self.desired.values(),
            before.values(),
            self.nodes.values(),
            next_epoch=self.next_epoch,
            new_id=self.new_id,
        )
        after = scheduler.apply(before, result.actions)
        self.check_plan(result, before, after)
        self.replicas = after
        self.next_epoch = result.next_epoch
        for action in result.actions:
            if isinstance(action, Drop):
                del self.desired[action.deployment]
        # Deliver: a node holding an older epoch of the replica takes the new assignment.
        dropped = None
        for action in result.actions:
            target = getattr(action, "node_id", None) or getattr(
                getattr(action, "replica", None), "node_id", None
            )
            if lossy and target is not None and dropped in (None, target):
                dropped = target
                self.nodes[target] = replace(self.nodes[target], connected=False)
                continue
            if isinstance(action, Create) and action.replica.node_id is not None:
                r = action.replica
                self.world[action.replica.node_id][r.replica_id] = Copy(
                    r.deployment, r.epoch, ReplicaStatus.PENDING
                )
            elif isinstance(action, Assign):
                replica = after[action.replica_id]
                self.world[action.node_id][action.replica_id] = Copy(
                    replica.deployment, action.epoch, ReplicaStatus.PENDING
                )
            elif isinstance(action, StopReplica) and self.nodes[action.node_id].connected:
                copy = self.world[action.node_id].get(action.replica_id)
                if copy is not None and copy.epoch <= action.epoch:
                    copy.stop_asked = True

    def check_plan(
        self, result: scheduler.Plan, before: dict[str, Replica], after: dict[str, Replica]
    ) -> None:
        epochs = [
            a.epoch if isinstance(a, Assign) else a.replica.epoch
            for a in result.actions
            if isinstance(a, Assign) or (isinstance(a, Create) and a.replica.node_id is not None)
        ]
        # Epochs only grow: each new assignment's epoch is above every epoch issued before.
        assert sorted(epochs) == epochs
        assert all(e > self.highest_epoch for e in epochs)
        self.highest_epoch = max([self.highest_epoch, *epochs])
        for action in result.actions:
            if isinstance(action, Assign):
                assert action.epoch > before[action.replica_id].epoch
        # Placement only on eligible nodes.
        for action in result.actions:
            node_id = action.node_id if isinstance(action, Assign) else None
            if isinstance(action, Create):
                node_id = action.replica.node_id
            if node_id is None or isinstance(action, StopReplica):
                continue
            assert isinstance(action, (Assign, Create))
            deployment = after[action.replica_id if isinstance(action, Assign) else action.replica.replica_id]
            node = self.nodes[node_id]
            assert node.live and node.connected
            assert node.matches(self.desired[deployment.deployment].selector)
            assert node.serves(self.desired[deployment.deployment])
        # After a plan, no replica that is not stopping is left on a node that may not run it.
        for replica in after.values():
            desired = self.desired.get(replica.deployment)
            if replica.stopping or replica.node_id is None or desired is None or desired.deleted:
                continue
            assert self.nodes[replica.node_id].serves(desired), replica
        for name, desired in self.desired.items():
            if desired.deleted:
                continue
            rows_after = [r for r in after.values() if r.deployment == name]
            created = [a for a in result.actions if isinstance(a, Create) and a.replica.deployment == name]
            # Never more than replicas + 1 while new ones are created.
            if created:
                assert len(rows_after) <= desired.replicas + 1
            # A running replica is stopped only when as many others run (down to the desired count),
            # except on a node that may no longer run it: access lost is stopped at once, even
            # with nowhere else to go (another account's callers must not reach that node).
            running_before = self.running(before, name, serving=desired)
            assert self.running(after, name) >= min(desired.replicas, running_before)

    def running(self, replicas: dict[str, Replica], name: str, serving: Desired | None = None) -> int:
        return sum(
            1
            for r in replicas.values()
            if r.deployment == name
            and r.status is RUNNING
            and not r.stopping
            and r.node_id is not None
            and self.nodes[r.node_id].live
            and (serving is None or self.nodes[r.node_id].serves(serving))
        )

    # -- always

    @invariant()
    def capacity_is_respected(self) -> None:
        usage = Counter(r.node_id for r in self.replicas.values() if r.node_id is not None)
        for node_id, used in usage.items():
            assert used <= self.nodes[node_id].capacity

    @invariant()
    def one_serving_copy_per_replica(self) -> None:
        serving: Counter[str] = Counter()
        for node_id, held in self.world.items():
            for replica_id, copy in held.items():
                if (
                    self.nodes[node_id].connected
                    and copy.status is RUNNING
                    and accepts(self.replicas, node_id, replica_id, copy.epoch)
                ):
                    serving[replica_id] += 1
        assert all(n == 1 for n in serving.values())

    @invariant()
    def replicas_on_unknown_nodes_never_exist(self) -> None:
        for replica in self.replicas.values():
            assert replica.node_id is None or replica.node_id in self.nodes
            assert (replica.node_id is None) == (replica.epoch == 0) or replica.node_id is not None


Mesh.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_mesh = Mesh.TestCase


# --- convergence ----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    capacities=st.lists(st.integers(1, 4), min_size=1, max_size=5),
    wanted=st.dictionaries(st.sampled_from(["x", "y", "z"]), st.integers(0, 3), max_size=3),
    steps=st.lists(st.sampled_from(["new-version", "scale", "lose", "none"]), max_size=4),
)
def test_converges_to_desired_state(capacities: list[int], wanted: dict[str, int], steps: list[str]) -> None:
    """With room enough, every deployment ends with exactly its replicas, current and running."""
    nodes = {f"n{i}": NodeView(f"n{i}", capacity=c + 2 * len(wanted)) for i, c in enumerate(capacities)}
    nodes["spare"] = NodeView("spare", capacity=20)
    desired = {name: Desired(name, 1, n) for name, n in wanted.items()}
    replicas: dict[str, Replica] = {}
    epoch = 1
    new_id = ids()

    def settle(replicas: dict[str, Replica]) -> dict[str, Replica]:
        nonlocal epoch
        for _ in range(60):
            result = plan(
                desired.values(), replicas.values(), nodes.values(), next_epoch=epoch, new_id=new_id
            )  # type: ignore[arg-type]
            epoch = result.next_epoch
            replicas = scheduler.apply(replicas, result.actions)
            # Nodes do their work: everything runs, every stop is carried out.
            changed = bool(result)
            for r in list(replicas.values()):
                if r.node_id is None or not nodes[r.node_id].live:
                    continue
                if r.stopping:
                    del replicas[r.replica_id]
                    changed = True
                elif r.status is not RUNNING:
                    replicas[r.replica_id] = replace(r, status=RUNNING)
                    changed = True
            if not changed:
                break
        return replicas

    replicas = settle(replicas)
    for step in steps:
        if step == "new-version":
            desired = {n: Desired(n, d.revision + 1, d.replicas) for n, d in desired.items()}
        elif step == "scale":
            desired = {n: replace(d, replicas=(d.replicas + 2) % 4) for n, d in desired.items()}
        elif step == "lose":
            first = next(iter(nodes))
            if first != "spare":
                nodes[first] = replace(nodes[first], live=False, connected=False)
        replicas = settle(replicas)
    for name, d in desired.items():
        rows = [r for r in replicas.values() if r.deployment == name]
        assert len(rows) == d.replicas
        assert all(r.revision == d.revision and r.status is RUNNING and not r.stopping for r in rows)
        assert all(r.node_id is not None and nodes[r.node_id].live for r in rows)


def test_forget_and_drop_are_plain_data() -> None:
    assert Forget("r", "why") == Forget("r", "why")
