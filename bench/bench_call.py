"""A call, end to end: `mcpz call NAME TOOL` through a local gateway beside `curl` posting the same
JSON-RPC request to the same gateway; and `mcpz tools --local` beside the agent's own start-up.

A registry process on loopback, one node process, the python template deployed as one replica.
Each command runs `--runs` times (default 10) as a fresh process, bytecode warm (one run before
timing); the table shows median wall and CPU time (user + system of the children).

- `mcpz call bench/echo add a=2 b=40`: start-up, token, a session (initialize, initialized),
  tools/list (the arguments are checked against the tool's input schema), tools/call, the session
  ended. `curl` posts only the tools/call, in a session opened beforehand: the floor of one HTTP
  request through the gateway, the mesh and the agent.
- `mcpz tools --local` on the template: mcpz starts the agent on stdio and lists its tools. Beside
  it, the agent's own start-up: the same agent started by this script and asked `initialize` and
  `tools/list` over raw stdio JSON-RPC (no mcpz, no MCP client library), so what mcpz adds shows.

Goals (issue 13): `mcpz call` under 300 ms, and within 3x of curl.

    python bench/bench_call.py [--runs 10] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _goals as g
import _mesh as mesh
import _registry as rb
from bench_startup import import_times, measure

NAME = "bench/echo"
GOAL_CALL_S = 0.3
GOAL_CURL_RATIO = 3.0


def post_json(reg: rb.Registry, tok: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        reg.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def open_session(url: str, tok: str) -> str:
    """An MCP session on the gateway (initialize + initialized), for curl's requests."""
    headers = {
        "Authorization": f"Bearer {tok}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "curl"}},
    }
    request = urllib.request.Request(url, data=json.dumps(hello).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        session = str(response.headers["Mcp-Session-Id"])
        json.loads(response.read())
    headers |= {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    request = urllib.request.Request(url, data=json.dumps(note).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60):
        pass
    return session


def agent_startup(folder: Path, env: dict[str, str], runs: int) -> float:
    """Median seconds from starting the agent's command to its answer to tools/list, over raw stdio."""
    import tomllib

    command = tomllib.loads((folder / "mcpz.toml").read_text())["run"]["command"]
    if command[0] in ("python", "python3"):  # as mcpz runs it: with the interpreter mcpz runs on
        command = [sys.executable, *command[1:]]
    messages: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]  # fmt: skip
    walls = []
    for _ in range(runs + 1):  # the first one warms the bytecode
        start = time.perf_counter()
        proc = subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None
        answered = 0
        for message in messages:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
            proc.stdin.flush()
            if "id" in message:
                while True:
                    reply = json.loads(proc.stdout.readline())
                    if reply.get("id") == message["id"]:
                        answered += 1
                        break
        walls.append(time.perf_counter() - start)
        proc.stdin.close()
        proc.wait(timeout=30)
        if answered != 2:
            raise RuntimeError("the agent did not answer initialize and tools/list")
    return statistics.median(walls[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs = 1
    info = rb.print_machine("a call end to end: mcpz call through a local gateway beside curl")
    load_before = g.load()
    curl = shutil.which("curl")
    nodes: list[subprocess.Popen[bytes]] = []
    with rb.Workdir("mcpz-bench-call-") as work:
        work.env.pop("PYTHONDONTWRITEBYTECODE", None)
        reg = mesh.start_registry(work)
        tok = mesh.token(reg, "bench", "read,publish,deploy,node,call")
        folder = work.path / "echo"
        mesh.agent(folder, NAME, "1.0.0", work.env)
        mesh.release(folder, reg, NAME, "1.0.0", tok)
        nodes.append(mesh.start_node(work, reg, tok, "node-1"))
        mesh.connected(reg, tok, 1)
        post_json(reg, tok, "/v1/deployments", {"agent": NAME, "version": "1.0.0", "replicas": 1})
        mesh.wait(
            lambda: mesh.api(reg, tok, f"/v1/deployments/{NAME}")["state"] == "ready",
            120,
            "the replica running",
        )
        try:
            mcpz = rb.mcpz_cmd()
            call = [*mcpz, "call", NAME, "add", "a=2", "b=40", "--registry", reg.url, "--token", tok]
            answer = subprocess.run(call, env=work.env, capture_output=True, text=True, timeout=60)
            if answer.returncode != 0 or answer.stdout.strip() != "42":
                raise RuntimeError(f"mcpz call answered {answer.returncode}: {answer.stdout}{answer.stderr}")
            call_wall, call_cpu = measure(call, work.path, work.env, args.runs)
            script = call[1:] if call[0] == sys.executable else call  # what runs under -X importtime
            imports, top = import_times(script, work.path, work.env)
            tools = [*mcpz, "tools", NAME, "--registry", reg.url, "--token", tok]
            tools_wall, tools_cpu = measure(tools, work.path, work.env, args.runs)

            url = f"{reg.url}/mcp/{NAME}"
            curl_wall = curl_cpu = None
            if curl is not None:
                session = open_session(url, tok)
                body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                        "params": {"name": "add", "arguments": {"a": 2, "b": 40}}}  # fmt: skip
                curl_cmd = [
                    curl, "-sS", "--fail", "-X", "POST", url,
                    "-H", f"Authorization: Bearer {tok}", "-H", "Content-Type: application/json",
                    "-H", "Accept: application/json, text/event-stream",
                    "-H", f"Mcp-Session-Id: {session}", "-H", "MCP-Protocol-Version: 2025-06-18",
                    "--data", json.dumps(body),
                ]  # fmt: skip
                said = subprocess.run(curl_cmd, capture_output=True, text=True, timeout=60)
                if '"text":"42"' not in said.stdout.replace(" ", ""):
                    raise RuntimeError(f"curl got no 42: {said.stdout}{said.stderr}")
                curl_wall, curl_cpu = measure(curl_cmd, work.path, work.env, args.runs)

            local = [*mcpz, "tools", "--local", str(folder)]
            local_wall, local_cpu = measure(local, work.path, work.env, args.runs)
            own = agent_startup(folder, work.env, args.runs)
        finally:
            mesh.stop_nodes(nodes)

    print(f"median of {args.runs} runs, fresh process each; wall time and CPU time (user+sys)\n")
    rows = [
        ("mcpz call (gateway)", call_wall, call_cpu),
        ("mcpz tools (gateway)", tools_wall, tools_cpu),
        ("curl tools/call", curl_wall, curl_cpu),
        ("mcpz tools --local", local_wall, local_cpu),
        ("the agent alone (stdio)", own, None),
    ]
    for label, wall, cpu in rows:
        if wall is None:
            print(f"{label:<26}{'(curl is not installed)':>20}")
            continue
        print(f"{label:<26}{wall * 1000:>7.0f}ms" + (f"{cpu * 1000:>7.0f}ms" if cpu is not None else ""))
    named = ", ".join(f"{name} {seconds * 1000:.0f}" for name, seconds in top[:5])
    print(f"\nmcpz call imports {imports * 1000:.0f} ms: {named}")
    print(
        f"mcpz tools --local {local_wall * 1000:.0f} ms, of which the agent's own start-up "
        f"{own * 1000:.0f} ms: mcpz adds {(local_wall - own) * 1000:.0f} ms"
    )
    goals = [
        g.below(
            "`mcpz call` through a local gateway < 300 ms",
            call_wall,
            GOAL_CALL_S,
            f"{call_wall * 1000:.0f} ms, median wall",
        ),
        g.at_most(
            "`mcpz call` within 3x of curl posting the same tools/call",
            call_wall / curl_wall if curl_wall else None,
            GOAL_CURL_RATIO,
            f"{call_wall * 1000:.0f} ms against {curl_wall * 1000:.0f} ms" if curl_wall else "",
            missing="curl is not installed",
        ),
    ]
    g.finish(
        "call",
        info,
        load_before,
        goals,
        {
            "runs": args.runs,
            "median_ms": {
                "mcpz_call": call_wall * 1000,
                "mcpz_tools": tools_wall * 1000,
                "curl_call": curl_wall * 1000 if curl_wall else None,
                "mcpz_tools_local": local_wall * 1000,
                "agent_startup": own * 1000,
            },
            "call_imports_top": [[name, seconds] for name, seconds in top[:8]],
        },
        smoke=args.smoke,
    )


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    main()
