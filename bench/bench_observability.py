"""Observability: gateway throughput with metrics and tracing on, beside the same with both off.

One run, on loopback, two stacks side by side, each its own registry process, its own node process
(capacity 4) and the same agent deployed with 2 replicas (bench_gateway.py's functions, imported):

- **off**: `MCPZ_REGISTRY_METRICS_PORT=0` (nothing served, nothing counted),
  `MCPZ_REGISTRY_GATEWAY_TRACE=false` (the request reaches the agent byte for byte), the node
  without `--metrics-port`, and clients that send no `traceparent`;
- **on**: the registry's metrics on a free port and the node's (`--metrics-port`), both scraped
  once a second while calls run, as Prometheus would; `gateway_trace` true; every `tools/call`
  carrying a fresh SAMPLED `traceparent` (`00-<32 hex>-<16 hex>-01`), so the gateway continues
  the trace into the request's `params._meta` (the JSON re-serialised) and every call is logged
  with its trace id on the registry and on the node. OTLP export is off (`otlp_endpoint` unset):
  the figure is metrics + trace context + the per-call log lines, not a collector's cost.

The agent is `bench/gw-raw`, the minimal JSON-RPC agent of bench_gateway.py (no SDK), so the
gateway's own cost is most of a call's and any cost of observability shows undiluted; `--sdk`
also measures the python template (the `mcp` SDK), where the agent's own cost hides more.

Throughput as in bench_gateway.py: `--clients` concurrent raw keep-alive HTTP/1.1 clients, each its
own session (opened once per stack), x `--per-client` sequential `tools/call add`; calls/s = all
calls / wall time from the start signal to the last answer; every answer parsed and checked
(a + b). The machine is noisy (2 cores, other work), so the configurations alternate, off/on then
on/off, `--rounds` times each, after one untimed warm-up round each, and the medians are compared.
CPU milliseconds per call of the registry and the node (/proc) are printed beside: steadier than
wall time on a busy machine.

Checked afterwards, so "on" is really on: the registry logged a `gateway call` line, and the node a
`trace` line, for every call of the on stack and none for the off stack; the last scrape counts
every call of the on stack in `mcpz_gateway_calls_total`. A wrong answer or a missing line FAILS
the goal. Goal (issue 18): with metrics and tracing on, throughput under 5 % lower than off.

    python bench/bench_observability.py [--clients 20] [--per-client 300] [--rounds 5] [--sdk]
        [--keep] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _goals as g
import _mesh as mesh
import _registry as rb
import bench_gateway as gw

OFF, ON = "off", "on"
GOAL_DROP = 0.05
SCRAPE_EVERY = 1.0
LABELS = {gw.RAW_NAME: "minimal agent (no SDK)", gw.NAME: "template agent (mcp SDK)"}
KEYS = {gw.RAW_NAME: "minimal", gw.NAME: "template"}


class TracedSession(gw.GatewaySession):
    """A gateway session whose every `tools/call` carries a fresh sampled traceparent."""

    sent = 0

    async def call_add(self, a: int, tally: gw.Tally) -> int:
        # A new trace per call, as independent callers would send; ~1 us of the client's CPU.
        raw = os.urandom(24).hex()
        extra = f"traceparent: 00-{raw[:32]}-{raw[32:]}-01\r\n".encode()
        request_id = next(self.ids)
        TracedSession.sent += 1
        status, _, data = await self.post(gw.add_request(request_id, a), extra)
        if status == 200:
            gw.check_add(json.loads(data), request_id, a, tally)
        else:
            tally.bad(f"HTTP {status}", data.decode(errors="replace"))
        return status


@dataclass
class Stack:
    """One registry + one node, configured off or on."""

    config: str
    work: rb.Workdir
    reg: rb.Registry
    node: subprocess.Popen[bytes] | None = None
    caller: str = ""
    metrics_urls: list[str] = field(default_factory=list)
    sessions: dict[str, list[gw.GatewaySession]] = field(default_factory=dict)
    scrapes: int = 0
    last_scrape: str = ""

    @property
    def node_log(self) -> Path:
        return self.work.path / "nodes" / "node-1.log"

    @property
    def registry_log(self) -> Path:
        return self.work.path / "registry.log"


def start_stack(config: str, names: list[str], clients: int, keep: bool) -> Stack:
    work = rb.Workdir(f"obs-{config}", keep=keep)
    on = config == ON
    registry_port = rb.free_port() if on else 0
    node_port = rb.free_port() if on else 0
    env = {
        "MCPZ_REGISTRY_MAX_CALLS_IN_FLIGHT": str(max(32, 2 * clients)),
        "MCPZ_REGISTRY_MAX_SESSIONS_PER_ACCOUNT": str(4 * clients),
        "MCPZ_REGISTRY_METRICS_PORT": str(registry_port),
        "MCPZ_REGISTRY_GATEWAY_TRACE": "true" if on else "false",
        "MCPZ_REGISTRY_OTLP_ENDPOINT": "",
    }
    try:
        reg = gw.start_registry(work, env, None)
        stack = Stack(config, work, reg)
        tok = mesh.token(reg, "bench", "read,publish,deploy,node")
        stack.caller = mesh.token(reg, "caller", "read,call")
        gw.publish(work, reg, tok, names)
        extra = ("--metrics-port", str(node_port)) if on else ()
        stack.node = gw.start_node(work, reg, tok, "node-1", None, extra)
        mesh.connected(reg, tok, 1)
        for name in names:
            gw.post_json(
                reg, tok, "/v1/deployments", {"agent": name, "version": gw.VERSION, "replicas": gw.REPLICAS}
            )
        gw.wait_running(reg, tok, stack.node, names=names)
    except BaseException:
        print(f"--- {config}: registry log (tail):\n{gw._tail(work.path / 'registry.log')}", file=sys.stderr)
        print(
            f"--- {config}: node log (tail):\n{gw._tail(work.path / 'nodes' / 'node-1.log')}", file=sys.stderr
        )
        work.close()
        raise
    if on:
        stack.metrics_urls = [f"http://127.0.0.1:{p}/metrics" for p in (registry_port, node_port)]
    return stack


def scrape_once(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def scraper(stack: Stack) -> None:
    """Every SCRAPE_EVERY seconds, GET each /metrics in full, as Prometheus would."""

    while True:
        started = time.monotonic()
        for n, url in enumerate(stack.metrics_urls):
            text = await asyncio.to_thread(scrape_once, url)
            if n == 0:
                stack.last_scrape = text
            stack.scrapes += 1
        await asyncio.sleep(max(0.0, SCRAPE_EVERY - (time.monotonic() - started)))


async def one_round(stack: Stack, name: str, per_client: int) -> dict[str, Any]:
    """One closed-loop run of every session of `stack` on `name`: calls/s, CPU ms per call."""
    assert stack.node is not None
    sessions = stack.sessions[name]
    for s in sessions:
        # uvicorn closes a connection idle for 5 s, as it is while the other stack runs: each round
        # connects afresh (same MCP session), in the warm-up calls before the clock starts.
        s.close()
    pids = {"registry": stack.reg.pid, "node": stack.node.pid}
    scrape = asyncio.create_task(scraper(stack)) if stack.metrics_urls else None
    try:
        before = {k: gw.cpu_seconds(p) for k, p in pids.items()}
        client_before = gw.own_cpu()
        took, tally = await gw.closed_loop([s.call_add for s in sessions], per_client)
        cpu = {k: gw.cpu_seconds(p) - before[k] for k, p in pids.items()}
        cpu["client"] = gw.own_cpu() - client_before
    finally:
        if scrape is not None:
            scrape.cancel()
            try:
                await scrape
            except asyncio.CancelledError:
                pass
    calls = len(sessions) * per_client
    return {
        "calls_per_s": calls / took,
        "seconds": took,
        # The CPU window includes the 5 warm-up calls per client before the start signal.
        "cpu_ms_per_call": {k: v * 1000 / (calls + 5 * len(sessions)) for k, v in cpu.items()},
        "failed": tally.failed,
        "problems": dict(tally.problems),
        "examples": tally.examples,
    }


async def open_sessions(stack: Stack, name: str, count: int) -> list[gw.GatewaySession]:
    """`count` sessions on `name`, opened at once; traced ones on the on stack."""
    kind = TracedSession if stack.config == ON else gw.GatewaySession
    sessions = [kind(stack.reg.port, f"/mcp/{name}", stack.caller) for _ in range(count)]
    stack.sessions[name] = sessions  # closed by the caller, opened or not
    deadline = time.monotonic() + 60
    await asyncio.wait_for(asyncio.gather(*(s.open(deadline) for s in sessions)), 70)
    return sessions


async def measure(args: argparse.Namespace, stacks: dict[str, Stack], names: list[str]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    try:
        for stack in stacks.values():
            for name in names:
                stack.sessions[name] = await open_sessions(stack, name, args.clients)
        for name in names:
            runs: dict[str, list[dict[str, Any]]] = {OFF: [], ON: []}
            if args.warmup_per_client:
                for config in (OFF, ON):
                    await one_round(stacks[config], name, args.warmup_per_client)
            for i in range(args.rounds):
                # off/on, then on/off: a drift of the machine's load favours neither.
                for config in (OFF, ON) if i % 2 == 0 else (ON, OFF):
                    runs[config].append(await one_round(stacks[config], name, args.per_client))
                    await asyncio.sleep(0.2)
            figures[name] = runs
        if stacks[ON].metrics_urls:  # the counters after the last call, for the check
            url = stacks[ON].metrics_urls[0]
            stacks[ON].last_scrape = await asyncio.to_thread(scrape_once, url)
    finally:
        for stack in stacks.values():
            for sessions in stack.sessions.values():
                for s in sessions:
                    s.close()
    return figures


def count_lines(path: Path, needle: str) -> int:
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if needle in line)
    except OSError:
        return 0


def gateway_calls_counted(exposition: str) -> float:
    """The sum of `mcpz_gateway_calls_total` over its labels in one scrape."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith("mcpz_gateway_calls_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def check_observed(stacks: dict[str, Stack], on_calls: int) -> tuple[dict[str, Any], list[str]]:
    """What the logs and the last scrape saw; and what is wrong with that, if anything."""
    # The registry's JSON log line and the node's text line of a sampled call.
    registry_needle, node_needle = '"gateway call"', ", trace "
    time.sleep(0.5)  # the node writes its log line as the call passes; let the last ones land
    seen: dict[str, dict[str, float]] = {
        config: {
            "registry_call_lines": count_lines(stack.registry_log, registry_needle),
            "node_trace_lines": count_lines(stack.node_log, node_needle),
            "scrapes": stack.scrapes,
        }
        for config, stack in stacks.items()
    }
    counted = gateway_calls_counted(stacks[ON].last_scrape) if stacks[ON].last_scrape else 0.0
    seen[ON]["tools_calls_sent"] = on_calls
    seen[ON]["last_scrape_gateway_calls"] = counted  # a float in the exposition
    problems = []
    for what in ("registry_call_lines", "node_trace_lines"):
        if seen[ON][what] < on_calls:
            problems.append(f"on: {what} {seen[ON][what]} < {on_calls} calls")
        if seen[OFF][what]:
            problems.append(f"off: {what} {seen[OFF][what]}, expected none")
    if not seen[ON]["scrapes"]:
        problems.append("on: no scrape during the calls answered")
    # Scraped again after the last call: the usage recorder counts each call before it is answered.
    if counted != on_calls:
        problems.append(f"on: mcpz_gateway_calls_total {counted:.0f} after {on_calls} calls")
    return seen, problems


def med(runs: list[dict[str, Any]], *keys: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in keys:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def report(
    args: argparse.Namespace,
    info: dict[str, object],
    load_before: list[float],
    figures: dict[str, Any],
    seen: dict[str, Any],
    problems: list[str],
    errors: list[str],
) -> None:
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    goals: list[g.Goal] = []
    summary: dict[str, Any] = {}
    for name in (gw.RAW_NAME, gw.NAME):
        key = KEYS[name]
        text = (
            f"{key} agent: throughput with metrics and tracing on under {GOAL_DROP * 100:g} % lower than off"
        )
        runs = figures.get(name)
        if runs is None:
            goals.append(g.unmeasured(text, "the SDK agent runs with --sdk"))
            continue
        off, on = med(runs[OFF], "calls_per_s"), med(runs[ON], "calls_per_s")
        drop = (off - on) / off
        label = LABELS[name]
        rows.append(
            (f"{label}: calls/s, median of {args.rounds}", f"{off:.0f}", f"{on:.0f}",
             f"{-drop * 100:+.1f} %", f"< {GOAL_DROP * 100:g} % lower")
        )  # fmt: skip
        cpu: dict[str, dict[str, float]] = {}
        for proc in ("registry", "node", "client"):
            c_off, c_on = med(runs[OFF], "cpu_ms_per_call", proc), med(runs[ON], "cpu_ms_per_call", proc)
            cpu[proc] = {"off": round(c_off, 4), "on": round(c_on, 4)}
            pct = f" ({(c_on / c_off - 1) * 100:+.0f} %)" if c_off else ""
            rows.append(
                (f"  {proc} CPU per call", f"{c_off:.3f} ms", f"{c_on:.3f} ms",
                 f"{(c_on - c_off) * 1000:+.0f} us{pct}", "")
            )  # fmt: skip
        t_off = sum(v["off"] for v in cpu.values())
        t_on = sum(v["on"] for v in cpu.values())
        rows.append(
            ("  CPU per call, the three", f"{t_off:.3f} ms", f"{t_on:.3f} ms",
             f"{(t_on - t_off) * 1000:+.0f} us" + (f" ({(t_on / t_off - 1) * 100:+.0f} %)" if t_off else ""),
             "(the agents' not counted)")
        )  # fmt: skip
        for config in (OFF, ON):
            notes.append(
                f"{label}, {config}, every round (calls/s, in order): "
                + ", ".join(f"{r['calls_per_s']:.0f}" for r in runs[config])
            )
        failed = sum(r["failed"] for config in (OFF, ON) for r in runs[config])
        notes.append(f"{label}, failed or wrong answers: {failed}")
        for config in (OFF, ON):
            for r in runs[config]:
                notes += [f"  {config}: {example}" for example in r["examples"]]
        if failed:
            goals.append(g.failed(text, f"{failed} wrong or failed answer(s)"))
        elif problems:
            goals.append(g.failed(text, "the on configuration was not all on: " + "; ".join(problems)))
        else:
            goals.append(
                g.below(text, drop, GOAL_DROP, f"{off:.0f} vs {on:.0f} calls/s: {drop * 100:.1f} % lower")
            )
        summary[key] = {
            "calls_per_s": {
                config: [round(r["calls_per_s"], 1) for r in runs[config]] for config in (OFF, ON)
            },
            "median_calls_per_s": {OFF: round(off, 1), ON: round(on, 1)},
            "drop_pct": round(drop * 100, 2),
            "cpu_ms_per_call": cpu,
            "failed": failed,
        }
    print()
    print(rb.table(("figure", "off", "on", "on vs off", "goal"), rows))
    print()
    print("\n".join(notes))
    print(
        f"on: {seen[ON]['tools_calls_sent']} tools/call with a sampled traceparent; the registry logged "
        f"{seen[ON]['registry_call_lines']} `gateway call` lines, the node {seen[ON]['node_trace_lines']} "
        f"trace lines; {seen[ON]['scrapes']} scrapes (registry and node, every {SCRAPE_EVERY:g} s "
        f"while calls ran), one after the last call: "
        f"{seen[ON]['last_scrape_gateway_calls']:.0f} gateway calls counted; "
        "OTLP export off"
    )
    print(
        f"off: {seen[OFF]['registry_call_lines']} `gateway call` lines, {seen[OFF]['node_trace_lines']} "
        "node trace lines (expected none)"
    )
    for problem in problems:
        print(f"  problem: {problem}")
    if errors:
        print(f"\nerror lines in the registry and node logs: {len(errors)} (first 5)")
        for line in errors[:5]:
            print(f"  {line}")
    g.finish(
        "observability",
        info,
        load_before,
        goals,
        {
            "clients": args.clients,
            "per_client": args.per_client,
            "rounds": args.rounds,
            "replicas": gw.REPLICAS,
            "otlp": False,
            **summary,
            "observed": seen,
            "log_errors": len(errors),
        },
        smoke=args.smoke,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients, each its own session")
    parser.add_argument("--per-client", type=int, default=300, help="sequential calls per client per round")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds of each configuration")
    parser.add_argument("--sdk", action="store_true", help="also measure the python template (the mcp SDK)")
    parser.add_argument("--keep", action="store_true")
    g.add_smoke(parser)
    args = parser.parse_args()
    args.warmup_per_client = max(1, args.per_client // 4)
    if args.smoke:
        args.clients, args.per_client, args.rounds, args.warmup_per_client = 4, 5, 1, 0
    names = [gw.RAW_NAME] + ([gw.NAME] if args.sdk else [])

    info = rb.print_machine(
        "Observability: gateway calls/s with metrics and tracing on, beside off "
        f"({gw.REPLICAS} replicas on one node per configuration)"
    )
    load_before = g.load()
    stacks: dict[str, Stack] = {}
    errors: list[str] = []
    try:
        # Both stacks start at once (mostly waiting on child processes); a failed one ends both.
        with ThreadPoolExecutor(2) as pool:
            starting = {c: pool.submit(start_stack, c, names, args.clients, args.keep) for c in (OFF, ON)}
            for config, future in starting.items():
                if future.exception() is None:
                    stacks[config] = future.result()  # stopped below, whatever happens
            for future in starting.values():
                future.result()
        TracedSession.sent = 0
        figures = asyncio.run(measure(args, stacks, names))
        seen, problems = check_observed(stacks, TracedSession.sent)
    except BaseException:
        for stack in stacks.values():
            print(
                f"--- {stack.config}: registry log (tail):\n{gw._tail(stack.registry_log)}", file=sys.stderr
            )
            print(f"--- {stack.config}: node log (tail):\n{gw._tail(stack.node_log)}", file=sys.stderr)
        raise
    finally:
        for stack in stacks.values():
            if stack.node is not None:
                mesh.stop_nodes([stack.node])
            stack.reg.stop()
            errors += gw.log_errors(stack.registry_log) + gw.log_errors(stack.node_log)
            if args.keep:
                print(f"kept ({stack.config}): {stack.work.path}")
            stack.work.close()
    report(args, info, load_before, figures, seen, problems, errors)


if __name__ == "__main__":
    try:
        main()
    except gw.BenchError as e:
        sys.exit(f"bench_observability: {e}")
