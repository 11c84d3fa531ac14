"""`mcpz lock` against a live registry, beside `uv pip compile` and `pip install --dry-run --report`.

    /work/venv/bin/python bench/bench_lock.py                 # the five graphs of bench_resolve.py
    /work/venv/bin/python bench/bench_lock.py --graphs 0,4    # some of them (by position)
    /work/venv/bin/python bench/bench_lock.py --runs 5        # median of 5 runs per cell
    /work/venv/bin/python bench/bench_lock.py --no-peers      # mcpz only

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

Every answer is checked against every constraint of the graph (a wrong one is marked WRONG).
Goals (issue 4): faster than pip on every graph; within 2x of uv on the large graph, warm.
"""

from __future__ import annotations

import argparse
import json
import re
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

import _registry as rb  # noqa: E402
from bench_resolve import GRAPHS, run_peers  # noqa: E402
from ecosystem import Ecosystem, generate, violations  # noqa: E402

APP = "bench/app"
LARGE = (1000, 10, 0.1, 30)


def populate(data: Path, eco: Ecosystem) -> int:
    """Insert every release of `eco` into the registry database at `data`; return how many."""
    from mcpz.manifest import parse_manifest
    from registry_server import accounts
    from registry_server.models import Agent
    from registry_server.releases import PlannedRelease, record_releases
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
                agent = Agent(
                    name=name, namespace=namespace, description="", created_at=accounts.now(), serial=0
                )
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


def mcpz_lock(work: rb.Workdir, app: Path, registry: str, timeout: float) -> tuple[float, dict[str, object]]:
    """(wall seconds, --json payload) of one `mcpz lock` subprocess."""
    env = dict(work.env, MCPZ_REGISTRY=registry)
    start = time.perf_counter()
    done = subprocess.run(
        rb.mcpz_cmd("--json", "lock"), cwd=app, env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"mcpz lock failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return seconds, json.loads(done.stdout)


def check(eco: Ecosystem, app: Path) -> str:
    data = tomllib.loads((app / "mcpz.lock").read_text())
    chosen = {agent["name"]: agent["version"] for agent in data.get("agent", [])}
    return "" if not violations(eco.index, eco.roots, chosen) else " WRONG"


def seconds_of(cell: str) -> float | None:
    match = re.match(r"^(\d+(?:\.\d+)?)s", cell)
    return float(match.group(1)) if match else None


def bench_graph(graph: tuple[int, int, float, int], args: argparse.Namespace) -> dict[str, object]:
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
        cold: list[float] = []
        warm: list[float] = []
        relock: list[float] = []
        wrong = ""
        payload: dict[str, object] = {}
        for _ in range(args.runs):
            shutil.rmtree(cache, ignore_errors=True)
            (app / "mcpz.lock").unlink(missing_ok=True)
            seconds, payload = mcpz_lock(work, app, reg.url, args.timeout)
            cold.append(seconds)
            wrong = wrong or check(eco, app)
            row["cold_index"] = payload["index"]
        for _ in range(args.runs):
            (app / "mcpz.lock").unlink(missing_ok=True)
            seconds, payload = mcpz_lock(work, app, reg.url, args.timeout)
            warm.append(seconds)
            wrong = wrong or check(eco, app)
            row["warm_index"] = payload["index"]
            row["resolve_s"] = payload["resolve_seconds"]
        for _ in range(args.runs):
            seconds, payload = mcpz_lock(work, app, reg.url, args.timeout)
            relock.append(seconds)
        row["locked_agents"] = payload["agents"]
        row["mcpz_cold"] = f"{statistics.median(cold):.2f}s{wrong}"
        row["mcpz_warm"] = f"{statistics.median(warm):.2f}s{wrong}"
        row["mcpz_relock"] = f"{statistics.median(relock):.2f}s"
        row["runs"] = {"cold": cold, "warm": warm, "relock": relock}
        reg.stop()
        if not args.no_peers:
            peers_dir = work.path / "peers"
            peers_dir.mkdir()
            row.update(run_peers(eco, args.timeout, peers_dir))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", default=",".join(str(i) for i in range(len(GRAPHS))))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args()

    info = rb.print_machine("lock: `mcpz lock` against a live registry, beside uv and pip on the same graphs")
    print(
        "data: each graph's releases are inserted in-process into a fresh registry database through "
        "registry_server.releases.record_releases (not pushed over git), then `mcpz registry serve` starts "
        "in its own process; mcpz, uv and pip each run as a subprocess, start-up included"
    )
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    rows = [bench_graph(GRAPHS[int(i)], args) for i in args.graphs.split(",") if i.strip()]
    load_after = Path("/proc/loadavg").read_text().split()[:3]

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
                    *[row.get(c, "") for c in columns],
                    row["locked_agents"],
                    _index_cell(row),
                ]
                for row in rows
            ],
        )
    )
    print()
    goals: list[str] = []
    for row in rows:
        mcpz_cold, mcpz_warm = seconds_of(str(row["mcpz_cold"])), seconds_of(str(row["mcpz_warm"]))
        pip = seconds_of(str(row.get("pip-cold", "")))
        if not args.no_peers:
            if pip is None:
                verdict = f"pip: {row.get('pip-cold')} (mcpz {row['mcpz_cold']})"
                met = mcpz_cold is not None and str(row.get("pip-cold", "")).startswith(">")
            else:
                met = mcpz_cold is not None and mcpz_cold < pip
                verdict = f"mcpz cold {mcpz_cold:.2f}s vs pip {pip:.2f}s"
            goals.append(f"{'met ' if met else 'MISSED'}  faster than pip on {row['graph']}: {verdict}")
        if row["graph"] == generate(*LARGE[:3], roots=LARGE[3], seed=args.seed).label and not args.no_peers:
            uv_warm = seconds_of(str(row.get("uv-warm", "")))
            if uv_warm is not None and mcpz_warm is not None:
                ratio = mcpz_warm / uv_warm
                goals.append(
                    f"{'met ' if ratio <= 2 else 'MISSED'}  within 2x of uv on the large graph, warm: "
                    f"mcpz {mcpz_warm:.2f}s vs uv {uv_warm:.2f}s = {ratio:.2f}x"
                )
    for line in goals:
        print(line)
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    rb.emit_json({"bench": "lock", "machine": info, "rows": rows})
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
