"""What a crash or a broken push leaves in a repository never wedges it.

Ref lock files and quarantines left by a killed registry are removed when it starts again; a ref
locked while it serves refuses the push with a reason git shows; a push that was refused or
abandoned leaves no empty repository behind. (Kills at each step of a push: test_push_crash.py.)
"""

from __future__ import annotations

import fcntl
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from conftest import LiveRegistry, start_registry
from gitutil import (
    api,
    bare_path,
    git,
    init_agent,
    ls_remote,
    objects_of,
    quarantines,
    readable,
    release_rows,
    set_version,
)

from registry_server.git.recovery import QUARANTINE_LOCK
from registry_server.storage import RepoStore

NAME = "acme/x"


class Restartable:
    """An in-process registry on one data folder that can be stopped and started again."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.live: LiveRegistry = start_registry(data_dir)

    def restart(self) -> LiveRegistry:
        self.live.stop()
        self.live = start_registry(self.data_dir)
        return self.live


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Restartable]:
    r = Restartable(tmp_path / "registry")
    yield r
    r.live.stop()


def _publish(live: LiveRegistry, work: Path, token: str, version: str = "0.1.0") -> str:
    if not work.exists():
        head = init_agent(work, NAME, version)
    else:
        head = set_version(work, version, NAME)
    git("tag", f"v{version}", cwd=work)
    done = git("push", live.git_url(NAME, token), "main", f"v{version}", cwd=work)
    assert f"published {NAME} {version}" in done.stderr
    return head


def _lock_files(live: LiveRegistry) -> list[Path]:
    return sorted(bare_path(live, NAME).rglob("*.lock"))


def test_ref_locks_left_by_a_crash_are_cleared_at_start_up(reg: Restartable, tmp_path: Path) -> None:
    token = reg.live.account("acme")
    work = tmp_path / "work"
    _publish(reg.live, work, token)
    repo = bare_path(reg.live, NAME)
    reg.live.stop()
    # What git's lock protocol leaves when the process holding the locks is killed.
    for rel in ("refs/heads/main.lock", "refs/tags/v0.2.0.lock", "packed-refs.lock", "HEAD.lock"):
        (repo / rel).write_bytes(b"")

    live = reg.restart()
    assert _lock_files(live) == []
    head = _publish(live, work, token, "0.2.0")
    assert ls_remote(live.git_url(NAME))["refs/tags/v0.2.0"] == head
    assert api(live, f"/v1/agents/{NAME}/0.2.0").json()["commit"] == head


@pytest.mark.parametrize("locked", ["refs/heads/main", "refs/tags/v0.2.0"])
def test_a_locked_ref_refuses_the_push_with_a_reason_git_shows(
    reg: Restartable, tmp_path: Path, locked: str
) -> None:
    token = reg.live.account("acme")
    work = tmp_path / "work"
    first = _publish(reg.live, work, token)
    live = reg.live
    lock = bare_path(live, NAME) / f"{locked}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_bytes(b"")  # a git process outside the registry is updating that ref

    head = set_version(work, "0.2.0", NAME)
    git("tag", "v0.2.0", cwd=work)
    done = git("push", live.git_url(NAME, token), "main", "v0.2.0", cwd=work, check=False)
    assert done.returncode != 0
    assert "[remote rejected]" in done.stderr, done.stderr
    assert f"{locked} is locked on the registry; retry later" in done.stderr, done.stderr
    assert str(live.data_dir) not in done.stderr  # the reason does not show server paths
    assert ls_remote(live.git_url(NAME)) == {
        "HEAD": first,
        "refs/heads/main": first,
        "refs/tags/v0.1.0": first,
    }
    assert release_rows(live, NAME) == [("0.1.0", first)]
    assert readable(live, NAME, objects_of(work, head, exclude=[first])) == []
    assert quarantines(live, NAME) == []
    assert api(live, "/healthz").status_code == 200

    lock.unlink()
    again = git("push", live.git_url(NAME, token), "main", "v0.2.0", cwd=work, check=False)
    assert again.returncode == 0, again.stderr
    assert release_rows(live, NAME) == [("0.1.0", first), ("0.2.0", head)]


def test_quarantines_left_by_a_crash_are_removed_at_start_up(reg: Restartable, tmp_path: Path) -> None:
    token = reg.live.account("acme")
    _publish(reg.live, tmp_path / "work", token)
    objects = bare_path(reg.live, NAME) / "objects"
    reg.live.stop()
    left = objects / "incoming-0123456789abcdef"
    (left / "pack").mkdir(parents=True)
    (left / "pack" / "tmp_pack_x").write_bytes(b"PACK\x00\x00\x00\x02 half of a pack")
    (objects / "incoming-fedcba9876543210").mkdir()
    # One still held by a running push (of another process, say) is not touched.
    held = objects / "incoming-00000000000000ff"
    held.mkdir()
    with open(held / QUARANTINE_LOCK, "wb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        live = reg.restart()
        assert quarantines(live, NAME) == [held]
    assert ls_remote(live.git_url(NAME))["refs/tags/v0.1.0"]


def test_a_refused_push_to_a_new_name_leaves_no_repository(reg: Restartable, tmp_path: Path) -> None:
    live = reg.live
    token = live.account("acme")
    work = tmp_path / "work"
    init_agent(work, "acme/other", "0.1.0")  # the manifest names another agent
    git("tag", "v0.1.0", cwd=work)
    done = git("push", live.git_url(NAME, token), "main", "v0.1.0", cwd=work, check=False)
    assert done.returncode != 0
    assert 'names "acme/other"' in done.stderr, done.stderr
    assert not bare_path(live, NAME).exists()
    assert api(live, f"/v1/agents/{NAME}").status_code == 404


def test_an_abandoned_push_to_a_new_name_leaves_no_repository(
    reg: Restartable, caplog: pytest.LogCaptureFixture
) -> None:
    live = reg.live
    token = live.account("acme")
    url = f"{live.url}/git/{NAME}.git"
    auth = {"Authorization": f"Bearer {token}"}
    advert = httpx2.get(f"{url}/info/refs", params={"service": "git-receive-pack"}, headers=auth)
    assert advert.status_code == 200
    assert not bare_path(live, NAME).exists()  # asking to push makes nothing yet

    # The client sent its ref command and went away in the middle of the pack.
    command = f"{'0' * 40} {'1' * 40} refs/heads/main\0report-status side-band-64k\n".encode()
    body = f"{len(command) + 4:04x}".encode() + command + b"0000" + b"PACK\x00\x00\x00\x02\x00\x00\x00\x05"
    done = httpx2.post(
        f"{url}/git-receive-pack",
        content=body,
        headers={**auth, "Content-Type": "application/x-git-receive-pack-request"},
    )
    assert done.status_code == 200
    assert not bare_path(live, NAME).exists()

    # And one whose connection dropped before its body was whole.
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"POST /git/{NAME}.git/git-receive-pack HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: application/x-git-receive-pack-request\r\nContent-Length: 100000\r\n\r\n".encode()
            + body
        )
    # Requests on one server are handled in order of arrival: once a later one is answered,
    # the broken one was seen.
    assert api(live, "/healthz").status_code == 200
    assert api(live, f"/v1/agents/{NAME}").status_code == 404
    assert not bare_path(live, NAME).exists()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_an_empty_repository_left_by_a_crash_is_removed_at_start_up(reg: Restartable, tmp_path: Path) -> None:
    token = reg.live.account("acme")
    _publish(reg.live, tmp_path / "work", token)
    reg.live.stop()
    RepoStore(reg.data_dir / "repos").create("acme/ghost").close()
    ghost = reg.data_dir / "repos" / "acme" / "ghost.git"
    assert ghost.is_dir()

    live = reg.restart()
    assert not ghost.exists()
    assert ls_remote(live.git_url(NAME))["refs/tags/v0.1.0"]  # a repository with refs stays


def test_releases_whose_repository_is_gone_survive_a_restart(reg: Restartable, tmp_path: Path) -> None:
    import shutil

    token = reg.live.account("acme")
    first = _publish(reg.live, tmp_path / "work", token)
    reg.live.stop()
    shutil.rmtree(reg.data_dir / "repos" / "acme" / "x.git")

    live = reg.restart()
    assert release_rows(live, NAME) == [("0.1.0", first)]
    impostor = tmp_path / "impostor"
    init_agent(impostor, NAME, "0.1.0", files={"server.py": "print('other code')\n"})
    git("tag", "v0.1.0", cwd=impostor)
    done = git("push", live.git_url(NAME, token), "main", "v0.1.0", cwd=impostor, check=False)
    assert done.returncode != 0
    assert "already published" in done.stderr
    # The original code can be pushed again, and its tag is back.
    git("push", live.git_url(NAME, token), "main", "v0.1.0", cwd=tmp_path / "work")
    assert ls_remote(live.git_url(NAME))["refs/tags/v0.1.0"] == first


@pytest.mark.postgres
def test_a_push_whose_database_commit_fails_is_refused_and_changes_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    from sqlalchemy import create_engine, text

    live = start_registry(tmp_path / "registry", postgres_url)
    engine = create_engine(postgres_url)
    try:
        token = live.account("acme")
        work = tmp_path / "work"
        first = _publish(live, work, token)
        # A real failure at COMMIT (as a full disk or a lost connection would give): a deferred
        # constraint trigger that refuses every new release row only when the transaction commits.
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_release() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'no space left (test)'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE CONSTRAINT TRIGGER refuse_release AFTER INSERT ON releases "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_release()"
                )
            )
        head = set_version(work, "0.2.0", NAME)
        git("tag", "v0.2.0", cwd=work)
        done = git("push", live.git_url(NAME, token), "main", "v0.2.0", cwd=work, check=False)
        assert done.returncode != 0
        assert "[remote rejected]" in done.stderr, done.stderr
        assert "could not record this push" in done.stderr
        assert "no space left" not in done.stderr  # database errors stay in the server's log
        assert ls_remote(live.git_url(NAME)) == {
            "HEAD": first,
            "refs/heads/main": first,
            "refs/tags/v0.1.0": first,
        }
        assert release_rows(live, NAME) == [("0.1.0", first)]
        assert readable(live, NAME, objects_of(work, head, exclude=[first])) == []
        assert api(live, "/healthz").status_code == 200

        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_release ON releases"))
        again = git("push", live.git_url(NAME, token), "main", "v0.2.0", cwd=work, check=False)
        assert again.returncode == 0, again.stderr
        assert release_rows(live, NAME) == [("0.1.0", first), ("0.2.0", head)]
    finally:
        engine.dispose()
        live.stop()
