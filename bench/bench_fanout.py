"""Fan-out: deploy frames to N = 100, 1,000 and 5,000 connected nodes, and the floor beside it.

For each N, in one run:

- **registry**: `mcpz registry serve` (its own process, SQLite, default heartbeat settings) and N
  simulated nodes in *one other* process (this script with `--simulate`): each node is one real
  WebSocket speaking the real protocol (`mcpz.mesh`): hello, a heartbeat every `heartbeat_interval`
  (staggered), an `ack` for every `deploy` and `stop`, then a `running` (or `stopped`) status, like a
  node whose replica starts at once. Capacity 1 each, so a deployment of N replicas puts one on
  every node. A round: `POST /v1/deployments` with `replicas: N` (t0 taken just before the call),
  then the time the last node sent its ack (CLOCK_MONOTONIC, which all processes on the machine
  share); then `DELETE` and wait until the deployment is gone, unmeasured, before the next round.
- **floor**: a bare `websockets` server (this script with `--floor`, its own process) that answers
  hello with welcome and, on cue, sends one pre-encoded deploy frame to all N connections with
  `websockets.broadcast`; the same simulator process connects N nodes to it and acks the same way.
  No database, no scheduling, no per-node frame: the least any hub written in Python could do.

The figure is p50 and p99 over `--rounds` deploys (with few rounds, p99 is about the slowest).
Also shown: how long N nodes took to connect and be welcomed, the API call's own time, and the
registry's memory with N nodes connected. Goals (issue 5): 1,000 nodes p99 under 250 ms; 5,000
nodes held by one registry process.

    python bench/bench_fanout.py [--sizes 100,1000,5000] [--rounds 7] [--keep] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)

Each process needs about one file descriptor per node: the script raises its soft `ulimit -n`
(children inherit it) and skips sizes the hard limit cannot hold; a goal whose size was skipped
or not asked for prints as unmeasured, and a size whose nodes did not all connect or ack fails.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _goals as g
import _registry as rb

AGENT = "bench/fan"
GOAL_P99_1000 = 0.250
COMMIT = "0" * 40


# --- the simulated nodes (one process) ---------------------------------------------------------
#
# Each node is an asyncio Protocol driving the `websockets` sans-I/O client protocol: no task per
# node or per message, so the simulator, not the hub, is what stays cheap. Frames are real:
# encoded and decoded with `mcpz.mesh`.


class _Sim:
    def __init__(self, url: str, token: str, statuses: bool) -> None:
        self.url = url
        self.token = token
        self.statuses = statuses
        self.acks: list[float] = []
        self.stops = 0
        self.connected = 0
        self.failed: list[str] = []
        self.changed = asyncio.Event()


class _SimNode(asyncio.Protocol):
    def __init__(self, sim: _Sim, index: int, welcomed: asyncio.Future[None]) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        from mcpz.mesh import MAX_FRAME_SIZE

        self.sim = sim
        self.index = index
        self.welcomed = welcomed
        self.ws = ClientProtocol(parse_uri(sim.url), max_size=MAX_FRAME_SIZE)
        self.ids = itertools.count(1)
        self.held: dict[str, tuple[str, int, str]] = {}
        self.interval = 5.0
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = self.ws.connect()
        request.headers["Authorization"] = f"Bearer {self.sim.token}"
        self.ws.send_request(request)
        self.flush()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode
        from websockets.http11 import Response

        from mcpz.mesh import Deploy, Hello, Stop, Welcome, decode

        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    self.fail(f"upgrade refused: HTTP {event.status_code}")
                    return
                self.send(
                    Hello(id=next(self.ids), node_name=f"sim-{self.index}", capacity=1, software_version="0")
                )
            elif not isinstance(event, Frame):
                continue  # a client is sent a response and frames, never a request
            elif event.opcode is Opcode.BINARY:
                frame = decode(event.data)
                if isinstance(frame, Deploy):
                    self.on_deploy(frame)
                elif isinstance(frame, Stop):
                    self.on_stop(frame)
                elif isinstance(frame, Welcome):
                    self.interval = frame.heartbeat_interval
                    self.timer = asyncio.get_running_loop().call_later(
                        self.interval * random.random(), self.beat
                    )
                    self.sim.connected += 1
                    if not self.welcomed.done():
                        self.welcomed.set_result(None)
            elif event.opcode is Opcode.CLOSE:
                self.fail(f"closed by the hub: {self.ws.close_rcvd}")
        self.flush()

    def on_deploy(self, frame: Any) -> None:
        from mcpz.mesh import Ack, ReplicaStatus, Status

        self.send(Ack(id=next(self.ids), ref=frame.id))
        self.sim.acks.append(time.monotonic())
        self.sim.changed.set()
        self.held[frame.replica_id] = (frame.deployment, frame.epoch, frame.commit)
        if self.sim.statuses:
            self.send(
                Status(
                    id=next(self.ids),
                    replica_id=frame.replica_id,
                    epoch=frame.epoch,
                    status=ReplicaStatus.RUNNING,
                )
            )

    def on_stop(self, frame: Any) -> None:
        from mcpz.mesh import Ack, ReplicaStatus, Status

        self.send(Ack(id=next(self.ids), ref=frame.id))
        held = self.held.pop(frame.replica_id, None)
        if held is not None and self.sim.statuses:
            self.send(
                Status(
                    id=next(self.ids),
                    replica_id=frame.replica_id,
                    epoch=held[1],
                    status=ReplicaStatus.STOPPED,
                )
            )
        self.sim.stops += 1
        self.sim.changed.set()

    def beat(self) -> None:
        from mcpz.mesh import Heartbeat, ReplicaReport, ReplicaStatus

        reports = tuple(
            ReplicaReport(deployment=d, replica_id=r, epoch=e, commit=c, status=ReplicaStatus.RUNNING)
            for r, (d, e, c) in self.held.items()
        )
        self.send(
            Heartbeat(
                id=next(self.ids), cpu_percent=1.0, memory_used=1, memory_total=2, load=0.0, replicas=reports
            )
        )
        self.flush()
        self.timer = asyncio.get_running_loop().call_later(self.interval, self.beat)

    def send(self, frame: Any) -> None:
        from mcpz.mesh import encode

        self.ws.send_binary(encode(frame))

    def flush(self) -> None:
        data = self.ws.data_to_send()
        if data and self.transport is not None:
            self.transport.write(b"".join(data))

    def fail(self, why: str) -> None:
        self.sim.failed.append(f"node {self.index}: {why}")
        if not self.welcomed.done():
            self.welcomed.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.welcomed.done():
            self.welcomed.set_exception(RuntimeError(f"connection lost: {exc}"))


async def _connect(sim: _Sim, index: int, sem: asyncio.Semaphore) -> None:
    from urllib.parse import urlsplit

    loop = asyncio.get_running_loop()
    parts = urlsplit(sim.url)
    assert parts.hostname is not None and parts.port is not None, sim.url
    async with sem:
        for attempt in range(20):
            welcomed: asyncio.Future[None] = loop.create_future()
            try:
                await loop.create_connection(
                    functools.partial(_SimNode, sim, index, welcomed), parts.hostname, parts.port
                )
                await asyncio.wait_for(welcomed, 60)
                return
            except OSError:
                await asyncio.sleep(0.05 * (attempt + 1))
        raise RuntimeError(f"node {index} could not connect")


async def _wait(sim: _Sim, predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sim.changed.clear()
        try:
            await asyncio.wait_for(sim.changed.wait(), remaining)
        except TimeoutError:
            return False
    return True


async def simulate(url: str, token: str, n: int, statuses: bool) -> None:
    """Connect `n` nodes, then obey commands on stdin: reset | acks N TIMEOUT | stops N TIMEOUT | quit."""
    loop = asyncio.get_running_loop()
    sim = _Sim(url, token, statuses)
    sem = asyncio.Semaphore(256)
    started = time.monotonic()
    results = await asyncio.gather(*(_connect(sim, i, sem) for i in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    _say(
        {
            "event": "connected",
            "n": sim.connected,
            "ok": not errors,
            "seconds": time.monotonic() - started,
            "errors": [str(e) for e in errors[:3]],
        }
    )
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "reset":
            sim.acks.clear()
            sim.stops = 0
            _say({"event": "reset"})
        elif line[0] == "acks":
            want, timeout = int(line[1]), float(line[2])
            ok = await _wait(sim, lambda want=want: len(sim.acks) >= want, timeout)
            acks = sorted(sim.acks)
            _say(
                {
                    "event": "acks",
                    "ok": ok,
                    "n": len(acks),
                    "first": acks[0] if acks else None,
                    "last": acks[-1] if acks else None,
                    "failed": sim.failed[:3],
                }
            )
        elif line[0] == "stops":
            want, timeout = int(line[1]), float(line[2])
            ok = await _wait(sim, lambda want=want: sim.stops >= want, timeout)
            _say({"event": "stops", "ok": ok, "n": sim.stops})


def _say(item: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(item) + "\n")
    sys.stdout.flush()


# --- the floor: a bare websockets broadcast --------------------------------------------------------


async def floor(port: int) -> None:
    from websockets.asyncio.server import broadcast, serve

    from mcpz.mesh import MAX_FRAME_SIZE, Deploy, Hello, Welcome, decode, encode

    loop = asyncio.get_running_loop()
    welcomed: set[Any] = set()

    async def handler(ws: Any) -> None:
        hello = decode(await ws.recv())
        assert isinstance(hello, Hello)
        await ws.send(
            encode(
                Welcome(id=1, node_id=f"n{id(ws)}", heartbeat_interval=5, grace=15, server_time=time.time())
            )
        )
        welcomed.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            welcomed.discard(ws)

    frame = encode(
        Deploy(
            id=2,
            deployment=AGENT,
            replica_id="bench.fan-00000000",
            epoch=1,
            agent=AGENT,
            version="1.0.0",
            commit=COMMIT,
            registry_url=f"http://127.0.0.1:{port}/git/{AGENT}.git",
            command=("python", "server.py"),
        )
    )
    async with serve(
        handler,
        "127.0.0.1",
        port,
        max_size=MAX_FRAME_SIZE,
        compression=None,
        ping_interval=None,
        backlog=4096,
    ):
        _say({"event": "listening", "port": port})
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                break
            if line[0] == "broadcast":
                broadcast(welcomed, frame)
                _say({"event": "broadcast", "n": len(welcomed)})


# --- the driver -------------------------------------------------------------------------------------


class Child:
    """A child process of this script that talks JSON lines."""

    def __init__(self, work: rb.Workdir, args: list[str], log: Path) -> None:
        self.log = log.open("ab")
        self.argv = args
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=work.env,
            text=True,
            start_new_session=True,
        )
        work.children.append(self.proc)  # type: ignore[arg-type]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.argv[:2]} ended; see {self.log.name}")
        item: dict[str, Any] = json.loads(line)
        return item

    def ask(self, line: str) -> dict[str, Any]:
        self.send(line)
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                rb.stop_process(self.proc)  # type: ignore[arg-type]
        self.log.close()


def raise_fd_limit(nodes: int) -> int:
    """Raise the soft limit on open files (children inherit it); return the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = nodes + 1024
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, max(want, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


def setup_registry(work: rb.Workdir, size: int) -> tuple[rb.Registry, str]:
    reg = rb.Registry.start(work, work.path / f"registry-{size}")
    data = str(reg.data)
    rb.run(rb.mcpz_cmd("registry", "account", "create", "bench", "--data", data), work.env)
    made = rb.run(
        rb.mcpz_cmd(
            "registry",
            "token",
            "create",
            "--account",
            "bench",
            "--scope",
            "read,publish,deploy,node",
            "--data",
            data,
        ),
        work.env,
    )
    token = made.stdout.decode().strip().splitlines()[-1].strip()
    publish_agent(work.path / f"agent-{size}", reg.git_url(AGENT, token), work.env)
    return reg, token


def publish_agent(folder: Path, git_url: str, env: dict[str, str]) -> None:
    """AGENT 1.0.0 (a server that only prints: the simulated nodes never run it) written in
    `folder`, committed, tagged and pushed to `git_url`."""
    folder.mkdir()
    (folder / "mcpz.toml").write_text(rb.MANIFEST.format(name=AGENT, version="1.0.0"))
    (folder / "server.py").write_text("print('fan-out bench')\n")
    genv = {**env, **rb._GIT_IDENTITY}
    rb.run([rb.GIT, "init", "-q", "-b", "main", str(folder)], genv)
    rb.run([rb.GIT, "add", "-A"], genv, cwd=folder)
    rb.run([rb.GIT, "commit", "-q", "-m", "fan"], genv, cwd=folder)
    rb.run([rb.GIT, "tag", "v1.0.0"], genv, cwd=folder)
    rb.run([rb.GIT, "push", "-q", git_url, "main", "v1.0.0"], genv, cwd=folder)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_registry(work: rb.Workdir, size: int, rounds: int) -> dict[str, Any]:
    import httpx2

    reg, token = setup_registry(work, size)
    sim = Child(
        work,
        ["--simulate", reg.url.replace("http", "ws") + "/v1/mesh", token, str(size)],
        work.path / f"sim-{size}.log",
    )
    out: dict[str, Any] = {"latencies": [], "api": []}
    try:
        connected = sim.read()
        out["connect_s"] = connected["seconds"]
        out["connected"] = connected["n"]
        if not connected["ok"]:
            raise RuntimeError(f"only {connected['n']} of {size} nodes connected")
        out["rss_mb"] = rss_mb(reg.pid)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx2.Client(base_url=reg.url, headers=headers, timeout=120) as client:
            for _ in range(rounds):
                sim.ask("reset")
                t0 = time.monotonic()
                response = client.post(
                    "/v1/deployments", json={"agent": AGENT, "version": "1.0.0", "replicas": size}
                )
                api = time.monotonic() - t0
                if response.status_code != 201:
                    raise RuntimeError(f"deploy failed: {response.status_code} {response.text[:300]}")
                acks = sim.ask(f"acks {size} 120")
                if not acks["ok"]:
                    raise RuntimeError(f"only {acks['n']} of {size} deploys were acked")
                out["latencies"].append(acks["last"] - t0)
                out["api"].append(api)
                client.delete(f"/v1/deployments/{AGENT}")
                stops = sim.ask(f"stops {size} 120")
                if not stops["ok"]:
                    raise RuntimeError(f"only {stops['n']} of {size} stops were acked")
                deadline = time.monotonic() + 120
                while client.get(f"/v1/deployments/{AGENT}").status_code != 404:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the deployment was not removed")
                    time.sleep(0.05)
        out["rss_mb_after"] = rss_mb(reg.pid)
    finally:
        sim.close()
        reg.stop()
    return out


def run_floor(work: rb.Workdir, size: int, rounds: int) -> dict[str, Any]:
    port = rb.free_port()
    server = Child(work, ["--floor", str(port)], work.path / f"floor-{size}.log")
    out: dict[str, Any] = {"latencies": []}
    try:
        server.read()
        sim = Child(
            work,
            ["--simulate", f"ws://127.0.0.1:{port}/", "floor", str(size)],
            work.path / f"sim-floor-{size}.log",
        )
        try:
            connected = sim.read()
            out["connect_s"] = connected["seconds"]
            for _ in range(rounds):
                sim.ask("reset")
                t0 = time.monotonic()
                server.ask("broadcast")
                acks = sim.ask(f"acks {size} 120")
                if not acks["ok"]:
                    raise RuntimeError(f"floor: only {acks['n']} of {size} acks")
                out["latencies"].append(acks["last"] - t0)
        finally:
            sim.close()
    finally:
        server.close()
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _goal_p99(results: dict[int, dict[str, Any]], skipped: dict[int, str], size: int, text: str) -> g.Goal:
    if size in skipped:
        return (g.failed if skipped[size].startswith("FAILED") else g.unmeasured)(text, skipped[size])
    if size not in results:
        return g.unmeasured(text, f"N={size:,} not in --sizes")
    p99 = rb.percentile(results[size]["registry"]["latencies"], 99)
    return g.below(text, p99, GOAL_P99_1000, _ms(p99))


def _goal_held(
    results: dict[int, dict[str, Any]], skipped: dict[int, str], size: int, rounds: int, text: str
) -> g.Goal:
    """Held: every node connected and every deploy of every round acked by all of them."""
    if size in skipped:
        return (g.failed if skipped[size].startswith("FAILED") else g.unmeasured)(text, skipped[size])
    if size not in results:
        return g.unmeasured(text, f"N={size:,} not in --sizes")
    reg = results[size]["registry"]
    acked = len(reg["latencies"])
    ok = reg.get("connected") == size and acked == rounds
    return g.holds(
        text, ok, f"{reg.get('connected')} of {size:,} connected, {acked} of {rounds} deploys acked by all"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--simulate", nargs=3, metavar=("URL", "TOKEN", "N"))
    parser.add_argument("--floor", type=int, metavar="PORT")
    parser.add_argument("--no-statuses", action="store_true", help="simulated nodes only ack")
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.simulate:
        url, token, n = args.simulate
        asyncio.run(simulate(url, token, int(n), statuses=not args.no_statuses))
        return 0
    if args.floor:
        asyncio.run(floor(args.floor))
        return 0

    if args.smoke:
        args.sizes, args.rounds = "20", 1
    sizes = [int(s) for s in args.sizes.split(",")]
    info = rb.print_machine("fan-out: deploy frames to N nodes, deploy API call to the last ack")
    limit = raise_fd_limit(max(sizes))
    print(f"open files: soft limit {limit} (raised for {max(sizes):,} nodes; children inherit it)")
    load_before = g.load()
    results: dict[int, dict[str, Any]] = {}
    skipped: dict[int, str] = {}
    with rb.Workdir("fanout", keep=args.keep) as work:
        for size in sizes:
            if size + 512 > limit:
                skipped[size] = f"the open files limit ({limit}) cannot hold {size:,} nodes"
                print(f"skipping N={size}: {skipped[size]}")
                continue
            print(f"N={size:,}: registry ...", flush=True)
            try:
                registry = run_registry(work, size, args.rounds)
            except RuntimeError as e:
                skipped[size] = f"FAILED: {e}"
                print(f"N={size:,}: {skipped[size]}")
                continue
            print(f"N={size:,}: floor ...", flush=True)
            base = run_floor(work, size, args.rounds)
            results[size] = {"registry": registry, "floor": base}
        if args.keep:
            print(f"kept: {work.path}")

    rows = []
    for size, r in results.items():
        reg, base = r["registry"], r["floor"]
        p50, p99 = rb.percentile(reg["latencies"], 50), rb.percentile(reg["latencies"], 99)
        f50, f99 = rb.percentile(base["latencies"], 50), rb.percentile(base["latencies"], 99)
        rows.append(
            [
                f"{size:,}",
                _ms(p50),
                _ms(p99),
                _ms(rb.median(reg["api"])),
                _ms(f50),
                _ms(f99),
                f"{p50 / f50:.1f}x" if f50 else "",
                f"{reg['connect_s']:.1f} s",
                f"{reg['rss_mb']:.0f} MB" if reg.get("rss_mb") else "-",
            ]
        )
    print()
    print(
        rb.table(
            [
                "nodes",
                "registry p50",
                "p99",
                "API call",
                "floor p50",
                "floor p99",
                "vs floor",
                "connect",
                "registry RSS",
            ],
            rows,
        )
    )
    print(f"{args.rounds} deploys per size")
    for size, r in results.items():
        print(f"  N={size:,} registry runs: {', '.join(_ms(x) for x in r['registry']['latencies'])}")
        print(f"  N={size:,} floor runs:    {', '.join(_ms(x) for x in r['floor']['latencies'])}")
    goals = [
        _goal_p99(results, skipped, 1000, "1,000 nodes: deploy to last ack p99 < 250 ms"),
        _goal_held(results, skipped, 5000, args.rounds, "5,000 nodes held by one registry process"),
    ]
    if args.smoke:  # the smoke size stands in for both, so its run is judged too
        size = sizes[0]
        goals.append(_goal_held(results, skipped, size, args.rounds, f"{size} nodes held (smoke)"))
    figures = {
        str(size): {
            "registry_s": [round(x, 4) for x in r["registry"]["latencies"]],
            "api_s": [round(x, 4) for x in r["registry"]["api"]],
            "floor_s": [round(x, 4) for x in r["floor"]["latencies"]],
            "connect_s": round(r["registry"]["connect_s"], 2),
            "registry_rss_mb": r["registry"].get("rss_mb"),
        }
        for size, r in results.items()
    }
    g.finish("fanout", info, load_before, goals, {"results": figures, "skipped": skipped}, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
