"""One `.git` rule for both ends: the names the registry refuses in a push (`pack_checks`) are the
names a node refuses to write (`mcpz.node.checkout`), both judged by `mcpz.gitpaths`."""

from __future__ import annotations

import pytest
from dulwich.object_store import MemoryObjectStore
from dulwich.objects import Blob, Commit, Tree

from mcpz.gitpaths import is_dotgit
from mcpz.node import CheckoutRefused, plan
from registry_server.git.pack_checks import check_objects

HELLO = Blob.from_string(b"print('hello')\n")

# Spellings of `.git` in one path component, from git's own t/t0060 and t1450 cases. The HFS+ ones
# (invisible code points) and the NTFS stream ones were missed by the node's old rule.
DOTGIT = [
    b".git",
    b".GIT",
    b".Git.",
    b".git  ..",
    b"git~1",
    b"GIT~1 .",
    b".git::$INDEX_ALLOCATION",
    b".git:stream",
    ".g\u200cit".encode(),
    ".git\u200f".encode(),
    ".\u202agit".encode(),
    ".GIT\u206f".encode(),
    "\ufeff.git".encode(),
]
NOT_DOTGIT = [
    b".github",
    b".gitignore",
    b"x.git",
    b"git",
    b"git~2",
    ".g\u200bit".encode(),  # U+200B is not one HFS+ ignores
    "\u00e9.git".encode(),
]


def raw_tree(name: bytes, mode: bytes) -> Tree:
    return Tree.from_string(mode + b" " + name + b"\0" + bytes.fromhex(HELLO.id.decode()))


def committed(tree: Tree) -> tuple[MemoryObjectStore, Commit]:
    c = Commit()
    c.tree = tree.id
    c.author = c.committer = b"Ada <ada@example.com>"
    c.author_time = c.commit_time = 1_700_000_000
    c.author_timezone = c.commit_timezone = 0
    c.message = b"snapshot"
    store = MemoryObjectStore()
    for obj in (HELLO, tree, c):
        store.add_object(obj)
    return store, c


def registry_refuses(name: bytes) -> bool:
    tree = raw_tree(name, b"100644")
    _store, commit = committed(tree)
    return "hasDotgit" in {p.code for p in check_objects([HELLO, tree, commit])}


def node_refuses(name: bytes) -> bool:
    store, commit = committed(raw_tree(name, b"100644"))
    try:
        plan(store, commit.id.decode())
    except CheckoutRefused as e:
        assert ".git" in str(e)
        return True
    return False


@pytest.mark.parametrize("name", DOTGIT, ids=repr)
def test_every_spelling_of_dotgit_is_refused_by_the_registry_and_by_a_node(name: bytes) -> None:
    assert is_dotgit(name)
    assert registry_refuses(name)
    assert node_refuses(name)


@pytest.mark.parametrize("name", NOT_DOTGIT, ids=repr)
def test_names_git_accepts_pass_both_ends(name: bytes) -> None:
    assert not is_dotgit(name)
    assert not registry_refuses(name)
    assert not node_refuses(name)
