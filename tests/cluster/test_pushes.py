"""Pushes of one repository through two replicas at once: the database serializes them
(registry_server.git.pushlock), so one wins, the other is refused cleanly, and the repository
stays whole. Two `mcpz registry serve --replica` processes on one PostgreSQL and one data folder,
real `git push` clients."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import account_token
from gitutil import git, git_popen, init_agent, rev_parse, set_version
from meshutil import until
from registryproc import RegistryProcess
from sqlalchemy import create_engine, text

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def replica(tmp_path: Path, postgres_url: str, name: str) -> RegistryProcess:
    env = {"MCPZ_REGISTRY_REPLICA": "true", "MCPZ_REGISTRY_REPLICA_NAME": name}
    return RegistryProcess(tmp_path / "data", tmp_path / f"{name}.log", env=env, database=postgres_url)


def releases(postgres_url: str, name: str) -> list[tuple[str, str]]:
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT r.version, r.commit FROM releases r JOIN agents a ON a.id = r.agent_id"
                    " WHERE a.name = :name ORDER BY r.version"
                ),
                {"name": name},
            )
            return [(version, commit) for version, commit in rows]
    finally:
        engine.dispose()


def race(urls: list[str], works: list[Path], refs: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """`git push` of `refs` from each working copy to its URL, all started before any is awaited."""
    procs = [
        git_popen("push", "--porcelain", url, *refs, cwd=work) for url, work in zip(urls, works, strict=True)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_the_same_version_pushed_through_two_replicas_at_once_gives_one_release(
    tmp_path: Path, postgres_url: str
) -> None:
    a, b = replica(tmp_path, postgres_url, "a"), replica(tmp_path, postgres_url, "b")
    try:
        a.start()
        b.start()
        token = account_token(postgres_url, "acme", "read,publish")
        urls = [a.git_url("{}", token), b.git_url("{}", token)]
        # Several rounds: a new agent (both replicas make its repository and row at once), then
        # versions of one already published.
        for round_, name in enumerate(["acme/race", "acme/race", "acme/race", "acme/other"]):
            version = f"0.{round_ + 1}.0"
            works = [tmp_path / "work" / f"{name.replace('/', '-')}-{side}" for side in "ab"]
            heads = []
            for side, work in zip("ab", works, strict=True):
                if (work / ".git").exists():
                    git("fetch", "-q", urls[0].format(name), "main", cwd=work)
                    git("reset", "-q", "--hard", "FETCH_HEAD", cwd=work)
                    old_tags = git("tag", cwd=work).stdout.split()
                    if old_tags:
                        git("tag", "-d", *old_tags, cwd=work)
                    set_version(work, version, name)
                    heads.append(_commit_side(work, side))
                else:
                    init_agent(work, name, version, files={"side.txt": side})
                    heads.append(rev_parse(work, "HEAD"))
                git("tag", f"v{version}", cwd=work)
            pushed = race([u.format(name) for u in urls], works, ["main", f"v{version}"])
            won = [i for i, p in enumerate(pushed) if p.returncode == 0]
            assert len(won) == 1, [(p.returncode, p.stdout, p.stderr) for p in pushed]
            lost = pushed[1 - won[0]]
            # The loser's client sees each ref rejected, with the reason: no hang, no half state.
            assert "[remote rejected]" in lost.stderr or "!\t" in lost.stdout, lost
            assert "stale info" in lost.stdout + lost.stderr, lost
            rows = releases(postgres_url, name)
            assert rows[-1] == (version, heads[won[0]])
            assert [v for v, _c in rows].count(version) == 1
            bare = tmp_path / "data" / "repos" / f"{name}.git"
            assert git("rev-parse", f"refs/tags/v{version}", cwd=bare).stdout.strip() == heads[won[0]]
            assert git("rev-parse", "refs/heads/main", cwd=bare).stdout.strip() == heads[won[0]]
            git("fsck", "--strict", cwd=bare)
        assert not list((tmp_path / "data" / "repos" / "acme").glob("*/objects/incoming-*"))
    finally:
        a.stop()
        b.stop()


def _commit_side(work: Path, side: str) -> str:
    """A commit only this side makes, so the two pushes of a version carry different commits."""
    (work / "side.txt").write_text(f"{side} {rev_parse(work, 'HEAD')}\n")
    git("commit", "-q", "-am", f"side {side}", cwd=work)
    return rev_parse(work, "HEAD")


def test_a_push_waits_for_the_databases_lock_on_its_repository(tmp_path: Path, postgres_url: str) -> None:
    """What serializes pushes across replicas is PostgreSQL's, not a file lock: while another
    session holds the repository's advisory lock, a push waits for it, then lands."""
    a = replica(tmp_path, postgres_url, "a")
    engine = create_engine(postgres_url)
    try:
        a.start()
        token = account_token(postgres_url, "acme", "read,publish")
        work = tmp_path / "work"
        head = init_agent(work, "acme/held", "0.1.0")
        git("tag", "v0.1.0", cwd=work)
        key = {"key": "push:acme/held"}
        with engine.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(hashtextextended(:key, 0))"), key)
            push = git_popen("push", a.git_url("acme/held", token), "main", "v0.1.0", cwd=work)

            def waiting() -> bool:
                with engine.connect() as conn:
                    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    return bool(conn.execute(text(query)).scalar())

            until(waiting, 60, "the push to wait for the repository's lock")
            assert push.poll() is None and releases(postgres_url, "acme/held") == []
            holder.execute(text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"), key)
            holder.commit()
        _out, err = push.communicate(timeout=60)
        assert push.returncode == 0, err
        assert releases(postgres_url, "acme/held") == [("0.1.0", head)]
    finally:
        engine.dispose()
        a.stop()
