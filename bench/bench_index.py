"""Index: the batch endpoint `GET /v1/index?name=...` for 200 agents x 20 versions, warm.

The 4,000 releases are not pushed over git (that would take long and measure the push path,
not the index): they are inserted in-process into a fresh registry database before the server
starts, through the registry's own functions (`accounts.create_account`, `releases.record_releases`
with a parsed manifest, `releases.set_yanked`), so the rows, serials and dependency JSON are
exactly what pushes would have written. Each version declares 0-3 dependencies on other agents;
about 2% are yanked. Then `mcpz registry serve` runs in its own process, and one httpx2 client with
keep-alive asks for all 200 names in one request:

- cold: the first request after start (the server's per-agent cache is empty);
- 200: --requests requests without If-None-Match (the whole body read);
- 304: --requests requests with the ETag of the last answer (no body).

Figures: p50 / p99 / mean of the client's wall time per request, the server's own time per
request (from its JSON request log), and the body size. No peer is needed; the goal is printed
beside ours.

Goal (issue 3): p50 under 20 ms, warm.

    python bench/bench_index.py [--agents 200] [--versions 20] [--requests 200] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _goals as g
import _registry as rb

GOAL_P50_MS = 20.0
NAMESPACE = "eco"


def populate(data: Path, agents: int, versions: int, seed: int = 7) -> list[str]:
    """Insert the agents and their releases into the registry database at `data`; return names."""
    from mcpz.manifest import parse_manifest
    from registry_server.accounts import service as accounts
    from registry_server.orm import utcnow
    from registry_server.releases.models import Agent
    from registry_server.releases.service import PlannedRelease, record_releases, set_yanked
    from registry_server.settings import RegistrySettings
    from registry_server.state import RegistryState

    rng = random.Random(seed)
    state = RegistryState.open(RegistrySettings.load(data_dir=data, env={}))
    names = [f"{NAMESPACE}/agent-{i:03d}" for i in range(agents)]
    try:
        with state.db.session() as session:
            account = accounts.create_account(session, NAMESPACE)
            for i, name in enumerate(names):
                agent = Agent(
                    name=name,
                    namespace=NAMESPACE,
                    description=f"agent {i}",
                    created_at=utcnow(),
                    serial=0,
                )
                session.add(agent)
                session.flush()
                planned = []
                for v in range(versions):
                    version = f"{v // 10 + 1}.{v % 10}.0"
                    deps = {
                        names[j]: f">={rng.randint(1, 2)}.0,<3"
                        for j in rng.sample(range(agents), rng.randint(0, 3))
                        if j != i
                    }
                    dep_lines = "".join(f'"{k}" = "{s}"\n' for k, s in sorted(deps.items()))
                    text = (
                        f'[agent]\nname = "{name}"\nversion = "{version}"\nkind = "agent"\n'
                        f'description = "agent {i}"\n\n[run]\ncommand = ["python", "server.py"]\n'
                        + (f"\n[dependencies]\n{dep_lines}" if deps else "")
                    )
                    commit = f"{rng.getrandbits(160):040x}"
                    planned.append(PlannedRelease(version, commit, parse_manifest(text), text))
                record_releases(session, agent, account.id, planned)
        with state.db.session() as session:
            for name in names:
                for v in range(versions):
                    if rng.random() < 0.02:
                        set_yanked(session, name, f"{v // 10 + 1}.{v % 10}.0", True, "bench")
    finally:
        state.close()
    return names


def summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "p50": round(rb.percentile(ms, 50), 2),
        "p99": round(rb.percentile(ms, 99), 2),
        "mean": round(sum(ms) / len(ms), 2),
        "min": round(min(ms), 2),
    }


def server_ms(log: Path, since_line: int, status: int) -> list[float]:
    out = []
    for line in log.read_text().splitlines()[since_line:]:
        if '"request"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("path") == "/v1/index" and record.get("status") == status:
            out.append(float(record["ms"]) / 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.agents, args.versions, args.requests = 10, 3, 5

    import httpx2

    info = rb.print_machine("index: GET /v1/index, batch of all names, warm, one keep-alive client")
    load_before = g.load()
    started = time.perf_counter()
    with rb.Workdir("bench-index", keep=args.keep) as work:
        data = work.path / "registry"
        t = time.perf_counter()
        names = populate(data, args.agents, args.versions)
        populated = time.perf_counter() - t
        print(
            f"data: {len(names)} agents x {args.versions} versions = {len(names) * args.versions} releases, "
            f"inserted in-process through registry_server.releases.record_releases (not pushed over git) "
            f"in {populated:.1f} s"
        )
        reg = rb.Registry.start(work, data)
        assert reg.log is not None
        query = "/v1/index?" + urlencode([("name", n) for n in names])
        print(f"registry pid {reg.pid} on {reg.url}; request URL {len(query)} bytes")
        with httpx2.Client(base_url=reg.url, timeout=30) as client:
            t = time.perf_counter()
            first = client.get(query)
            cold = time.perf_counter() - t
            first.raise_for_status()
            body = first.json()
            if len(body["agents"]) != len(names) or body["missing"]:
                raise RuntimeError("the index did not answer for every name")
            etag = first.headers["etag"]
            size = len(first.content)
            for _ in range(20):  # warm-up
                client.get(query).raise_for_status()
            log_mark = len(reg.log.read_text().splitlines())
            full: list[float] = []
            for _ in range(args.requests):
                t = time.perf_counter()
                r = client.get(query)
                _ = r.content
                full.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}")
            not_modified: list[float] = []
            for _ in range(args.requests):
                t = time.perf_counter()
                r = client.get(query, headers={"If-None-Match": etag})
                not_modified.append(time.perf_counter() - t)
                if r.status_code != 304:
                    raise RuntimeError(f"expected 304, got HTTP {r.status_code}")
            # The server logs after it answers: wait (bounded) until every request is in the log.
            deadline = time.monotonic() + 10
            while True:
                srv_full = server_ms(reg.log, log_mark, 200)
                srv_304 = server_ms(reg.log, log_mark, 304)
                if len(srv_full) + len(srv_304) >= 2 * args.requests or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        reg.stop()

    s_full, s_304 = summary(full), summary(not_modified)
    sv_full = summary(srv_full) if srv_full else None
    sv_304 = summary(srv_304) if srv_304 else None
    rows = [
        [
            f"200 OK, whole body (n={len(full)})",
            s_full["p50"],
            s_full["p99"],
            s_full["mean"],
            sv_full["p50"] if sv_full else "",
            f"< {GOAL_P50_MS:.0f}",
            "yes" if s_full["p50"] < GOAL_P50_MS else "NO",
        ],
        [
            f"304 with If-None-Match (n={len(not_modified)})",
            s_304["p50"],
            s_304["p99"],
            s_304["mean"],
            sv_304["p50"] if sv_304 else "",
            f"< {GOAL_P50_MS:.0f}",
            "yes" if s_304["p50"] < GOAL_P50_MS else "NO",
        ],
        ["cold: first request after start", round(cold * 1000, 2), "", "", "", "", ""],
    ]
    print()
    print(
        rb.table(
            [f"/v1/index, {len(names)} names (ms)", "p50", "p99", "mean", "server p50", "goal p50", "met"],
            rows,
        )
    )
    print(
        f"body {size / 1e3:.0f} kB JSON, ETag {etag}; peer: none (goal only); "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    goals = [
        g.below("200 OK p50 < 20 ms, warm", s_full["p50"], GOAL_P50_MS, f"{s_full['p50']:.2f} ms"),
        g.below("304 p50 < 20 ms, warm", s_304["p50"], GOAL_P50_MS, f"{s_304['p50']:.2f} ms"),
    ]
    g.finish(
        "index",
        info,
        load_before,
        goals,
        {
            "agents": len(names),
            "versions": args.versions,
            "populated_in_process": True,
            "body_bytes": size,
            "cold_ms": round(cold * 1000, 2),
            "full_ms": s_full,
            "not_modified_ms": s_304,
            "server_full_ms": sv_full,
            "server_not_modified_ms": sv_304,
            "goal_p50_ms": GOAL_P50_MS,
        },
        smoke=args.smoke,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
