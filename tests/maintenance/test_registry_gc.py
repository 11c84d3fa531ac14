"""`mcpz registry gc` on a seeded registry that serves: garbage goes, every release stays.

Real registry (in a thread), real `git` pushing and cloning, real SQLite. Unreachable objects are
made the way they happen: a branch pushed and deleted, main force-pushed over.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from gitutil import bare_path, commit, git, init_agent, objects_of, readable, rev_parse, set_version

from registry_server.accounts.models import AuthNonce, Token
from registry_server.db import Database
from registry_server.maintenance.service import collect_garbage
from registry_server.orm import utcnow
from registry_server.releases import service as releases
from registry_server.settings import RegistrySettings
from registry_server.state import RegistryState

pytestmark = pytest.mark.slow

NAME = "acme/x"


def _age_everything(repo: Path, seconds: float = 30 * 86400) -> None:
    """Make every pack and loose object look `seconds` old, past the default grace period."""
    moment = time.time() - seconds
    for path in (repo / "objects").rglob("*"):
        if path.is_file():
            os.utime(path, (moment, moment))


def _fsck(repo: Path) -> str:
    done = git("fsck", "--full", "--no-dangling", cwd=repo, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.fixture
def state(sqlite_registry: Any) -> Iterator[RegistryState]:
    """The serving registry's data folder, opened as `mcpz registry gc` opens it."""
    opened = RegistryState.open(RegistrySettings.load(data_dir=sqlite_registry.data_dir))
    yield opened
    opened.close()


def _seed(registry: Any, tmp: Path) -> dict[str, Any]:
    """Releases 0.1.0 (yanked) and 0.2.0, a deleted branch and a force-pushed main: garbage."""
    token = registry.account("acme")
    url = registry.git_url(NAME, token)
    work = tmp / "work"
    init_agent(work, NAME, "0.1.0")
    git("tag", "v0.1.0", cwd=work)
    set_version(work, "0.2.0", NAME)
    git("tag", "v0.2.0", cwd=work)
    git("push", "-q", url, "main", "v0.1.0", "v0.2.0", cwd=work)
    kept = objects_of(work, "main")
    # A branch pushed, then deleted: its commits and blobs are unreachable.
    git("checkout", "-q", "-b", "junk", cwd=work)
    for i in range(5):
        commit(work, {f"junk{i}.txt": f"junk {i}\n" * 50}, f"junk {i}")
    git("push", "-q", url, "junk", cwd=work)
    git("push", "-q", url, ":junk", cwd=work)
    # main moved on, then was force-pushed back: that commit is unreachable too.
    git("checkout", "-q", "main", cwd=work)
    commit(work, {"later.txt": "later\n"}, "later")
    git("push", "-q", url, "main", cwd=work)
    garbage = objects_of(work, "junk", "main", exclude=["HEAD~1"])
    git("reset", "-q", "--hard", "HEAD~1", cwd=work)
    git("push", "-q", "--force", url, "main", cwd=work)
    db = Database(registry.database_url)
    try:
        with db.session() as session:
            releases.set_yanked(session, NAME, "0.1.0", True, "broken")
            session.commit()
    finally:
        db.dispose()
    repo = bare_path(registry, NAME)
    _age_everything(repo)
    return {
        "token": token,
        "url": url,
        "work": work,
        "repo": repo,
        "releases": {"0.1.0": rev_parse(work, "v0.1.0"), "0.2.0": rev_parse(work, "v0.2.0")},
        "kept": kept,
        "garbage": garbage,
    }


@contextlib.contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _clone_and_verify(url: str, dest: Path, tag: str, commit_id: str) -> None:
    git("clone", "-q", "--branch", tag, url, str(dest))
    assert rev_parse(dest, "HEAD") == commit_id
    _fsck(dest)


def test_gc_keeps_every_release_and_drops_garbage(
    sqlite_registry: Any, state: RegistryState, tmp_path: Path, cli: Any
) -> None:
    seeded = _seed(sqlite_registry, tmp_path)
    repo: Path = seeded["repo"]
    assert len(readable(sqlite_registry, NAME, seeded["garbage"])) == len(seeded["garbage"])

    dry = cli("registry", "gc", "--data", str(sqlite_registry.data_dir), "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] is True
    objects = next(k for k in planned["kinds"] if k["kind"] == "git objects")
    assert objects["count"] == len(seeded["garbage"]) and objects["bytes"] > 0
    # A dry run frees nothing.
    assert len(readable(sqlite_registry, NAME, seeded["garbage"])) == len(seeded["garbage"])

    done = cli("registry", "gc", "--data", str(sqlite_registry.data_dir), "--json")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    freed = next(k for k in report["kinds"] if k["kind"] == "git objects")
    assert freed["count"] == len(seeded["garbage"]) and freed["bytes"] > 0 and report["freed_bytes"] > 0
    assert readable(sqlite_registry, NAME, seeded["garbage"]) == []
    assert readable(sqlite_registry, NAME, seeded["kept"]) == sorted(seeded["kept"])
    _fsck(repo)
    # Every published release still clones with the real git, yanked or not, from the serving registry.
    for version, commit_id in seeded["releases"].items():
        _clone_and_verify(seeded["url"], tmp_path / f"clone-{version}", f"v{version}", commit_id)

    # A second run has nothing left to do, and remembers it: a third does not even walk.
    again = json.loads(cli("registry", "gc", "--data", str(sqlite_registry.data_dir), "--json").stdout)
    assert again["freed_bytes"] == 0
    from registry_server.maintenance import repack

    assert (repo / repack.GC_DONE).exists()
    releases = list(seeded["releases"].values())
    assert repack.collect(repo, release_commits=releases, cutoff=time.time(), writer_lock=_no_lock).kept == 0
    # The release commits are part of what it remembers: other ones, and it walks again.
    assert repack.collect(repo, release_commits=[], cutoff=time.time(), writer_lock=_no_lock).kept > 0


def test_grace_period_keeps_recent_garbage(
    sqlite_registry: Any, state: RegistryState, tmp_path: Path
) -> None:
    seeded = _seed(sqlite_registry, tmp_path)
    _age_everything(seeded["repo"], 60)  # a minute old: inside the default two weeks
    report = collect_garbage(state)
    assert report.freed("git objects").count == 0
    assert len(readable(sqlite_registry, NAME, seeded["garbage"])) == len(seeded["garbage"])
    report = collect_garbage(state, grace=0)
    assert report.freed("git objects").count == len(seeded["garbage"])


def test_release_in_the_index_is_a_root_without_its_tag(
    sqlite_registry: Any, state: RegistryState, tmp_path: Path
) -> None:
    """A release is reachable for ever: even with its tag gone, the index's commit is kept."""
    seeded = _seed(sqlite_registry, tmp_path)
    repo: Path = seeded["repo"]
    git("update-ref", "-d", "refs/tags/v0.1.0", cwd=repo)
    git("update-ref", "-d", "refs/tags/v0.2.0", cwd=repo)
    git("update-ref", "refs/heads/main", seeded["releases"]["0.1.0"], cwd=repo)
    _age_everything(repo)
    collect_garbage(state, grace=0)
    release_objects = objects_of(seeded["work"], seeded["releases"]["0.2.0"])
    assert readable(sqlite_registry, NAME, release_objects) == sorted(release_objects)
    _fsck(repo)


def test_push_racing_gc_lands_whole(sqlite_registry: Any, state: RegistryState, tmp_path: Path) -> None:
    """A push that lands between gc's walk and its swap: its commit and everything under it stay."""
    seeded = _seed(sqlite_registry, tmp_path)
    work: Path = seeded["work"]
    pushed: list[str] = []

    def push_now() -> None:
        set_version(work, "0.3.0", NAME)
        git("tag", "v0.3.0", cwd=work)
        git("push", "-q", seeded["url"], "main", "v0.3.0", cwd=work)
        pushed.append(rev_parse(work, "HEAD"))

    report = collect_garbage(state, grace=0, before_swap=push_now)
    assert pushed and not report.deferred
    assert report.freed("git objects").count == len(seeded["garbage"])
    _fsck(seeded["repo"])
    everything = objects_of(work, "v0.3.0")
    assert readable(sqlite_registry, NAME, everything) == sorted(everything)
    _clone_and_verify(seeded["url"], tmp_path / "clone", "v0.3.0", pushed[0])


def test_gc_defers_when_a_moved_ref_needs_garbage(
    sqlite_registry: Any, state: RegistryState, tmp_path: Path
) -> None:
    """A ref moved back onto unreachable objects during gc: nothing of them is deleted."""
    seeded = _seed(sqlite_registry, tmp_path)
    work: Path = seeded["work"]
    junk = rev_parse(work, "junk")

    def revive() -> None:
        git("push", "-q", seeded["url"], "junk", cwd=work)

    report = collect_garbage(state, grace=0, before_swap=revive)
    assert report.deferred and report.freed("git objects").count == 0
    alive = objects_of(work, junk)
    assert readable(sqlite_registry, NAME, alive) == sorted(alive)
    _fsck(seeded["repo"])


@pytest.fixture
def any_state(registry: Any) -> Iterator[RegistryState]:
    """The data folder of a registry on SQLite, then on PostgreSQL, opened as gc opens it."""
    env = {"MCPZ_DATABASE_URL": registry.database_url}
    opened = RegistryState.open(RegistrySettings.load(data_dir=registry.data_dir, env=env))
    yield opened
    opened.close()


def test_expired_rows_go_and_live_ones_stay(
    registry: Any, any_state: RegistryState, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = any_state
    monkeypatch.setenv("MCPZ_DATABASE_URL", registry.database_url)
    registry.account("acme")
    now = utcnow()
    with state.db.session() as session:
        account_id = session.query(Token.account_id).first()[0]  # type: ignore[index]
        session.add_all(
            [
                AuthNonce(
                    nonce="old", created_at=now - timedelta(hours=2), expires_at=now - timedelta(hours=1)
                ),
                AuthNonce(nonce="live", created_at=now, expires_at=now + timedelta(minutes=5)),
            ]
        )
        for i, (expires, revoked) in enumerate(
            [
                (now - timedelta(days=60), None),  # expired long ago: goes
                (None, now - timedelta(days=60)),  # revoked long ago: goes
                (now - timedelta(days=1), None),  # expired yesterday: kept for the retention
                (now + timedelta(days=1), None),  # live
            ]
        ):
            session.add(
                Token(
                    account_id=account_id,
                    secret_hash=f"{i:064d}",
                    prefix=f"t{i}",
                    name=f"token {i}",
                    scopes="read",
                    created_at=now - timedelta(days=90),
                    expires_at=expires,
                    revoked_at=revoked,
                )
            )
        session.commit()
    dry = json.loads(cli("registry", "gc", "--data", str(registry.data_dir), "--dry-run", "--json").stdout)
    counts = {k["kind"]: k["count"] for k in dry["kinds"]}
    assert counts["nonces"] == 1 and counts["tokens"] == 2
    with state.db.session() as session:
        assert session.query(AuthNonce).count() == 2
    cli("registry", "gc", "--data", str(registry.data_dir), "--json")
    with state.db.session() as session:
        assert [n.nonce for n in session.query(AuthNonce)] == ["live"]
        prefixes = {t.prefix for t in session.query(Token)}
    assert "t0" not in prefixes and "t1" not in prefixes
    assert {"t2", "t3"} <= prefixes


def test_flushed_usage_segment_goes_and_unflushed_stays(sqlite_registry: Any, state: RegistryState) -> None:
    from registry_server.usage.events import UsageEvent
    from registry_server.usage.service import UsageRecorder

    sqlite_registry.account("acme")
    with state.db.session() as session:
        account_id = session.query(Token.account_id).first()[0]  # type: ignore[index]

    def event(i: int) -> UsageEvent:
        return UsageEvent.from_dict(
            {
                "id": f"ev{i}",
                "account_id": account_id,
                "token_id": None,
                "agent": NAME,
                "version": "0.1.0",
                "tool": "t",
                "deployment": NAME,
                "replica_id": "r",
                "node_id": "n",
                "started_us": 1,
                "duration_us": 1,
                "outcome": "ok",
                "bytes_in": 1,
                "bytes_out": 1,
            }
        )

    UsageRecorder(state).record_many([event(1)])
    usage = state.settings.data_dir / "usage"
    flushed = usage / "journal.901.flushing"
    waiting = usage / "journal.902.flushing"
    flushed.write_text(json.dumps(event(1).to_dict()) + "\n")
    waiting.write_text(json.dumps(event(2).to_dict()) + "\n")
    report = collect_garbage(state)
    assert report.freed("usage segments").count == 1
    assert not flushed.exists() and waiting.exists()


def test_leftover_quarantines_and_old_empty_repositories_go(
    sqlite_registry: Any, state: RegistryState, tmp_path: Path
) -> None:
    import fcntl

    from registry_server.git.recovery import QUARANTINE_LOCK

    seeded = _seed(sqlite_registry, tmp_path)
    objects: Path = seeded["repo"] / "objects"
    left = objects / "incoming-0123456789abcdef"  # a killed push's
    (left / "pack").mkdir(parents=True)
    (left / "pack" / "tmp_pack_x").write_bytes(b"x" * 500)
    held = objects / "incoming-fedcba9876543210"  # a push running right now
    held.mkdir()
    old_empty = state.repos.path_of("acme/old-empty")
    state.repos.create("acme/old-empty").close()
    _age_everything(old_empty)
    for folder in (old_empty, old_empty / "objects"):
        os.utime(folder, (time.time() - 30 * 86400,) * 2)
    state.repos.create("acme/new-empty").close()  # a push may be filling it right now
    with open(held / QUARANTINE_LOCK, "wb") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        dry = collect_garbage(state, dry_run=True)
        assert dry.freed("quarantines").count == 1 and dry.freed("quarantines").bytes == 500
        assert dry.freed("empty repositories").detail == ["acme/old-empty"]
        assert left.exists() and old_empty.exists()
        report = collect_garbage(state)
    assert report.freed("quarantines").count == 1 and report.freed("empty repositories").count == 1
    assert not left.exists() and held.exists()
    assert not old_empty.exists() and state.repos.path_of("acme/new-empty").exists()
    _fsck(seeded["repo"])


def test_clones_racing_gc_get_everything(sqlite_registry: Any, state: RegistryState, tmp_path: Path) -> None:
    """Clones run back to back while gc rewrites the repository's pack again and again: each one
    is whole. (Refs do not move meanwhile: a clone whose ref moved between its two HTTP requests
    is refused by the protocol, gc or not.)"""
    import subprocess
    import threading

    token = sqlite_registry.account("acme")
    url = sqlite_registry.git_url(NAME, token)
    work = tmp_path / "work"
    init_agent(work, NAME, "0.1.0", files={f"f{i}.txt": f"{i}\n" * 200 for i in range(300)})
    git("push", "-q", url, "main", cwd=work)
    head = rev_parse(work, "HEAD")
    repo = bare_path(sqlite_registry, NAME)
    stop = threading.Event()
    failures: list[str] = []
    clones: list[Path] = []

    def clone_again_and_again() -> None:
        while not stop.is_set():
            dest = tmp_path / f"clone-{len(clones)}"
            done = git("clone", "-q", url, str(dest), check=False)
            clones.append(dest)
            if done.returncode != 0 or rev_parse(dest, "HEAD") != head:
                failures.append(done.stderr)

    cloner = threading.Thread(target=clone_again_and_again)
    cloner.start()
    rewrites = 0
    try:
        for i in range(12):
            # A loose object makes each run rewrite the pack (and delete the one clones read).
            subprocess.run(
                ["git", "hash-object", "-w", "--stdin"], cwd=repo, input=f"loose {i}\n", text=True, check=True
            )
            report = collect_garbage(state, grace=0)
            rewrites += report.freed("git objects").count
    finally:
        stop.set()
        cloner.join()
    assert rewrites == 12 and len(clones) >= 2
    assert not failures, failures[:3]
    _fsck(repo)


def test_a_fetch_that_listed_the_packs_before_gc_swapped_them_still_serves(
    sqlite_registry: Any, state: RegistryState, tmp_path: Path
) -> None:
    """The race the clones above can hit: a fetch's store lists the packs, gc deletes one before
    the fetch opens its index. The pack written for the fetch is still whole."""
    import io

    from dulwich.object_format import SHA1
    from dulwich.pack import PackData
    from dulwich.repo import Repo

    from registry_server.git.pack_reuse import write_pack_reusing

    seeded = _seed(sqlite_registry, tmp_path)
    wanted = sorted(objects_of(seeded["work"], "main"))
    repo = Repo(str(seeded["repo"]), bare=True)
    try:
        listed = repo.object_store.packs  # listed; their indexes not read yet
        assert listed
        assert collect_garbage(state, grace=0).freed("git objects").count == len(seeded["garbage"])
        out = io.BytesIO()
        write_pack_reusing(
            out.write, repo.object_store, [w.encode() for w in wanted], object_format=repo.object_format
        )
    finally:
        repo.close()
    path = tmp_path / "fetched.pack"
    path.write_bytes(out.getvalue())
    data = PackData(str(path), object_format=SHA1)
    try:
        assert len(data) == len(wanted)
        data.check()
    finally:
        data.close()
