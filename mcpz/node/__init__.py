"""A mesh node: `mcpz node run`, as a library.

`Node(NodeConfig(...)).run()` holds one outbound WebSocket to a registry's hub and runs the
replicas the hub deploys to it. The parts, each usable alone:

- `ObjectCache` (fetch): releases fetched by commit id over git, verified, shared by all replicas;
- `checkout`: a commit's tree written into a folder, refusing any path that would escape it;
- `start_process` / `ProcessSpec` / `Limits` (process): one agent process with its limits and pipes;
- `StdioChannel` (channel): the process's MCP stdio, shared by the health check and relayed calls;
- `check_health` (health): MCP `initialize` + `tools/list`;
- `Supervisor` (supervisor): start, check, restart with backoff, give up, stop;
- `SessionPool` (sessions): isolated session mode, an agent process per gateway client session;
- `NodeState` (state) and the epoch rules (rules): what the node holds, across restarts.

See docs/node.md.
"""

from __future__ import annotations

from mcpz.node.agent import Node, NodeConfig, close_action, http_base, mesh_url
from mcpz.node.channel import StdioChannel
from mcpz.node.errors import FetchError, NodeReplaced, StartError
from mcpz.node.fetch import FetchResult, ObjectCache
from mcpz.node.health import HealthError, HealthReport, check_health, ping
from mcpz.node.process import Limits, ProcessSpec, ReplicaProcess, start_process
from mcpz.node.rules import DeployAction, StopAction, decide_deploy, decide_stop
from mcpz.node.state import Assignment, NodeState
from mcpz.node.supervisor import Supervisor, SupervisorSettings
from mcpz.repo.checkout import CheckoutRefused, CheckoutStats, Nested, ReleaseError, checkout, plan

__all__ = [
    "Assignment",
    "CheckoutRefused",
    "CheckoutStats",
    "DeployAction",
    "FetchError",
    "FetchResult",
    "HealthError",
    "HealthReport",
    "Limits",
    "Nested",
    "Node",
    "NodeConfig",
    "NodeReplaced",
    "NodeState",
    "ObjectCache",
    "ProcessSpec",
    "ReleaseError",
    "ReplicaProcess",
    "StartError",
    "StdioChannel",
    "StopAction",
    "Supervisor",
    "SupervisorSettings",
    "check_health",
    "checkout",
    "close_action",
    "decide_deploy",
    "decide_stop",
    "http_base",
    "mesh_url",
    "ping",
    "plan",
    "start_process",
]
