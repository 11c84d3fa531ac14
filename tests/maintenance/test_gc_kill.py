"""kill -9 during `mcpz registry gc`: every repository stays `git fsck --full` clean, nothing reachable goes.

gc runs as its own process (`python -m mcpz registry gc`) on a repository of several packs with
garbage in them, and is killed with SIGKILL: at random moments (several times, a seeded random
generator), and at each named step of its swap through the test-only hook `MCPZ_TEST_GC_CRASH_AT`
(the steps a random kill rarely hits: they take milliseconds). After each kill the repository
must pass `git fsck --full` with every ref's history whole; a complete run afterwards must then
finish the job and clear what the killed one left.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gcutil import age, build_repo
from gitutil import git

from registry_server.maintenance.repack import CRASH_STEPS, GC_TMP
from registry_server.maintenance.service import collect_garbage
from registry_server.settings import RegistrySettings
from registry_server.state import RegistryState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _gc_argv(data: Path) -> list[str]:
    return [sys.executable, "-m", "mcpz", "registry", "gc", "--data", str(data), "--grace", "now", "--json"]


def _fresh(template: Path, data: Path) -> Path:
    repo = data / "repos" / "acme" / "big.git"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(template, repo, symlinks=True)
    age(repo)
    return repo


def _assert_clean(repo: Path, refs: dict[str, str]) -> None:
    done = git("fsck", "--full", "--no-dangling", "--strict", cwd=repo, check=False)
    assert done.returncode == 0 and "missing" not in done.stdout + done.stderr, done.stdout + done.stderr
    for ref, sha in refs.items():
        assert git("rev-parse", ref, cwd=repo).stdout.strip() == sha
        # Every object of the ref's history is there and reads.
        git("rev-list", "--objects", "--missing=error", ref, cwd=repo)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    template = tmp_path / "template.git"
    build_repo(template, 20_000, 0.1, packs=4)
    # Loose objects too, reachable (a commit on main) and not, as other writers than pushes leave them.
    for i in range(20):
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=template,
            input=f"garbage {i}\n",
            text=True,
            check=True,
        )
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@e"
    loose = subprocess.run(
        ["git", "commit-tree", "main^{tree}", "-p", "main", "-m", "loose"],
        cwd=template, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    git("update-ref", "refs/heads/main", loose, cwd=template)
    data = tmp_path / "data"
    RegistryState.open(RegistrySettings.load(data_dir=data)).close()
    refs = {
        ref: git("rev-parse", ref, cwd=template).stdout.strip()
        for ref in ("refs/heads/main", "refs/tags/v1.0.0")
    }
    return template, data, refs


def _finish_and_check(data: Path, repo: Path, refs: dict[str, str]) -> None:
    state = RegistryState.open(RegistrySettings.load(data_dir=data))
    try:
        collect_garbage(state, grace=0)
    finally:
        state.close()
    _assert_clean(repo, refs)
    assert not any((repo / GC_TMP).iterdir()) if (repo / GC_TMP).exists() else True
    assert all(p.with_suffix(".idx").exists() for p in (repo / "objects" / "pack").glob("*.pack"))
    count = git("count-objects", "-v", cwd=repo).stdout
    assert "\ncount: 0\n" in "\n" + count and "packs: 1\n" in count, count


def test_kill_at_random_moments(setup: tuple[Path, Path, dict[str, str]]) -> None:
    template, data, refs = setup
    repo = _fresh(template, data)
    started = time.monotonic()
    subprocess.run(_gc_argv(data), check=True, capture_output=True)
    whole = time.monotonic() - started
    _assert_clean(repo, refs)
    rng = random.Random(18)
    for _round in range(6):
        repo = _fresh(template, data)
        proc = subprocess.Popen(_gc_argv(data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * whole)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_clean(repo, refs)
    _finish_and_check(data, repo, refs)


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_kill_at_each_step_of_the_swap(setup: tuple[Path, Path, dict[str, str]], step: str) -> None:
    template, data, refs = setup
    repo = _fresh(template, data)
    env = {**os.environ, "MCPZ_TEST_GC_CRASH_AT": step}
    done = subprocess.run(_gc_argv(data), env=env, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    _assert_clean(repo, refs)
    _finish_and_check(data, repo, refs)
