"""kill -9 at every step of a push: after a restart the version is fully published or fully absent.

The registry runs as its own process (`mcpz registry serve`) with the test-only hook
`MCPZ_TEST_CRASH_AT` naming one step of receiving a push; the real `git push` of a release makes
it die there with SIGKILL. It is then started again without the hook, and what a client sees is
checked: either the index lists the version and a clone of its tag works, or the index does not
know it, the tag is gone and the same push publishes it. Never a tag the index does not know (the
version 404s, re-pushing says "Everything up-to-date") nor a release whose tag cannot be fetched.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import account_token, isolate
from gitutil import api, bare_path, git, init_agent, ls_remote, quarantines, release_rows, set_version
from registryproc import RegistryProcess

from registry_server.git.crash_points import STEPS

pytestmark = pytest.mark.slow

# What each step must end as: the database commit is the moment a release exists.
EXPECTED = {step: "absent" for step in STEPS} | {"after-db-commit": "published"}


@dataclass
class Setup:
    registry: RegistryProcess
    token: str
    tmp: Path


def _work(tmp: Path, name: str) -> Path:
    return tmp / name.replace("/", "-") / "work"


def _prepare(registry: RegistryProcess, tmp: Path, known: Sequence[str] = ()) -> Setup:
    """Start once to create and migrate the database, make the account, push the `known`
    agents' main branch (no release yet), stop."""
    registry.start()
    token = account_token(registry.database_url, "acme", "read,publish")
    for name in known:
        work = _work(tmp, name)
        init_agent(work, name, "0.0.1")
        git("push", registry.git_url(name, token), "main", cwd=work)
    registry.stop()
    return Setup(registry, token, tmp)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One data folder and account for every step; each step pushes its own agent."""
    tmp = tmp_path_factory.mktemp("crash")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, tmp_path_factory.mktemp("home"))
        registry = RegistryProcess(tmp / "registry", tmp / "registry.log")
        try:
            yield _prepare(registry, tmp, known=[f"acme/known-{step}" for step in STEPS])
        finally:
            registry.stop()


def _published(registry: RegistryProcess, name: str, commit: str, where: Path) -> bool:
    """The index lists the version at `commit` and a clone of its tag checks out that commit."""
    response = api(registry, f"/v1/agents/{name}/0.1.0")
    if response.status_code != 200:
        return False
    assert response.json()["commit"] == commit
    git("clone", "-q", "--branch", "v0.1.0", registry.git_url(name), str(where))
    assert git("rev-parse", "HEAD", cwd=where).stdout.strip() == commit
    return True


@pytest.mark.parametrize("step", STEPS)
def test_a_release_push_killed_at_any_step_leaves_it_published_or_absent(setup: Setup, step: str) -> None:
    # The agent's repository exists (its branch was pushed); the push adds a commit and v0.1.0.
    _crash_and_check(setup, f"acme/known-{step}", step)


@pytest.mark.parametrize("step", ["mid-packs-moved", "after-refs-moved", "after-db-commit"])
def test_the_first_push_of_a_new_agent_killed_leaves_it_published_or_absent(setup: Setup, step: str) -> None:
    _crash_and_check(setup, f"acme/new-{step}", step)


@pytest.mark.postgres
@pytest.mark.parametrize("step", ["after-refs-moved", "after-db-commit"])
def test_the_same_on_postgresql_around_the_commit(postgres_url: str, tmp_path: Path, step: str) -> None:
    registry = RegistryProcess(tmp_path / "registry", tmp_path / "registry.log", database=postgres_url)
    try:
        name = "acme/known"
        _crash_and_check(_prepare(registry, tmp_path, known=[name]), name, step)
    finally:
        registry.stop()


def _crash_and_check(setup: Setup, name: str, step: str) -> None:
    registry, token = setup.registry, setup.token
    work = _work(setup.tmp, name)
    if work.exists():
        head = set_version(work, "0.1.0", name)
    else:
        head = init_agent(work, name, "0.1.0")
    git("tag", "v0.1.0", cwd=work)

    registry.start(crash_at=step)
    try:
        push = git("push", registry.git_url(name, token), "main", "v0.1.0", cwd=work, check=False)
        assert push.returncode != 0, f"the push survived the crash at {step}:\n{push.stderr}"
        assert registry.proc is not None
        assert registry.proc.wait(timeout=30) == -signal.SIGKILL, registry.tail()
    finally:
        registry.stop()

    registry.start()
    try:
        # Nothing half done is left: no quarantine, lock file or pack without its index.
        repo = bare_path(registry, name)
        assert quarantines(registry, name) == []
        assert sorted(repo.rglob("*.lock")) == []
        packs = repo / "objects" / "pack"
        assert [p for p in packs.glob("pack-*.pack") if not p.with_suffix(".idx").exists()] == []
        refs = ls_remote(registry.git_url(name))
        clone = work.parent / "clone"
        if _published(registry, name, head, clone):
            outcome = "published"
            assert refs.get("refs/tags/v0.1.0") == head
            again = git("push", registry.git_url(name, token), "main", "v0.1.0", cwd=work, check=False)
            assert again.returncode == 0, again.stderr
        else:
            outcome = "absent"
            assert "refs/tags/v0.1.0" not in refs, f"wedged: a tag the index does not know ({refs})"
            assert release_rows(registry, name) == []
            again = git("push", registry.git_url(name, token), "main", "v0.1.0", cwd=work, check=False)
            assert again.returncode == 0, again.stderr
            assert f"published {name} 0.1.0" in again.stderr, again.stderr
            assert _published(registry, name, head, clone)
        assert outcome == EXPECTED[step]
        assert release_rows(registry, name) == [("0.1.0", head)]
        assert quarantines(registry, name) == []
    finally:
        registry.stop()
