"""Gateway: a tool called through the registry's MCP gateway, beside the same agent over stdio.

One run, on loopback: a registry process (`mcpz registry serve`), ONE node process (`mcpz node
run`, capacity 4) and two agents, each deployed with 2 replicas on that node (4 agent processes):

- `bench/gw`: the python template (tools echo/add/divide, the `mcp` SDK's MCPServer), the agent
  of the issue's figures. Its own cost (~2.5 ms of CPU per call over stdio) caps both sides;
- `bench/gw-raw`: the same template with a minimal `server.py` (a plain JSON-RPC loop, no SDK),
  so that the gateway's own ceiling shows where the SDK agent would hide it.

Each agent is measured alone, the same way:

- **latency**: `--calls` sequential `tools/call add` after `--warmup` calls, one client:
  - direct: the agent's own command (`mcpz.local.process.agent_process`: `python server.py` in
    the rendered folder) started by this script, raw newline-delimited JSON-RPC on its stdin and
    stdout (initialize, notifications/initialized, then the calls);
  - gateway: `POST {registry}/mcp/{name}` over one keep-alive HTTP/1.1 connection with a raw
    asyncio client (the request's bytes written, status line + headers + Content-Length body
    read), one session (initialize, notifications/initialized, then the calls). The session sticks
    to one replica, so this is registry + mesh + node + one agent.
  Both sides parse every answer and check it (a + b), so the client's work is the same.
- **throughput**: `--clients` concurrent clients x `--per-client` sequential calls:
  - gateway: each client its own connection and session, against the 2-replica deployment;
  - direct: the same clients on 2 agent processes of our own (clients split between them; each
    process takes the requests of its clients concurrently over its one stdio pipe, answers
    matched by JSON-RPC id, as the node's channel does).
  Calls/s = all calls / wall time from the start signal to the last answer (sessions opened and
  5 calls each before the start). CPU seconds of every process during the gateway run are shown,
  and how the calls split over the two replicas' agents (their CPU time).
- **overload** (`bench/gw` only): the registry runs with `max_calls_in_flight` = `--max-in-flight` (32; the
  throughput run has at most `--clients` = 20 in flight, so it is not limited by it), then
  `--overload-clients` (200) clients, each its own session, call as fast as they can for
  `--overload-seconds`, `--overload-rounds` times; every answer is counted by status (200 / 503 /
  other; a 503 is retried at once, not after Retry-After), and the resident memory (VmRSS) of the
  registry and node processes is sampled before, during (every 100 ms) and after each round.

Goals (issue): added p50 under 2 ms; through the gateway at least 80% of the direct calls/s and
at least 1,000 calls/s; overload answered with 503s (no other status, no wrong answer); memory flat
under overload: the least-squares slope of the registry's and the node's RSS after each round,
round 2 on (round 1 fills caches and allocator arenas), under 1 MB per round: a steady leak of a
few MB per round fails it, which comparing two peaks could not tell. A slope needs 3 points, so
`--overload-rounds` is at least 4 for a verdict (6 by default); fewer prints it unmeasured. Any
wrong or failed answer fails the goals of the agent it came from.

`--profile` runs the registry and the node under cProfile (so their figures are slower than
without it; overload is skipped) and prints where their main threads spent the time.

    python bench/bench_gateway.py [--calls 1000] [--clients 20] [--per-client 200]
        [--overload-rounds 6] [--quick] [--smoke] [--profile] [--keep]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pstats
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _goals as g
import _mesh as mesh
import _registry as rb

from mcpz.local.process import agent_process

NAME = "bench/gw"
RAW_NAME = "bench/gw-raw"
VERSION = "1.0.0"
REPLICAS = 2
PROTOCOL = "2025-06-18"
GOAL_ADDED_P50 = 0.002
GOAL_RATIO = 0.80
GOAL_CALLS_PER_S = 1000.0
GOAL_RSS_SLOPE_MB = 1.0
STREAM_LIMIT = 16 * 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


# The floor of an agent: what the node's health check and the benchmark ask, answered in a plain
# loop with no SDK, so the gateway's own ceiling shows where the SDK agent's cost would hide it.
RAW_SERVER = r'''"""A minimal MCP agent over stdio without the SDK: the benchmark's fast agent."""

import json
import sys

TOOLS = [
    {"name": "echo", "description": "Return the text.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    {"name": "add", "description": "Add two integers.",
     "inputSchema": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                     "required": ["a", "b"]}},
]


def answer(message):
    method = message.get("method")
    params = message.get("params") or {}
    if method == "initialize":
        return {"protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}}, "serverInfo": {"name": "bench/gw-raw", "version": "1.0.0"}}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "ping":
        return {}
    if method == "tools/call":
        args = params.get("arguments") or {}
        if params.get("name") == "add":
            text = str(int(args["a"]) + int(args["b"]))
        elif params.get("name") == "echo":
            text = str(args.get("text", ""))
        else:
            return {"content": [{"type": "text", "text": "no such tool"}], "isError": True}
        return {"content": [{"type": "text", "text": text}], "isError": False}
    return None


def main():
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        message = json.loads(line)
        if "id" not in message or "method" not in message:
            continue
        result = answer(message)
        if result is None:
            reply = {"jsonrpc": "2.0", "id": message["id"],
                     "error": {"code": -32601, "message": "method not found"}}
        else:
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        out.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
'''


class BenchError(RuntimeError):
    pass


# --- what went wrong, counted ----------------------------------------------------------------


class Tally:
    """Answers by kind: ok, wrong answers, HTTP statuses other than 200; the first few kept."""

    def __init__(self) -> None:
        self.ok = 0
        self.problems: Counter[str] = Counter()
        self.examples: list[str] = []

    def bad(self, kind: str, detail: str) -> None:
        self.problems[kind] += 1
        if self.problems[kind] <= 2 and len(self.examples) < 8:
            self.examples.append(f"{kind}: {detail[:300]}")

    @property
    def failed(self) -> int:
        return sum(self.problems.values())


def add_request(request_id: int, a: int) -> bytes:
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": a, "b": 7}},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def check_add(message: Any, request_id: int, a: int, tally: Tally) -> None:
    """The answer to `add_request(request_id, a)`: a + 7, as the tool's text content."""
    try:
        result = message["result"]
        text = result["content"][0]["text"]
        ok = message["id"] == request_id and not result.get("isError") and text == str(a + 7)
    except (KeyError, IndexError, TypeError):
        ok = False
    if ok:
        tally.ok += 1
    else:
        tally.bad("wrong answer", f"id {request_id} add({a}, 7): {json.dumps(message)}")


INITIALIZE = {
    "protocolVersion": PROTOCOL,
    "capabilities": {},
    "clientInfo": {"name": "bench-gateway", "version": "1"},
}


# --- the direct side: an agent process over its own stdio -------------------------------------


class StdioAgent:
    """One agent process; requests from many coroutines multiplexed over its pipes by JSON-RPC id."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, folder: Path, env: dict[str, str], log: Path) -> StdioAgent:
        spec = agent_process(folder, env=env)
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                cwd=spec.cwd,
                env=dict(spec.env),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                limit=STREAM_LIMIT,
                start_new_session=True,
            )
        agent = cls(proc)
        agent.reader = asyncio.create_task(agent._read())
        try:
            answer = await asyncio.wait_for(agent.request("initialize", INITIALIZE), 30)
            if "result" not in answer:
                raise BenchError(f"the agent refused initialize: {answer}")
            agent.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        except BaseException:
            await agent.close()
            raise
        return agent

    async def _read(self) -> None:
        try:
            while line := await self.stdout.readline():
                message = json.loads(line)
                future = self.waiting.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        finally:
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(BenchError("the agent's stdout ended"))
            self.waiting.clear()

    def send(self, message: dict[str, Any]) -> None:
        self.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        request_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return await future

    async def call_add(self, a: int, tally: Tally) -> None:
        """One `tools/call add`, built and checked exactly as the gateway side does."""
        request_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        self.stdin.write(add_request(request_id, a) + b"\n")
        check_add(await future, request_id, a, tally)

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                self.stdin.close()
                await asyncio.wait_for(self.proc.wait(), 5)
            except (TimeoutError, OSError):
                self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            self.reader.cancel()


# --- the gateway side: a lean keep-alive HTTP/1.1 client --------------------------------------


class GatewaySession:
    """One connection, one MCP session: raw request bytes out, status + headers + body in."""

    def __init__(self, port: int, path: str, token: str) -> None:
        self.port = port
        self.path = path
        self.token = token
        self.session = ""
        self.ids = itertools.count(1)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._head = b""
        self.reconnects = 0

    def _make_head(self) -> None:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            f"Authorization: Bearer {self.token}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
        ]
        if self.session:
            lines.append(f"Mcp-Session-Id: {self.session}")
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode()

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=STREAM_LIMIT)

    async def open(self, deadline: float) -> int:
        """Connect and initialize (503 retried until `deadline`); return how many 503s that took."""
        self._make_head()
        await self.connect()
        busy = 0
        while True:
            status, headers, body = await self.post(
                json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INITIALIZE}).encode()
            )
            if status == 503 and time.monotonic() < deadline:
                busy += 1
                await asyncio.sleep(0.01)
                continue
            if status != 200 or b"mcp-session-id" not in headers:
                raise BenchError(f"initialize through the gateway: HTTP {status}: {body[:300]!r}")
            break
        self.session = headers[b"mcp-session-id"].decode()
        self._make_head()
        status, _, body = await self.post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        if status != 202:
            raise BenchError(f"notifications/initialized through the gateway: HTTP {status}: {body[:300]!r}")
        return busy

    async def post(self, body: bytes, extra: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
        """One request; `extra` is more header lines, each ending in CRLF (a per-call traceparent)."""
        if self.writer is None:
            await self.connect()
            self.reconnects += 1
        assert self.reader is not None and self.writer is not None
        self.writer.write(b"%s%d\r\n%s\r\n%s" % (self._head, len(body), extra, body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(b":")
                headers[key.strip().lower()] = value.strip()
        if b"transfer-encoding" in headers:
            raise BenchError(
                f"unexpected Transfer-Encoding {headers[b'transfer-encoding']!r} (HTTP {status})"
            )
        length = int(headers.get(b"content-length", b"0"))
        data = await self.reader.readexactly(length) if length else b""
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, headers, data

    async def call_add(self, a: int, tally: Tally) -> int:
        """One `tools/call add`; the HTTP status (a 200's answer checked, others counted)."""
        request_id = next(self.ids)
        status, _, data = await self.post(add_request(request_id, a))
        if status == 200:
            check_add(json.loads(data), request_id, a, tally)
        else:
            tally.bad(f"HTTP {status}", data.decode(errors="replace"))
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# --- processes: the registry and the node, optionally under cProfile --------------------------


def start_registry(work: rb.Workdir, env: dict[str, str], profile: Path | None) -> rb.Registry:
    """`mcpz registry serve` in its own session, as `rb.Registry.start`, optionally under cProfile."""
    reg = rb.Registry(work, work.path / "registry")
    reg.data.mkdir(parents=True, exist_ok=True)
    reg.port = rb.free_port()
    reg.log = work.path / "registry.log"
    args = ("registry", "serve", "--data", str(reg.data), "--port", str(reg.port))
    with reg.log.open("ab") as log:
        reg.proc = subprocess.Popen(
            _command(args, profile),
            env={**work.env, **env},
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    work.children.append(reg.proc)
    try:
        rb.wait_for_port(reg.port, reg.proc, timeout=60)
    except RuntimeError as e:
        raise BenchError(f"the registry did not start: {e}\n{_tail(reg.log)}") from None
    return reg


def start_node(
    work: rb.Workdir,
    reg: rb.Registry,
    tok: str,
    name: str,
    profile: Path | None,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """`mcpz node run`, as `mesh.start_node` (capacity 4), optionally under cProfile; `extra` are
    more options (bench_observability's `--metrics-port`)."""
    data = work.path / "nodes" / name
    data.mkdir(parents=True, exist_ok=True)
    args = ("node", "run", "--registry", reg.url, "--token", tok, "--name", name, "--data", str(data),
            "--capacity", "4", "--stop-grace", "3", "--allow-unsigned", *extra)  # fmt: skip
    with (work.path / "nodes" / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            _command(args, profile), env=work.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
    work.children.append(proc)
    return proc


def stop_profiled(reg: rb.Registry) -> None:
    """SIGINT, not SIGTERM: uvicorn re-raises the signal it caught once it has shut down, and only
    SIGINT (KeyboardInterrupt) lets cProfile write its file on the way out."""
    if reg.proc is not None and reg.proc.poll() is None:
        reg.proc.send_signal(signal.SIGINT)
        try:
            reg.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def _command(args: tuple[str, ...], profile: Path | None) -> list[str]:
    if profile is None:
        return rb.mcpz_cmd(*args)
    return [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "mcpz", *args]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def post_json(reg: rb.Registry, tok: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        reg.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise BenchError(f"POST {path}: HTTP {e.code}: {e.read()[:500]!r}") from None


def agents_of(pid: int) -> list[int]:
    """The node's child processes (its agents)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            pass
    return sorted(set(found))


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


# --- the phases ---------------------------------------------------------------------------------


Call = Callable[[int, Tally], Awaitable[Any]]
"""One client's call: (argument, tally) -> the answer, checked into the tally."""


async def sequential(call: Call, warmup: int, calls: int) -> tuple[list[float], Tally]:
    """`warmup` then `calls` sequential calls; per-call wall time of the latter."""
    tally = Tally()
    for i in range(warmup):
        await call(i, tally)
    times = []
    clock = time.perf_counter
    for i in range(calls):
        started = clock()
        await call(i, tally)
        times.append(clock() - started)
    return times, tally


async def closed_loop(calls: Sequence[Call], per_client: int, warmup: int = 5) -> tuple[float, Tally]:
    """Each callable is one client: `warmup` calls each, then all start together and make
    `per_client` sequential calls; the wall time from the start to the last answer."""
    tally = Tally()

    async def warm(call: Call) -> None:
        for i in range(warmup):
            await call(i, Tally())

    await asyncio.gather(*(warm(call) for call in calls))
    go = asyncio.Event()

    async def client(call: Call) -> None:
        await go.wait()
        for i in range(per_client):
            await call(i, tally)

    tasks = [asyncio.create_task(client(call)) for call in calls]
    await asyncio.sleep(0)
    started = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - started, tally


async def open_sessions(
    port: int, path: str, token: str, count: int, timeout: float = 60
) -> tuple[list[GatewaySession], int]:
    """`count` sessions opened at once; and how many 503s their initialize got (retried)."""
    deadline = time.monotonic() + timeout
    sessions = [GatewaySession(port, path, token) for _ in range(count)]
    try:
        busy = await asyncio.wait_for(asyncio.gather(*(s.open(deadline) for s in sessions)), timeout + 10)
    except BaseException:
        for s in sessions:
            s.close()
        raise
    return sessions, sum(busy)


def replica_split(before: dict[int, float], after: dict[int, float]) -> list[float]:
    return [round(after[p] - before[p], 2) for p in sorted(before) if p in after]


async def overload_round(
    sessions: list[GatewaySession], seconds: float, registry_pid: int, node_pid: int
) -> dict[str, Any]:
    """Every session calls as fast as it can for `seconds`; statuses counted, RSS sampled."""
    statuses: Counter[int] = Counter()
    tally = Tally()
    samples: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds

    async def blast(session: GatewaySession) -> None:
        a = 0
        while loop.time() < stop:
            a += 1
            statuses[await session.call_add(a, tally)] += 1

    async def sample() -> None:
        while True:
            samples.append((rss_mb(registry_pid), rss_mb(node_pid)))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(blast(s) for s in sessions)), seconds + 120)
    finally:
        sampler.cancel()
    took = time.perf_counter() - started
    await asyncio.sleep(1.0)
    return {
        "seconds": round(took, 2),
        "ok": statuses[200],
        "busy_503": statuses[503],
        "other": sum(n for s, n in statuses.items() if s not in (200, 503)),
        "wrong_answers": tally.problems["wrong answer"],
        "ok_per_s": round(statuses[200] / took, 1),
        "answers_per_s": round(sum(statuses.values()) / took, 1),
        "registry_rss_mb_peak": round(max(s[0] for s in samples), 1),
        "registry_rss_mb_after": round(rss_mb(registry_pid), 1),
        "node_rss_mb_peak": round(max(s[1] for s in samples), 1),
        "node_rss_mb_after": round(rss_mb(node_pid), 1),
        "examples": tally.examples,
    }


async def overload(
    port: int,
    path: str,
    token: str,
    clients: int,
    seconds: float,
    rounds: int,
    registry_pid: int,
    node_pid: int,
) -> dict[str, Any]:
    """`clients` sessions calling as fast as they can; statuses counted, RSS sampled."""
    figures: dict[str, Any] = {
        "registry_rss_mb_before": round(rss_mb(registry_pid), 1),
        "node_rss_mb_before": round(rss_mb(node_pid), 1),
    }
    started = time.monotonic()
    sessions, figures["open_503s"] = await open_sessions(port, path, token, clients)
    figures["open_seconds"] = round(time.monotonic() - started, 2)
    figures["registry_rss_mb_sessions_open"] = round(rss_mb(registry_pid), 1)
    results = []
    try:
        for _ in range(rounds):
            results.append(await overload_round(sessions, seconds, registry_pid, node_pid))
    finally:
        for s in sessions:
            s.close()
    await asyncio.sleep(1.0)
    figures["registry_rss_mb_end"] = round(rss_mb(registry_pid), 1)
    figures["node_rss_mb_end"] = round(rss_mb(node_pid), 1)
    figures["rounds"] = results
    return figures


# --- the run ------------------------------------------------------------------------------------


def lat(times: list[float]) -> dict[str, float]:
    return {
        "p50": rb.percentile(times, 50),
        "p99": rb.percentile(times, 99),
        "mean": sum(times) / len(times),
    }


def ms3(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def measure_agent(
    args: argparse.Namespace,
    work: rb.Workdir,
    name: str,
    folder: Path,
    reg: rb.Registry,
    node: subprocess.Popen[bytes],
    caller: str,
) -> dict[str, Any]:
    """Latency and throughput of one agent: direct over stdio, then through the gateway."""
    path = f"/mcp/{name}"
    tag = name.split("/")[1]
    direct = [
        await StdioAgent.start(folder, work.env, work.path / f"direct-{tag}-{i}.log") for i in range(REPLICAS)
    ]
    try:
        # Latency: one client, sequential calls, each after its own warm-up.
        before = (own_cpu(), cpu_seconds(direct[0].proc.pid))
        times_d, tally_d = await sequential(direct[0].call_add, args.warmup, args.calls)
        n = args.warmup + args.calls
        cpu_d = {
            "client": (own_cpu() - before[0]) / n * 1000,
            "agent": (cpu_seconds(direct[0].proc.pid) - before[1]) / n * 1000,
        }
        gw = GatewaySession(reg.port, path, caller)
        await gw.open(time.monotonic() + 30)
        try:
            procs = {"registry": reg.pid, "node": node.pid}
            before_g = {k: cpu_seconds(p) for k, p in procs.items()}
            client_before = own_cpu()
            times_g, tally_g = await sequential(gw.call_add, args.warmup, args.calls)
            cpu_g = {k: (cpu_seconds(p) - before_g[k]) / n * 1000 for k, p in procs.items()}
            cpu_g["client"] = (own_cpu() - client_before) / n * 1000
        finally:
            gw.close()
        latency = {
            "direct": lat(times_d),
            "gateway": lat(times_g),
            "direct_failed": tally_d.failed,
            "gateway_failed": tally_g.failed,
            "examples": tally_d.examples + tally_g.examples,
            "gateway_reconnects": gw.reconnects,
            "direct_cpu_ms_per_call": {k: round(v, 3) for k, v in cpu_d.items()},
            "gateway_cpu_ms_per_call": {k: round(v, 3) for k, v in cpu_g.items()},
        }

        # Throughput: C clients x N calls; direct on our 2 processes, then the gateway.
        calls_d = [direct[k % REPLICAS].call_add for k in range(args.clients)]
        client_before = own_cpu()
        direct_before = [cpu_seconds(d.proc.pid) for d in direct]
        took_d, tally_td = await closed_loop(calls_d, args.per_client)
        direct_cpu = {
            "client": round(own_cpu() - client_before, 2),
            "agents": round(sum(cpu_seconds(d.proc.pid) for d in direct) - sum(direct_before), 2),
        }
        sessions, open_busy = await open_sessions(reg.port, path, caller, args.clients)
        try:
            agent_pids = agents_of(node.pid)
            pids = {"registry": reg.pid, "node": node.pid}
            cpu_before = {k: cpu_seconds(p) for k, p in pids.items()}
            agents_before = {p: cpu_seconds(p) for p in agent_pids}
            client_before = own_cpu()
            took_g, tally_tg = await closed_loop([s.call_add for s in sessions], args.per_client)
            cpu = {k: round(cpu_seconds(p) - cpu_before[k], 2) for k, p in pids.items()}
            cpu["client"] = round(own_cpu() - client_before, 2)
            # The node runs both deployments' agents: the busy ones are this deployment's.
            split = sorted(replica_split(agents_before, {p: cpu_seconds(p) for p in agent_pids}))[-REPLICAS:]
            cpu["agents"] = round(sum(split), 2)
        finally:
            for s in sessions:
                s.close()
    finally:
        for agent in direct:
            await agent.close()
    total = args.clients * args.per_client
    throughput = {
        "clients": args.clients,
        "per_client": args.per_client,
        "direct_calls_per_s": total / took_d,
        "gateway_calls_per_s": total / took_g,
        "direct_seconds": took_d,
        "gateway_seconds": took_g,
        "direct_failed": tally_td.failed,
        "gateway_failed": tally_tg.failed,
        "problems": dict(tally_td.problems + tally_tg.problems),
        "examples": tally_td.examples + tally_tg.examples,
        "direct_cpu_seconds": direct_cpu,
        "gateway_cpu_seconds": cpu,
        "gateway_agent_cpu_split": split,
        "open_503s": open_busy,
    }
    return {"latency": latency, "throughput": throughput}


async def measure(
    args: argparse.Namespace,
    work: rb.Workdir,
    folders: dict[str, Path],
    reg: rb.Registry,
    node: subprocess.Popen[bytes],
    caller: str,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, folder in folders.items():
        figures[name] = await measure_agent(args, work, name, folder, reg, node, caller)
    if not args.profile and args.overload_rounds > 0:
        figures["overload"] = await overload(
            reg.port,
            f"/mcp/{NAME}",
            caller,
            args.overload_clients,
            args.overload_seconds,
            args.overload_rounds,
            reg.pid,
            node.pid,
        )
    return figures


def wait_running(
    reg: rb.Registry,
    tok: str,
    node: subprocess.Popen[bytes],
    timeout: float = 120,
    names: Sequence[str] = (NAME, RAW_NAME),
) -> None:
    def ready() -> bool:
        if node.poll() is not None:
            raise BenchError(f"the node exited with {node.returncode}")
        for name in names:
            view = mesh.api(reg, tok, f"/v1/deployments/{name}")
            live = [i for i in view["instances"] if not i["stopping"]]
            if view["state"] != "ready" or len(live) != REPLICAS:
                return False
            if not all(i["status"] == "running" for i in live):
                return False
        return len(agents_of(node.pid)) >= len(names) * REPLICAS

    try:
        # Polled every 0.25 s, not mesh.wait's 20 ms: the API calls would fill a profile.
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g}s waiting for {REPLICAS} replicas each")
            time.sleep(0.25)
    except RuntimeError as e:
        views = [mesh.api(reg, tok, f"/v1/deployments/{name}") for name in names]
        raise BenchError(f"{e}: {json.dumps(views)[:2000]}") from None


def publish(
    work: rb.Workdir, reg: rb.Registry, tok: str, names: Sequence[str] = (NAME, RAW_NAME)
) -> dict[str, Path]:
    """The python template as NAME, and the same with a minimal server.py (no SDK) as RAW_NAME."""
    folders = {name: work.path / name.split("/")[1] for name in names}
    for name, folder in folders.items():
        mesh.agent(folder, name, VERSION, work.env)
        if name == RAW_NAME:
            rb.commit_change(folder, work.env, "server.py", RAW_SERVER.encode(), "a minimal server")
        mesh.release(folder, reg, name, VERSION, tok)
    return folders


def profile_summary(path: Path, title: str, lines: int = 15) -> list[str]:
    if not path.exists():
        return [f"{title}: no profile written ({path})"]
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    root = str(rb.ROOT)
    rows = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        rows.append((cumtime, tottime, calls, filename, line, func))
    total = max((r[0] for r in rows), default=0.0)
    out = [
        f"{title}: top {lines} by cumulative time, project code called >= 100 times "
        f"(total profiled {total:.2f} s)"
    ]
    out.append(f"  {'cum s':>8} {'own s':>8} {'calls':>9}  function")
    # The hot path: project functions run per request or per frame, not start-up and main().
    ours = [
        r
        for r in rows
        if r[3].startswith(root) and ("/mcpz/" in r[3] or "/registry_server/" in r[3]) and r[2] >= 100
    ]
    for cum, own, calls, filename, line, func in sorted(ours, reverse=True)[:lines]:
        where = os.path.relpath(filename, root)
        out.append(f"  {cum:8.3f} {own:8.3f} {calls:9d}  {where}:{line}({func})")
    out.append(f"{title}: own time by package (start-up included: imports, py_ecc's tables)")
    by_package: Counter[str] = Counter()
    for _cum, own, _calls, filename, _line, func in rows:
        if "epoll" not in func:
            by_package[_package(filename, func, root)] += own
    out.append("  " + ", ".join(f"{name} {own:.2f}" for name, own in by_package.most_common(lines)))
    out.append(f"{title}: top {lines} by own time, all code (epoll's wait left out)")
    out.append(f"  {'own s':>8} {'cum s':>8} {'calls':>9}  function")
    busy = [r for r in rows if "epoll" not in r[5]]  # the idle wait is not work
    for cum, own, calls, filename, line, func in sorted(busy, key=lambda r: r[1], reverse=True)[:lines]:
        where = os.path.relpath(filename, root) if filename.startswith(root) else filename
        where = where.split("site-packages/")[-1]
        out.append(f"  {own:8.3f} {cum:8.3f} {calls:9d}  {where}:{line}({func})")
    return out


def _package(filename: str, func: str, root: str) -> str:
    if filename == "~":
        return func.strip("<>").split("'")[1] if "'" in func else func.strip("<>")
    if "site-packages/" in filename:
        return filename.split("site-packages/")[1].split("/")[0]
    if filename.startswith(root):
        return "/".join(os.path.relpath(filename, root).split("/")[:2])
    if "/lib/python3" in filename:
        return "stdlib " + filename.split("/lib/python3")[1].split("/")[1].removesuffix(".py")
    return filename


def log_errors(path: Path) -> list[str]:
    """Lines of a log that say error, traceback or an unretrieved exception (registry JSON logs
    and asyncio's own messages on stderr; node logs)."""
    found = []
    words = ('"level": "error"', "traceback", "never retrieved", " error ")
    try:
        for line in path.read_text(errors="replace").splitlines():
            low = line.lower()
            if any(word in low for word in words):
                found.append(line[:300])
    except OSError:
        pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls for the latency figures")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients for throughput")
    parser.add_argument("--per-client", type=int, default=200, help="calls per client for throughput")
    parser.add_argument("--max-in-flight", type=int, default=32, help="the registry's max_calls_in_flight")
    parser.add_argument("--overload-clients", type=int, default=200)
    parser.add_argument("--overload-seconds", type=float, default=5.0)
    parser.add_argument("--overload-rounds", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer calls, shorter overload")
    parser.add_argument(
        "--profile", action="store_true", help="registry and node under cProfile; no overload"
    )
    parser.add_argument("--keep", action="store_true")
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.quick:
        args.calls, args.warmup, args.clients, args.per_client = 200, 20, 10, 50
        args.overload_clients, args.overload_seconds = 100, 2.0
    if args.smoke:
        args.calls, args.warmup, args.clients, args.per_client = 20, 5, 4, 5
        args.max_in_flight, args.overload_clients, args.overload_seconds, args.overload_rounds = 4, 16, 0.5, 4
    if args.clients >= args.max_in_flight:
        print(
            f"note: {args.clients} clients >= max_calls_in_flight {args.max_in_flight}: "
            "the throughput run may see 503s"
        )

    info = rb.print_machine(
        f"MCP gateway: tools/call through registry + mesh + node, beside the agent over stdio "
        f"({REPLICAS} replicas on one node)"
    )
    load_before = g.load()
    with rb.Workdir("gateway", keep=args.keep) as work:
        reg_prof = work.path / "registry.prof" if args.profile else None
        node_prof = work.path / "node.prof" if args.profile else None
        limits = {
            "MCPZ_REGISTRY_MAX_CALLS_IN_FLIGHT": str(args.max_in_flight),
            # Every client is one session of one account: the per-account session cap (64 by
            # default) would end the overload round's sessions, which is not what it measures.
            "MCPZ_REGISTRY_MAX_SESSIONS_PER_ACCOUNT": str(4 * max(args.clients, args.overload_clients)),
        }
        reg = start_registry(work, limits, reg_prof)
        node: subprocess.Popen[bytes] | None = None
        try:
            tok = mesh.token(reg, "bench", "read,publish,deploy,node")
            caller = mesh.token(reg, "caller", "read,call")
            folders = publish(work, reg, tok)
            node = start_node(work, reg, tok, "node-1", node_prof)
            mesh.connected(reg, tok, 1)
            for name in folders:
                post_json(
                    reg, tok, "/v1/deployments", {"agent": name, "version": VERSION, "replicas": REPLICAS}
                )
            wait_running(reg, tok, node)
            figures = asyncio.run(measure(args, work, folders, reg, node, caller))
        except BaseException:
            print(f"--- registry log (tail):\n{_tail(work.path / 'registry.log')}", file=sys.stderr)
            print(f"--- node log (tail):\n{_tail(work.path / 'nodes' / 'node-1.log')}", file=sys.stderr)
            raise
        finally:
            if node is not None:
                mesh.stop_nodes([node])
            if reg_prof is not None:
                stop_profiled(reg)
            reg.stop()
        errors = log_errors(work.path / "registry.log") + log_errors(work.path / "nodes" / "node-1.log")
        profile_lines: list[str] = []
        if reg_prof is not None and node_prof is not None:
            profile_lines = profile_summary(reg_prof, "registry") + profile_summary(node_prof, "node")
        if args.keep:
            print(f"kept: {work.path}")

    report(args, info, load_before, figures, errors, profile_lines)


def report(
    args: argparse.Namespace,
    info: dict[str, object],
    load_before: list[float],
    figures: dict[str, Any],
    errors: list[str],
    profile_lines: list[str],
) -> None:
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    goals: list[g.Goal] = []
    summary: dict[str, Any] = {}
    for name, label in ((NAME, "template agent (mcp SDK)"), (RAW_NAME, "minimal agent (no SDK)")):
        fig = figures[name]
        lat_d, lat_g = fig["latency"]["direct"], fig["latency"]["gateway"]
        tp = fig["throughput"]
        added = {k: lat_g[k] - lat_d[k] for k in ("p50", "p99", "mean")}
        ratio = tp["gateway_calls_per_s"] / tp["direct_calls_per_s"]
        rows += [
            (f"{label}: latency p50", ms3(lat_g["p50"]), ms3(lat_d["p50"]), f"+{ms3(added['p50'])}",
             f"added < {GOAL_ADDED_P50 * 1000:g} ms"),
            ("  latency p99", ms3(lat_g["p99"]), ms3(lat_d["p99"]), f"+{ms3(added['p99'])}", ""),
            ("  latency mean", ms3(lat_g["mean"]), ms3(lat_d["mean"]), f"+{ms3(added['mean'])}", ""),
            (f"  throughput ({tp['clients']} clients x {tp['per_client']})",
             f"{tp['gateway_calls_per_s']:.0f} calls/s", f"{tp['direct_calls_per_s']:.0f} calls/s",
             f"{ratio * 100:.0f}%", f">= {GOAL_RATIO * 100:.0f}%, >= {GOAL_CALLS_PER_S:g}/s"),
        ]  # fmt: skip
        lc, ld = fig["latency"]["gateway_cpu_ms_per_call"], fig["latency"]["direct_cpu_ms_per_call"]
        notes.append(
            f"{label}, CPU ms per sequential call: gateway: registry {lc['registry']:.2f}, "
            f"node {lc['node']:.2f}, client {lc['client']:.2f}; direct: agent {ld['agent']:.2f}, "
            f"client {ld['client']:.2f}"
        )
        cpu, dcpu = tp["gateway_cpu_seconds"], tp["direct_cpu_seconds"]
        notes.append(
            f"{label}, CPU seconds: gateway run ({tp['gateway_seconds']:.2f} s wall): "
            f"registry {cpu['registry']}, node {cpu['node']}, agents {cpu['agents']} "
            f"(per replica {tp['gateway_agent_cpu_split']}), client {cpu['client']}; "
            f"direct run ({tp['direct_seconds']:.2f} s wall): agents {dcpu['agents']}, "
            f"client {dcpu['client']}"
        )
        failed = (
            fig["latency"]["direct_failed"] + fig["latency"]["gateway_failed"]
            + tp["direct_failed"] + tp["gateway_failed"]
        )  # fmt: skip
        notes.append(f"{label}, failed answers: {failed}")
        notes += [f"  {example}" for example in fig["latency"]["examples"] + tp["examples"]]
        key = "template" if name == NAME else "minimal"
        texts = (
            f"{key} agent: added latency p50 < {GOAL_ADDED_P50 * 1000:g} ms",
            f"{key} agent: gateway >= {GOAL_RATIO * 100:.0f}% of direct calls/s",
            f"{key} agent: gateway >= {GOAL_CALLS_PER_S:g} calls/s",
        )
        if failed:  # a wrong or failed answer is no figure to judge
            goals += [g.failed(text, f"{failed} wrong or failed answer(s)") for text in texts]
        else:
            goals += [
                g.below(texts[0], added["p50"], GOAL_ADDED_P50, f"+{ms3(added['p50'])}"),
                g.holds(texts[1], ratio >= GOAL_RATIO, f"{ratio * 100:.0f}%"),
                g.holds(
                    texts[2],
                    tp["gateway_calls_per_s"] >= GOAL_CALLS_PER_S,
                    f"{tp['gateway_calls_per_s']:.0f} calls/s",
                ),
            ]
        summary[key] = {
            "latency_direct_ms": {k: round(v * 1000, 4) for k, v in lat_d.items()},
            "latency_gateway_ms": {k: round(v * 1000, 4) for k, v in lat_g.items()},
            "latency_added_ms": {k: round(v * 1000, 4) for k, v in added.items()},
            "throughput": {k: round(v, 3) if isinstance(v, float) else v for k, v in tp.items()},
            "throughput_ratio": round(ratio, 3),
        }
    print()
    print(rb.table(("figure", "gateway", "direct stdio", "added / ratio", "goal"), rows))
    print()
    print("\n".join(notes))
    over = figures.get("overload")
    if over is not None:
        print(
            f"\noverload: {args.overload_clients} sessions (opened in {over['open_seconds']} s), "
            f"max_calls_in_flight {args.max_in_flight}, {args.overload_seconds:g} s per round; "
            "RSS in MB (registry / node)"
        )
        orows = []
        for n, r in enumerate(over["rounds"], 1):
            orows.append(
                (
                    f"round {n}",
                    r["ok"],
                    r["busy_503"],
                    r["other"],
                    r["wrong_answers"],
                    f"{r['ok_per_s']:.0f}",
                    f"{r['answers_per_s']:.0f}",
                    f"{r['registry_rss_mb_peak']:.1f} / {r['node_rss_mb_peak']:.1f}",
                    f"{r['registry_rss_mb_after']:.1f} / {r['node_rss_mb_after']:.1f}",
                )
            )
        print(
            rb.table(
                ("round", "200", "503", "other", "wrong", "200/s", "answers/s", "RSS peak", "RSS after"),
                orows,
            )
        )
        print(
            f"RSS before: registry {over['registry_rss_mb_before']} MB, "
            f"node {over['node_rss_mb_before']} MB; with {args.overload_clients} sessions open: "
            f"registry {over['registry_rss_mb_sessions_open']} MB; "
            f"at the end (connections closed): registry {over['registry_rss_mb_end']} MB, "
            f"node {over['node_rss_mb_end']} MB"
        )
        for r in over["rounds"]:
            for example in r["examples"]:
                print(f"  {example}")
        goals += overload_goals(over)
    if errors:
        print(f"\nerror lines in the registry and node logs: {len(errors)} (first 5)")
        for line in errors[:5]:
            print(f"  {line}")
    if profile_lines:
        print("\nprofile (cProfile, main thread only; figures above are slowed by it):")
        print("\n".join(profile_lines))
    if over is None:
        why = "--profile" if args.profile else "--overload-rounds 0"
        goals += [g.unmeasured(text, f"no overload run ({why})") for text in OVERLOAD_GOALS]
    g.finish(
        "gateway",
        info,
        load_before,
        goals,
        {
            "calls": args.calls,
            "warmup": args.warmup,
            "replicas": REPLICAS,
            "nodes": 1,
            "max_calls_in_flight": args.max_in_flight,
            **summary,
            "overload": over,
            "log_errors": len(errors),
            "profiled": bool(args.profile),
        },
        smoke=args.smoke,
    )


OVERLOAD_GOALS = (
    "overload answered with 503s, no other status, no wrong answer",
    f"memory flat under overload: RSS slope < {GOAL_RSS_SLOPE_MB:g} MB/round (registry and node)",
)


def overload_goals(over: dict[str, Any]) -> list[g.Goal]:
    """The overload goals, judged from every round; the slope from round 2 on (round 1 warms up)."""
    rounds = over["rounds"]
    sheds, flat = OVERLOAD_GOALS
    wrong = sum(r["wrong_answers"] for r in rounds)
    goals = [
        g.failed(sheds, f"{wrong} wrong answer(s)")
        if wrong
        else g.holds(
            sheds,
            all(r["busy_503"] > 0 and r["other"] == 0 for r in rounds),
            f"503s per round {[r['busy_503'] for r in rounds]}, other {[r['other'] for r in rounds]}",
        )
    ]
    slopes = {proc: g.slope([r[f"{proc}_rss_mb_after"] for r in rounds[1:]]) for proc in ("registry", "node")}
    over["rss_slope_mb_per_round"] = slopes
    if any(v is None for v in slopes.values()):
        goals.append(g.unmeasured(flat, f"{len(rounds)} round(s): a slope needs --overload-rounds >= 4"))
    else:
        worst = max(v for v in slopes.values() if v is not None)
        detail = ", ".join(f"{proc} {v:+.2f} MB/round" for proc, v in slopes.items() if v is not None)
        goals.append(g.below(flat, worst, GOAL_RSS_SLOPE_MB, detail))
    return goals


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"bench_gateway: {e}")
