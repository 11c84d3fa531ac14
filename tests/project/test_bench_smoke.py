"""Every benchmark runs in the suite at its smallest size (`--smoke`), so a broken script fails CI.

A smoke run's figures mean nothing (tiny sizes, one round, a shared machine); what is checked is
that the script runs end to end, every answer it checks is right (no goal FAILED), every goal it
prints carries a verdict, and it ends with the one JSON line bench/README.md describes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import _goals as g  # noqa: E402

SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))
QUICK = {"bench_startup.py", "bench_commit.py", "bench_index.py"}


def run_smoke(script: str) -> tuple[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    last = done.stdout.strip().splitlines()[-1]
    return done.stdout, json.loads(last)


@pytest.mark.parametrize(
    "script", [pytest.param(s, marks=() if s in QUICK else pytest.mark.slow) for s in SCRIPTS]
)
def test_every_benchmark_runs_at_its_smallest_size_and_judges_every_goal(script: str) -> None:
    out, last = run_smoke(script)
    assert last["bench"] == script.removeprefix("bench_").removesuffix(".py")
    assert last["smoke"] is True
    assert {"cores_usable", "cpu", "python", "git"} <= set(last["machine"])
    assert len(last["load_average"]["before"]) == len(last["load_average"]["after"]) == 3
    goals = last["goals"]
    assert goals, f"{script} prints no goal"
    for text, judged in goals.items():
        assert judged["verdict"] in g.VERDICTS, (text, judged)
        assert judged["verdict"] != g.FAILED, f"{script}: {text}: {judged['detail']}"
        # Every goal in the JSON line is also printed, with the same verdict.
        assert f"goal: {text}: {judged['verdict']}" in out
    assert out.count("goal: ") == len(goals), "a goal line printed but missing from the JSON"


def test_docstrings_give_commands_that_work_from_a_fresh_clone() -> None:
    for script in SCRIPTS:
        text = (BENCH / script).read_text(encoding="utf-8")
        doc = text.split('"""')[1]
        assert "/work/" not in doc and ".venv/bin/python bench/" not in doc, script
        assert re.search(rf"^\s+python bench/{script}\b", doc, re.M), f"{script}: no usage line"
        assert "--smoke" in doc, script


def test_the_readme_names_every_benchmark() -> None:
    readme = (BENCH / "README.md").read_text(encoding="utf-8")
    for script in SCRIPTS:
        assert script in readme, script


# --- verdicts: computed from the numbers, a wrong answer never a time --------------------------


def test_a_wrong_lock_fails_its_goal_whatever_its_time() -> None:
    from bench_lock import faster

    # The bug this replaces: "0.83s WRONG" parsed as 0.83 s, faster than pip, so "met".
    wrong = g.Run(0.83, ok=False)
    assert wrong.good is None and wrong.cell() == "0.83s WRONG"
    goal = faster("faster than pip", wrong, g.Run(4.0), 1.0, "pip", strict=True)
    assert goal.verdict == g.FAILED
    assert faster("faster than pip", g.Run(0.83), g.Run(4.0), 1.0, "pip", strict=True).verdict == g.MET
    assert faster("faster than pip", g.Run(5.0), g.Run(4.0), 1.0, "pip", strict=True).verdict == g.MISSED


def test_a_missing_or_wrong_peer_leaves_the_goal_unmeasured_and_a_timed_out_peer_loses() -> None:
    from bench_lock import faster

    missing = faster("within 2x of uv", g.Run(0.8), g.Run(None, note="not installed"), 2.0, "uv")
    assert (missing.verdict, missing.detail) == (g.UNMEASURED, "uv: not installed")
    assert faster("x", g.Run(0.8), g.Run(0.1, ok=False), 2.0, "uv").verdict == g.UNMEASURED
    assert faster("x", g.Run(0.8), g.Run(None, note=">60s"), 2.0, "pip").verdict == g.MET


def test_memory_is_judged_by_its_slope_so_a_steady_leak_fails() -> None:
    from bench_gateway import overload_goals

    def rounds(after: list[float]) -> dict[str, Any]:
        return {
            "rounds": [
                {
                    "wrong_answers": 0,
                    "busy_503": 5,
                    "other": 0,
                    "registry_rss_mb_after": mb,
                    "node_rss_mb_after": 90.0,
                }
                for mb in after
            ]
        }

    # 3 MB per round: two peaks 6 MB apart passed the old "under 10 MB of growth" check.
    leak = overload_goals(rounds([100.0, 103.0, 106.0, 109.0, 112.0, 115.0]))
    assert [x.verdict for x in leak] == [g.MET, g.MISSED]
    assert "registry +3.00 MB/round" in leak[1].detail
    # Round 1 fills caches and is left out; the rest is noise around a flat line.
    flat = overload_goals(rounds([100.0, 140.0, 140.4, 139.8, 140.2, 140.1]))
    assert [x.verdict for x in flat] == [g.MET, g.MET]
    assert overload_goals(rounds([100.0, 101.0]))[1].verdict == g.UNMEASURED
