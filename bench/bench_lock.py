"""`mcpz lock` against a live registry, beside `uv pip compile` and `pip install --dry-run --report`.

    python bench/bench_lock.py                 # the five graphs of bench_resolve.py
    python bench/bench_lock.py --graphs 0,4    # some of them (by position)
    python bench/bench_lock.py --runs 5        # median of 5 runs per cell
    python bench/bench_lock.py --no-peers      # mcpz only: the goals print as unmeasured
    python bench/bench_lock.py --smoke         # the smallest graph, one run, peers only if installed

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`;
uv, the peer, is installed into that environment with pip when it is missing)

For each seeded graph of `bench/ecosystem.py` (N agents x M versions, with "trap" versions that
lead a newest-first resolver away from the hidden solution):

- **the registry**: a fresh `mcpz registry serve` in its own process (bench/_registry.py), its
  database filled **in-process before it starts**, through the registry's own functions
  (`accounts.create_account`, `releases.record_releases` with a parsed manifest per release), as
  bench_index.py does. Pushing thousands of releases over git would take long and measure the push
  path, not locking; the index the client reads is exactly what pushes would have written.
- **mcpz**: `mcpz lock` as a subprocess (start-up included) in an agent folder whose
  `[dependencies]` are the graph's roots. *cold*: empty user cache, no mcpz.lock. *warm*: the
  cache filled by a previous run (the index costs 304s), no mcpz.lock, so it resolves from
  scratch as uv does. *re-lock*: cache and mcpz.lock both present (the everyday `mcpz lock`).
- **uv / pip**: bench_resolve.py's `run_peers` on the same graph as a PEP 503 simple index of
  tiny wheels with PEP 658 metadata (threaded keep-alive server, TCP_NODELAY): `uv pip compile`
  cold and warm (its cache), `pip install --dry-run --report --no-cache-dir`.

All three run whole, as subprocesses, start-up included: like with like. Every answer is checked
against every constraint of the graph; a wrong one is marked WRONG and fails its goal, whatever
its time. Goals (issue 4): faster than pip on every graph (cold, both without a cache); within 2x
of uv on the large graph, warm; (issue 12) faster than uv on the large graph, cold. A goal whose
peer or graph did not run prints as unmeasured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _goals as g  # noqa: E402
import _registry as rb  # noqa: E402
from bench_resolve import GRAPHS, find_peers, run_peers  # noqa: E402
from ecosystem import Ecosystem, generate, violations  # noqa: E402

APP = "bench/app"
LARGE = (1000, 10, 0.1, 30)


def populate(data: Path, eco: Ecosystem) -> int:
    """Insert every release of `eco` into the registry database at `data`; return how many."""
    from mcpz.manifest import parse_manifest
    from registry_server.accounts import service as accounts
    from registry_server.orm import utcnow
    from registry_server.releases.models import Agent
    from registry_server.releases.service import PlannedRelease, record_releases
    from registry_server.settings import RegistrySettings
    from registry_server.state import RegistryState

    state = RegistryState.open(RegistrySettings.load(data_dir=data, env={}))
    count = 0
    try:
        with state.db.session() as session:
            namespaces = {name.split("/")[0] for name in eco.index.names()}
            owner = {ns: accounts.create_account(session, ns) for ns in sorted(namespaces)}
            for name in eco.index.names():
                namespace = name.split("/")[0]
                agent = Agent(name=name, namespace=namespace, description="", created_at=utcnow(), serial=0)
                session.add(agent)
                session.flush()
                planned = []
                for release in reversed(eco.index.releases(name)):
                    deps = release.dependency_texts
                    text = f'[agent]\nname = "{name}"\nversion = "{release.version}"\nkind = "plugin"\n'
                    if deps:
                        text += "\n[dependencies]\n" + "".join(
                            f'"{d}" = "{s}"\n' for d, s in sorted(deps.items())
                        )
                    planned.append(
                        PlannedRelease(str(release.version), release.commit, parse_manifest(text), text)
                    )
                record_releases(session, agent, owner[namespace].id, planned)
                count += len(planned)
    finally:
        state.close()
    return count


def write_app(folder: Path, eco: Ecosystem) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    deps = "".join(f'"{name}" = "{spec or "*"}"\n' for name, spec in sorted(eco.roots.items()))
    (folder / "mcpz.toml").write_text(
        f'[agent]\nname = "{APP}"\nversion = "0.1.0"\nkind = "plugin"\n\n[dependencies]\n{deps}'
    )


def mcpz_lock(work: rb.Workdir, app: Path, registry: str, timeout: float) -> tuple[g.Run, dict[str, object]]:
    """One `mcpz lock` subprocess: its time (None if it failed or timed out) and its --json payload."""
    env = dict(work.env, MCPZ_REGISTRY=registry)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            rb.mcpz_cmd("--json", "lock"), cwd=app, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return g.Run(None, note=f">{timeout:g}s"), {}
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return g.Run(None, ok=False, note=f"failed ({done.returncode}): {last[:60]}"), {}
    payload: dict[str, object] = json.loads(done.stdout)
    return g.Run(seconds), payload


def check(eco: Ecosystem, app: Path, run: g.Run) -> g.Run:
    """`run`, marked wrong unless mcpz.lock satisfies every constraint of the graph."""
    if run.seconds is None:
        return run
    data = tomllib.loads((app / "mcpz.lock").read_text())
    chosen = {agent["name"]: agent["version"] for agent in data.get("agent", [])}
    return g.Run(run.seconds, ok=not violations(eco.index, eco.roots, chosen))


def median_run(runs: list[g.Run]) -> g.Run:
    """The median time of `runs`, wrong if any was wrong, none if any has no time."""
    bad = next((r for r in runs if r.seconds is None), None)
    if bad is not None:
        return bad
    return g.Run(
        statistics.median(r.seconds for r in runs if r.seconds is not None), ok=all(r.ok for r in runs)
    )


def bench_graph(
    graph: tuple[int, int, float, int], args: argparse.Namespace, uv: str | None, pip: bool
) -> dict[str, object]:
    agents, versions, trap, roots = graph
    eco = generate(agents, versions, trap, roots=roots, seed=args.seed)
    row: dict[str, object] = {"graph": eco.label}
    with rb.Workdir("bench-lock", keep=args.keep) as work:
        data = work.path / "registry"
        started = time.perf_counter()
        releases = populate(data, eco)
        row["releases"] = releases
        row["populate_s"] = round(time.perf_counter() - started, 2)
        reg = rb.Registry.start(work, data)
        app = work.path / "app"
        write_app(app, eco)
        cache = Path(work.env["MCPZ_CACHE_DIR"])
        runs: dict[str, list[g.Run]] = {"cold": [], "warm": [], "relock": []}
        payload: dict[str, object] = {}
        for kind in runs:
            for _ in range(args.runs):
                if kind == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                if kind != "relock":
                    (app / "mcpz.lock").unlink(missing_ok=True)
                run, payload = mcpz_lock(work, app, reg.url, args.timeout)
                runs[kind].append(check(eco, app, run))
                if kind == "cold" and payload:
                    row["cold_index"] = payload["index"]
                if kind == "warm" and payload:
                    row["warm_index"] = payload["index"]
                    row["resolve_s"] = payload["resolve_seconds"]
        row["locked_agents"] = payload.get("agents", "?")
        row["mcpz_cold"] = median_run(runs["cold"])
        row["mcpz_warm"] = median_run(runs["warm"])
        row["mcpz_relock"] = median_run(runs["relock"])
        row["runs"] = {kind: [r.as_json() for r in values] for kind, values in runs.items()}
        reg.stop()
        if not args.no_peers:
            peers_dir = work.path / "peers"
            peers_dir.mkdir()
            row.update(run_peers(eco, args.timeout, peers_dir, uv, pip))
    return row


def _run(row: dict[str, object], key: str) -> g.Run:
    cell = row.get(key)
    return cell if isinstance(cell, g.Run) else g.Run(None, note="not run (--no-peers)")


def faster(text: str, ours: g.Run, peer: g.Run, bound: float, peer_name: str, strict: bool = False) -> g.Goal:
    """ours / peer <= bound (< when `strict`), from two whole runs. Our wrong or failed run fails the
    goal; a peer with no right answer leaves it unmeasured, except a peer that timed out where we
    finished."""
    if ours.good is None:
        return g.failed(text, f"mcpz {ours.cell()}")
    if peer.seconds is None and peer.ok and peer.note.startswith(">"):
        return g.holds(text, True, f"mcpz {ours.cell()} vs {peer_name} {peer.note}")
    if peer.good is None:
        return g.unmeasured(text, f"{peer_name}: {peer.cell()}")
    ratio = ours.good / peer.good
    detail = f"mcpz {ours.good:.2f}s vs {peer_name} {peer.good:.2f}s = {ratio:.2f}x"
    return (g.below if strict else g.at_most)(text, ratio, bound, detail)


def judge(rows: list[dict[str, object]], args: argparse.Namespace) -> list[g.Goal]:
    """Every goal of issues 4 and 12, for every graph, whether or not it ran."""
    goals: list[g.Goal] = []
    ran = {str(row["graph"]): row for row in rows}
    for graph in GRAPHS:
        label = generate(*graph[:3], roots=graph[3], seed=args.seed).label
        text = f"faster than pip on {label} (cold)"
        if label in ran:
            row = ran[label]
            goals.append(faster(text, _run(row, "mcpz_cold"), _run(row, "pip-cold"), 1.0, "pip", strict=True))
        else:
            goals.append(g.unmeasured(text, "graph not run: --graphs"))
    large = generate(*LARGE[:3], roots=LARGE[3], seed=args.seed).label
    text = f"within 2x of uv on the large graph ({large}), warm"
    if large in ran:
        goals.append(faster(text, _run(ran[large], "mcpz_warm"), _run(ran[large], "uv-warm"), 2.0, "uv"))
    else:
        goals.append(g.unmeasured(text, "graph not run: --graphs"))
    text = f"faster than uv on the large graph ({large}), cold"
    if large in ran:
        row = ran[large]
        goals.append(faster(text, _run(row, "mcpz_cold"), _run(row, "uv-cold"), 1.0, "uv", strict=True))
    else:
        goals.append(g.unmeasured(text, "graph not run: --graphs"))
    return goals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", default=",".join(str(i) for i in range(len(GRAPHS))))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.graphs, args.runs = "0", 1

    info = rb.print_machine("lock: `mcpz lock` against a live registry, beside uv and pip on the same graphs")
    print(
        "data: each graph's releases are inserted in-process into a fresh registry database through "
        "registry_server.releases.record_releases (not pushed over git), then `mcpz registry serve` starts "
        "in its own process; mcpz, uv and pip each run as a subprocess, start-up included"
    )
    load_before = g.load()
    uv, pip = find_peers(args, "bench_lock")
    rows = [bench_graph(GRAPHS[int(i)], args, uv, pip) for i in args.graphs.split(",") if i.strip()]

    columns = ["mcpz_cold", "mcpz_warm", "mcpz_relock"]
    if not args.no_peers:
        columns += ["uv-cold", "uv-warm", "pip-cold"]
    headings = {
        "mcpz_cold": "mcpz cold",
        "mcpz_warm": "mcpz warm",
        "mcpz_relock": "mcpz re-lock",
        "uv-cold": "uv cold",
        "uv-warm": "uv warm",
        "pip-cold": "pip",
    }
    print()
    print(
        rb.table(
            ["graph", *[headings[c] for c in columns], "agents", "index cold / warm"],
            [
                [
                    row["graph"],
                    *[_run(row, c).cell() for c in columns],
                    row["locked_agents"],
                    _index_cell(row),
                ]
                for row in rows
            ],
        )
    )
    print()
    goals = judge(rows, args)
    figures = [{k: (v.as_json() if isinstance(v, g.Run) else v) for k, v in row.items()} for row in rows]
    g.finish("lock", info, load_before, goals, {"runs": args.runs, "rows": figures}, smoke=args.smoke)
    return 0


def _index_cell(row: dict[str, object]) -> str:
    cold = row.get("cold_index") or {}
    warm = row.get("warm_index") or {}
    assert isinstance(cold, dict) and isinstance(warm, dict)
    return (
        f"{cold.get('requests')} req, {int(cold.get('bytes', 0)) // 1024} kB / {warm.get('not_modified')}x304"
    )


if __name__ == "__main__":
    raise SystemExit(main())
