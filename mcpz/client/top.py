"""What `mcpz top` shows: one snapshot of your nodes, your deployments and, per agent, the calls per
second, errors and latency over the last `window` seconds, read from the registry's API (nodes,
deployments, usage). A library user gets the same with `await snapshot(client)`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from mcpz.client.models import Deployment, Node
from mcpz.client.registry import RegistryClient


@dataclasses.dataclass(frozen=True)
class AgentFigures:
    agent: str
    calls: int
    errors: int
    calls_per_second: float
    error_rate: float
    mean_ms: float | None


@dataclasses.dataclass(frozen=True)
class TopSnapshot:
    window: float  # seconds the agents' figures cover
    nodes: list[Node]
    deployments: list[Deployment]
    agents: list[AgentFigures]

    def to_json(self) -> dict[str, Any]:
        return {
            "window_s": self.window,
            "nodes": [
                {"name": n.name, "id": n.id, "state": n.state, "connected": n.connected,
                 "replicas": n.replicas, "capacity": n.capacity, "cpu_percent": n.cpu_percent,
                 "memory_used": n.memory_used, "memory_total": n.memory_total, "load": n.load}
                for n in self.nodes
            ],
            "deployments": [
                {"name": d.name, "version": d.version, "state": d.state, "replicas": d.replicas,
                 "ready": d.ready, "by_status": d.by_status}
                for d in self.deployments
            ],
            "agents": [dataclasses.asdict(a) for a in self.agents],
        }  # fmt: skip


async def snapshot(client: RegistryClient, window: float = 60.0) -> TopSnapshot:
    """Nodes and deployments as they are, and each deployed agent's calls in the last `window` s."""
    nodes, deployments = await asyncio.gather(client.nodes(), client.deployments())
    since = f"{max(int(window), 1)}s"
    usages = await asyncio.gather(*(client.usage(agent=d.agent, since=since) for d in deployments))
    agents = []
    for deployment, usage in zip(deployments, usages, strict=True):
        calls = sum(row.calls for row in usage.summary)
        errors = sum(row.errors for row in usage.summary)
        total_ms = sum(row.duration_ms_total for row in usage.summary)
        agents.append(
            AgentFigures(
                agent=deployment.agent,
                calls=calls,
                errors=errors,
                calls_per_second=calls / window,
                error_rate=errors / calls if calls else 0.0,
                mean_ms=total_ms / calls if calls else None,
            )
        )
    agents.sort(key=lambda a: (-a.calls, a.agent))
    return TopSnapshot(window=window, nodes=nodes, deployments=deployments, agents=agents)
