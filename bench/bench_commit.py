"""Commit speed: `mcpz commit` against `git add -A && git commit` on the same generated tree.

A 2,000-file, ~20 MB tree (text files in nested folders, plus an mcpz.toml) is copied twice;
each copy gets an empty repository (not timed). Then, per round:

- first commit: every file is new;
- one-file commit: one file edited, then committed (repeated, median taken).

Both sides run as commands, interpreter start-up included, since that is what a user waits
for. Goals (issue 2): first commit within 3x of C git; a one-file commit under 0.5 s.

    python bench/bench_commit.py [--files 2000] [--mb 20] [--rounds 3] [--edits 5] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import base64
import os
import random
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

GOAL_FIRST_RATIO = 3.0
GOAL_ONE_FILE_S = 0.5

MANIFEST = '[agent]\nname = "bench/tree"\nversion = "0.1.0"\nkind = "plugin"\n'


def mcpz_command() -> list[str]:
    exe = Path(sys.executable).with_name("mcpz")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mcpz"]


def generate(root: Path, files: int, total_bytes: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "mcpz.toml").write_text(MANIFEST)
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    per_file = total_bytes // files
    for i in range(files):
        folder = root / f"pkg{i % 20:02d}" / f"mod{(i // 20) % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        size = max(16, int(per_file * rng.uniform(0.5, 1.5)))
        raw = base64.b64encode(rng.randbytes(size * 3 // 4))
        lines = b"\n".join(raw[j : j + 76] for j in range(0, len(raw), 76))
        (folder / f"file{i:05d}.txt").write_bytes(lines + b"\n")


def timed(cmd: list[str] | str, cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, shell=isinstance(cmd, str), capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--mb", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--edits", type=int, default=5)
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.files, args.mb, args.rounds, args.edits = 60, 0.5, 1, 1
    info = rb.print_machine("commit: mcpz commit beside git add -A && git commit, the same tree")
    load_before = g.load()

    env = dict(os.environ)
    work = Path(tempfile.mkdtemp(prefix="mcpz-bench-commit-"))
    gitconfig = work / "gitconfig"
    gitconfig.write_text(
        "[user]\n\tname = Bench\n\temail = bench@example.com\n[init]\n\tdefaultBranch = main\n"
    )
    env.update(GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1", MCPZ_CONFIG_DIR=str(work / "cfg"))
    env.pop("MCPZ_AUTHOR", None)
    mcpz = mcpz_command()
    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        "mcpz": {"first": [], "one_file": []},
        "git": {"first": [], "one_file": []},
    }
    try:
        source = work / "source"
        generate(source, args.files, int(args.mb * 1024 * 1024))
        size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())

        def mcpz_commit(msg: str) -> list[str] | str:
            return [*mcpz, "commit", "-q", "-m", msg]

        def git_commit(msg: str) -> list[str] | str:
            return f"git add -A && git commit -q -m '{msg}'"

        commands = {"mcpz": mcpz_commit, "git": git_commit}
        for round_ in range(args.rounds):
            for side, command in commands.items():
                tree = work / f"{side}-{round_}"
                shutil.copytree(source, tree)
                subprocess.run(["git", "init", "-q"], cwd=tree, env=env, check=True)
                results[side]["first"].append(timed(command("first"), tree, env))
                if round_ == 0:
                    for edit in range(args.edits):
                        target = tree / "pkg03" / "mod1" / "file00023.txt"
                        with target.open("ab") as f:
                            f.write(f"edit {edit}\n".encode())
                        results[side]["one_file"].append(timed(command(f"edit {edit}"), tree, env))
                    status = subprocess.run(
                        ["git", "status", "--porcelain"], cwd=tree, env=env, capture_output=True, text=True
                    )
                    assert status.stdout == "", f"{side}: git status not clean:\n{status.stdout}"
                    fsck = subprocess.run(["git", "fsck", "--strict"], cwd=tree, env=env, capture_output=True)
                    assert fsck.returncode == 0, f"{side}: git fsck failed: {fsck.stderr!r}"
                shutil.rmtree(tree)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(side: str, key: str, which: int) -> float:
        return statistics.median(run[which] for run in results[side][key])

    print(f"tree: {args.files} files, {size / 1e6:.1f} MB; first commit median of {args.rounds},")
    print(f"one-file commit median of {args.edits}; commands run whole (interpreter start included)")
    print("wall = elapsed time, cpu = user+sys time of the command (steadier on a busy machine)\n")
    head = f"{'mcpz wall':>10}{'git wall':>10}{'ratio':>7}{'mcpz cpu':>10}{'git cpu':>9}{'ratio':>7}"
    print(f"{'operation':<17}{head}   goal")
    rows = [("first commit", "first", "ratio <= 3"), ("one-file commit", "one_file", "mcpz < 0.5 s")]
    for label, key, goal in rows:
        ours, theirs = med("mcpz", key, 0), med("git", key, 0)
        ours_cpu, theirs_cpu = med("mcpz", key, 1), med("git", key, 1)
        print(
            f"{label:<17}{ours:>9.3f}s{theirs:>9.3f}s{ours / theirs:>6.1f}x"
            f"{ours_cpu:>9.3f}s{theirs_cpu:>8.3f}s{ours_cpu / max(theirs_cpu, 1e-3):>6.1f}x   {goal}"
        )
    first_ratio = med("mcpz", "first", 0) / med("git", "first", 0)
    one_file = med("mcpz", "one_file", 0)
    goals = [
        g.at_most(
            "first commit within 3x of git (wall)",
            first_ratio,
            GOAL_FIRST_RATIO,
            f"{first_ratio:.2f}x: {med('mcpz', 'first', 0):.3f}s vs {med('git', 'first', 0):.3f}s",
        ),
        g.below("one-file commit < 0.5 s (wall)", one_file, GOAL_ONE_FILE_S, f"{one_file:.3f}s"),
    ]
    payload: dict[str, object] = {
        "files": args.files,
        "bytes": size,
        "median_wall_seconds": {side: {k: med(side, k, 0) for k in results[side]} for side in results},
        "median_cpu_seconds": {side: {k: med(side, k, 1) for k in results[side]} for side in results},
    }
    print()
    g.finish("commit", info, load_before, goals, payload, smoke=args.smoke)


if __name__ == "__main__":
    main()
