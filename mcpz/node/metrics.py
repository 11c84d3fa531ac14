"""A node's Prometheus metrics (`mcpz node run --metrics-port P`): its replicas by status, and per
replica its restarts, CPU seconds and resident memory (read from /proc at each scrape), and the
release bytes it fetched. Labels are the node's own replica ids and deployments: as many as it runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from mcpz.node.replicas import ReplicaManager

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_figures(pid: int, proc: Path = PROC) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of a process from /proc; None once it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        statm = (proc / str(pid) / "statm").read_text().split()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces and parentheses): utime is the 14th field.
    fields = stat[stat.rfind(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    return cpu, int(statm[1]) * _PAGE


class NodeCollector(Collector):
    def __init__(self, manager: ReplicaManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        by_status: dict[str, int] = {}
        for report in self.manager.reports():
            by_status[str(report.status)] = by_status.get(str(report.status), 0) + 1
        replicas = GaugeMetricFamily(
            "mcpz_node_replicas", "Replicas on this node by status.", labels=["status"]
        )
        for status, count in sorted(by_status.items()):
            replicas.add_metric([status], count)
        yield replicas
        restarts = CounterMetricFamily(
            "mcpz_node_replica_restarts", "Restarts of a replica's process.", labels=["deployment", "replica"]
        )
        cpu = CounterMetricFamily(
            "mcpz_node_replica_cpu_seconds",
            "CPU time of a replica's process.",
            labels=["deployment", "replica"],
        )
        memory = GaugeMetricFamily(
            "mcpz_node_replica_memory_bytes",
            "Resident memory of a replica's process.",
            labels=["deployment", "replica"],
        )
        for replica_id, replica in sorted(self.manager.live.items()):
            labels = [replica.assignment.deployment, replica_id]
            supervisor = replica.supervisor
            if supervisor is None:
                continue
            restarts.add_metric(labels, supervisor.restarts)
            pid = supervisor.pid
            figures = process_figures(pid) if pid is not None else None
            if figures is not None:
                cpu.add_metric(labels, figures[0])
                memory.add_metric(labels, figures[1])
        yield restarts
        yield cpu
        yield memory
        fetches = CounterMetricFamily("mcpz_node_fetches", "Releases fetched from the registry.")
        fetches.add_metric([], self.manager.fetches)
        yield fetches
        fetched = CounterMetricFamily("mcpz_node_fetch_bytes", "Bytes of releases fetched from the registry.")
        fetched.add_metric([], self.manager.fetched_bytes)
        yield fetched

    def describe(self) -> Iterable[Metric]:
        return []


def serve(manager: ReplicaManager, host: str, port: int) -> tuple[Any, int]:
    """Serve the node's metrics at http://host:port/metrics in a thread: (server, bound port)."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(manager))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_address[1])
