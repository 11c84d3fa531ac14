"""What every benchmark shares at its end: goals judged from the numbers, peers found or installed,
the smoke switch, the load average, and the final JSON line.

A goal's verdict is one of four words, always computed from measurements, never written by hand:

- `met` / `MISSED`: the figure was measured and the bound holds or does not;
- `FAILED`: a run gave a wrong answer or did not finish, so there is no figure to judge: a wrong
  answer never counts as a time ("0.83s WRONG" is not 0.83 s);
- `unmeasured`: the peer is missing (`--no-peers`, or a smoke run without it) or the size was
  skipped; the goal is still printed, with why.

`--smoke` (or `MCPZ_BENCH_SMOKE=1`) runs a benchmark at its smallest size, one round, with peers
optional: tests/project/test_bench_smoke.py runs every script that way, so a broken script fails the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# A user's install has its bytecode; a shell that sets PYTHONDONTWRITEBYTECODE (some development
# environments do) would make every mcpz subprocess of a benchmark recompile the editable
# package from source, adding 0.1-0.2 s to each command. Every benchmark imports this module.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


MET, MISSED, FAILED, UNMEASURED = "met", "MISSED", "FAILED", "unmeasured"
VERDICTS = (MET, MISSED, FAILED, UNMEASURED)
SMOKE_ENV = "MCPZ_BENCH_SMOKE"


class PeerMissing(SystemExit):
    """A peer the benchmark compares against is not installed and could not be installed."""


# --- the smoke switch ----------------------------------------------------------------------------


def add_smoke(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke",
        action="store_true",
        default=os.environ.get(SMOKE_ENV, "") not in ("", "0"),
        help=f"smallest size, one round, peers optional (also {SMOKE_ENV}=1); figures mean nothing",
    )


# --- goals -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    text: str
    verdict: str
    detail: str = ""

    def line(self) -> str:
        return f"goal: {self.text}: {self.verdict}" + (f" ({self.detail})" if self.detail else "")


def at_most(text: str, value: float | None, bound: float, detail: str = "", missing: str = "") -> Goal:
    """`value <= bound`; None is `unmeasured` (with `missing` as the reason)."""
    if value is None:
        return Goal(text, UNMEASURED, missing or detail)
    return Goal(text, MET if value <= bound else MISSED, detail)


def below(text: str, value: float | None, bound: float, detail: str = "", missing: str = "") -> Goal:
    """`value < bound`; None is `unmeasured` (with `missing` as the reason)."""
    if value is None:
        return Goal(text, UNMEASURED, missing or detail)
    return Goal(text, MET if value < bound else MISSED, detail)


def holds(text: str, ok: bool, detail: str = "") -> Goal:
    return Goal(text, MET if ok else MISSED, detail)


def failed(text: str, why: str) -> Goal:
    return Goal(text, FAILED, why)


def unmeasured(text: str, why: str) -> Goal:
    return Goal(text, UNMEASURED, why)


def slope(values: Sequence[float]) -> float | None:
    """Least-squares slope of `values` against their index (units per step); None under 3 points,
    where a trend cannot be told from noise."""
    n = len(values)
    if n < 3:
        return None
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def print_goals(goals: Iterable[Goal]) -> None:
    for goal in goals:
        print(goal.line())


def goals_json(goals: Iterable[Goal]) -> dict[str, dict[str, str]]:
    return {g.text: {"verdict": g.verdict, "detail": g.detail} for g in goals}


# --- timed runs that may be wrong ------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One timed run: its seconds, whether its answer was right, and why there is no time."""

    seconds: float | None
    ok: bool = True
    note: str = ""

    @property
    def good(self) -> float | None:
        """The time, only if the run finished with a right answer."""
        return self.seconds if self.ok else None

    def cell(self) -> str:
        if self.seconds is None:
            return self.note or "failed"
        return f"{self.seconds:.2f}s" + ("" if self.ok else " WRONG")

    def as_json(self) -> dict[str, object]:
        return {"seconds": self.seconds, "ok": self.ok, "note": self.note}


# --- peers ---------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """`name` beside this interpreter (the venv's bin) or on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def peer(name: str, pip_name: str, *, optional: bool, bench: str) -> str | None:
    """The peer program `name`, installed from PyPI into this interpreter's environment with pip when
    missing. None if it is missing and `optional` (a smoke run); otherwise a missing peer that pip
    cannot install ends the benchmark, saying how to get it."""
    found = find_tool(name)
    if found or optional:
        return found
    print(f"installing the peer {name}: {sys.executable} -m pip install {pip_name}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", pip_name],
        capture_output=True,
        text=True,
    )
    found = find_tool(name)
    if found:
        return found
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise PeerMissing(
        f"{bench}: the peer `{name}` is not installed and pip could not install it ({last}); "
        f"install it with `python -m pip install {pip_name}`, or pass --no-peers (its goals then "
        "print as unmeasured)"
    )


# --- the machine's load and the last line ----------------------------------------------------------


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def finish(
    bench: str,
    machine: dict[str, object],
    load_before: Sequence[float],
    goals: Sequence[Goal],
    figures: dict[str, object],
    smoke: bool = False,
) -> None:
    """Print the load average and every goal's verdict, then the one JSON line the run ends with."""
    after = load()
    print(
        f"load average (1, 5, 15 min) before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in after)}; {machine.get('cores_usable')} usable cores"
    )
    if smoke:
        print("smoke run: smallest size, one round; the figures and verdicts mean nothing")
    print_goals(goals)
    payload = {
        "bench": bench,
        "smoke": smoke,
        "machine": machine,
        "load_average": {"before": list(load_before), "after": after},
        "goals": goals_json(goals),
        **figures,
    }
    print(json.dumps(payload, sort_keys=True, default=str), flush=True)
