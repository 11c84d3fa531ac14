"""A longer schemathesis run against the registry's API than the suite's: the same test
(tests/registry/test_api_fuzz.py: in-process ASGI, with and without a token; no 5xx, every answer as the
OpenAPI document says), with more examples per operation and fresh random seeds each round.

From a fresh clone:

    python -m venv .venv && .venv/bin/pip install -e '.[test]'
    .venv/bin/python bench/fuzz_api.py --seconds 300       # rounds of 50 examples until 5 min are up
    .venv/bin/python bench/fuzz_api.py --examples 1000     # one round, 1,000 examples per operation

It stops at the first failing round and leaves pytest's report of it (the failing requests, each
with a curl command to replay it) on the terminal; exit code 1 then, 0 if every round passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = ROOT / "tests" / "test_api_fuzz.py"


def run_round(examples: int) -> int:
    env = {**os.environ, "MCPZ_FUZZ_EXAMPLES": str(examples)}
    command = [sys.executable, "-m", "pytest", str(TEST), "-q", "-p", "no:cacheprovider", "--timeout", "0"]
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--seconds", type=float, help="keep running rounds until this many seconds passed")
    bound.add_argument("--examples", type=int, help="one round with this many examples per operation")
    parser.add_argument(
        "--round-examples", type=int, default=50, help="examples per operation in a --seconds round"
    )
    args = parser.parse_args()

    started = time.monotonic()
    rounds = 0
    examples = 0
    if args.seconds is None:
        per_round = args.examples or 200
        code = run_round(per_round)
        rounds, examples = 1, per_round
    else:
        code = 0
        while time.monotonic() - started < args.seconds and code == 0:
            code = run_round(args.round_examples)
            rounds += 1
            examples += args.round_examples
    elapsed = time.monotonic() - started
    verdict = "passed" if code == 0 else "FAILED"
    print(f"{verdict}: {rounds} round(s), {examples} examples per operation and token mode, {elapsed:.0f} s")
    print(
        json.dumps(
            {
                "rounds": rounds,
                "examples_per_operation": examples,
                "seconds": round(elapsed, 1),
                "ok": code == 0,
            }
        )
    )
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
