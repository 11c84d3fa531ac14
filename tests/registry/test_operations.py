"""Prometheus metrics move when things happen: a live registry with its metrics port, a real node
with its own, a push, a deploy and calls through the gateway; the exposition is parsed with
prometheus_client's parser. The Grafana dashboard and the alert rules in configs/ use only metrics
that exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import yaml
from conftest import start_registry
from meshutil import AGENT, FAST, Mesh, until

from registry_server.metrics import OTHER, BoundedValues
from registry_server.serve import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="needs /proc")]

ROOT = Path(__file__).resolve().parents[2]
CALLS = 3


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name: [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, [])  # a family with no samples yet (settlement off) still exists
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == x for k, x in labels.items()))


class Collector:
    """A minimal OTLP/HTTP receiver on loopback: keeps every ExportTraceServiceRequest posted to it."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: list[bytes] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers.get("content-length", "0"))))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[object]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        out: list[object] = []
        for body in list(self.bodies):
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    out.extend(scope.spans)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


COLLECTOR = Collector()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, int, int]]:
    tmp = tmp_path_factory.mktemp("metrics")
    registry_port, node_port = free_port(), free_port()
    mesh = Mesh(
        tmp,
        start_registry(tmp / "registry", metrics_port=registry_port, otlp_endpoint=COLLECTOR.url, **FAST),
    )
    try:
        mesh.publish("1.0.0")
        mesh.node("node-0", "--metrics-port", str(node_port))
        mesh.connected(1)
        mesh.deploy("1.0.0", replicas=1)
        mesh.settled(1, "1.0.0")
        token = mesh.reg.account("caller", "read,call")
        for _ in range(CALLS):
            done = subprocess.run(
                [sys.executable, "-m", "mcpz", "call", AGENT, "add", "a=2", "b=40",
                 "--registry", mesh.reg.url, "--token", token],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0 and done.stdout.strip() == "42", done.stderr
        yield mesh, registry_port, node_port
    finally:
        mesh.close()
        mesh.reg.stop()


def test_the_registry_counts_pushes_requests_calls_and_nodes(world: tuple[Mesh, int, int]) -> None:
    _mesh, port, _ = world

    def counted() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        found = scrape(port)
        return found if value(found, "mcpz_gateway_calls_total", agent=AGENT) >= CALLS else None

    samples = until(counted, what="the calls in the registry's metrics")
    assert value(samples, "mcpz_gateway_calls_total", agent=AGENT, tool="add", outcome="ok") == CALLS
    assert value(samples, "mcpz_gateway_call_seconds_count", agent=AGENT) == CALLS
    assert value(samples, "mcpz_gateway_bytes_total", direction="in") > 0
    assert value(samples, "mcpz_git_operations_total", operation="push", outcome="ok") >= 1
    assert value(samples, "mcpz_git_bytes_total", operation="push") > 0
    assert value(samples, "mcpz_git_operations_total", operation="fetch", outcome="ok") >= 1  # the node's
    # Requests by route template, never by path.
    routes = {labels["route"] for labels, _ in samples["mcpz_http_requests_total"]}
    assert "/git/{namespace}/{name}/git-receive-pack" in routes
    assert not any(AGENT in route for route in routes)
    assert value(samples, "mcpz_mesh_nodes", state="connected") == 1
    assert value(samples, "mcpz_mesh_nodes", state="ready") == 1
    assert value(samples, "mcpz_replicas", status="running") == 1
    assert value(samples, "mcpz_mesh_frames", kind="deploys_sent") >= 1
    assert value(samples, "mcpz_mesh_frames", kind="welcomed") == 1
    assert "mcpz_mesh_send_queue" in samples and "mcpz_gateway_in_flight" in samples
    assert "mcpz_usage_events" in samples and "mcpz_billing_unrated" in samples


def test_the_node_reports_its_replicas_fetches_and_processes(world: tuple[Mesh, int, int]) -> None:
    _mesh, _, port = world
    samples = scrape(port)
    assert value(samples, "mcpz_node_replicas", status="running") == 1
    assert value(samples, "mcpz_node_fetches_total") == 1
    assert value(samples, "mcpz_node_fetch_bytes_total") > 0
    assert value(samples, "mcpz_node_replica_memory_bytes", deployment=AGENT) > 1_000_000
    assert value(samples, "mcpz_node_replica_cpu_seconds_total", deployment=AGENT) > 0
    assert value(samples, "mcpz_node_replica_restarts_total", deployment=AGENT) == 0


def _metric_names(expr: str) -> set[str]:
    # PromQL: identifiers followed by `{`, `[`, `)` or whitespace; functions and keywords are not ours.
    return set(re.findall(r"\b(mcpz_[a-z0-9_]+)", expr))


def test_the_dashboard_and_alerts_use_only_metrics_that_exist(world: tuple[Mesh, int, int]) -> None:
    _mesh, registry_port, node_port = world
    exposed = set(scrape(registry_port)) | set(scrape(node_port))
    dashboard = json.loads((ROOT / "configs" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((ROOT / "configs" / "prometheus-alerts.yml").read_text(encoding="utf-8"))
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used, "no metric found in the dashboard and rules"
    missing = sorted(used - exposed)
    assert missing == [], f"used in configs/ but not exposed: {missing}"


def test_label_values_are_bounded() -> None:
    bounded = BoundedValues(limit=2)
    assert [bounded(v) for v in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]


def test_metrics_are_off_unless_a_port_is_set(tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "registry")
    try:
        answer = httpx2.get(f"{reg.url}/metrics", timeout=10)
        assert answer.status_code == 404  # never on the public API port
    finally:
        reg.stop()


def test_mcpz_top_shows_nodes_deployments_and_calls(world: tuple[Mesh, int, int]) -> None:
    mesh, _, _ = world
    args = ["--registry", mesh.reg.url, "--token", mesh.token]
    done = subprocess.run(
        [sys.executable, "-m", "mcpz", "--json", "top", "--window", "600", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)
    assert [n["name"] for n in snap["nodes"]] == ["node-0"] and snap["nodes"][0]["connected"]
    assert [(d["name"], d["ready"], d["replicas"]) for d in snap["deployments"]] == [(AGENT, 1, 1)]
    (agent,) = snap["agents"]
    assert (agent["agent"], agent["calls"], agent["errors"]) == (AGENT, CALLS, 0)
    assert agent["calls_per_second"] == pytest.approx(CALLS / 600) and agent["mean_ms"] > 0
    plain = subprocess.run(
        [sys.executable, "-m", "mcpz", "top", "--once", *args], capture_output=True, text=True, timeout=60
    )
    assert plain.returncode == 0, plain.stderr
    assert "node-0" in plain.stdout and AGENT in plain.stdout and "Calls, last 60 s" in plain.stdout


def test_a_client_trace_id_is_in_the_registry_and_node_log_lines_of_its_call(
    world: tuple[Mesh, int, int],
) -> None:
    import logging

    import anyio

    from registry_server.logs import JsonFormatter

    mesh, _, _ = world
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    handler = Keep(logging.INFO)
    gateway_log = logging.getLogger("registry_server.gateway")
    gateway_log.addHandler(handler)
    if gateway_log.getEffectiveLevel() > logging.INFO:
        gateway_log.setLevel(logging.INFO)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    header = f"00-{trace_id}-00f067aa0ba902b7-01"
    token = mesh.reg.account("tracer", "read,call")

    async def call() -> str:
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        headers = {"Authorization": f"Bearer {token}", "traceparent": header}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with Client(
                streamable_http_client(f"{mesh.reg.url}/mcp/{AGENT}", http_client=http)
            ) as client:
                result = await client.call_tool("add", {"a": 2, "b": 40})
                return str(result.content[0].text)  # type: ignore[union-attr]

    try:
        assert anyio.run(call) == "42"
    finally:
        gateway_log.removeHandler(handler)
    mine = [json.loads(line) for line in lines if trace_id in line]
    assert len(mine) == 1 and mine[0]["msg"] == "gateway call" and mine[0]["tool"] == "add"
    assert mine[0]["span_id"] != "00f067aa0ba902b7"  # the registry's own span in the client's trace

    # The registry's span of the call, exported over OTLP: in the client's trace, under its span.
    def exported() -> list[object] | None:
        found = [x for x in COLLECTOR.spans() if x.trace_id.hex() == trace_id]  # type: ignore[attr-defined]
        return found or None

    (span,) = until(exported, what="the call's span at the OTLP collector")
    assert span.parent_span_id.hex() == "00f067aa0ba902b7"  # type: ignore[attr-defined]
    assert span.span_id.hex() == mine[0]["span_id"]  # type: ignore[attr-defined]
    attributes = {a.key: a.value.string_value for a in span.attributes}  # type: ignore[attr-defined]
    assert attributes["mcpz.agent"] == AGENT and attributes["mcp.tool"] == "add"

    def node_log() -> str | None:
        text = (mesh.tmp / "node-0.log").read_text(errors="replace")
        return text if trace_id in text else None

    assert "call tools/call add on replica" in until(node_log, what="the trace id in the node's log")
