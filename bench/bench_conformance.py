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

Goals (issue 17): the agent passes every scenario served directly; through the gateway it passes
every scenario it passes directly, except the entries of tests/conformance/expected-failures.toml
(each naming its spec clause and why), and none of those passes (a stale entry). `--smoke` runs one
scenario (tools-call-with-progress) each way.

    python bench/bench_conformance.py [--smoke] [--keep]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import json
import signal
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


def gateway(work: rb.Workdir, scenario: str | None) -> dict[str, bool]:
    proxy_port = rb.free_port()
    # The suite's DNS-rebinding scenario sends the proxy's origin: a configured one.
    work.env["MCPZ_REGISTRY_ALLOWED_ORIGINS"] = f"http://127.0.0.1:{proxy_port}"
    reg = rb.Registry.start(work)
    node: subprocess.Popen[bytes] | None = None
    try:
        tok = mesh.token(reg, "bench", "read,publish,deploy,node")
        caller = mesh.token(reg, "caller", "read,call")
        folder = work.path / "everything"
        mesh.agent(folder, NAME, VERSION, work.env)
        server = (cu.EVERYTHING / "server.py").read_bytes()
        rb.commit_change(folder, work.env, "server.py", server, "the everything agent")
        mesh.release(folder, reg, NAME, VERSION, tok)
        node = mesh.start_node(work, reg, tok, "node-1")
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
            return cu.run_suite(f"{proxy.origin}/mcp/{NAME}", scenario=scenario)
    finally:
        if node is not None:
            mesh.stop_nodes([node])
        reg.stop()


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
    g.add_smoke(parser)
    args = parser.parse_args()
    info = rb.print_machine("MCP conformance suite, server scenarios: the everything agent direct vs gateway")
    load_before = g.load()
    goals_text = (
        "the agent passes every scenario directly",
        "the gateway passes every scenario passed directly, but the expected failures",
        "no expected failure passes through the gateway",
    )
    why = cu.missing()
    if why is not None:
        print(why)
        goals = [g.unmeasured(text, why) for text in goals_text]
        g.finish("conformance", info, load_before, goals, {"direct": None, "gateway": None}, args.smoke)
        return
    started = time.monotonic()
    with rb.Workdir("conformance", keep=args.keep) as work:
        # A smoke run: one scenario that streams (progress over SSE) each way.
        scenario = "tools-call-with-progress" if args.smoke else None
        ours_direct = direct(work, scenario)
        ours_gateway = gateway(work, scenario)
        if args.keep:
            print(f"kept: {work.path}")
    seconds = time.monotonic() - started
    expected = {s: e for s, e in cu.expected_failures().items() if s in ours_direct}

    print(f"{'scenario':36} {'direct':>8} {'gateway':>8}  expected failure")
    for scenario in sorted(ours_direct):
        d, w = ours_direct[scenario], ours_gateway.get(scenario, False)
        mark = "yes" if scenario in expected else ""
        print(f"{scenario:36} {'pass' if d else 'FAIL':>8} {'pass' if w else 'FAIL':>8}  {mark}")
    passed_direct = sum(ours_direct.values())
    passed_gateway = sum(ours_gateway.get(s, False) for s in ours_direct)
    total = len(ours_direct)
    counts = f"{f'{passed_direct}/{total}':>8} {f'{passed_gateway}/{total}':>8}"
    print(f"{'passed':36} {counts}  ({len(expected)} expected)")
    print(f"both runs: {seconds:.1f} s")

    regressed = sorted(
        s for s, ok in ours_direct.items() if ok and not ours_gateway.get(s) and s not in expected
    )
    stale = sorted(s for s in expected if ours_gateway.get(s))
    failing = sorted(s for s, ok in ours_direct.items() if not ok)
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
    ]
    figures = {
        "direct": {"passed": passed_direct, "total": total},
        "gateway": {"passed": passed_gateway, "total": total},
        "expected_failures": sorted(expected),
        "scenarios": {
            s: {"direct": d, "gateway": ours_gateway.get(s, False)} for s, d in ours_direct.items()
        },
        "seconds": round(seconds, 1),
    }
    g.finish("conformance", info, load_before, goals, figures, args.smoke)


if __name__ == "__main__":
    main()
