"""Registry replicas: gateway calls/s with one, two and three replicas, failover after kill -9,
and deploy fan-out to simulated nodes spread over three replicas, beside one process.

Every replica is `mcpz registry serve --replica` (its own process) on one scratch PostgreSQL
database (bench/_postgres.py), one shared `--data` folder and NATS at `MCPZ_NATS_URL` (default
127.0.0.1:4222); their public URL is a TCP forwarder in this script standing in for the load
balancer (nodes connect through it; tests/lbutil.py).

- **calls/s** (1, 2, 3 replicas, and one plain `mcpz registry serve` on SQLite for reference):
  one real node (`mcpz node run`, through the forwarder, which points at the last replica) runs 2
  replicas of the python template; `--clients` clients, each its own keep-alive connection and
  session (bench/bench_gateway.py's raw client), client i on replica i mod N, `--per-client`
  sequential `tools/call add` each after 5 warm-up calls. Calls/s = all calls / wall time.
- **failover** (3 replicas): a probe opens a session and calls through a surviving replica every
  50 ms; the figure is the time from the kill -9 to the first answered call. Twice: kill -9 of the
  replica leading the mesh (calls do not go through it: they work on at once while the lease runs
  out, `lease_ttl`, 5 s; the second kill waits for the new leader), then kill -9 of the replica
  holding the node's socket (the forwarder is pointed at a survivor at the same moment, as a load
  balancer's health check would; the node reconnects with its own backoff). Goal: under 10 s.
- **fan-out** (`--nodes`, 5,000 by default): simulated nodes (bench/bench_fanout.py's simulator,
  one process per replica, a third of the nodes each) connected to the three replicas; a round is
  `POST /v1/deployments` with `replicas: N` through replica 1 and the time until the last node
  acked its deploy frame; p50 and p99 over `--rounds`, beside the same figure for one registry
  process (SQLite, all nodes on it, bench_fanout's own run).

On this 2-core machine every replica, the node, its agents, the simulators, PostgreSQL and NATS
share two cores: the ratio between rows is what counts, not the absolute figures.

    python bench/bench_replicas.py [--clients 20] [--per-client 100] [--nodes 5000] [--rounds 3]
        [--skip-fanout] [--keep] [--smoke]

`--smoke` (the suite's check that the script works, within its time limit): 2 clients x 5 calls and
the failover, no fan-out (bench_fanout.py's own smoke run covers the simulator).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # lbutil: the forwarder

import _goals as g
import _mesh as mesh
import _registry as rb
import bench_fanout as fanout
import bench_gateway as gw
from _postgres import postgres_base, scratch_database
from lbutil import Forwarder

AGENT = "bench/rep"
GOAL_FAILOVER = 10.0


class Replicas:
    """N registry replicas (or one plain registry when `replica` is False) on one data folder."""

    def __init__(
        self, work: rb.Workdir, tag: str, database: str | None, count: int, replica: bool = True
    ) -> None:
        self.work = work
        self.data = work.path / f"data-{tag}"
        self.data.mkdir()
        self.lb = Forwarder(0)
        self.env = dict(work.env)
        self.env["MCPZ_REGISTRY_PUBLIC_URL"] = self.lb.url
        if database:
            self.env["MCPZ_DATABASE_URL"] = database
        self.ports = [rb.free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, port in enumerate(self.ports):
            log = (work.path / f"{tag}-r{i + 1}.log").open("ab")
            argv = rb.mcpz_cmd("registry", "serve", "--data", str(self.data), "--port", str(port))
            proc = subprocess.Popen(
                [*argv, *(["--replica"] if replica else [])],
                env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            work.children.append(proc)
            self.procs.append(proc)
            wait_healthy(port, proc)
        self.lb.target = self.ports[-1]

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def token(self, account: str, scopes: str) -> str:
        rb.run(rb.mcpz_cmd("registry", "account", "create", account, "--data", str(self.data)), self.env)
        out = rb.run(
            rb.mcpz_cmd("registry", "token", "create", "--account", account, "--scope", scopes,
                        "--data", str(self.data)),
            self.env,
        )  # fmt: skip
        return str(out.stdout.decode().strip().splitlines()[-1].strip())

    def kill(self, i: int) -> None:
        os.kill(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait()

    def close(self) -> None:
        for proc in self.procs:
            rb.stop_process(proc)
        self.lb.close()


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"a registry exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the registry on {port} did not become healthy")


def request(url: str, tok: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read()[:300]
    except OSError as e:
        return 0, str(e)


def deploy_agent(reps: Replicas) -> tuple[str, subprocess.Popen[bytes]]:
    """The python template published, one node through the forwarder, 2 replicas running."""
    tok = reps.token("bench", "read,publish,deploy,node,call")
    folder = reps.work.path / f"agent-{reps.data.name}"
    mesh.agent(folder, AGENT, "1.0.0", reps.env)
    genv = {**reps.env, **rb._GIT_IDENTITY}
    rb.run([rb.GIT, "tag", "v1.0.0"], genv, cwd=folder)
    git_url = reps.url(0).replace("http://", f"http://mcpz:{tok}@") + f"/git/{AGENT}.git"
    rb.run([rb.GIT, "push", "-q", git_url, "main", "v1.0.0"], genv, cwd=folder)
    node_data = reps.work.path / f"node-{reps.data.name}"
    node_data.mkdir()
    log = (reps.work.path / f"node-{reps.data.name}.log").open("ab")
    node = subprocess.Popen(
        rb.mcpz_cmd("node", "run", "--registry", reps.lb.url, "--token", tok, "--name", "n1",
                    "--data", str(node_data), "--capacity", "4", "--stop-grace", "2", "--allow-unsigned"),
        env=reps.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    reps.work.children.append(node)
    mesh.wait(
        lambda: any(n["connected"] for n in request(reps.url(0), tok, "GET", "/v1/nodes")[1] or []),
        90,
        "the node to connect",
    )
    status, body = request(
        reps.url(0), tok, "POST", "/v1/deployments", {"agent": AGENT, "version": "1.0.0", "replicas": 2}
    )
    if status not in (200, 201):
        raise RuntimeError(f"deploy: {status} {body}")

    def ready() -> bool:
        status, view = request(reps.url(0), tok, "GET", f"/v1/deployments/{AGENT}")
        return (
            status == 200
            and view["state"] == "ready"
            and all(i["status"] == "running" for i in view["instances"])
        )

    mesh.wait(ready, 180, "2 replicas running")
    return tok, node


async def throughput(reps: Replicas, tok: str, clients: int, per_client: int) -> dict[str, Any]:
    tally = gw.Tally()
    sessions = [
        gw.GatewaySession(reps.ports[i % len(reps.ports)], f"/mcp/{AGENT}", tok) for i in range(clients)
    ]
    deadline = time.monotonic() + 60
    for session in sessions:
        await session.open(deadline)
        for a in range(5):
            await session.call_add(a, gw.Tally())

    async def run(session: gw.GatewaySession) -> None:
        for a in range(per_client):
            await session.call_add(a, tally)

    started = time.perf_counter()
    await asyncio.gather(*(run(s) for s in sessions))
    seconds = time.perf_counter() - started
    for session in sessions:
        session.close()
    return {"calls_s": tally.ok / seconds, "ok": tally.ok, "failed": tally.failed, "examples": tally.examples}


async def probe(port: int, tok: str, timeout: float = 60) -> float:
    """Seconds until a new session on `port` answers a call (from now)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        session = gw.GatewaySession(port, f"/mcp/{AGENT}", tok)
        try:
            async with asyncio.timeout(5):
                await session.open(time.monotonic())
                tally = gw.Tally()
                if await session.call_add(1, tally) == 200 and tally.ok:
                    return time.monotonic() - started
        except (gw.BenchError, OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            session.close()
        await asyncio.sleep(0.05)
    return float("inf")


def leader(database: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT holder FROM leases WHERE name = 'deployments'")).first()
    finally:
        engine.dispose()
    return "" if row is None else str(row[0])


def index_of(reps: Replicas, holder: str) -> int:
    for i, port in enumerate(reps.ports):
        if holder.endswith(f"-{port}"):
            return i
    return -1


def calls_rows(
    work: rb.Workdir, base: str, clients: int, per_client: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    failover: dict[str, Any] = {}
    for count in (0, 1, 2, 3):  # 0: one plain registry (SQLite), the reference
        label = "1 process (SQLite, no --replica)" if count == 0 else f"{count} replica(s)"
        print(f"-- calls/s: {label}", flush=True)
        with scratch_database(base, f"rep{count}") as database:
            reps = Replicas(
                work, f"c{count}", None if count == 0 else database, max(count, 1), replica=count > 0
            )
            try:
                tok, _node = deploy_agent(reps)
                result = asyncio.run(throughput(reps, tok, clients, per_client))
                rows.append({"label": label, **result})
                print(
                    f"   {result['calls_s']:.0f} calls/s ({result['ok']} ok, {result['failed']} failed)",
                    flush=True,
                )
                if count == 3:
                    failover = measure_failover(reps, tok, database)
            finally:
                reps.close()
    return rows, failover


def measure_failover(reps: Replicas, tok: str, database: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    first = index_of(reps, leader(database))
    survivors = [i for i in range(3) if i != first]
    print(f"-- failover: kill -9 of the leader (replica {first + 1})", flush=True)
    reps.kill(first)
    out["leader_s"] = asyncio.run(probe(reps.ports[survivors[0]], tok))
    print(f"   calls answered again after {out['leader_s']:.2f} s", flush=True)
    # Calls no longer wait for a new leader (the node's socket is elsewhere): wait for one here,
    # or the second kill would measure the lease's expiry with both replicas gone at once.
    deadline = time.monotonic() + 60
    while index_of(reps, leader(database)) in (first, -1) and time.monotonic() < deadline:
        time.sleep(0.2)
    holding = reps.ports.index(reps.lb.target)
    if holding == first:  # the node's replica died with the leader already
        holding = survivors[-1]
    other = next(i for i in survivors if i != holding)
    new_leader = index_of(reps, leader(database))
    print(
        f"-- failover: kill -9 of the node's replica (replica {holding + 1}; leader now {new_leader + 1})",
        flush=True,
    )
    reps.kill(holding)
    reps.lb.target = reps.ports[other]
    out["node_replica_s"] = asyncio.run(probe(reps.ports[other], tok))
    out["node_replica_was_leader"] = holding == new_leader
    print(f"   calls answered again after {out['node_replica_s']:.2f} s", flush=True)
    return out


def fanout_cluster(work: rb.Workdir, base: str, nodes: int, rounds: int) -> dict[str, Any]:
    print(f"-- fan-out: {nodes} simulated nodes over 3 replicas", flush=True)
    fanout.raise_fd_limit(nodes * 3)
    out: dict[str, Any] = {"latencies": []}
    with scratch_database(base, "fan") as database:
        reps = Replicas(work, "fan", database, 3)
        sims: list[fanout.Child] = []
        try:
            tok = reps.token("bench", "read,publish,deploy,node")
            git_url = reps.url(0).replace("http://", f"http://mcpz:{tok}@") + f"/git/{fanout.AGENT}.git"
            fanout.publish_agent(work.path / "agent-fan", git_url, reps.env)
            shares = [nodes // 3 + (1 if i < nodes % 3 else 0) for i in range(3)]
            started = time.monotonic()
            for i, share in enumerate(shares):
                ws = reps.url(i).replace("http", "ws") + "/v1/mesh"
                sims.append(
                    fanout.Child(work, ["--simulate", ws, tok, str(share)], work.path / f"sim-fan-{i}.log")
                )
            for sim, share in zip(sims, shares, strict=True):
                connected = sim.read()
                if not connected["ok"]:
                    raise RuntimeError(
                        f"only {connected['n']} of {share} nodes connected: {connected['errors']}"
                    )
            out["connect_s"] = time.monotonic() - started
            for _ in range(rounds):
                for sim in sims:
                    sim.ask("reset")
                t0 = time.monotonic()
                status, body = request(
                    reps.url(0), tok, "POST", "/v1/deployments",
                    {"agent": fanout.AGENT, "version": "1.0.0", "replicas": nodes},
                )  # fmt: skip
                if status != 201:
                    raise RuntimeError(f"deploy: {status} {body}")
                lasts = []
                for sim, share in zip(sims, shares, strict=True):
                    acks = sim.ask(f"acks {share} 180")
                    if not acks["ok"]:
                        raise RuntimeError(f"only {acks['n']} of {share} deploys acked")
                    lasts.append(acks["last"])
                out["latencies"].append(max(lasts) - t0)
                print(f"   round: last ack after {out['latencies'][-1] * 1000:.0f} ms", flush=True)
                request(reps.url(0), tok, "DELETE", f"/v1/deployments/{fanout.AGENT}")
                for sim, share in zip(sims, shares, strict=True):
                    sim.ask(f"stops {share} 180")
                mesh.wait(
                    lambda: request(reps.url(0), tok, "GET", f"/v1/deployments/{fanout.AGENT}")[0] == 404,
                    180,
                    "the deployment removed",
                )
        finally:
            for sim in sims:
                sim.close()
            reps.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--keep", action="store_true")
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.per_client, args.nodes, args.rounds = 2, 5, 30, 1
        args.skip_fanout = True
    info = rb.print_machine("replicas: gateway calls/s, failover, fan-out over three registry replicas")
    load_before = g.load()
    base = postgres_base()
    if base is None:
        raise SystemExit("bench_replicas needs PostgreSQL (MCPZ_TEST_POSTGRES_URL or 127.0.0.1:5432)")
    with rb.Workdir("replicas", keep=args.keep) as work:
        rows, failover = calls_rows(work, base, args.clients, args.per_client)
        fan: dict[str, Any] = {}
        solo: dict[str, Any] = {}
        if not args.skip_fanout:
            try:
                fan = fanout_cluster(work, base, args.nodes, args.rounds)
            except RuntimeError as e:
                fan = {"error": str(e)}
            print(f"-- fan-out: {args.nodes} simulated nodes on one registry process", flush=True)
            try:
                solo = fanout.run_registry(work, args.nodes, args.rounds)
            except RuntimeError as e:
                solo = {"error": str(e)}
        print()
        print(f"gateway calls/s ({args.clients} clients x {args.per_client} calls, round-robin)")
        for row in rows:
            print(f"  {row['label']:<34} {row['calls_s']:8.0f} calls/s   failed {row['failed']}")
        if failover:
            print(f"failover after kill -9 (until a call is answered again; goal < {GOAL_FAILOVER:g} s)")
            print(f"  of the leader                      {failover['leader_s']:8.2f} s")
            also = "   (it was the new leader too)" if failover.get("node_replica_was_leader") else ""
            print(f"  of the node's replica              {failover['node_replica_s']:8.2f} s{also}")
        if fan or solo:
            print(
                f"deploy fan-out to {args.nodes} simulated nodes, {args.rounds} rounds (until the last ack)"
            )
            for label, result in (("3 replicas (relayed over NATS)", fan), ("1 process", solo)):
                if result.get("latencies"):
                    lat = result["latencies"]
                    p50, p99 = pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000
                    connect = result.get("connect_s", 0)
                    print(f"  {label:<34} p50 {p50:7.0f} ms   p99 {p99:7.0f} ms   (connect {connect:.1f} s)")
                else:
                    print(f"  {label:<34} not measured: {result.get('error', 'skipped')}")
        goals = []
        if failover:
            worst = max(failover["leader_s"], failover["node_replica_s"])
            goals.append(
                g.below(f"failover under {GOAL_FAILOVER:g} s", worst, GOAL_FAILOVER, f"{worst:.2f} s")
            )
        figures: dict[str, object] = {
            "calls": [{k: row[k] for k in ("label", "calls_s", "failed")} for row in rows],
            "failover": failover,
            "fanout": {
                label: {"p50_ms": pct(r["latencies"], 0.5) * 1000, "p99_ms": pct(r["latencies"], 0.99) * 1000}
                for label, r in (("replicas", fan), ("one_process", solo))
                if r.get("latencies")
            },
        }
        g.finish("replicas", info, load_before, goals, figures, smoke=args.smoke)


if __name__ == "__main__":
    main()
