"""Time the resolver core on seeded synthetic ecosystems; uv and pip on the same graphs beside it.

    python bench/bench_resolve.py                  # the issue's five graphs, every column
    python bench/bench_resolve.py --seeds 5        # five seeds of each graph (worst and median)
    python bench/bench_resolve.py --no-peers       # only the in-process resolvers
    python bench/bench_resolve.py --timeout 30     # per run; a slower run is reported as ">30s"
    python bench/bench_resolve.py --smoke          # smallest graph, peers only if installed

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`;
uv, the peer, is installed into that environment with pip when it is missing)

Columns, all on the same graph (bench/ecosystem.py), every answer checked against every constraint:
- mcpz core: `mcpz.resolve.resolve` as `mcpz lock` calls it (resolvelib, then the complete
  search), timed inside a process that already holds the graph in memory: the resolver core
  alone, no start-up, no index, no network;
- resolvelib only / propagating only: one backend alone;
- resolvelib pip's order / fewest candidates: plain resolvelib providers, the issue's baselines;
- uv / pip: `uv pip compile` and `pip install --dry-run --report` against the same graph as a PEP 503
  simple index of tiny wheels with PEP 658 metadata, served on loopback by a threaded keep-alive
  server with TCP_NODELAY; cold (no cache) and, for uv, warm (its cache filled by the cold run).
  These are whole runs: start-up, index requests and metadata parsing included.

The two kinds are not measured the same way, so this script gives NO verdict of mcpz against uv or
pip: `bench_lock.py` compares them end to end (`mcpz lock` as a subprocess against a registry) and
judges the issue's goals there. The goal judged here: every answer of mcpz's own resolvers satisfies
every constraint (a wrong answer fails it, whatever its time); a peer's answer that does not (pip
reporting ResolutionImpossible for a graph that has a solution, say) is printed as that peer's.

Each resolver run happens in a child process with a timeout, so one that runs for minutes is
reported as ">Ns" and not waited on.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _goals as g  # noqa: E402
import _registry as rb  # noqa: E402
from ecosystem import Ecosystem, agent_of, dist_name, generate, violations, write_simple_index  # noqa: E402

GRAPHS: list[tuple[int, int, float, int]] = [
    (100, 10, 0.3, 1),
    (100, 10, 0.6, 1),
    (100, 10, 0.9, 1),
    (300, 20, 0.5, 1),
    (1000, 10, 0.1, 30),
]
ENGINES = ["mcpz", "resolvelib-only", "propagating-only", "pip-order", "fewest"]
SMOKE_GRAPHS = GRAPHS[:1]
PEERS = ("uv-cold", "uv-warm", "pip-cold")
HEADINGS = {
    "mcpz": "mcpz core (in process)",
    "resolvelib-only": "resolvelib only",
    "propagating-only": "propagating only",
    "pip-order": "resolvelib, pip's order",
    "fewest": "resolvelib, fewest cand.",
    "uv-cold": "uv cold",
    "uv-warm": "uv warm",
    "pip-cold": "pip",
}


# -- in-process engines (run in a child) --------------------------------------------------------


def _plain_providers() -> dict[str, Any]:
    from mcpz.resolve.provider import Provider

    class PipOrder(Provider):
        """pip's preference: direct, pinned, upper-bounded, then by name; backtrack causes first."""

        def narrow_requirement_selection(
            self, identifiers: Any, resolutions: Any, candidates: Any, information: Any, backtrack_causes: Any
        ) -> Any:
            causes = self._cause_names(backtrack_causes)
            pool = list(identifiers)
            return [i for i in pool if i in causes] or pool

        def get_preference(
            self, identifier: Any, resolutions: Any, candidates: Any, information: Any, backtrack_causes: Any
        ) -> Any:
            infos = list(information[identifier])
            direct = any(i.parent is None for i in infos)
            pinned = any(i.requirement.pinned for i in infos)
            upper = any(
                s.operator in ("<", "<=", "==", "~=") for i in infos for s in i.requirement.spec.specifier
            )
            return (not direct, not pinned, not upper, identifier)

    class Fewest(Provider):
        """Only the fewest remaining candidates, no narrowing."""

        def narrow_requirement_selection(
            self, identifiers: Any, resolutions: Any, candidates: Any, information: Any, backtrack_causes: Any
        ) -> Any:
            return identifiers

        def get_preference(
            self, identifier: Any, resolutions: Any, candidates: Any, information: Any, backtrack_causes: Any
        ) -> Any:
            return (sum(1 for _ in candidates[identifier]), identifier)

    return {"pip-order": PipOrder, "fewest": Fewest}


def run_engine(graph: tuple[int, int, float, int], seed: int, engine: str) -> dict[str, Any]:
    import resolvelib

    from mcpz.resolve import PropagatingBackend, ResolvelibBackend, resolve
    from mcpz.resolve.provider import Problem

    agents, versions, trap, roots = graph
    eco = generate(agents, versions, trap, roots=roots, seed=seed)
    start = time.perf_counter()
    rounds = 0
    if engine in ("mcpz", "resolvelib-only", "propagating-only"):
        backend = {
            "mcpz": None,
            "resolvelib-only": ResolvelibBackend(None),
            "propagating-only": PropagatingBackend(),
        }[engine]
        resolution = resolve(eco.roots, eco.index, backend=backend, max_rounds=10**7)
        chosen = resolution.versions()
        rounds = resolution.rounds
    else:
        provider_class = _plain_providers()[engine]
        problem = Problem(eco.index, locked={})
        requirements = problem.root_requirements(eco.roots)
        result = resolvelib.Resolver(provider_class(problem), resolvelib.BaseReporter()).resolve(
            requirements, max_rounds=10**7
        )
        chosen = {name: str(c.version) for name, c in result.mapping.items()}
    seconds = time.perf_counter() - start
    problems = violations(eco.index, eco.roots, chosen)
    return {"seconds": seconds, "ok": not problems, "agents": len(chosen), "rounds": rounds}


def timed_child(graph: tuple[int, int, float, int], seed: int, engine: str, timeout: float) -> g.Run:
    argv = [sys.executable, __file__, "--child", json.dumps([list(graph), seed, engine])]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return g.Run(None, note=f">{timeout:g}s")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return g.Run(None, ok=False, note=f"error: {last[:60]}")
    result = json.loads(done.stdout)
    return g.Run(result["seconds"], ok=result["ok"])


# -- uv and pip against a simple index on loopback --------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "max-age=600")
        super().end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().finish_request(request, client_address)


class SimpleIndex:
    """A threaded keep-alive static server of `folder` on 127.0.0.1, in a thread of this process."""

    def __init__(self, folder: Path) -> None:
        handler = lambda *a, **kw: _Handler(*a, directory=str(folder), **kw)  # noqa: E731
        self.server = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SimpleIndex:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _peer(argv: Sequence[str], timeout: float, env: Mapping[str, str]) -> tuple[g.Run, str]:
    """One whole peer run: (its time, or why there is none; its stdout). Right until checked."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
        )
    except subprocess.TimeoutExpired:
        return g.Run(None, note=f">{timeout:g}s"), ""
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return g.Run(None, ok=False, note=f"failed: {last[:50]}"), ""
    return g.Run(seconds), done.stdout


def _checked(run: g.Run, eco: Ecosystem, chosen: Mapping[str, str]) -> g.Run:
    return g.Run(run.seconds, ok=not violations(eco.index, eco.roots, chosen), note=run.note)


def find_peers(args: argparse.Namespace, bench: str) -> tuple[str | None, bool]:
    """(uv's path or None, whether pip runs): uv installed into this environment when missing,
    unless peers are off or optional (a smoke run)."""
    if args.no_peers:
        return None, False
    uv = g.peer("uv", "uv", optional=args.smoke, bench=bench)
    pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if not pip and not args.smoke:
        raise g.PeerMissing(
            f"{bench}: pip, a peer, is not in this environment: `python -m ensurepip`, or pass --no-peers"
        )
    return uv, pip


def run_peers(
    eco: Ecosystem, timeout: float, work: Path, uv: str | None, pip: bool = True
) -> dict[str, g.Run]:
    out: dict[str, g.Run] = {}
    write_simple_index(eco, work / "index")
    requirements = work / "requirements.in"
    requirements.write_text("".join(f"{dist_name(name)}\n" for name in sorted(eco.roots)))
    with SimpleIndex(work / "index") as index:
        if uv is not None:
            cache = work / "uv-cache"
            argv = [
                uv,
                "pip",
                "compile",
                str(requirements),
                "--index-url",
                index.url,
                "--cache-dir",
                str(cache),
            ]
            argv += ["--python-version", "3.11", "--no-header", "--no-annotate", "--quiet"]
            for label in ("uv-cold", "uv-warm"):
                if label == "uv-cold":
                    shutil.rmtree(cache, ignore_errors=True)
                run, stdout = _peer(argv, timeout, {"UV_NO_CONFIG": "1"})
                out[label] = _checked(run, eco, _parse_pins(stdout)) if run.seconds is not None else run
        else:
            out["uv-cold"] = out["uv-warm"] = g.Run(None, note="not installed")
        if not pip:
            out["pip-cold"] = g.Run(None, note="not installed")
            return out
        report = work / "pip-report.json"
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        argv += ["--report", str(report), "--index-url", index.url, "--no-cache-dir", "-r", str(requirements)]
        run, _ = _peer(argv, timeout, {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
        if run.seconds is not None and report.exists():
            data = json.loads(report.read_text())
            chosen = {agent_of(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}
            run = _checked(run, eco, chosen)
        out["pip-cold"] = run
    return out


def _parse_pins(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[agent_of(name.strip())] = version.strip()
    return pins


# -- the table ------------------------------------------------------------------------------------


def _summary(runs: list[g.Run]) -> str:
    if len(runs) == 1:
        return runs[0].cell()
    times = [r.good for r in runs if r.good is not None]
    if len(times) < len(runs):
        bad = next(r for r in runs if r.good is None)
        return f"{len(runs) - len(times)}/{len(runs)} {bad.cell()}"
    return f"{statistics.median(times):.2f}s (max {max(times):.2f}s)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    g.add_smoke(parser)
    args = parser.parse_args(argv)
    if args.child:
        graph, seed, engine = json.loads(args.child)
        print(json.dumps(run_engine(tuple(graph), seed, engine)))
        return 0
    graphs = SMOKE_GRAPHS if args.smoke else GRAPHS
    if args.smoke:
        args.seeds = 1
    info = rb.print_machine("resolve: the resolver core in process, uv and pip whole runs beside it")
    load_before = g.load()
    uv, pip = find_peers(args, "bench_resolve")
    engines = [e for e in args.engines.split(",") if e]
    columns = engines + ([] if args.no_peers else ["uv-cold", "uv-warm", "pip-cold"])
    print(
        "in-process columns: the resolver core alone (graph in memory, no start-up, no index); "
        "uv / pip: whole runs against a simple index: not comparable, so no verdict between them "
        "(bench_lock.py compares end to end)\n"
    )
    print("| graph | " + " | ".join(HEADINGS[c] for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    rows: dict[str, dict[str, list[dict[str, object]]]] = {}
    wrong: list[str] = []
    peer_wrong: list[str] = []
    for graph in graphs:
        cells: dict[str, list[g.Run]] = {c: [] for c in columns}
        label = ""
        for seed in range(args.seeds):
            eco = generate(graph[0], graph[1], graph[2], roots=graph[3], seed=seed)
            label = eco.label
            for engine in engines:
                cells[engine].append(timed_child(graph, seed, engine, args.timeout))
            if not args.no_peers:
                with tempfile.TemporaryDirectory(prefix="mcpz-bench-") as tmp:
                    for column, run in run_peers(eco, args.timeout, Path(tmp), uv, pip).items():
                        cells[column].append(run)
        print(f"| {label} | " + " | ".join(_summary(cells[c]) for c in columns) + " |", flush=True)
        rows[label] = {c: [r.as_json() for r in runs] for c, runs in cells.items()}
        for column, runs in cells.items():
            for run in runs:
                if not run.ok:
                    # A peer's wrong answer is the peer's figure, not a failure of ours.
                    (peer_wrong if column in PEERS else wrong).append(
                        f"{HEADINGS[column]} on {label}: {run.cell()}"
                    )
    print()
    for line in peer_wrong:
        print(f"peer answer not satisfying the graph: {line}")
    text = "every answer of mcpz's resolvers satisfies every constraint"
    goals = [g.failed(text, "; ".join(wrong)) if wrong else g.holds(text, True, f"{len(graphs)} graph(s)")]
    g.finish("resolve", info, load_before, goals, {"seeds": args.seeds, "rows": rows}, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
