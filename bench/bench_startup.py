"""Start-up cost: the commands typed most, against pip, git and the Python peers, with the imports
each one pays for.

Each command runs `--runs` times (default 10) as a fresh process in a small agent made with
`mcpz init` (one untracked file, so status and diff have something to say); the table shows the
median wall time and the median CPU time (user + system, from the children's rusage), the latter
steadier on a busy machine. The peers: `pip --version`, `git status`, and the Python CLIs nearest
to ours, installed into this environment with pip when missing (`hf --help` from huggingface_hub,
`pdm --version`). Bytecode is written and warm (one run before timing), as after `pip install`.

Then each mcpz command runs once under `python -X importtime`: the sum of its top-level imports
and the costliest of them, so a regression names its module.

Goals (issue 12): every listed mcpz command under 150 ms wall, and faster than the fastest Python
peer; (issue 2) `mcpz --version` under 100 ms.

    python bench/bench_startup.py [--runs 10] [--no-peers] [--smoke]

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


def import_times(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, list[tuple[str, float]]]:
    """Seconds of top-level imports `cmd` (a Python script and its arguments) pays under
    `-X importtime`, and its top-level imports by cumulative cost, costliest first."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *cmd], cwd=cwd, env=env, capture_output=True, text=True
    )
    top: list[tuple[str, float]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not name.startswith(" ") or name.startswith("  "):
            continue  # nested: already inside its parent's cumulative time
        top.append((name.strip(), int(cumulative) / 1e6))
    top.sort(key=lambda item: -item[1])
    return sum(seconds for _, seconds in top), top


COMMANDS: list[tuple[str, list[str]]] = [
    ("--version", ["--version"]),
    ("status", ["status"]),
    ("log -n 5", ["log", "-n", "5"]),
    ("diff", ["diff"]),
    ("--help", ["--help"]),
    ("call --help", ["call", "--help"]),
]
GOAL_S = 0.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-peers", action="store_true", help="only git and pip; the peer goals unmeasured")
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs = 1
    info = rb.print_machine("start-up: the commands typed most, beside pip, git, hf and pdm")
    load_before = g.load()
    work = Path(tempfile.mkdtemp(prefix="mcpz-bench-startup-"))
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install has its bytecode
    gitconfig = work / "gitconfig"
    gitconfig.write_text("[user]\n\tname = Bench\n\temail = bench@example.com\n")
    env.update(
        GIT_CONFIG_GLOBAL=str(gitconfig),
        GIT_CONFIG_NOSYSTEM="1",
        MCPZ_CONFIG_DIR=str(work / "cfg"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_OFFLINE="1",
    )
    mcpz, pip, git = tool("mcpz"), tool("pip"), shutil.which("git") or "git"
    optional = args.smoke or args.no_peers
    python_peers: list[tuple[str, list[str]]] = [("pip --version", [pip, "--version"])]
    for name, pip_name, argv in (("hf", "huggingface_hub", ["--help"]), ("pdm", "pdm", ["--version"])):
        found = None if args.no_peers else g.peer(name, pip_name, optional=optional, bench="bench_startup")
        if found is not None:
            python_peers.append((f"{name} {' '.join(argv)}", [found, *argv]))
    try:
        agent = work / "agent"
        subprocess.run(
            [mcpz, "init", str(agent), "--name", "bench/agent"], env=env, check=True, capture_output=True
        )
        (agent / "notes.txt").write_text("an untracked file, so status has something to say\n")
        print(f"median of {args.runs} runs, fresh process each; wall time and CPU time (user+sys)\n")
        print(f"{'command':<22}{'wall':>9}{'cpu':>9}   imports (sum of top level; costliest)")
        results: dict[str, dict[str, object]] = {}
        for label, argv in COMMANDS:
            wall, cpu = measure([mcpz, *argv], agent, env, args.runs)
            total, top = import_times([mcpz, *argv], agent, env)
            named = ", ".join(f"{name} {seconds * 1000:.0f}" for name, seconds in top[:4])
            print(
                f"mcpz {label:<17}{wall * 1000:>7.0f}ms{cpu * 1000:>7.0f}ms   {total * 1000:.0f} ms: {named}"
            )
            results[f"mcpz {label}"] = {
                "wall_s": wall,
                "cpu_s": cpu,
                "imports_s": total,
                "imports_top": [[name, seconds] for name, seconds in top[:8]],
            }
        peers: dict[str, float] = {}
        for label, cmd in [("git status", [git, "status"]), *python_peers]:
            wall, cpu = measure(cmd, agent, env, args.runs)
            peers[label] = wall
            print(f"{label:<22}{wall * 1000:>7.0f}ms{cpu * 1000:>7.0f}ms   (peer)")
            results[label] = {"wall_s": wall, "cpu_s": cpu}
        python_walls = {k: v for k, v in peers.items() if k != "git status"}
        fastest = min(python_walls, key=lambda k: python_walls[k])
        version = float(results["mcpz --version"]["wall_s"])  # type: ignore[arg-type]
        goals = [
            g.below(
                "`mcpz --version` < 100 ms", version, GOAL_VERSION_S, f"{version * 1000:.0f} ms, median wall"
            )
        ]
        for label, _ in COMMANDS[1:]:
            wall = float(results[f"mcpz {label}"]["wall_s"])  # type: ignore[arg-type]
            goals.append(
                g.below(f"`mcpz {label}` < 150 ms", wall, GOAL_S, f"{wall * 1000:.0f} ms, median wall")
            )
            goals.append(
                g.below(
                    f"`mcpz {label}` faster than every Python peer",
                    wall,
                    python_walls[fastest],
                    f"{wall * 1000:.0f} ms against {fastest} {python_walls[fastest] * 1000:.0f} ms",
                )
            )
        status = float(results["mcpz status"]["wall_s"])  # type: ignore[arg-type]
        print(
            f"\nheadline: `mcpz status` {status * 1000:.0f} ms against `git status` "
            f"{peers['git status'] * 1000:.0f} ms and `{fastest}` {python_walls[fastest] * 1000:.0f} ms"
        )
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
