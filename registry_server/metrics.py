"""The registry's Prometheus metrics (prometheus_client), served on a port of their own.

One `RegistryMetrics` per registry (its own CollectorRegistry: two registries in one process, as in
the tests, never mix their figures). Counters and histograms move where things happen: HTTP requests
(by route template and status), gateway calls (by agent, tool and outcome, from the usage recorder
that sees every call), git pushes and fetches with their bytes. Gauges that describe state (nodes by
state, replicas by status, rating lag, payout batches by state) are read when Prometheus scrapes,
from the collectors the composition root registers with `gauge_family`.

Label values are bounded: routes are templates, never paths; agent and tool names are kept for the
first `MAX_LABEL_VALUES` seen and counted as "other" after, so a registry with a million agents
cannot grow the exposition without bound. No request id, token or account name is ever a label.

The exposition is served on `metrics_host:metrics_port` (settings; 0 = off), not on the public API
port: an operator's Prometheus scrapes it over the private network, and nothing about other accounts'
calls reaches the internet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("registry_server.metrics")

MAX_LABEL_VALUES = 500
OTHER = "other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BoundedValues:
    """The first `limit` distinct values pass as they are; later new ones become "other"."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


class _Gauges(Collector):
    """Gauges computed at scrape time by a function returning {labels tuple: value}."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: list[str],
        read: Callable[[], dict[tuple[str, ...], float]],
    ) -> None:
        self.name, self.documentation, self.labels, self.read = name, documentation, labels, read

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        try:
            values = self.read()
        except Exception as e:  # a database hiccup must not fail the whole scrape
            log.warning("a metric could not be read", extra={"metric": self.name, "error": str(e)[:200]})
            values = {}
        for labels, value in sorted(values.items()):
            family.add_metric(list(labels), value)
        yield family

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labels)]


class RegistryMetrics:
    def __init__(self) -> None:
        # Counted only while served (`serve`): a registry without metrics_port pays nothing per call.
        self.enabled = False
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "mcpz_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "mcpz_http_request_seconds", "Time to answer an HTTP request, by route template.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.gateway_calls = Counter(
            "mcpz_gateway_calls", "Calls through the gateway, by agent, tool and outcome.",
            ["agent", "tool", "outcome"], registry=r,
        )  # fmt: skip
        self.gateway_seconds = Histogram(
            "mcpz_gateway_call_seconds", "Time of a call through the gateway, by agent.",
            ["agent"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.gateway_bytes = Counter(
            "mcpz_gateway_bytes",
            "JSON-RPC bytes through the gateway, by direction.",
            ["direction"],
            registry=r,
        )
        self.git_operations = Counter(
            "mcpz_git_operations", "git pushes and fetches over smart HTTP, by outcome.",
            ["operation", "outcome"], registry=r,
        )  # fmt: skip
        self.git_bytes = Counter(
            "mcpz_git_bytes",
            "Bytes of git packs received (push) and sent (fetch).",
            ["operation"],
            registry=r,
        )
        self._agents = BoundedValues()
        self._tools = BoundedValues()
        self._gauges: dict[str, _Gauges] = {}
        self._call_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._bytes_in = self.gateway_bytes.labels("in")
        self._bytes_out = self.gateway_bytes.labels("out")
        self._server: Any = None

    # --- what happens ----------------------------------------------------------------------------

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_seconds.labels(method, route).observe(seconds)

    def call(
        self, agent: str, tool: str, outcome: str, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        if not self.enabled:
            return
        # The label children are looked up once per (agent, tool, outcome): `labels()` costs a few
        # microseconds each, on the gateway's call path.
        key = (agent, tool, outcome)
        children = self._call_children.get(key)
        if children is None:
            bounded = self._agents(agent)
            children = (
                self.gateway_calls.labels(bounded, self._tools(tool), outcome),
                self.gateway_seconds.labels(bounded),
            )
            if len(self._call_children) < 4 * MAX_LABEL_VALUES:
                self._call_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        self._bytes_in.inc(bytes_in)
        self._bytes_out.inc(bytes_out)

    def git(self, operation: str, outcome: str, nbytes: int = 0) -> None:
        if not self.enabled:
            return
        self.git_operations.labels(operation, outcome).inc()
        if nbytes:
            self.git_bytes.labels(operation).inc(nbytes)

    # --- what is -------------------------------------------------------------------------------

    def gauge_family(
        self,
        name: str,
        documentation: str,
        labels: list[str],
        read: Callable[[], dict[tuple[str, ...], float]],
    ) -> None:
        """Register a gauge family read at each scrape: `read` returns {label values: value}. Again
        with the same name, the new `read` replaces the old (an app restarted on the same state)."""
        known = self._gauges.get(name)
        if known is not None:
            known.read = read
            return
        self._gauges[name] = _Gauges(name, documentation, labels, read)
        self.registry.register(self._gauges[name])

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    # --- serving -------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Serve the exposition at http://host:port/metrics in a thread; the port actually bound."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        self.enabled = True
        bound: int = server.server_address[1]
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.enabled = False
