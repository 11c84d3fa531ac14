"""The node's object cache against a live registry: releases published with the real `git push`,
fetched by commit id, verified, and a second version costing only what changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import LiveRegistry
from gitutil import commit, git, init_agent, objects_of, set_version

from mcpz.node import FetchError, ObjectCache, ReleaseError
from mcpz.node.pull import RegistryAccess, base_environment, process_spec, pull_release
from mcpz.node.state import Assignment, Dependency

NAME = "acme/x"


def publish(registry: LiveRegistry, work: Path, token: str, version: str) -> None:
    git("tag", f"v{version}", cwd=work)
    git("push", "-q", registry.git_url(NAME, token), "main", f"v{version}", cwd=work)


def repo_url(registry: LiveRegistry, name: str = NAME) -> str:
    return f"{registry.url}/git/{name}.git"


def test_fetch_by_commit_then_a_one_file_change_fetches_only_what_changed(
    sqlite_registry: LiveRegistry, tmp_path: Path
) -> None:
    registry = sqlite_registry
    token = registry.account("acme")
    node_token = registry.account("acme", "node")
    work = tmp_path / "work"
    files: dict[str, str | bytes] = {f"lib/module_{i}.py": f"VALUE = {i}\n" * 200 for i in range(40)}
    files["assets/blob.bin"] = os.urandom(256 * 1024)  # incompressible: the first fetch is not tiny
    first = init_agent(work, NAME, "0.1.0", files=files)
    publish(registry, work, token, "0.1.0")

    cache = ObjectCache.open(tmp_path / "node" / "objects.git")
    with cache:
        got = cache.fetch(repo_url(registry), first, agent=NAME, version="0.1.0", token=node_token)
        assert not got.cached
        assert got.objects == len(objects_of(work, first))
        assert got.bytes > 256 * 1024
        assert cache.verified(NAME, first)
        assert cache.cached_commits(NAME) == [first]

        # The same commit again: no request at all.
        again = cache.fetch(repo_url(registry), first, agent=NAME, version="0.1.0", token=node_token)
        assert (again.cached, again.objects, again.bytes) == (True, 0, 0)

        commit(work, {"lib/module_7.py": "VALUE = 'changed'\n"}, "one file")
        second = set_version(work, "0.2.0", NAME)
        publish(registry, work, token, "0.2.0")
        missing = objects_of(work, second, exclude=[first])
        delta = cache.fetch(repo_url(registry), second, agent=NAME, version="0.2.0", token=node_token)
        # Two commits, their root trees, lib/, the changed module and the new manifest.
        assert delta.objects == len(missing) == 7
        assert delta.bytes < 4096 < got.bytes
        print(
            f"\nfirst fetch: {got.objects} objects, {got.bytes} bytes; "
            f"one-file change: {delta.objects} objects, {delta.bytes} bytes"
        )

        verified = cache.verify(second, agent=NAME, version="0.2.0")
        # The commit, its root tree, and every tree and blob under it (history is not walked).
        in_tree = git("ls-tree", "-r", "-t", second, cwd=work).stdout.splitlines()
        assert verified.objects == len(in_tree) + 2

        dest = tmp_path / "node" / "replicas" / "r1" / "e1"
        stats = cache.checkout(second, dest)
        assert stats.files == len(files) + 2
        assert (dest / "lib" / "module_7.py").read_text() == "VALUE = 'changed'\n"
        assert (dest / "assets" / "blob.bin").read_bytes() == files["assets/blob.bin"]
        git("init", "-q", str(tmp_path / "compare"))
        # The checkout is the commit's tree, byte for byte (git itself hashes it back to the id).
        tree = git("--git-dir", str(work / ".git"), "rev-parse", f"{second}^{{tree}}").stdout.strip()
        written = git(
            "--git-dir", str(tmp_path / "compare" / ".git"), "--work-tree", str(dest), "add", "-A", cwd=dest
        )
        assert written.returncode == 0
        tree_of_checkout = git(
            "--git-dir", str(tmp_path / "compare" / ".git"), "write-tree", cwd=dest
        ).stdout.strip()
        assert tree_of_checkout == tree


def test_a_tag_that_names_another_commit_is_refused(sqlite_registry: LiveRegistry, tmp_path: Path) -> None:
    registry = sqlite_registry
    token = registry.account("acme")
    work = tmp_path / "work"
    first = init_agent(work, NAME, "0.1.0")
    publish(registry, work, token, "0.1.0")
    second = commit(work, {"server.py": "print('other')\n"}, "unreleased")
    git("push", "-q", registry.git_url(NAME, token), "main", cwd=work)
    with ObjectCache.open(tmp_path / "objects.git") as cache:
        with pytest.raises(ReleaseError, match="points at"):
            cache.fetch(repo_url(registry), second, agent=NAME, version="0.1.0")
        assert not cache.verified(NAME, second)
        # The right pairing works, and a commit of a branch is fetched by its id without a version.
        assert not cache.fetch(repo_url(registry), first, agent=NAME, version="0.1.0").cached
        assert cache.fetch(repo_url(registry), second, agent=NAME).objects > 0


def test_a_manifest_that_names_another_agent_or_version_is_refused(
    sqlite_registry: LiveRegistry, tmp_path: Path
) -> None:
    registry = sqlite_registry
    token = registry.account("acme")
    work = tmp_path / "work"
    first = init_agent(work, NAME, "0.1.0")
    publish(registry, work, token, "0.1.0")
    with ObjectCache.open(tmp_path / "objects.git") as cache:
        with pytest.raises(ReleaseError, match=r"is acme/x 0\.1\.0, not acme/y"):
            cache.fetch(repo_url(registry), first, agent="acme/y")
        with pytest.raises(ReleaseError, match=r"not acme/x 9\.9\.9"):
            cache.verify(first, agent=NAME, version="9.9.9")


def test_unreachable_or_unknown_is_a_fetch_error(sqlite_registry: LiveRegistry, tmp_path: Path) -> None:
    with ObjectCache.open(tmp_path / "objects.git") as cache:
        with pytest.raises(FetchError, match="cannot fetch acme/nothing"):
            cache.fetch(repo_url(sqlite_registry, "acme/nothing"), "a" * 40, agent="acme/nothing")
        with pytest.raises(FetchError):
            cache.fetch("http://127.0.0.1:9/git/acme/x.git", "a" * 40, agent=NAME, timeout=5)


def test_pull_installs_locked_dependencies_like_mcpz_install(
    sqlite_registry: LiveRegistry, tmp_path: Path
) -> None:
    registry = sqlite_registry
    token = registry.account("acme")
    geo_work = tmp_path / "geo"
    geo_work.mkdir()
    git("init", "-q", "-b", "main", cwd=geo_work)
    geo = commit(
        geo_work,
        {
            "mcpz.toml": '[agent]\nname = "acme/geo"\nversion = "1.2.0"\nkind = "plugin"\n',
            "geo/__init__.py": "WHERE = 'Oslo'\n",
        },
    )
    git("tag", "v1.2.0", cwd=geo_work)
    git("push", "-q", registry.git_url("acme/geo", token), "main", "v1.2.0", cwd=geo_work)
    work = tmp_path / "work"
    first = init_agent(work, NAME, "0.1.0")
    publish(registry, work, token, "0.1.0")

    assignment = Assignment(
        deployment="acme/x",
        replica_id="r1",
        epoch=3,
        agent=NAME,
        version="0.1.0",
        commit=first,
        registry_url=repo_url(registry),
        command=("python", "server.py"),
        env={"GREETING": "hej"},
        dependencies=(Dependency("acme/geo", "1.2.0", geo),),
    )
    access = RegistryAccess(registry.url, registry.account("acme", "node"))
    folder = tmp_path / "node" / "replicas" / "r1" / "e3"
    with ObjectCache.open(tmp_path / "node" / "objects.git") as cache:
        pulled = pull_release(cache, assignment, folder, access)
    assert [f.commit for f in pulled.fetches] == [first, geo]
    dep = folder / ".mcpz" / "deps" / "acme" / "geo"
    assert (dep / "geo" / "__init__.py").read_text() == "WHERE = 'Oslo'\n"
    marker = json.loads((dep / ".mcpz-installed.json").read_text())
    assert marker == {"name": "acme/geo", "version": "1.2.0", "commit": geo, "registry": registry.url}

    base = base_environment({"PATH": os.environ["PATH"], "MCPZ_TOKEN": "secret", "HOME": "/home/n"})
    spec = process_spec(assignment, folder, base)
    assert "MCPZ_TOKEN" not in spec.env  # the node's credentials never reach an agent
    assert spec.env["HOME"] == "/home/n"
    assert spec.cwd == folder.resolve()
    assert spec.env["GREETING"] == "hej"
    assert spec.env["PYTHONPATH"] == str(folder / ".mcpz" / "deps" / "acme" / "geo")
    assert spec.env["MCPZ_REPLICA_ID"] == "r1"


def test_the_token_only_goes_to_the_nodes_own_registry() -> None:
    access = RegistryAccess("https://registry.example", "secret")
    assert access.token_for("https://registry.example/git/acme/x.git") == "secret"
    assert access.token_for("https://REGISTRY.example/git/acme/x.git") == "secret"
    assert access.token_for("https://evil.example/git/acme/x.git") is None
    assert access.token_for("http://registry.example/git/acme/x.git") is None
    assert (
        access.dependency_url("https://registry.example/git/acme/x.git", "acme/x", "acme/geo")
        == "https://registry.example/git/acme/geo.git"
    )
    assert (
        access.dependency_url("https://mirror/x", "acme/x", "acme/geo")
        == "https://registry.example/git/acme/geo.git"
    )
