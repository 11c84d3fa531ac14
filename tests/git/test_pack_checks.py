"""registry_server.git.pack_checks: hostile objects are refused, ordinary agent repositories pass."""

from __future__ import annotations

import hashlib
import io
import itertools
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest
from dulwich.object_store import DiskObjectStore, MemoryObjectStore
from dulwich.objects import Blob, Commit, Tag, Tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_server.git.pack_checks import (
    DEFAULT_MAX_PACK_BYTES,
    Limits,
    PackSizeGuard,
    PackTooLarge,
    Problem,
    RawObject,
    check_objects,
    find_new_objects,
    pack_objects,
    pack_size_problem,
    store_lookup,
)

IDENT = b"Ada <ada@example.com> 1700000000 +0100"
GIT = shutil.which("git")


def blob(data: bytes) -> Blob:
    return Blob.from_string(data)


def tree(*entries: tuple[bytes, bytes, bytes]) -> Tree:
    """A tree from raw (mode, name, hex id) entries, kept in the given order, whatever they hold."""
    raw = b"".join(mode + b" " + name + b"\0" + bytes.fromhex(oid.decode()) for mode, name, oid in entries)
    return Tree.from_string(raw)


def commit(tree_id: bytes, *parents: bytes, message: bytes = b"snapshot") -> Commit:
    c = Commit()
    c.tree = tree_id
    c.parents = list(parents)
    c.author = c.committer = b"Ada <ada@example.com>"
    c.author_time = c.commit_time = 1_700_000_000
    c.author_timezone = c.commit_timezone = 3600
    c.message = message
    return c


def raw_commit(body: bytes) -> RawObject:
    return RawObject.from_bytes(1, body)


def codes(problems: Iterable[Problem]) -> set[str]:
    return {p.code for p in problems}


def with_root(*objects: object) -> list[object]:
    """The objects, plus a commit on the last tree (so the walk gives full paths)."""
    last_tree = [o for o in objects if isinstance(o, Tree)][-1]
    return [*objects, commit(last_tree.id)]


HELLO = blob(b"print('hello')\n")


# --- clean repositories pass ---------------------------------------------------------------------


def agent_objects() -> list[object]:
    manifest = blob(b'[agent]\nname = "acme/weather"\nversion = "0.1.0"\n')
    readme = blob(b"# weather\n")
    link = blob(b"../README.md")
    deep_link = blob(b"../../README.md")
    gitmodules = blob(
        b'# submodules\n[submodule "libs/geo"]\n\tpath = libs/geo\n\turl = https://example.com/acme/geo.git\n'
        b'[submodule "vendored"]\n\tpath = vendor/x\n\turl = ../x.git\n\tupdate = rebase\n'
    )
    weather = tree((b"100644", b"__init__.py", HELLO.id), (b"100644", b"server.py", HELLO.id))
    src = tree((b"40000", b"weather", weather.id))
    docs_inner = tree((b"120000", b"up", deep_link.id))
    docs = tree((b"40000", b"inner", docs_inner.id), (b"120000", b"latest", link.id))
    libs = tree((b"160000", b"geo", b"1" * 40))
    workflows = tree((b"100644", b"ci.yml", readme.id))
    github = tree((b"40000", b"workflows", workflows.id))
    root = tree(
        (b"40000", b".github", github.id),
        (b"100644", b".gitignore", readme.id),
        (b"100644", b".gitmodules", gitmodules.id),
        (b"100644", b"README.md", readme.id),
        (b"40000", b"docs", docs.id),
        (b"40000", b"libs", libs.id),
        (b"100644", b"mcpz.toml", manifest.id),
        (b"100755", b"run.sh", readme.id),
        (b"40000", b"src", src.id),
    )
    c1 = commit(root.id)
    c2 = commit(root.id, c1.id, message=b"second")
    tag = Tag()
    tag.object = (Commit, c2.id)
    tag.name = b"v0.1.0"
    tag.tagger = b"Ada <ada@example.com>"
    tag.tag_time = 1_700_000_000
    tag.tag_timezone = 0
    tag.message = b"release 0.1.0\n"
    objects = [manifest, readme, link, deep_link, gitmodules, HELLO, weather, src, docs_inner, docs, libs]
    return [*objects, workflows, github, root, c1, c2, tag]


def test_ordinary_agent_repository_passes() -> None:
    assert check_objects(agent_objects()) == []


def test_ordinary_agent_repository_passes_as_raw_objects_with_tips() -> None:
    objects = [RawObject.from_shafile(o) for o in agent_objects()]
    assert check_objects(objects, tips=[o.id for o in objects if o.type_num == 4]) == []


# --- tree entry names ----------------------------------------------------------------------------

DOTGIT_ALIASES = [
    b".git",
    b".GIT",
    b".Git",
    b".git.",
    b".git ",
    b".git...",
    b".git . .",
    b"git~1",
    b"GIT~1",
    b"git~1 .",
    b".git::$INDEX_ALLOCATION",
    b".GIT::$INDEX_ALLOCATION",
    b".git:stream",
    b"foo\\.git",
    b".git\\hooks",
    "\u200c.git".encode(),
    ".g\u200dit".encode(),
    ".gi\u200et".encode(),
    ".git\u200f".encode(),
    ".\u202agit".encode(),
    ".g\u202eit".encode(),
    ".gi\u206at".encode(),
    ".GIT\u206f".encode(),
    ".git\ufeff".encode(),
    b".git\xff",  # git's is_hfs_dotgit reads bad UTF-8 as the end of the name
]


@pytest.mark.parametrize("name", DOTGIT_ALIASES, ids=repr)
def test_dotgit_and_its_aliases_are_refused(name: bytes) -> None:
    t = tree((b"40000", name, HELLO.id))
    assert "hasDotgit" in codes(check_objects(with_root(HELLO, t)))


NOT_DOTGIT = [
    b".github",
    b".gitignore",
    b".gitkeep",
    b".git-blame-ignore-revs",
    b"x.git",
    b"git",
    b"git~2",
    b"git~10",
    b".g\xe2\x80\x8bit",  # U+200B is not one HFS+ ignores
    ".git\u200bx".encode(),
    "\u00e9.git".encode(),
]


@pytest.mark.parametrize("name", NOT_DOTGIT, ids=repr)
def test_names_git_accepts_are_accepted(name: bytes) -> None:
    t = tree((b"100644", name, HELLO.id))
    assert check_objects(with_root(HELLO, t)) == []


@pytest.mark.parametrize(
    ("name", "code"),
    [
        (b"", "emptyName"),
        (b".", "hasDot"),
        (b"..", "hasDotdot"),
        (b"a/b", "fullPathname"),
        (b"../x", "fullPathname"),
    ],
    ids=repr,
)
def test_bad_entry_names(name: bytes, code: str) -> None:
    t = tree((b"100644", name, HELLO.id))
    assert code in codes(check_objects(with_root(HELLO, t)))


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        (b"040000", "zeroPaddedFilemode"),
        (b"0100644", "zeroPaddedFilemode"),
        (b"100664", "badFilemode"),
        (b"100600", "badFilemode"),
        (b"644", "badFilemode"),
        (b"777777777777", "badFilemode"),
    ],
)
def test_bad_modes(mode: bytes, code: str) -> None:
    t = RawObject.from_bytes(2, mode + b" a\0" + bytes.fromhex(HELLO.id.decode()))
    assert code in codes(check_objects([HELLO, t, raw_commit(b"tree " + t.id + b"\n")]))


def test_null_id_is_refused() -> None:
    t = tree((b"100644", b"a", b"0" * 40))
    assert "nullSha1" in codes(check_objects([t, commit(t.id)]))


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ([(b"100644", b"a"), (b"100644", b"a")], "duplicateEntries"),
        ([(b"100644", b"a"), (b"40000", b"a")], "duplicateEntries"),
        ([(b"100644", b"a"), (b"100644", b"a.c"), (b"40000", b"a")], "duplicateEntries"),
        ([(b"100644", b"b"), (b"100644", b"a")], "treeNotSorted"),
        ([(b"40000", b"a"), (b"100644", b"a.c")], "treeNotSorted"),
    ],
    ids=["same-file", "file-and-dir", "file-and-dir-apart", "unsorted", "dir-sorts-with-slash"],
)
def test_duplicate_and_unsorted_entries(entries: list[tuple[bytes, bytes]], code: str) -> None:
    empty = Tree()
    t = tree(*[(mode, name, empty.id if mode == b"40000" else HELLO.id) for mode, name in entries])
    assert code in codes(check_objects([HELLO, empty, t, commit(t.id)]))


def test_git_order_puts_file_before_same_prefix_dir() -> None:
    empty = Tree()
    t = tree((b"100644", b"a.c", HELLO.id), (b"40000", b"a", empty.id), (b"100644", b"a0", HELLO.id))
    assert check_objects([HELLO, empty, t, commit(t.id)]) == []


def test_unparseable_tree() -> None:
    t = RawObject.from_bytes(2, b"100644 a\0short")
    assert codes(check_objects([t])) == {"badTree"}


# --- .gitmodules and friends ---------------------------------------------------------------------

GITMODULES_ALIASES = [
    b".gitmodules",
    b".GITMODULES",
    b".gitmodules ",
    b".gitmodules.",
    b".gitmodules . .",
    b".gitmodules::$DATA",
    b"gitmod~1",
    b"GITMOD~4",
    b"gi7eba~1",
    b"gi7eba~9",
    ".git\u200cmodules".encode(),
    b"x\\.gitmodules",
]


@pytest.mark.parametrize("name", GITMODULES_ALIASES, ids=repr)
def test_gitmodules_symlink_is_refused(name: bytes) -> None:
    target = blob(b"elsewhere")
    t = tree((b"120000", name, target.id))
    assert "gitmodulesSymlink" in codes(check_objects(with_root(target, t)))


@pytest.mark.parametrize(
    ("name", "code"),
    [
        (b".gitattributes", "gitattributesSymlink"),
        (b"gi7d29~1", "gitattributesSymlink"),
        (b".gitignore", "gitignoreSymlink"),
        (b".mailmap", "mailmapSymlink"),
    ],
)
def test_other_dotfile_symlinks_are_refused(name: bytes, code: str) -> None:
    target = blob(b"elsewhere")
    t = tree((b"120000", name, target.id))
    assert code in codes(check_objects(with_root(target, t)))


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b'[submodule "../../x"]\n\tpath = x\n\turl = https://example.com/x\n', "gitmodulesName"),
        (b'[submodule "a\\\\..\\\\b"]\n\tpath = x\n', "gitmodulesName"),
        (b'[submodule ""]\n\tpath = x\n', "gitmodulesName"),
        (b"[submodule.x/../..]\n\tpath = x\n", "gitmodulesParse"),
        (b'[submodule "x"]\n\tpath = ../outside\n', "gitmodulesPath"),
        (b'[submodule "x"]\n\tpath = a/../../b\n', "gitmodulesPath"),
        (b'[submodule "x"]\n\tpath = -x\n', "gitmodulesPath"),
        (b'[submodule "x"]\n\tpath = /etc\n', "gitmodulesPath"),
        (b'[submodule "x"]\n\turl = --upload-pack=touch /tmp/pwned\n', "gitmodulesUrl"),
        (b'[submodule "x"]\n\turl = "-u"\n', "gitmodulesUrl"),
        (b'[SubModule "x"]\n\tURL = -x\n', "gitmodulesUrl"),
        (b"[submodule.x]\n\turl = -x\n", "gitmodulesUrl"),
        (b'[submodule "x"]\n\turl = \\\n-x\n', "gitmodulesUrl"),
        (b'[submodule "x"]\n\turl = ../:evil\n', "gitmodulesUrl"),
        (b'[submodule "x"]\n\turl = ./%0ahost=evil\n', "gitmodulesUrl"),
        (b'[submodule "x"]\n\turl = https:///example.com/x\n', "gitmodulesUrl"),
        (b'[submodule "x"]\n\turl = http::https://\n', "gitmodulesUrl"),
        (b'[submodule "x"]\n\turl = https://a%0a@example.com/x\n', "gitmodulesUrl"),
        (b'[submodule "x"]\n\tupdate = !rm -rf ~\n', "gitmodulesUpdate"),
        (b'[submodule "x"\n\tpath = x\n', "gitmodulesParse"),
        (b'[submodule "x"]\n\turl = "unterminated\n', "gitmodulesParse"),
        (b'[submodule "x"]\n\turl = \\q\n', "gitmodulesParse"),
        (b'[submodule "x"]\n\t$url = x\n', "gitmodulesParse"),
        (b'[submodule "x"]\n\turl x\n', "gitmodulesParse"),
        (b"\x00", "gitmodulesParse"),
    ],
)
def test_hostile_gitmodules_are_refused(content: bytes, code: str) -> None:
    gm = blob(content)
    t = tree((b"100644", b".gitmodules", gm.id))
    found = check_objects(with_root(gm, t))
    assert code in codes(found), found


@pytest.mark.parametrize(
    "content",
    [
        b'\xef\xbb\xbf[submodule "geo"]\r\n\tpath = libs/geo ; comment\r\n\turl = git@example.com:a/geo\r\n',
        b'[submodule "a.b"]\n\turl = "https://example.com/a b" # quoted\n\tpath = "a b"\n',
        b'[submodule "x"]\n\tactive\n\tbranch = main\n\turl = https://user@example.com/x\n',
        b'[core]\n\turl = -not-a-submodule\n[submodule "x"]\n\tpath = x-y\n\tupdate = none\n',
        b"",
    ],
)
def test_ordinary_gitmodules_pass(content: bytes) -> None:
    gm = blob(content)
    t = tree((b"100644", b".gitmodules", gm.id))
    assert check_objects(with_root(gm, t)) == []


def test_gitmodules_read_from_the_repository_when_not_in_the_push() -> None:
    store = MemoryObjectStore()
    gm = blob(b'[submodule "x"]\n\turl = -evil\n')
    store.add_object(gm)
    t = tree((b"100644", b".gitmodules", gm.id))
    assert "gitmodulesUrl" in codes(check_objects([t, commit(t.id)], store_lookup(store)))


def test_gitmodules_that_is_a_directory_or_missing() -> None:
    empty = Tree()
    t = tree((b"100644", b".gitattributes", b"2" * 40), (b"40000", b".gitmodules", empty.id))
    assert {"gitmodulesBlob", "gitattributesMissing"} <= codes(check_objects([empty, t, commit(t.id)]))


def test_gitattributes_with_an_overlong_line() -> None:
    attrs = blob(b"*.py text\n" + b"x" * 3000 + b" binary\n")
    t = tree((b"100644", b".gitattributes", attrs.id))
    assert "gitattributesLineLength" in codes(check_objects(with_root(attrs, t)))


# --- symlinks ------------------------------------------------------------------------------------


def nest(leaf: Tree, *dirs: bytes) -> list[Tree]:
    """Trees that put `leaf` at dirs[0]/dirs[1]/...; the root is last."""
    trees = [leaf]
    for name in reversed(dirs):
        trees.append(tree((b"40000", name, trees[-1].id)))
    return trees


@pytest.mark.parametrize(
    ("target", "dirs", "code"),
    [
        (b"/etc/passwd", (), "symlinkAbsolute"),
        (b"\\\\server\\share", (), "symlinkAbsolute"),
        (b"C:\\Windows\\System32", (), "symlinkAbsolute"),
        (b"..", (), "symlinkEscapes"),
        (b"../x", (), "symlinkEscapes"),
        (b"./../x", (), "symlinkEscapes"),
        (b"../../x", (b"a",), "symlinkEscapes"),
        (b"..\\..\\x", (b"a",), "symlinkEscapes"),
        (b"../../../../x", (b"a", b"b", b"c"), "symlinkEscapes"),
        (b".../x", (), "symlinkEscapes"),
        (b"sub/../../x", (b"a", b"b"), "symlinkEscapes"),  # '..' after a name: could ride another link
        (b".git/hooks/pre-commit", (), "symlinkPointsToGitDir"),
        (b"sub/.GIT./config", (b"a",), "symlinkPointsToGitDir"),
        (b"x" * 5000, (), "symlinkTargetLength"),
        (b"ok\0/../../..", (), "symlinkTargetNul"),
    ],
    ids=repr,
)
def test_hostile_symlinks_are_refused(target: bytes, dirs: tuple[bytes, ...], code: str) -> None:
    link = blob(target)
    trees = nest(tree((b"120000", b"link", link.id)), *dirs)
    found = check_objects([link, *trees, commit(trees[-1].id)])
    assert code in codes(found), found
    path = b"/".join((*dirs, b"link"))
    assert any(p.path == path for p in found if p.code == code), found


@pytest.mark.parametrize(
    ("target", "dirs"),
    [
        (b"README.md", ()),
        (b"./README.md", ()),
        (b"../README.md", (b"docs",)),
        (b"../../x/y", (b"a", b"b")),
        (b"../..", (b"a", b"b")),
        (b"a//b/./c", ()),
        (b"..x/y", ()),
    ],
    ids=repr,
)
def test_symlinks_that_stay_inside_pass(target: bytes, dirs: tuple[bytes, ...]) -> None:
    link = blob(target)
    trees = nest(tree((b"120000", b"link", link.id)), *dirs)
    assert check_objects([link, *trees, commit(trees[-1].id)]) == []


def test_symlink_tree_reused_higher_up_is_checked_where_it_now_sits() -> None:
    """A tree already in the repository, fine at docs/, escapes when a new commit puts it at the root."""
    store = MemoryObjectStore()
    link = blob(b"../README.md")
    docs = tree((b"120000", b"latest", link.id))
    old_root = tree((b"40000", b"docs", docs.id))
    old = commit(old_root.id)
    for obj in (link, docs, old_root, old):
        store.add_object(obj)
    assert check_objects([link, docs, old_root, old]) == []

    new = commit(docs.id, old.id)
    found = check_objects([new], store_lookup(store))
    assert [(p.code, p.path) for p in found] == [("symlinkEscapes", b"latest")]
    assert "commit " + new.id[:12].decode() in found[0].message


def test_symlink_blob_missing() -> None:
    t = tree((b"120000", b"link", b"3" * 40))
    assert "symlinkTargetMissing" in codes(check_objects([t, commit(t.id)]))


def test_tree_named_by_a_ref_is_checked_as_a_root() -> None:
    store = MemoryObjectStore()
    link = blob(b"../x")
    inner = tree((b"120000", b"link", link.id))
    root = tree((b"40000", b"sub", inner.id))
    for obj in (link, inner, root):
        store.add_object(obj)
    # Pushing refs/tags/t -> the existing subtree moves the link to the top.
    found = check_objects([], store_lookup(store), tips=[inner.id])
    assert codes(found) == {"symlinkEscapes"}


# --- path length ---------------------------------------------------------------------------------


def test_full_path_too_long() -> None:
    leaf = tree((b"100644", b"f" * 200, HELLO.id))
    trees = nest(leaf, *[b"d" * 250] * 16)  # 16 * 251 + 200 = 4216 bytes
    found = check_objects([HELLO, *trees, commit(trees[-1].id)])
    assert codes(found) == {"pathTooLong"}
    assert found[0].path is not None and len(found[0].path) >= 4096


def test_path_limit_is_configurable_and_counts_the_full_path() -> None:
    leaf = tree((b"100644", b"file.txt", HELLO.id))
    trees = nest(leaf, b"src", b"pkg")  # 'src/pkg/file.txt' is 16 bytes
    objects = [HELLO, *trees, commit(trees[-1].id)]
    assert check_objects(objects, limits=Limits(path_bytes=17)) == []
    found = check_objects(objects, limits=Limits(path_bytes=16))
    assert [(p.code, p.path) for p in found] == [("pathTooLong", b"src/pkg/file.txt")]


def test_exponential_tree_is_walked_in_linear_time() -> None:
    """Each level holds the one below twice: 2**40 paths, 40 trees. Must finish at once."""
    t = tree((b"120000", b"l", blob(b"x").id))
    objects: list[object] = [blob(b"x"), t]
    for _ in range(40):
        t = tree((b"40000", b"a", t.id), (b"40000", b"b", t.id))
        objects.append(t)
    assert check_objects([*objects, commit(t.id)]) == []


# --- commits and tags ----------------------------------------------------------------------------

TREE_LINE = b"tree " + Tree().id + b"\n"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"author " + IDENT + b"\ncommitter " + IDENT + b"\n\nm\n", "missingTree"),
        (b"tree 123\nauthor " + IDENT + b"\ncommitter " + IDENT + b"\n\nm\n", "badTreeSha1"),
        (b"tree " + b"A" * 40 + b"\nauthor " + IDENT + b"\ncommitter " + IDENT + b"\n\n", "badTreeSha1"),
        (TREE_LINE + b"parent zz\nauthor " + IDENT + b"\ncommitter " + IDENT + b"\n\n", "badParentSha1"),
        (TREE_LINE + b"committer " + IDENT + b"\n\nm\n", "missingAuthor"),
        (
            TREE_LINE + b"author " + IDENT + b"\nauthor " + IDENT + b"\ncommitter " + IDENT + b"\n\n",
            "multipleAuthors",
        ),
        (TREE_LINE + b"author " + IDENT + b"\n\nm\n", "missingCommitter"),
        (TREE_LINE + b"author <a@b> 1 +0000\ncommitter " + IDENT + b"\n\n", "missingNameBeforeEmail"),
        (TREE_LINE + b"author A> <a@b> 1 +0000\ncommitter " + IDENT + b"\n\n", "badName"),
        (TREE_LINE + b"author A 1 +0000\ncommitter " + IDENT + b"\n\n", "missingEmail"),
        (TREE_LINE + b"author A<a@b> 1 +0000\ncommitter " + IDENT + b"\n\n", "missingSpaceBeforeEmail"),
        (TREE_LINE + b"author A <a@b 1 +0000\ncommitter " + IDENT + b"\n\n", "badEmail"),
        (TREE_LINE + b"author A <a@b>1 +0000\ncommitter " + IDENT + b"\n\n", "missingSpaceBeforeDate"),
        (TREE_LINE + b"author A <a@b> 01 +0000\ncommitter " + IDENT + b"\n\n", "zeroPaddedDate"),
        (TREE_LINE + b"author A <a@b> x +0000\ncommitter " + IDENT + b"\n\n", "badDate"),
        (TREE_LINE + b"author A <a@b> -1 +0000\ncommitter " + IDENT + b"\n\n", "badDate"),
        (TREE_LINE + b"author A <a@b> 1\ncommitter " + IDENT + b"\n\n", "badDate"),
        (
            TREE_LINE + b"author A <a@b> " + b"9" * 5000 + b" +0000\ncommitter " + IDENT + b"\n\n",
            "badDateOverflow",
        ),
        (
            TREE_LINE + b"author A <a@b> 9223372036854775808 +0000\ncommitter " + IDENT + b"\n\n",
            "badDateOverflow",
        ),
        (TREE_LINE + b"author A <a@b> 1 0000\ncommitter " + IDENT + b"\n\n", "badTimezone"),
        (TREE_LINE + b"author A <a@b> 1 +01\ncommitter " + IDENT + b"\n\n", "badTimezone"),
        (TREE_LINE + b"author A <a@b> 1 +0000 x\ncommitter " + IDENT + b"\n\n", "badTimezone"),
        (TREE_LINE + b"author " + IDENT + b"\ncommitter A <a@b> 1 +abcd\n\n", "badTimezone"),
        (TREE_LINE + b"author " + IDENT + b"\0\ncommitter " + IDENT + b"\n\n", "nulInHeader"),
        (TREE_LINE + b"author " + IDENT + b"\ncommitter " + IDENT, "unterminatedHeader"),
        (TREE_LINE + b"author " + IDENT + b"\ncommitter " + IDENT + b"\n\nbody\0", "nulInCommit"),
        (b"", "unterminatedHeader"),
    ],
)
def test_malformed_commits(body: bytes, code: str) -> None:
    found = check_objects([Tree(), raw_commit(body)])
    assert code in codes(found), found


def test_a_well_formed_commit_with_extra_headers_passes() -> None:
    body = (
        TREE_LINE + b"author " + IDENT + b"\ncommitter " + IDENT + b"\nencoding UTF-8\ngpgsig x\n y\n\nmsg\n"
    )
    assert check_objects([Tree(), raw_commit(body)]) == []


def tag_body(name: bytes = b"v1.0.0", *, kind: bytes = b"commit", tagger: bytes | None = IDENT) -> bytes:
    target: bytes = commit(Tree().id).id
    head = b"object " + target + b"\ntype " + kind + b"\ntag " + name + b"\n"
    return head + (b"tagger " + tagger + b"\n" if tagger is not None else b"") + b"\nrelease\n"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"type commit\ntag v1\ntagger " + IDENT + b"\n\n", "missingObject"),
        (b"object 12\ntype commit\ntag v1\ntagger " + IDENT + b"\n\n", "badObjectSha1"),
        (b"object " + b"1" * 40 + b"\ntag v1\n\n", "missingTypeEntry"),
        (b"object " + b"1" * 40 + b"\ntype commit", "unterminatedHeader"),
        (tag_body(kind=b"bolb"), "badType"),
        (b"object " + b"1" * 40 + b"\ntype commit\ntagger " + IDENT + b"\n\n", "missingTagEntry"),
        (tag_body(b"v1..0"), "badTagName"),
        (tag_body(b"v1 0"), "badTagName"),
        (tag_body(b"v1.lock"), "badTagName"),
        (tag_body(b".hidden"), "badTagName"),
        (tag_body(b"a:b"), "badTagName"),
        (tag_body(b"x@{1}"), "badTagName"),
        (tag_body(b"end."), "badTagName"),
        (tag_body(b"a//b"), "badTagName"),
        (tag_body(b"\x1b[31m"), "badTagName"),
        (tag_body(b""), "badTagName"),
        (tag_body(tagger=None), "missingTaggerEntry"),
        (tag_body(tagger=b"A <a@b> 1 +00000"), "badTimezone"),
    ],
)
def test_malformed_tags(body: bytes, code: str) -> None:
    found = check_objects([Tree(), commit(Tree().id), RawObject.from_bytes(4, body)])
    assert code in codes(found), found


def test_a_well_formed_tag_passes() -> None:
    assert (
        check_objects([Tree(), commit(Tree().id), RawObject.from_bytes(4, tag_body(b"release/v1.0.0"))]) == []
    )


def test_references_of_the_wrong_type() -> None:
    c = commit(HELLO.id)
    t = tree((b"40000", b"dir", HELLO.id))
    tag = RawObject.from_bytes(4, tag_body(kind=b"tree").replace(commit(Tree().id).id, HELLO.id))
    found = check_objects([HELLO, c, t, commit(t.id), tag])
    wrong = {p.object_id for p in found if p.code == "wrongObjectType"}
    assert wrong == {c.id, t.id, tag.id}, found


def test_missing_tree() -> None:
    c = commit(b"4" * 40)
    sub = tree((b"40000", b"gone", b"5" * 40))
    assert [p.code for p in check_objects([c])] == ["missingTreeObject"]
    assert codes(check_objects([sub, commit(sub.id)])) == {"missingTreeObject"}


def test_unknown_object_type() -> None:
    assert codes(check_objects([RawObject.from_bytes(5, b"?")])) == {"unknownType"}


# --- messages and limits -------------------------------------------------------------------------


def test_messages_name_the_full_path_and_are_safe_for_a_terminal() -> None:
    link = blob(b"../../\x1b]0;owned\x07")
    inner = tree((b"120000", "evil\x1b[2J\u202e".encode(), link.id))
    trees = nest(inner, b"src")
    found = check_objects([link, *trees, commit(trees[-1].id)])
    assert len(found) == 1
    line = str(found[0])
    assert line.startswith(f"object {trees[0].id.decode()}: symlinkEscapes: 'src/evil\\x1b[2J\\u202e':")
    assert all(ch.isprintable() for ch in line), line


def test_problems_are_capped() -> None:
    names = [b".git" + b"." * i for i in range(1, 300)]
    t = tree(*[(b"100644", n, HELLO.id) for n in sorted(names)])
    found = check_objects([HELLO, t], limits=Limits(max_problems=10))
    assert len(found) == 11
    assert found[-1].code == "tooManyProblems"


def test_pack_size_guard() -> None:
    guard = PackSizeGuard(limit=1000)
    guard.add(600)
    guard.add(400)
    with pytest.raises(PackTooLarge) as info:
        guard.add(1)
    assert info.value.problem.code == "packTooLarge"
    assert "limit" in str(info.value)
    assert pack_size_problem(DEFAULT_MAX_PACK_BYTES) is None
    problem = pack_size_problem(DEFAULT_MAX_PACK_BYTES + 1)
    assert problem is not None and "100.0 MiB" in problem.message


# --- which objects are new -----------------------------------------------------------------------


def test_find_new_objects() -> None:
    store = MemoryObjectStore()
    a, b = blob(b"a\n"), blob(b"b\n")
    sub = tree((b"100644", b"a", a.id))
    t1 = tree((b"40000", b"sub", sub.id))
    c1 = commit(t1.id)
    t2 = tree((b"100644", b"b", b.id), (b"40000", b"sub", sub.id))
    c2 = commit(t2.id, c1.id)
    for obj in (a, b, sub, t1, c1, t2, c2):
        store.add_object(obj)
    lookup = store_lookup(store)
    found = find_new_objects(lookup, [c2.id], [c1.id])
    assert set(found.ids) == {c2.id, t2.id, b.id}
    assert found.missing == []
    assert set(find_new_objects(lookup, [c2.id], []).ids) == {a.id, b.id, sub.id, t1.id, c1.id, t2.id, c2.id}
    assert find_new_objects(lookup, [c1.id], [c2.id]).ids == []

    c3 = commit(b"6" * 40, c2.id)
    store.add_object(c3)
    assert find_new_objects(lookup, [c3.id], [c2.id]).missing == [b"6" * 40]


def pack_bytes(objects: list[RawObject]) -> bytes:
    """A version 2 pack holding `objects` whole (no deltas), as a client would send it."""
    out = bytearray(b"PACK" + struct.pack(">LL", 2, len(objects)))
    for obj in objects:
        size = len(obj.data)
        byte = (obj.type_num << 4) | (size & 0x0F)
        size >>= 4
        while size:
            out.append(byte | 0x80)
            byte, size = size & 0x7F, size >> 7
        out.append(byte)
        out += zlib.compress(obj.data)
    return bytes(out + hashlib.sha1(out).digest())


def test_pack_objects_reads_a_received_pack_raw(tmp_path: Path) -> None:
    hello = bytes.fromhex(HELLO.id.decode())
    hostile = RawObject.from_bytes(2, b"0100644 .git \0" + hello + b"100644 a\0" + hello)
    objects = [RawObject.from_shafile(HELLO), hostile]
    store = DiskObjectStore.init(str(tmp_path / "objects"))
    pack = store.add_thin_pack(io.BytesIO(pack_bytes(objects)).read, None)
    read = sorted(pack_objects(pack), key=lambda o: o.id)
    assert read == sorted(objects, key=lambda o: o.id)
    assert codes(check_objects(read, store_lookup(store))) == {"hasDotgit", "zeroPaddedFilemode"}


def test_lookup_may_return_dulwich_objects() -> None:
    store = MemoryObjectStore()
    link = blob(b"../x")
    docs = tree((b"120000", b"link", link.id))
    for obj in (link, docs):
        store.add_object(obj)

    def lookup(oid: bytes) -> Blob | Tree | None:
        try:
            obj = store[oid]
        except KeyError:
            return None
        assert isinstance(obj, Blob | Tree)
        return obj

    assert codes(check_objects([commit(docs.id)], lookup)) == {"symlinkEscapes"}
    assert set(find_new_objects(lookup, [docs.id], []).ids) == {docs.id, link.id}


def test_store_lookup_reads_raw_objects() -> None:
    store = MemoryObjectStore()
    store.add_object(HELLO)
    got = store_lookup(store)(HELLO.id)
    assert got == RawObject(HELLO.id, 3, HELLO.as_raw_string())
    assert got == RawObject.from_bytes(3, HELLO.as_raw_string())
    assert store_lookup(store)(b"7" * 40) is None


# --- garbage never crashes the checker -----------------------------------------------------------

ENTRY = st.tuples(
    st.sampled_from([b"100644", b"100755", b"40000", b"120000", b"160000", b"040000", b"0", b"7777777"]),
    st.one_of(
        st.sampled_from([b".git", b"GIT~1", b".gitmodules", b"gi7eba~1", b"..", b"", b"a", b"a.c", b"a/b"]),
        st.binary(max_size=12).filter(lambda b: b"\0" not in b),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from([1, 2, 3, 4, 5]),
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda body: TREE_LINE + body, st.binary(max_size=200)),
        st.builds(lambda body: b"object " + b"1" * 40 + b"\ntype " + body, st.binary(max_size=200)),
    ),
)
def test_random_bytes_never_raise(kind: int, data: bytes) -> None:
    found = check_objects([RawObject.from_bytes(kind, data)])
    assert all(isinstance(p, Problem) for p in found)


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(ENTRY, max_size=6),
    targets=st.lists(st.binary(max_size=20), min_size=1, max_size=3),
    gitmodules=st.binary(max_size=80),
)
def test_random_trees_never_raise(
    entries: list[tuple[bytes, bytes]], targets: list[bytes], gitmodules: bytes
) -> None:
    blobs = [RawObject.from_bytes(3, t) for t in [*targets, gitmodules]]
    sub = RawObject.from_bytes(
        2, b"".join(m + b" " + n + b"\0" + bytes.fromhex(blobs[0].id.decode()) for m, n in entries)
    )
    objects = [*blobs, sub]
    raw = b"".join(
        m
        + b" "
        + n
        + b"\0"
        + bytes.fromhex((sub.id if m.endswith(b"40000") else blobs[i % len(blobs)].id).decode())
        for i, (m, n) in enumerate(entries)
    )
    root = RawObject.from_bytes(2, raw)
    found = check_objects([*objects, root, raw_commit(b"tree " + root.id + b"\n")])
    assert all(isinstance(p, Problem) for p in found)


# --- the real git agrees -------------------------------------------------------------------------


def git_fsck(tmp_path: Path, objects: list[RawObject]) -> dict[bytes, set[str]]:
    """`git fsck --strict` on a bare repository holding exactly `objects`: codes by object id."""
    repo = tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    for obj in objects:  # loose objects, written as git writes them
        kind = {1: b"commit", 2: b"tree", 3: b"blob", 4: b"tag"}[obj.type_num]
        path = repo / "objects" / obj.id[:2].decode() / obj.id[2:].decode()
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(zlib.compress(kind + b" %d\0" % len(obj.data) + obj.data))
    out = subprocess.run(["git", "fsck", "--strict", "--no-dangling"], cwd=repo, capture_output=True)
    found: dict[bytes, set[str]] = {}
    for line in out.stderr.splitlines() + out.stdout.splitlines():
        if line.startswith((b"error in ", b"warning in ")):
            found.setdefault(line.split()[3].rstrip(b":"), set()).add(line.split(b": ")[1].decode())
    return found


def git_fsck_codes(tmp_path: Path, objects: list[RawObject]) -> set[str]:
    return set().union(*git_fsck(tmp_path, objects).values())


CROSS_CHECKS = [
    ("hasDotgit", [(b"100644", b".GIT ", HELLO.id)]),
    ("hasDotgit", [(b"100644", b"git~1", HELLO.id)]),
    ("hasDotgit", [(b"100644", ".g\u200cit".encode(), HELLO.id)]),
    ("hasDotgit", [(b"100644", b".git::$INDEX_ALLOCATION", HELLO.id)]),
    ("zeroPaddedFilemode", [(b"0100644", b"a", HELLO.id)]),
    ("badFilemode", [(b"100664", b"a", HELLO.id)]),
    ("duplicateEntries", [(b"100644", b"a", HELLO.id), (b"100644", b"a", HELLO.id)]),
    ("treeNotSorted", [(b"100644", b"b", HELLO.id), (b"100644", b"a", HELLO.id)]),
    ("gitmodulesSymlink", [(b"120000", b"GITMOD~1", HELLO.id)]),
    ("nullSha1", [(b"100644", b"a", b"0" * 40)]),
]


@pytest.mark.skipif(GIT is None, reason="needs the git program")
@pytest.mark.parametrize(
    ("code", "entries"), CROSS_CHECKS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CROSS_CHECKS)]
)
def test_git_fsck_strict_agrees_on_trees(
    tmp_path: Path, code: str, entries: list[tuple[bytes, bytes, bytes]]
) -> None:
    t = RawObject.from_shafile(tree(*entries))
    objects = [RawObject.from_shafile(HELLO), t]
    assert code in codes(check_objects(objects))
    assert code in git_fsck_codes(tmp_path, objects)


@pytest.mark.skipif(GIT is None, reason="needs the git program")
@pytest.mark.parametrize(
    ("code", "content"),
    [
        ("gitmodulesUrl", b'[submodule "x"]\n\turl = \\\n--upload-pack=evil\n'),
        ("gitmodulesName", b'[submodule "../../x"]\n\tpath = x\n'),
        ("gitmodulesPath", b'[submodule "x"]\n\tpath = -x\n'),
        ("gitmodulesParse", b'[submodule "x"]\n\turl = "oops\n'),
    ],
)
def test_git_fsck_strict_agrees_on_gitmodules(tmp_path: Path, code: str, content: bytes) -> None:
    gm = RawObject.from_bytes(3, content)
    t = RawObject.from_shafile(tree((b"100644", b".gitmodules", gm.id)))
    assert code in codes(check_objects([gm, t]))
    assert code in git_fsck_codes(tmp_path, [gm, t])


@pytest.mark.skipif(GIT is None, reason="needs the git program")
@pytest.mark.parametrize(
    "body",
    [
        TREE_LINE + b"author A <a@b> 1 0000\ncommitter " + IDENT + b"\n\n",
        TREE_LINE + b"committer " + IDENT + b"\n\n",
        TREE_LINE + b"author A<a@b> 1 +0000\ncommitter " + IDENT + b"\n\n",
    ],
)
def test_git_fsck_strict_agrees_on_commits(tmp_path: Path, body: bytes) -> None:
    objects = [RawObject.from_shafile(Tree()), raw_commit(body)]
    ours = codes(check_objects(objects))
    assert ours and ours <= git_fsck_codes(tmp_path, objects)


SPECIAL = [b".git", b"git~1", b".gitmodules", b"gitmod~1", b"gi7eba~1", b".gitattributes", b"gi7d29~3"]
SPECIAL += [b".mailmap", b"maba30~1", b".gitignore", b"gi250a~2", b"GiT~1", b".GitModules", b"gitmod~5"]
SPECIAL += [b"gi7eba~12", b"gi7eb~12", b"g~1", b"git", b".gi"]
SUFFIXES = [
    b"",
    b".",
    b" ",
    b"...",
    b". .",
    b":x",
    b"::$DATA",
    b"x",
    b"\\x",
    b"\xff",
    b"\xc0\xaf",
    b"~",
    b"1",
]
INVISIBLE = ["\u200c", "\u200b", "\u202e", "\ufeff", "\u00e9"]


def parity_names() -> list[bytes]:
    names = {base + suffix for base, suffix in itertools.product(SPECIAL, SUFFIXES)}
    names |= {b"x\\" + name for name in list(names)}
    for base, ch in itertools.product(SPECIAL, INVISIBLE):
        names |= {base[:i] + ch.encode() + base[i:] for i in range(len(base) + 1)}
    return sorted(names)


@pytest.mark.skipif(GIT is None, reason="needs the git program")
def test_names_flagged_exactly_as_git_fsck_strict_does(tmp_path: Path) -> None:
    """Every name git refuses, we refuse; without a backslash, we refuse nothing more. (After a
    backslash we also check .gitattributes, .gitignore and .mailmap, which git does not.)"""
    watched = {"hasDotgit", "gitmodulesSymlink", "gitattributesSymlink", "gitignoreSymlink", "mailmapSymlink"}
    target = RawObject.from_bytes(3, b"x")
    trees = {}
    for name, mode in itertools.product(parity_names(), (b"100644", b"120000")):
        t = RawObject.from_bytes(2, mode + b" " + name + b"\0" + bytes.fromhex(target.id.decode()))
        trees[t.id] = (name, t)
    theirs = git_fsck(tmp_path, [target, *(t for _, t in trees.values())])
    ours: dict[bytes | None, set[str]] = {}
    for p in check_objects([target, *(t for _, t in trees.values())], limits=Limits(max_problems=100_000)):
        ours.setdefault(p.object_id, set()).add(p.code)
    for oid, (name, _) in trees.items():
        git_says, we_say = theirs.get(oid, set()) & watched, ours.get(oid, set()) & watched
        assert git_says <= we_say, name
        if b"\\" not in name:
            assert git_says == we_say, name
