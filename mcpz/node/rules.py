"""The epoch rules a node applies to `deploy` and `stop`, as pure decisions over its state.

From docs/mesh-protocol.md ("Epochs"): every assignment of a replica carries an epoch that only
grows, and the node compares each command with the epoch it holds (or last stopped) for that
replica id:

| frame  | epoch vs. the node's          | decision                                          |
|--------|-------------------------------|---------------------------------------------------|
| deploy | equal to the one it holds     | `repeat`: ack, change nothing                     |
| deploy | higher than the one it holds  | `replace`: ack, stop the old assignment, run the new |
| deploy | lower, or ≤ a stopped one     | `stale`: error `stale-epoch`                      |
| deploy | new replica, node full        | `no-capacity`: error `no-capacity`                |
| deploy | new replica                   | `start`: ack, pull and run it                     |
| stop   | replica not held              | `not-held`: ack                                   |
| stop   | lower than the one it holds   | `older`: ack, ignore (meant for a replaced one)   |
| stop   | equal or higher               | `stop`: ack, stop it                              |

No I/O here: the node's connection loop asks, then acts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mcpz.mesh import Deploy, ErrorCode, ReplicaStatus, Stop
from mcpz.node.state import NodeState


class DeployAction(StrEnum):
    START = "start"
    REPEAT = "repeat"
    REPLACE = "replace"
    STALE = "stale"
    NO_CAPACITY = "no-capacity"


class StopAction(StrEnum):
    NOT_HELD = "not-held"
    OLDER = "older"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class DeployDecision:
    action: DeployAction
    message: str = ""

    @property
    def error_code(self) -> ErrorCode | None:
        """The error frame's code when the deploy is refused, None when it is acked."""
        if self.action is DeployAction.STALE:
            return ErrorCode.STALE_EPOCH
        if self.action is DeployAction.NO_CAPACITY:
            return ErrorCode.NO_CAPACITY
        return None


def busy(state: NodeState) -> int:
    """Replicas that take a slot of the node's capacity: every one held, except failed ones."""
    return sum(1 for a in state.replicas.values() if a.status is not ReplicaStatus.FAILED)


def decide_deploy(state: NodeState, frame: Deploy, capacity: int) -> DeployDecision:
    rid = frame.replica_id
    held = state.replicas.get(rid)
    if held is not None:
        if frame.epoch == held.epoch:
            return DeployDecision(DeployAction.REPEAT)
        if frame.epoch < held.epoch:
            return DeployDecision(
                DeployAction.STALE,
                f"replica {rid} runs at epoch {held.epoch}; this deploy is for {frame.epoch}",
            )
        return DeployDecision(DeployAction.REPLACE)
    fence = state.fences.get(rid, 0)
    if frame.epoch <= fence:
        return DeployDecision(
            DeployAction.STALE,
            f"replica {rid} was stopped at epoch {fence}; this deploy is for {frame.epoch}",
        )
    if busy(state) >= capacity:
        return DeployDecision(
            DeployAction.NO_CAPACITY, f"this node runs {busy(state)} replicas, its capacity is {capacity}"
        )
    return DeployDecision(DeployAction.START)


def decide_stop(state: NodeState, frame: Stop) -> StopAction:
    held = state.replicas.get(frame.replica_id)
    if held is None:
        return StopAction.NOT_HELD
    if frame.epoch < held.epoch:
        return StopAction.OLDER
    return StopAction.STOP
