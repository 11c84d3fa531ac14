"""A node's checkout against hostile trees: each is refused by name and nothing lands outside.

The registry refuses such trees on push, so these are built with dulwich straight into a local
bare repository (raw tree bytes: duplicate names and slashes survive) and checked out with the
node's own `checkout` over that object store.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from dulwich.objects import Blob, Commit, Tree, serialize_tree
from dulwich.repo import Repo

from mcpz.node import CheckoutRefused, Nested, checkout, plan

FILE = 0o100644
EXEC = 0o100755
LINK = 0o120000
DIR = 0o040000
GITLINK = 0o160000

Item = tuple[bytes, int, str]  # (name, mode, object id)


class Builder:
    """Objects written into a bare repository exactly as given, raw tree bytes included."""

    def __init__(self, path: Path) -> None:
        self.repo = Repo.init_bare(str(path), mkdir=True)
        self.store = self.repo.object_store

    def blob(self, data: bytes) -> str:
        blob = Blob.from_string(data)
        self.store.add_object(blob)
        return str(blob.id.decode())

    def tree(self, items: Sequence[Item]) -> str:
        raw = b"".join(serialize_tree([(name, mode, sha.encode()) for name, mode, sha in items]))
        tree = Tree.from_raw_string(Tree.type_num, raw)
        self.store.add_object(tree)
        assert self.store[tree.id].as_raw_string() == raw  # stored byte for byte
        return str(tree.id.decode())

    def file(self, name: str | bytes, data: bytes = b"x\n", mode: int = FILE) -> Item:
        return (name.encode() if isinstance(name, str) else name, mode, self.blob(data))

    def link(self, name: str, target: str) -> Item:
        return (name.encode(), LINK, self.blob(target.encode()))

    def folder(self, name: str | bytes, items: Sequence[Item]) -> Item:
        return (name.encode() if isinstance(name, str) else name, DIR, self.tree(items))

    def commit(self, items: Sequence[Item]) -> str:
        commit = Commit()
        commit.tree = self.tree(items).encode()
        commit.author = commit.committer = b"Test <test@example.com>"
        commit.author_time = commit.commit_time = 1_700_000_000
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = b"hostile\n"
        self.store.add_object(commit)
        return str(commit.id.decode())


@pytest.fixture
def build(tmp_path: Path) -> Builder:
    return Builder(tmp_path / "store.git")


def snapshot(root: Path, skip: Path) -> set[str]:
    """Every path under `root` except the object store, symlinks included (not followed)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def test_a_plain_tree_checks_out_with_modes_and_inner_links(build: Builder, tmp_path: Path) -> None:
    commit = build.commit(
        [
            build.file("mcpz.toml", b"[agent]\n"),
            build.file("run.sh", b"#!/bin/sh\n", EXEC),
            build.folder("lib", [build.file("a.py", b"A = 1\n"), build.link("up", "../mcpz.toml")]),
            build.link("current", "lib"),
        ]
    )
    dest = tmp_path / "replicas" / "r1" / "e1"
    stats = checkout(build.store, commit, dest)
    assert (stats.files, stats.directories, stats.symlinks) == (3, 1, 2)
    assert (dest / "lib" / "a.py").read_text() == "A = 1\n"
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "mcpz.toml").stat().st_mode) == 0o644
    assert os.readlink(dest / "current") == "lib"
    assert (dest / "lib" / "up").read_text() == "[agent]\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["e1"]  # no temporary folder left


def hostile_trees(build: Builder) -> dict[str, tuple[list[Item], str]]:
    """name -> (root items, what the refusal must mention)."""
    payload = [build.file("pwned", b"owned\n")]
    return {
        "dot-dot": ([build.folder("..", payload)], '"..'),
        "absolute path": ([build.file(b"/tmp/mcpz-pwned")], "/tmp/mcpz-pwned"),
        "nested path in one entry": ([build.file(b"a/../../pwned")], "a/../../pwned"),
        ".git": ([build.folder(".git", [build.file("config", b"[core]\n")])], ".git"),
        ".GIT spelled otherwise": ([build.folder(".GIT.", [build.file("config")])], ".GIT."),
        "git~1": ([build.folder("git~1", [build.file("config")])], "git~1"),
        ".git deeper down": ([build.folder("src", [build.folder(".git", payload)])], "src/.git"),
        "symlink to /etc": ([build.link("etc", "/etc")], '"etc"'),
        "symlink to ../../x": ([build.folder("lib", [build.link("x", "../../x")])], "lib/x"),
        "file under a symlinked dir (twin entry)": (
            [build.link("lib", "inner"), build.folder("lib", payload), build.folder("inner", [])],
            '"lib" appears twice',
        ),
        "file under a symlinked dir (through the name)": (
            [build.link("lib", "inner"), build.folder("inner", []), build.file(b"lib/pwned")],
            "lib/pwned",
        ),
        "symlink climbing through another symlink": (
            [build.link("a", "."), build.link("b", "a/..")],
            '"b" resolves outside',
        ),
        "submodule": ([(b"vendor", GITLINK, "1" * 40)], "submodule"),
        "empty name": ([build.file(b"")], "empty name"),
    }


CASES = [
    "dot-dot",
    "absolute path",
    "nested path in one entry",
    ".git",
    ".GIT spelled otherwise",
    "git~1",
    ".git deeper down",
    "symlink to /etc",
    "symlink to ../../x",
    "file under a symlinked dir (twin entry)",
    "file under a symlinked dir (through the name)",
    "symlink climbing through another symlink",
    "submodule",
    "empty name",
]


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_tree_is_refused_and_nothing_is_written_outside(
    case: str, build: Builder, tmp_path: Path
) -> None:
    items, mentioned = hostile_trees(build)[case]
    commit = build.commit(items)
    replicas = tmp_path / "data" / "replicas"
    dest = replicas / "r1" / "e1"
    (tmp_path / "data" / "x").mkdir(parents=True)  # where ../../x would point
    before = snapshot(tmp_path, tmp_path / "store.git")

    with pytest.raises(CheckoutRefused) as refused:
        checkout(build.store, commit, dest)

    assert mentioned in refused.value.message
    assert refused.value.hint and "not safe" in refused.value.hint
    assert not dest.exists() and not dest.is_symlink()
    after = snapshot(tmp_path, tmp_path / "store.git")
    # At most the (empty) parent folders of the destination were made; no file, no temporary folder.
    assert after - before <= {"data/replicas", "data/replicas/r1"}
    assert not list(replicas.rglob("*pwned*"))
    assert not Path("/tmp/mcpz-pwned").exists()


def test_lexical_refusals_happen_before_anything_is_written(build: Builder, tmp_path: Path) -> None:
    commit = build.commit([build.file("ok.txt"), build.link("etc", "/etc")])
    with pytest.raises(CheckoutRefused, match="absolute target"):
        plan(build.store, commit)
    dest = tmp_path / "out" / "e1"
    with pytest.raises(CheckoutRefused):
        checkout(build.store, commit, dest)
    assert not (tmp_path / "out").exists()  # refused while planning: not even the parent was made


def test_a_dependency_lands_in_its_own_folder_with_its_marker(build: Builder, tmp_path: Path) -> None:
    dep = build.commit(
        [build.file("mcpz.toml", b"[agent]\n"), build.folder("geo", [build.file("__init__.py")])]
    )
    release = build.commit(
        [build.file("server.py", b"print()\n"), build.folder(".mcpz", [build.file("notes")])]
    )
    dest = tmp_path / "e1"
    marker = (".mcpz-installed.json", b'{"name": "acme/geo"}\n')
    checkout(build.store, release, dest, nested=[Nested((".mcpz", "deps", "acme", "geo"), dep, (marker,))])
    root = dest / ".mcpz" / "deps" / "acme" / "geo"
    assert (root / "geo" / "__init__.py").is_file()
    assert (root / ".mcpz-installed.json").read_bytes() == marker[1]
    assert (dest / ".mcpz" / "notes").is_file()


@pytest.mark.parametrize(
    ("release_items", "mentioned"),
    [
        (lambda b: [b.file(".mcpz", b"not a folder")], 'a file at ".mcpz"'),
        (lambda b: [b.link(".mcpz", "elsewhere"), b.folder("elsewhere", [])], 'a link at ".mcpz"'),
        (
            lambda b: [b.folder(".mcpz", [b.folder("deps", [b.folder("acme", [b.folder("geo", [])])])])],
            "already holds",
        ),
    ],
)
def test_a_release_cannot_take_its_dependencies_place(
    release_items: object, mentioned: str, build: Builder, tmp_path: Path
) -> None:
    dep = build.commit([build.file("mcpz.toml")])
    release = build.commit(release_items(build))  # type: ignore[operator]
    dest = tmp_path / "e1"
    with pytest.raises(CheckoutRefused, match=mentioned):
        checkout(build.store, release, dest, nested=[Nested((".mcpz", "deps", "acme", "geo"), dep)])
    assert not dest.exists()
