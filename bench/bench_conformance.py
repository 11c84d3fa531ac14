"""Conformance: the official MCP conformance suite's server scenarios, direct and through the gateway.

One run, on loopback, the same agent both ways (examples/everything, the `mcp` SDK's low-level
Server):

- direct: `python server.py --http PORT`, the SDK's own Streamable HTTP transport;
- gateway: a registry process (`mcpz registry serve`), one node process (`mcpz node run`), the
  agent published and deployed with one replica, reached at `/mcp/{name}` with a token (the suite's
  client takes no headers, so a loopback proxy adds `Authorization`, as a client configured with
  a token would; tests/conformanceutil.py).

The suite (`@modelcontextprotocol/conformance`, pinned with the Node.js 22 it needs in
tests/conformance/package.json; `npm ci --prefix tests/conformance` installs it) runs its active
server scenarios against each; a scenario passes when none of its checks fails. The table lists
every scenario side by side, then the counts.

The gateway runs twice, in each session mode of the agent's manifest (`[run] sessions`):
`shared` (one warm process for every session) and `isolated` (a process per client session). In
both the bench then measures sessions and calls through the gateway, straight to the registry with
the token: **session start** (initialize answered, one session at a time with a warm spare ready,
and `--burst` sessions opened at once), and **calls/s** (`--clients` sessions each making
`--calls` sequential `tools/call`s of `test_simple_text`, all at once).

Goals (issue 17): the agent passes every scenario served directly; through the gateway in isolated
mode it passes every scenario it passes directly; in shared mode, every one but the entries of
tests/conformance/expected-failures.toml (each naming its spec clause and why), and none of those
passes (a stale entry). `--smoke` runs one scenario (tools-call-with-progress) each way, and fewer
sessions and calls.

    python bench/bench_conformance.py [--smoke] [--keep] [--clients 8] [--calls 200] [--burst 8]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import _goals as g  # noqa: E402
import _mesh as mesh  # noqa: E402
import _registry as rb  # noqa: E402
import conformanceutil as cu  # noqa: E402

NAME = "bench/everything"
VERSION = "0.1.0"


def direct(work: rb.Workdir, scenario: str | None) -> dict[str, bool]:
    port = rb.free_port()
    proc = subprocess.Popen(
        [sys.executable, str(cu.EVERYTHING / "server.py"), "--http", str(port)],
        env=work.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        rb.wait_for_port(port, proc)
        return cu.run_suite(f"http://127.0.0.1:{port}/mcp", scenario=scenario)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def gateway(
    work: rb.Workdir, scenario: str | None, sessions: str, load: argparse.Namespace
) -> tuple[dict[str, bool], dict[str, Any]]:
    """The suite through the gateway, the agent in session mode `sessions`; then the sessions' and
    calls' figures."""
    proxy_port = rb.free_port()
    # The suite's DNS-rebinding scenario sends the proxy's origin: a configured one.
    work.env["MCPZ_REGISTRY_ALLOWED_ORIGINS"] = f"http://127.0.0.1:{proxy_port}"
    reg = rb.Registry.start(work, work.path / f"registry-{sessions}")
    node: subprocess.Popen[bytes] | None = None
    try:
        tok = mesh.token(reg, "bench", "read,publish,deploy,node")
        caller = mesh.token(reg, "caller", "read,call")
        folder = work.path / f"everything-{sessions}"
        mesh.agent(folder, NAME, VERSION, work.env)
        server = (cu.EVERYTHING / "server.py").read_bytes()
        rb.commit_change(folder, work.env, "server.py", server, "the everything agent")
        if sessions != "shared":
            # The suite opens a session per scenario and ends none: room for all of them.
            manifest = (folder / "mcpz.toml").read_text()
            policy = f'[run]\nsessions = "{sessions}"\nmax_sessions = 64\n'
            rb.commit_change(
                folder, work.env, "mcpz.toml", manifest.replace("[run]\n", policy).encode(), sessions
            )
        mesh.release(folder, reg, NAME, VERSION, tok)
        node = mesh.start_node(work, reg, tok, f"node-{sessions}")
        mesh.connected(reg, tok, 1)
        body = {"agent": NAME, "version": VERSION, "replicas": 1}
        request = urllib.request.Request(
            f"{reg.url}/v1/deployments",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30):
            pass
        mesh.wait(lambda: _running(reg, tok), 120, f"{NAME} running")
        with cu.BearerProxy(("127.0.0.1", reg.port), caller, proxy_port) as proxy:
            passed = cu.run_suite(f"{proxy.origin}/mcp/{NAME}", scenario=scenario)
        figures = asyncio.run(session_figures(f"{reg.url}/mcp/{NAME}", caller, load))
        return passed, figures
    finally:
        if node is not None:
            mesh.stop_nodes([node])
        reg.stop()


ACCEPT = "application/json, text/event-stream"


class Client:
    """One raw Streamable HTTP session with the gateway (httpx2), answers as JSON or SSE."""

    def __init__(self, http: Any, url: str) -> None:
        self.http, self.url, self.session = http, url, ""
        self.ids = 0

    def headers(self) -> dict[str, str]:
        base = {"Accept": ACCEPT, "Content-Type": "application/json"}
        return {**base, "Mcp-Session-Id": self.session} if self.session else base

    async def post(self, message: dict[str, Any]) -> tuple[int, bytes]:
        response = await self.http.post(self.url, content=json.dumps(message), headers=self.headers())
        return response.status_code, response.content

    async def initialize(self) -> float:
        """Seconds until the session's initialize is answered (503s retried after a pause)."""
        params = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "b", "version": "1"},
        }
        started = time.perf_counter()
        while True:
            response = await self.http.post(
                self.url,
                content=json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}),
                headers=self.headers(),
            )
            if response.status_code != 503:
                break
            await asyncio.sleep(0.05)
        took = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"initialize: HTTP {response.status_code}: {response.text[:300]}")
        self.session = response.headers["mcp-session-id"]
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return took

    async def call(self) -> bool:
        self.ids += 1
        params = {"name": "test_simple_text", "arguments": {}}
        status, body = await self.post(
            {"jsonrpc": "2.0", "id": self.ids, "method": "tools/call", "params": params}
        )
        return status == 200 and b"This is a simple text response for testing." in body

    async def close(self) -> None:
        if self.session:
            await self.http.delete(self.url, headers=self.headers())


async def session_figures(url: str, token: str, load: argparse.Namespace) -> dict[str, Any]:
    import httpx2

    limits = httpx2.Limits(max_connections=load.clients + load.burst + 4)
    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=120, limits=limits
    ) as http:
        starts = []
        for _ in range(load.sessions):  # one at a time, each after the node had time to start a spare
            await asyncio.sleep(2.0)
            one = Client(http, url)
            starts.append(await one.initialize())
            await one.close()
        await asyncio.sleep(2.0)
        burst = [Client(http, url) for _ in range(load.burst)]
        started = time.perf_counter()
        await asyncio.gather(*(c.initialize() for c in burst))
        burst_seconds = time.perf_counter() - started
        for c in burst:
            await c.close()
        clients = [Client(http, url) for _ in range(load.clients)]
        await asyncio.gather(*(c.initialize() for c in clients))
        for c in clients:  # warm
            await c.call()
        started = time.perf_counter()
        answers = await asyncio.gather(*(_calls(c, load.calls) for c in clients))
        seconds = time.perf_counter() - started
        for c in clients:
            await c.close()
    calls = load.clients * load.calls
    wrong = calls - sum(answers)
    return {
        "session_start_ms": {
            "median": round(statistics.median(starts) * 1000, 1),
            "max": round(max(starts) * 1000, 1),
            "sessions": len(starts),
        },
        "burst": {"sessions": load.burst, "all_started_s": round(burst_seconds, 2)},
        "calls_per_s": round(calls / seconds, 1),
        "clients": load.clients,
        "calls": calls,
        "wrong": wrong,
    }


async def _calls(client: Client, count: int) -> int:
    ok = 0
    for _ in range(count):
        ok += await client.call()
    return ok


def _running(reg: rb.Registry, tok: str) -> bool:
    try:
        view: dict[str, Any] = mesh.api(reg, tok, f"/v1/deployments/{NAME}")
    except urllib.error.HTTPError:
        return False
    instances = view.get("instances", [])
    running = bool(instances) and all(i["status"] == "running" for i in instances)
    return view.get("state") == "ready" and running


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--clients", type=int, default=8, help="sessions calling at once, for calls/s")
    parser.add_argument("--calls", type=int, default=200, help="sequential calls per session")
    parser.add_argument("--sessions", type=int, default=10, help="sessions started one at a time")
    parser.add_argument("--burst", type=int, default=8, help="sessions started at once")
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.calls, args.sessions, args.burst = 2, 20, 2, 2
    info = rb.print_machine("MCP conformance suite, server scenarios: the everything agent direct vs gateway")
    load_before = g.load()
    goals_text = (
        "the agent passes every scenario directly",
        "the gateway (shared sessions) passes every scenario passed directly, but the expected failures",
        "no expected failure passes through the gateway (shared sessions)",
        "the gateway (isolated sessions) passes every scenario passed directly",
        "no wrong answer in the calls through the gateway",
    )
    why = cu.missing()
    if why is not None:
        print(why)
        goals = [g.unmeasured(text, why) for text in goals_text]
        figures: dict[str, object] = {"direct": None, "gateway": None, "isolated": None}
        g.finish("conformance", info, load_before, goals, figures, args.smoke)
        return
    started = time.monotonic()
    with rb.Workdir("conformance", keep=args.keep) as work:
        # A smoke run: one scenario that streams (progress over SSE) each way.
        scenario = "tools-call-with-progress" if args.smoke else None
        ours_direct = direct(work, scenario)
        ours_gateway, shared_figures = gateway(work, scenario, "shared", args)
        ours_isolated, isolated_figures = gateway(work, scenario, "isolated", args)
        if args.keep:
            print(f"kept: {work.path}")
    seconds = time.monotonic() - started
    expected = {s: e for s, e in cu.expected_failures().items() if s in ours_direct}

    print(f"{'scenario':36} {'direct':>8} {'shared':>8} {'isolated':>9}  expected failure (shared)")
    for scenario in sorted(ours_direct):
        d, w = ours_direct[scenario], ours_gateway.get(scenario, False)
        i = ours_isolated.get(scenario, False)
        mark = "yes" if scenario in expected else ""
        marks = f"{'pass' if d else 'FAIL':>8} {'pass' if w else 'FAIL':>8} {'pass' if i else 'FAIL':>9}"
        print(f"{scenario:36} {marks}  {mark}")
    passed_direct = sum(ours_direct.values())
    passed_gateway = sum(ours_gateway.get(s, False) for s in ours_direct)
    passed_isolated = sum(ours_isolated.get(s, False) for s in ours_direct)
    total = len(ours_direct)
    counts = (
        f"{f'{passed_direct}/{total}':>8} {f'{passed_gateway}/{total}':>8} {f'{passed_isolated}/{total}':>9}"
    )
    print(f"{'passed':36} {counts}  ({len(expected)} expected in shared)")
    print(f"all runs: {seconds:.1f} s")
    print()
    print(f"{'through the gateway':40} {'shared':>10} {'isolated':>10}")
    for label, get in (
        ("session start, median (ms)", lambda f: f["session_start_ms"]["median"]),
        ("session start, max (ms)", lambda f: f["session_start_ms"]["max"]),
        (f"{args.burst} sessions at once, all started (s)", lambda f: f["burst"]["all_started_s"]),
        (f"calls/s, {args.clients} sessions at once", lambda f: f["calls_per_s"]),
        ("wrong answers", lambda f: f["wrong"]),
    ):
        print(f"{label:40} {get(shared_figures)!s:>10} {get(isolated_figures)!s:>10}")

    regressed = sorted(
        s for s, ok in ours_direct.items() if ok and not ours_gateway.get(s) and s not in expected
    )
    stale = sorted(s for s in expected if ours_gateway.get(s))
    failing = sorted(s for s, ok in ours_direct.items() if not ok)
    isolated_failing = sorted(s for s, ok in ours_direct.items() if ok and not ours_isolated.get(s))
    wrong = shared_figures["wrong"] + isolated_figures["wrong"]
    goals = [
        g.holds(
            goals_text[0], not failing, f"{passed_direct}/{total}" + (f"; failing: {failing}" * bool(failing))
        ),
        g.holds(
            goals_text[1],
            not regressed,
            f"{passed_gateway}/{total}" + (f"; not expected: {regressed}" * bool(regressed)),
        ),
        g.holds(goals_text[2], not stale, f"stale: {stale}" if stale else f"{len(expected)} entries"),
        g.holds(
            goals_text[3],
            not isolated_failing,
            f"{passed_isolated}/{total}" + (f"; failing: {isolated_failing}" * bool(isolated_failing)),
        ),
        g.holds(goals_text[4], not wrong, f"{wrong} wrong"),
    ]
    figures = {
        "direct": {"passed": passed_direct, "total": total},
        "gateway": {"passed": passed_gateway, "total": total},
        "isolated": {"passed": passed_isolated, "total": total},
        "shared_sessions": shared_figures,
        "isolated_sessions": isolated_figures,
        "expected_failures": sorted(expected),
        "scenarios": {
            s: {"direct": d, "gateway": ours_gateway.get(s, False), "isolated": ours_isolated.get(s, False)}
            for s, d in ours_direct.items()
        },
        "seconds": round(seconds, 1),
    }
    g.finish("conformance", info, load_before, goals, figures, args.smoke)


if __name__ == "__main__":
    main()
