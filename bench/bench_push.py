"""Push: `mcpz push` against the `git` client, to the same registry, on loopback.

A seeded agent repository of 2,000 files / 20 MB (source-like text, ~3.5x compressible) is pushed
for the first time by `mcpz push` (a subprocess: the CLI's start-up counts) and, as a copy under
another agent name in the same namespace, by `git push URL main vX` (branch and release tag).
Then one-file incremental pushes for both: a source file changed (branch only), and a release
(version bumped in mcpz.toml, branch and new tag). The registry is `mcpz registry serve` in its
own process. Rounds alternate which client goes first; figures are medians.

Goals (issue 3): `mcpz push` within 2x of `git push`; an incremental push under 0.5 s.

    python bench/bench_push.py [--rounds 3] [--incremental 5] [--keep] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _goals as g
import _registry as rb

FILES = 2000
TOTAL_BYTES = 20_000_000
FIRST_GOAL_RATIO = 2.0
INCREMENTAL_GOAL_S = 0.5


def _median(values: list[float | None]) -> float | None:
    """The median of the runs, or None when any run failed (a failure is not a time)."""
    if not values or any(v is None for v in values):
        return None
    return rb.median(v for v in values if v is not None)


def _s(value: float | None, missing: str = "failed") -> str:
    return missing if value is None else rb.secs(value)


def _ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{a / b:.2f}x"


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _runs(values: list[float | None]) -> list[float | None]:
    return [_r(v) for v in values]


def pack_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))


def check_published(reg: rb.Registry, name: str, version: str) -> None:
    import httpx2

    r = httpx2.get(f"{reg.url}/v1/agents/{name}", timeout=10)
    r.raise_for_status()
    versions = {v["version"] for v in r.json()["versions"]}
    if version not in versions:
        raise RuntimeError(f"{name} {version} was not published (have {sorted(versions)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="first pushes per client (fresh agents)")
    parser.add_argument("--incremental", type=int, default=5, help="incremental pushes per client and kind")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    g.add_smoke(parser)
    args = parser.parse_args()
    files, total_bytes = FILES, TOTAL_BYTES
    if args.smoke:
        files, total_bytes, args.rounds, args.incremental = 100, 500_000, 1, 1

    info = rb.print_machine("push: mcpz push vs git push, same registry (separate process)")
    load_before = g.load()
    started = time.perf_counter()
    with rb.Workdir("bench-push", keep=args.keep) as work:
        reg = rb.Registry.start(work)
        token = reg.account("bench")
        template = work.path / "template"
        size = rb.write_tree(template, files=files, total_bytes=total_bytes, seed=1)
        print(
            f"tree: {files} files + mcpz.toml + server.py, {size / 1e6:.1f} MB (seed 1); "
            f"registry pid {reg.pid} on {reg.url}, data in {work.path}"
        )
        menv = {**work.env, "MCPZ_TOKEN": token, "MCPZ_REGISTRY": reg.url}
        genv = work.env

        failures: list[str] = []

        cpu: dict[str, list[float]] = {}

        def attempt(label: str, cmd: list[str], env: dict[str, str], repo: Path) -> float | None:
            """Wall time of one push, or None (and the reason kept) when it fails."""
            try:
                wall, used = rb.timed_cpu(cmd, env, cwd=repo)
            except RuntimeError as e:
                failures.append(f"{label}: {str(e).strip().splitlines()[-1]}")
                return None
            cpu.setdefault(label, []).append(used)
            return wall

        def mcpz_push(repo: Path, label: str) -> float | None:
            return attempt(f"mcpz push ({label})", rb.mcpz_cmd("push"), menv, repo)

        def git_push(repo: Path, name: str, label: str, *refs: str) -> float | None:
            cmd = [rb.GIT, "push", "-q", reg.git_url(name, token), *refs]
            return attempt(f"git push ({label})", cmd, genv, repo)

        # CLI start-up alone, for reading the figures below.
        rb.timed(rb.mcpz_cmd("--version"), menv)
        startup_mcpz = rb.median(rb.timed(rb.mcpz_cmd("--version"), menv) for _ in range(5))
        startup_git = rb.median(rb.timed([rb.GIT, "--version"], genv) for _ in range(5))
        import_cli = rb.median(
            rb.timed([sys.executable, "-c", "import mcpz.cli.app"], menv) for _ in range(5)
        )

        first_m: list[float | None] = []
        first_g: list[float | None] = []
        packs: dict[str, int] = {}
        repos: list[tuple[Path, str, Path, str]] = []
        for r in range(args.rounds):
            suffix = "" if r == 0 else f"-r{r + 1}"
            name_m, name_g = f"bench/big{suffix}", f"bench/big-git{suffix}"
            repo_m, repo_g = work.path / f"m{r}", work.path / f"g{r}"
            rb.make_agent_repo(repo_m, template, name_m, "1.0.0", genv)
            rb.make_agent_repo(repo_g, template, name_g, "1.0.0", genv)
            rb.run([rb.GIT, "tag", "v1.0.0"], genv, cwd=repo_g)
            order = ("m", "g") if r % 2 == 0 else ("g", "m")
            for who in order:
                if who == "m":
                    first_m.append(mcpz_push(repo_m, "first"))
                else:
                    first_g.append(git_push(repo_g, name_g, "first", "main", "v1.0.0"))
            if first_m[-1] is not None:
                check_published(reg, name_m, "1.0.0")
            if first_g[-1] is not None:
                check_published(reg, name_g, "1.0.0")
            if r == 0:
                packs = {"mcpz": pack_bytes(reg.repo_path(name_m)), "git": pack_bytes(reg.repo_path(name_g))}
            repos.append((repo_m, name_m, repo_g, name_g))
            print(f"  round {r + 1}: first push mcpz {_s(first_m[-1])}, git {_s(first_g[-1])}")

        # Incremental pushes on the round-1 repositories.
        repo_m, name_m, repo_g, name_g = repos[0]
        rng = random.Random(2)
        vocab = rb._vocabulary(random.Random(1))
        inc_m: list[float | None] = []
        inc_g: list[float | None] = []
        rel_m: list[float | None] = []
        rel_g: list[float | None] = []
        for i in range(args.incremental):
            content = rb.file_content(rng, vocab, 10_000)
            path = f"src/pkg{i:03d}/mod000.py"
            rb.commit_change(repo_m, genv, path, content, f"change {i}")
            rb.commit_change(repo_g, genv, path, content, f"change {i}")
            order = ("m", "g") if i % 2 == 0 else ("g", "m")
            for who in order:
                if who == "m":
                    inc_m.append(mcpz_push(repo_m, "incremental"))
                else:
                    inc_g.append(git_push(repo_g, name_g, "incremental", "main"))
            version = f"1.0.{i + 1}"
            rb.bump_version(repo_m, genv, name_m, version)
            rb.bump_version(repo_g, genv, name_g, version)
            rb.run([rb.GIT, "tag", f"v{version}"], genv, cwd=repo_g)
            for who in order:
                if who == "m":
                    rel_m.append(mcpz_push(repo_m, "release"))
                else:
                    rel_g.append(git_push(repo_g, name_g, "release", "main", f"v{version}"))
            if rel_m[-1] is not None:
                check_published(reg, name_m, version)
            if rel_g[-1] is not None:
                check_published(reg, name_g, version)
        reg.stop()

    f_m, f_g = _median(first_m), _median(first_g)
    i_m, i_g = _median(inc_m), _median(inc_g)
    r_m, r_g = _median(rel_m), _median(rel_g)

    def row(
        label: str, ours: float | None, peer: float | None, goal: str, met: bool | None, no_peer: bool = False
    ) -> list[object]:
        verdict = "" if met is None else ("yes" if met else "NO")
        return [label, _s(ours), _s(peer, "" if no_peer else "failed"), _ratio(ours, peer), goal, verdict]

    def cpu_med(label: str) -> float | None:
        return rb.median(cpu[label]) if cpu.get(label) else None

    first_met = None if f_m is None or f_g is None else f_m <= FIRST_GOAL_RATIO * f_g
    inc_met = None if i_m is None else i_m < INCREMENTAL_GOAL_S
    rel_met = None if r_m is None else r_m < INCREMENTAL_GOAL_S
    print()
    print(
        rb.table(
            ["push (median)", "mcpz push", "git push", "ratio", "goal", "met"],
            [
                row(
                    f"first: {files:,} files / {total_bytes / 1e6:g} MB + tag (n={args.rounds})",
                    f_m,
                    f_g,
                    f"<= {FIRST_GOAL_RATIO:.0f}x git",
                    first_met if f_m is not None else False,
                ),
                row(
                    f"incremental: 1 file, branch (n={args.incremental})",
                    i_m,
                    i_g,
                    f"< {INCREMENTAL_GOAL_S} s",
                    inc_met if i_m is not None else False,
                ),
                row(
                    f"incremental release: mcpz.toml bump + tag (n={args.incremental})",
                    r_m,
                    r_g,
                    f"< {INCREMENTAL_GOAL_S} s",
                    rel_met if r_m is not None else False,
                ),
                row(
                    "  client CPU, first push (user+sys)",
                    cpu_med("mcpz push (first)"),
                    cpu_med("git push (first)"),
                    "",
                    None,
                ),
                row(
                    "  client CPU, incremental push",
                    cpu_med("mcpz push (incremental)"),
                    cpu_med("git push (incremental)"),
                    "",
                    None,
                ),
                row("CLI start-up: --version (n=5)", startup_mcpz, startup_git, "", None),
                row("CLI start-up: import mcpz.cli.app (n=5)", import_cli, None, "", None, no_peer=True),
                [
                    "first push: pack stored by the registry",
                    f"{packs.get('mcpz', 0) / 1e6:.1f} MB",
                    f"{packs.get('git', 0) / 1e6:.1f} MB",
                    "",
                    "",
                    "",
                ],
            ],
        )
    )
    print(
        f"(runs: first mcpz {_runs(first_m)}, git {_runs(first_g)}; incremental mcpz {_runs(inc_m)}, "
        f"git {_runs(inc_g)}; release mcpz {_runs(rel_m)}, git {_runs(rel_g)}; "
        f"{time.perf_counter() - started:.0f} s in all)"
    )
    for failure in failures:
        print(f"FAILED {failure}")

    def push_goal(text: str, goal: g.Goal, ours: float | None, peer: float | None = 0.0) -> g.Goal:
        """`goal` judged from the figure, unless a push it needs failed (no time to judge)."""
        if ours is None:
            return g.failed(text, "an mcpz push failed (see FAILED above)")
        if peer is None:
            return g.failed(text, "a git push failed (see FAILED above)")
        return goal

    first_ratio = _div(f_m, f_g)
    texts = ("first push within 2x of git push", "incremental push < 0.5 s", "incremental release < 0.5 s")
    goals = [
        push_goal(
            texts[0],
            g.at_most(texts[0], first_ratio, FIRST_GOAL_RATIO, f"{first_ratio or 0:.2f}x"),
            f_m,
            f_g,
        ),
        push_goal(texts[1], g.below(texts[1], i_m, INCREMENTAL_GOAL_S, _s(i_m)), i_m),
        push_goal(texts[2], g.below(texts[2], r_m, INCREMENTAL_GOAL_S, _s(r_m)), r_m),
    ]
    g.finish(
        "push",
        info,
        load_before,
        goals,
        {
            "files": files,
            "bytes": total_bytes,
            "first_push_s": {
                "mcpz": _r(f_m),
                "git": _r(f_g),
                "ratio": _r(_div(f_m, f_g)),
                "runs_mcpz": _runs(first_m),
                "runs_git": _runs(first_g),
            },
            "incremental_push_s": {
                "mcpz": _r(i_m),
                "git": _r(i_g),
                "ratio": _r(_div(i_m, i_g)),
                "runs_mcpz": _runs(inc_m),
                "runs_git": _runs(inc_g),
            },
            "incremental_release_s": {
                "mcpz": _r(r_m),
                "git": _r(r_g),
                "ratio": _r(_div(r_m, r_g)),
                "runs_mcpz": _runs(rel_m),
                "runs_git": _runs(rel_g),
            },
            "cli_startup_s": {
                "mcpz_version": _r(startup_mcpz),
                "git_version": _r(startup_git, 4),
                "import_mcpz_cli_app": _r(import_cli),
            },
            "client_cpu_s": {label: _r(rb.median(values)) for label, values in cpu.items()},
            "stored_pack_bytes": packs,
            "failures": failures,
        },
        smoke=args.smoke,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
