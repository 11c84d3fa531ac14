"""Garbage collection: `mcpz registry gc` against `git gc --prune=now` on a copy of the same repository.

The repository: 100,000 objects (20,000 commits of one small file each, five objects a commit),
imported in four packs as a history of pushes leaves it, with 10 % of the objects unreachable (a
branch of 2,000 commits deleted), built with `git fast-import` by tests/gcutil.py; every file is
made to look 30 days old. One copy goes under a registry data folder (no registry serving: gc
runs against the data folder, as an operator runs it), one is left for C git.

Figures, one run each (gc changes the repository, so a second run measures something else):

- `mcpz registry gc --grace now --json` end to end (the process start, ~1-3 s of imports, included);
- `git gc --prune=now --quiet` (C git: repack with deltas computed afresh, then prune);
- bytes freed (the objects folder before minus after) and objects left, for both.

Goal: ours keeps every reachable object and drops every unreachable one (`git fsck --full` clean,
the reachable count left), as git does; the time is printed beside git's, no bound.

    python bench/bench_gc.py [--objects 100000] [--keep] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _goals as g
import _registry as rb
from gcutil import age, build_repo

NAME = "bench/big"


def _objects_size(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "objects").rglob("*") if p.is_file())


def _count(repo: Path, env: dict[str, str]) -> int:
    out = rb.run([rb.GIT, "count-objects", "-v"], env, cwd=repo).stdout.decode()
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return int(fields["count"]) + int(fields["in-pack"])


def _fsck_clean(repo: Path, env: dict[str, str]) -> bool:
    done = subprocess.run([rb.GIT, "fsck", "--full", "--no-dangling"], env=env, cwd=repo, capture_output=True)
    return done.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000, help="objects in the repository")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.objects = 2_000

    info = rb.print_machine("gc: mcpz registry gc vs git gc --prune=now, same repository")
    load_before = g.load()
    started = time.perf_counter()
    with rb.Workdir("bench-gc", keep=args.keep) as work:
        env = work.env
        template = work.path / "template.git"
        counts = build_repo(template, args.objects, 0.1, packs=4)
        data = work.path / "data"
        ours = data / "repos" / "bench" / "big.git"
        ours.parent.mkdir(parents=True)
        shutil.copytree(template, ours, symlinks=True)
        peer = work.path / "peer.git"
        shutil.copytree(template, peer, symlinks=True)
        for repo in (ours, peer):
            age(repo)
        total = _count(template, env)
        print(
            f"repository: {total} objects in 4 packs, {counts['unreachable']} unreachable "
            f"({counts['unreachable'] / total:.0%}), {_objects_size(template) / 1e6:.1f} MB"
        )
        # The data folder's database, made before the clock starts (a registry host has one).
        rb.run([sys.executable, "-m", "mcpz", "registry", "migrate", "--data", str(data)], env)

        before = _objects_size(ours)
        t0 = time.perf_counter()
        done = rb.run(
            [sys.executable, "-m", "mcpz", "registry", "gc", "--data", str(data), "--grace", "now", "--json"],
            env,
        )
        ours_s = time.perf_counter() - t0
        report = json.loads(done.stdout)
        ours_freed = before - _objects_size(ours)
        ours_left = _count(ours, env)
        ours_ok = _fsck_clean(ours, env) and ours_left == counts["reachable"]

        before = _objects_size(peer)
        t0 = time.perf_counter()
        rb.run([rb.GIT, "gc", "--prune=now", "--quiet"], env, cwd=peer)
        peer_s = time.perf_counter() - t0
        peer_freed = before - _objects_size(peer)
        peer_left = _count(peer, env)

    ours_run = g.Run(ours_s, ours_ok)
    rows = [
        ["time", ours_run.cell(), rb.secs(peer_s)],
        ["bytes freed", f"{ours_freed:,}", f"{peer_freed:,}"],
        ["objects left", f"{ours_left:,}", f"{peer_left:,}"],
        ["objects dropped (reported)", f"{report['kinds'][0]['count']:,}", ""],
    ]
    print()
    print(rb.table(["one run", "mcpz registry gc", "git gc --prune=now"], rows))
    goals = [
        g.holds(
            "registry gc keeps every reachable object and drops every unreachable one (fsck clean)",
            ours_ok,
            f"{ours_left} left, {counts['reachable']} reachable; {ours_s / peer_s:.1f}x git gc's time",
        )
    ]
    print(f"{time.perf_counter() - started:.0f} s in all")
    g.finish(
        "gc",
        info,
        load_before,
        goals,
        {
            "objects": total,
            "unreachable": counts["unreachable"],
            "ours": {"seconds": round(ours_s, 3), "freed_bytes": ours_freed, "objects_left": ours_left},
            "git_gc": {"seconds": round(peer_s, 3), "freed_bytes": peer_freed, "objects_left": peer_left},
            "ours_reported_freed_bytes": report["freed_bytes"],
        },
        smoke=args.smoke,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
