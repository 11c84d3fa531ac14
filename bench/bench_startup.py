"""Start-up cost: `mcpz --version` and `mcpz status` against `pip --version` and `git status`.

Each command runs `--runs` times (default 10) as a fresh process; the table shows the median
wall time and the median CPU time (user + system, from the children's rusage), the latter
being steadier on a busy machine. `status` runs in a small agent made with `mcpz init`.
Goal (issue 2): `mcpz --version` under 100 ms. `--version` answers before the CLI is imported,
a shortcut no other command takes, so the headline shows `mcpz status` (a real command: the CLI,
the repository, the working tree) beside it.

    python bench/bench_startup.py [--runs 10] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _goals as g
import _registry as rb

GOAL_VERSION_S = 0.1


def tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def measure(cmd: list[str], cwd: Path, env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `cmd` over `runs` runs (after one warm-up run)."""
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs = 1
    info = rb.print_machine("start-up: mcpz --version and mcpz status beside pip --version and git status")
    load_before = g.load()
    work = Path(tempfile.mkdtemp(prefix="mcpz-bench-startup-"))
    env = dict(os.environ)
    gitconfig = work / "gitconfig"
    gitconfig.write_text("[user]\n\tname = Bench\n\temail = bench@example.com\n")
    env.update(GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1", MCPZ_CONFIG_DIR=str(work / "cfg"))
    mcpz, pip, git = tool("mcpz"), tool("pip"), shutil.which("git") or "git"
    try:
        agent = work / "agent"
        subprocess.run(
            [mcpz, "init", str(agent), "--name", "bench/agent"], env=env, check=True, capture_output=True
        )
        (agent / "notes.txt").write_text("an untracked file, so status has something to say\n")
        rows = [
            ("--version", [mcpz, "--version"], [pip, "--version"], "pip --version"),
            ("status", [mcpz, "status"], [git, "status"], "git status"),
        ]
        results = {}
        print(f"median of {args.runs} runs, fresh process each; wall time and CPU time (user+sys)\n")
        print(f"{'command':<16}{'mcpz wall':>11}{'mcpz cpu':>10}   {'peer':<15}{'wall':>9}{'cpu':>9}")
        for label, ours, theirs, peer in rows:
            ours_wall, ours_cpu = measure(ours, agent, env, args.runs)
            peer_wall, peer_cpu = measure(theirs, agent, env, args.runs)
            print(
                f"mcpz {label:<11}{ours_wall * 1000:>9.0f}ms{ours_cpu * 1000:>8.0f}ms   "
                f"{peer:<15}{peer_wall * 1000:>7.0f}ms{peer_cpu * 1000:>7.0f}ms"
            )
            results[label] = {
                "mcpz": {"wall_s": ours_wall, "cpu_s": ours_cpu},
                peer: {"wall_s": peer_wall, "cpu_s": peer_cpu},
            }
        version = results["--version"]["mcpz"]["wall_s"]
        status = results["status"]["mcpz"]["wall_s"]
        print(
            f"\nheadline: `mcpz --version` {version * 1000:.0f} ms (a shortcut: the CLI is not imported); "
            f"`mcpz status` {status * 1000:.0f} ms (a real command)"
        )
        goals = [
            g.below(
                "`mcpz --version` < 100 ms", version, GOAL_VERSION_S, f"{version * 1000:.0f} ms, median wall"
            )
        ]
        g.finish(
            "startup",
            info,
            load_before,
            goals,
            {
                "runs": args.runs,
                "median": results,
                "headline_ms": {"--version": version * 1000, "status": status * 1000},
            },
            smoke=args.smoke,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
