"""The real `git` program against a live registry: clone, fetch, push, publish (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx2
import pytest
from conftest import start_registry
from gitutil import (
    GIT,
    api,
    bare_path,
    commit,
    git,
    git_popen,
    init_agent,
    ls_remote,
    objects_of,
    quarantines,
    readable,
    release_rows,
    rev_parse,
    server_object_ids,
    set_version,
)

NAME = "acme/x"
ZERO = "0" * 40


def _publish_first(registry, tmp_path: Path, token: str) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    work = tmp_path / "work"
    first = init_agent(work, NAME, "0.1.0")
    git("tag", "v0.1.0", cwd=work)
    done = git("push", registry.git_url(NAME, token), "main", "v0.1.0", cwd=work)
    assert "published acme/x 0.1.0" in done.stderr
    return work, first


def _written_objects(stderr: str) -> int:
    found = re.findall(r"Writing objects: 100% \((\d+)/(\d+)\)", stderr)
    assert found, f"git showed no object count:\n{stderr}"
    return int(found[-1][1])


def test_push_publishes_and_clone_gets_identical_commits(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = registry.account("acme")
    work, first = _publish_first(registry, tmp_path, token)

    agent = api(registry, f"/v1/agents/{NAME}").json()
    assert agent["name"] == NAME
    assert agent["latest"] == "0.1.0"
    assert [(v["version"], v["commit"], v["yanked"], v["publisher"]) for v in agent["versions"]] == [
        ("0.1.0", first, False, "acme")
    ]
    release = api(registry, f"/v1/agents/{NAME}/0.1.0").json()
    assert release["commit"] == first
    assert release_rows(registry, NAME) == [("0.1.0", first)]

    # Reading needs no token.
    clone = tmp_path / "clone"
    git("clone", "-q", registry.git_url(NAME), str(clone))
    assert rev_parse(clone, "HEAD") == first
    assert rev_parse(clone, "v0.1.0^{commit}") == first
    assert rev_parse(clone, "HEAD^{tree}") == rev_parse(work, "HEAD^{tree}")
    assert (
        git("rev-list", "--objects", "--all", cwd=clone).stdout
        == git("rev-list", "--objects", "--all", cwd=work).stdout
    )
    # The objects served are well-formed and complete, as git itself checks them.
    git("fsck", "--strict", "--no-dangling", cwd=clone)
    assert (clone / "mcpz.toml").read_text() == (work / "mcpz.toml").read_text()


def test_second_push_sends_only_missing_objects(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = registry.account("acme")
    work = tmp_path / "work"
    files = {f"lib/module_{i}.py": f"VALUE = {i}\n" * 20 for i in range(30)}
    first = init_agent(work, NAME, "0.1.0", files=files)
    done = git("push", "--progress", registry.git_url(NAME, token), "main", cwd=work)
    everything = objects_of(work, first)
    assert _written_objects(done.stderr) == len(everything)
    assert server_object_ids(registry, NAME) >= everything

    before = server_object_ids(registry, NAME)
    second = commit(work, {"lib/module_7.py": "VALUE = 'changed'\n"}, "one file")
    missing = objects_of(work, second, exclude=[first])
    # The new commit, the root tree, lib/ and the one changed blob.
    assert len(missing) == 4
    done = git("push", "--progress", registry.git_url(NAME, token), "main", cwd=work)
    assert _written_objects(done.stderr) == len(missing)
    assert server_object_ids(registry, NAME) - before == missing
    assert ls_remote(registry.git_url(NAME))["refs/heads/main"] == second


def test_a_push_that_leaves_a_directory_unchanged(sqlite_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The common case: one file at the top changes and lib/ is reused from the last commit.
    registry = sqlite_registry
    token = registry.account("acme")
    work = tmp_path / "work"
    first = init_agent(work, NAME, "0.1.0", files={"lib/util.py": "X = 1\n", "lib/deep/more.py": "Y = 2\n"})
    git("push", registry.git_url(NAME, token), "main", cwd=work)
    second = commit(work, {"server.py": "print('only this changed')\n"}, "top-level change")
    missing = objects_of(work, second, exclude=[first])
    assert len(missing) == 3  # commit, root tree, server.py
    done = git("push", "--progress", registry.git_url(NAME, token), "main", cwd=work, check=False)
    assert done.returncode == 0, done.stderr
    assert _written_objects(done.stderr) == 3
    assert ls_remote(registry.git_url(NAME))["refs/heads/main"] == second
    assert set(readable(registry, NAME, missing)) == missing


def test_an_annotated_tag_on_a_pushed_commit_publishes(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = registry.account("acme")
    work = tmp_path / "work"
    first = init_agent(work, NAME, "0.1.0")
    git("push", registry.git_url(NAME, token), "main", cwd=work)
    assert release_rows(registry, NAME) == []
    git("tag", "-a", "v0.1.0", "-m", "release 0.1.0", cwd=work)
    done = git("push", registry.git_url(NAME, token), "v0.1.0", cwd=work, check=False)
    assert done.returncode == 0, done.stderr
    assert "published acme/x 0.1.0" in done.stderr
    # The release records the commit, not the tag object.
    assert release_rows(registry, NAME) == [("0.1.0", first)]
    assert ls_remote(registry.git_url(NAME))["refs/tags/v0.1.0"] == rev_parse(work, "v0.1.0")


def test_fetch_sees_a_later_push(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = registry.account("acme")
    work, first = _publish_first(registry, tmp_path, token)
    clone = tmp_path / "clone"
    git("clone", "-q", registry.git_url(NAME), str(clone))
    assert rev_parse(clone, "HEAD") == first

    second = set_version(work, "0.2.0")
    git("tag", "v0.2.0", cwd=work)
    done = git("push", registry.git_url(NAME, token), "main", "v0.2.0", cwd=work)
    assert "published acme/x 0.2.0" in done.stderr

    git("fetch", "-q", "--tags", "origin", cwd=clone)
    assert rev_parse(clone, "origin/main") == second
    assert rev_parse(clone, "v0.2.0^{commit}") == second
    git("merge", "-q", "--ff-only", "origin/main", cwd=clone)
    assert 'version = "0.2.0"' in (clone / "mcpz.toml").read_text()
    versions = [v["version"] for v in api(registry, f"/v1/agents/{NAME}").json()["versions"]]
    assert versions == ["0.1.0", "0.2.0"]


def test_token_as_bearer_header(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = registry.account("acme")
    work = tmp_path / "work"
    first = init_agent(work, NAME, "0.1.0")
    git("tag", "v0.1.0", cwd=work)
    header = f"http.extraHeader=Authorization: Bearer {token}"
    done = git("-c", header, "push", registry.git_url(NAME), "main", "v0.1.0", cwd=work)
    assert "published acme/x 0.1.0" in done.stderr
    assert release_rows(registry, NAME) == [("0.1.0", first)]
    clone = tmp_path / "clone"
    git("-c", header, "clone", "-q", registry.git_url(NAME), str(clone))
    assert rev_parse(clone, "HEAD") == first


def test_push_without_or_with_a_bad_token_is_refused(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry.account("acme")
    work = tmp_path / "work"
    init_agent(work, NAME, "0.1.0")
    git("tag", "v0.1.0", cwd=work)

    response = httpx2.get(registry.git_url(NAME) + "/info/refs", params={"service": "git-receive-pack"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].lower().startswith("basic")

    done = git("push", registry.git_url(NAME), "main", "v0.1.0", cwd=work, check=False)
    assert done.returncode != 0
    assert "could not read Username" in done.stderr or "Authentication failed" in done.stderr

    done = git("push", registry.git_url(NAME, "mcpz_not-a-real-token"), "main", cwd=work, check=False)
    assert done.returncode != 0
    assert "Authentication failed" in done.stderr

    # Nothing was created for the refused pushes.
    assert not bare_path(registry, NAME).exists()
    assert release_rows(registry, NAME) == []
    assert api(registry, f"/v1/agents/{NAME}").status_code == 404


def test_identical_repush_of_a_release_is_a_no_op(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = registry.account("acme")
    work, first = _publish_first(registry, tmp_path, token)
    etag = api(registry, "/v1/index", params={"name": NAME}).headers["etag"]

    done = git("push", registry.git_url(NAME, token), "main", "v0.1.0", cwd=work)
    assert "Everything up-to-date" in done.stderr

    # From another clone, naming the tag explicitly: still nothing to do, still exit 0.
    other = tmp_path / "other"
    git("clone", "-q", registry.git_url(NAME, token), str(other))
    done = git("push", "origin", "refs/tags/v0.1.0:refs/tags/v0.1.0", cwd=other)
    assert "Everything up-to-date" in done.stderr

    # The registry lost the repository (restored from an old backup, say): pushing the same
    # release again is accepted and records nothing new.
    shutil.rmtree(bare_path(registry, NAME))
    done = git("push", registry.git_url(NAME, token), "main", "v0.1.0", cwd=work)
    assert "published" not in done.stderr
    assert ls_remote(registry.git_url(NAME))["refs/tags/v0.1.0"] == first
    assert release_rows(registry, NAME) == [("0.1.0", first)]
    assert api(registry, "/v1/index", params={"name": NAME}).headers["etag"] == etag


def _pkt(line: bytes) -> bytes:
    return f"{len(line) + 4:04x}".encode() + line


def _raw_push(registry, token: str, commands: list[tuple[str, str, str]], pack: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """A receive-pack request whose old values are what we say, not what the registry advertised:
    a client that saw the refs before someone else pushed."""
    lines = [f"{old} {new} {ref}".encode() for old, new, ref in commands]
    lines[0] += b"\0report-status"
    body = b"".join(_pkt(line + b"\n") for line in lines) + b"0000" + pack
    response = httpx2.post(
        f"{registry.url}/git/{NAME}.git/git-receive-pack",
        content=body,
        headers={
            "Content-Type": "application/x-git-receive-pack-request",
            "Authorization": f"Bearer {token}",
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.parametrize("claimed_old", ["absent", "elsewhere"])
def test_a_branch_update_from_a_stale_view_is_refused_whole(  # type: ignore[no-untyped-def]
    sqlite_registry, tmp_path: Path, claimed_old: str
) -> None:
    registry = sqlite_registry
    token = registry.account("acme")
    work, first = _publish_first(registry, tmp_path, token)
    # A sibling of the published commit, meant as 0.2.0, pushed by a client whose view of main is
    # stale: it saw no main at all, or main at a commit main is no longer at.
    git("checkout", "-q", "--orphan", "sibling", cwd=work)
    second = set_version(work, "0.2.0")
    assert git("merge-base", "--is-ancestor", first, second, cwd=work, check=False).returncode != 0
    pack = subprocess.run(
        [GIT, "pack-objects", "--revs", "--stdout"],
        cwd=work,
        input=f"{second}\n".encode(),
        capture_output=True,
        check=True,
    ).stdout
    old = ZERO if claimed_old == "absent" else "1" * 40
    answer = _raw_push(
        registry, token, [(old, second, "refs/heads/main"), (ZERO, second, "refs/tags/v0.2.0")], pack
    )
    assert b"ng refs/heads/main stale info" in answer, answer
    assert b"ng refs/tags/v0.2.0" in answer, answer  # all or nothing: the tag goes nowhere either
    refs = ls_remote(registry.git_url(NAME))
    assert refs["refs/heads/main"] == first
    assert "refs/tags/v0.2.0" not in refs
    assert release_rows(registry, NAME) == [("0.1.0", first)]
    assert readable(registry, NAME, {second}) == []

    # The same update naming the old value the registry holds goes through (a forced push).
    answer = _raw_push(
        registry, token, [(first, second, "refs/heads/main"), (ZERO, second, "refs/tags/v0.2.0")], pack
    )
    assert b"ok refs/heads/main" in answer and b"ok refs/tags/v0.2.0" in answer, answer
    assert ls_remote(registry.git_url(NAME))["refs/heads/main"] == second
    assert release_rows(registry, NAME) == [("0.1.0", first), ("0.2.0", second)]


def test_concurrent_pushes_of_one_version_exactly_one_wins(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = registry.account("acme")
    base = tmp_path / "base"
    init_agent(base, NAME, "0.1.0")
    git("push", registry.git_url(NAME, token), "main", cwd=base)

    clones: list[tuple[Path, str, set[str]]] = []
    for i in range(2):
        clone = tmp_path / f"clone{i}"
        git("clone", "-q", registry.git_url(NAME, token), str(clone))
        head = commit(clone, {"server.py": f"print('contender {i}')\n"}, f"contender {i}")
        git("tag", "v0.1.0", cwd=clone)
        clones.append((clone, head, objects_of(clone, head, exclude=["origin/main"])))
    assert clones[0][1] != clones[1][1]

    procs = [git_popen("push", "origin", "main", "v0.1.0", cwd=clone) for clone, _, _ in clones]
    outputs = [p.communicate(timeout=60) for p in procs]
    results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
    codes = [code for code, _out, _err in results]
    assert sorted(codes)[0] == 0 and sorted(codes)[1] != 0, results
    winner = codes.index(0)
    loser = 1 - winner
    assert "rejected" in results[loser][2]

    win_commit = clones[winner][1]
    assert release_rows(registry, NAME) == [("0.1.0", win_commit)]
    assert api(registry, f"/v1/agents/{NAME}/0.1.0").json()["commit"] == win_commit
    refs = ls_remote(registry.git_url(NAME))
    assert refs["refs/tags/v0.1.0"] == win_commit
    assert refs["refs/heads/main"] == win_commit
    assert readable(registry, NAME, clones[loser][2]) == []
    assert set(readable(registry, NAME, clones[winner][2])) == clones[winner][2]


def test_a_deleted_agents_name_is_never_reused_for_other_code(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = registry.account("acme")
    _work, first = _publish_first(registry, tmp_path, token)
    shutil.rmtree(bare_path(registry, NAME))  # the repository is gone; the index remembers

    impostor = tmp_path / "impostor"
    other = init_agent(impostor, NAME, "0.1.0", files={"server.py": "print('different code')\n"})
    git("tag", "v0.1.0", cwd=impostor)
    done = git("push", registry.git_url(NAME, token), "main", "v0.1.0", cwd=impostor, check=False)
    assert done.returncode != 0
    assert "[remote rejected]" in done.stderr
    assert "already published" in done.stderr
    assert release_rows(registry, NAME) == [("0.1.0", first)]
    assert api(registry, f"/v1/agents/{NAME}/0.1.0").json()["commit"] == first
    assert "refs/tags/v0.1.0" not in ls_remote(registry.git_url(NAME))
    assert readable(registry, NAME, objects_of(impostor, other)) == []


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("agent", ["new", "known"])
def test_two_registries_on_one_database_publish_a_version_once(  # type: ignore[no-untyped-def]
    request, tmp_path: Path, backend: str, agent: str
) -> None:
    # Replicas share the database; here they do not even share repositories, so only the
    # release index itself can keep one version at one commit.
    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    replicas = [start_registry(tmp_path / f"replica{i}", url) for i in range(2)]
    try:
        token = replicas[0].account("acme")
        works = [tmp_path / f"work{i}" for i in range(2)]
        heads = []
        for i, work in enumerate(works):
            heads.append(init_agent(work, NAME, "0.1.0", files={"server.py": f"print('replica {i}')\n"}))
            git("tag", "v0.1.0", cwd=work)
            if agent == "known":  # the agent exists already (a branch was pushed), without releases
                git("push", replicas[i].git_url(NAME, token), "main", cwd=work)
        assert release_rows(replicas[0], NAME) == []
        for replica in replicas:
            # FastAPI builds a route's validators on its first request, inside warnings.catch_warnings(),
            # which is not thread-safe: warm the git routes up one at a time, so that only the
            # pushes themselves race.
            auth = {"Authorization": f"Bearer {token}"}
            url = replica.git_url(NAME)
            httpx2.get(f"{url}/info/refs", params={"service": "git-receive-pack"}, headers=auth)
            content_type = {"Content-Type": "application/x-git-receive-pack-request"}
            httpx2.post(f"{url}/git-receive-pack", content=b"0000", headers={**auth, **content_type})
        procs = [
            git_popen("push", replica.git_url(NAME, token), "main", "v0.1.0", cwd=work)
            for replica, work in zip(replicas, works, strict=True)
        ]
        outputs = [p.communicate(timeout=60) for p in procs]
        codes = [p.returncode for p in procs]
        assert sorted(codes)[0] == 0 and sorted(codes)[1] != 0, outputs
        winner = codes.index(0)
        assert release_rows(replicas[0], NAME) == [("0.1.0", heads[winner])]
        for replica in replicas:
            assert api(replica, f"/v1/agents/{NAME}/0.1.0").json()["commit"] == heads[winner]
        loser = replicas[1 - winner]
        assert "refs/tags/v0.1.0" not in ls_remote(loser.git_url(NAME))
        if agent == "new":  # (a known agent's commit was on the loser already, with its branch)
            assert readable(loser, NAME, objects_of(works[1 - winner], heads[1 - winner])) == []
        assert quarantines(loser, NAME) == []
        # And the loser was told why, rather than having the connection dropped.
        assert "[remote rejected]" in outputs[1 - winner][1], outputs[1 - winner][1]
    finally:
        for replica in replicas:
            replica.stop()
