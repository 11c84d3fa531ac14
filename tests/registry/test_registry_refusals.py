"""Refused pushes leave no trace: no ref moved, no object readable, no quarantine, index untouched.

Hostile trees are built object by object with dulwich (raw bytes where git itself would never
write them) and pushed with the real `git` client, or with dulwich's HTTP client where git
refuses to send the object at all.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from conftest import LiveRegistry, start_registry
from dulwich.objects import Blob, Commit, ShaFile, Tree
from dulwich.repo import Repo
from gitutil import (
    ZERO,
    assert_no_trace,
    bare_path,
    commit,
    git,
    init_agent,
    ls_remote,
    objects_of,
    release_rows,
    rev_parse,
    set_version,
    trace,
)

# --- one registry for the whole module: every test works on its own agent ------------------------


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRegistry]:
    live = start_registry(tmp_path_factory.mktemp("registry"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def token(reg: LiveRegistry) -> str:
    reg.account("other")
    return reg.account("acme")


def _agent(
    reg: LiveRegistry, token: str, tmp_path: Path, name: str, *, publish: bool = False
) -> tuple[Path, str]:
    """A local agent whose `main` is already on the registry (and `v0.1.0` if `publish`)."""
    work = tmp_path / "work"
    first = init_agent(work, name, "0.1.0")
    refs = ["main"]
    if publish:
        git("tag", "v0.1.0", cwd=work)
        refs.append("v0.1.0")
    git("push", reg.git_url(name, token), *refs, cwd=work)
    return work, first


def _refused_push(reg: LiveRegistry, token: str, work: Path, name: str, *refspecs: str) -> str:
    done = git("push", reg.git_url(name, token), *refspecs, cwd=work, check=False)
    assert done.returncode != 0, f"the push was accepted:\n{done.stderr}"
    return done.stderr


# --- releases: tags and manifests ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "manifest_text", "reason"),
    [
        ("no-run", '[agent]\nname = "acme/{case}"\nversion = "0.1.0"\n', r"\[run\]"),
        (
            "bad-version",
            '[agent]\nname = "acme/{case}"\nversion = "one"\n\n[run]\ncommand = ["x"]\n',
            r"PEP 440",
        ),
        ("not-toml", "[agent\nname = \n", r"mcpz\.toml"),
        (
            "other-name",
            '[agent]\nname = "acme/elsewhere"\nversion = "0.1.0"\n\n[run]\ncommand = ["x"]\n',
            r"acme/elsewhere",
        ),
        ("no-manifest", None, r"has no mcpz\.toml"),
    ],
    ids=["no-run", "bad-version", "not-toml", "other-name", "no-manifest"],
)
def test_tag_on_a_commit_with_an_invalid_manifest(
    reg: LiveRegistry, token: str, tmp_path: Path, case: str, manifest_text: str | None, reason: str
) -> None:
    name = f"acme/{case}"
    work, first = _agent(reg, token, tmp_path, name)
    if manifest_text is None:
        git("rm", "-q", "mcpz.toml", cwd=work)
        bad = commit(work, message="drop the manifest")
    else:
        bad = commit(work, {"mcpz.toml": manifest_text.format(case=case)}, "break the manifest")
    git("tag", "v0.1.0", cwd=work)
    before = trace(reg, name)
    stderr = _refused_push(reg, token, work, name, "main", "v0.1.0")
    assert re.search(r"\[remote rejected\] +v0\.1\.0 -> v0\.1\.0 \(.*" + reason, stderr), stderr
    # The push is all or nothing: the branch did not move either.
    assert "[remote rejected] main -> main" in stderr
    assert_no_trace(reg, name, before, objects_of(work, bad, exclude=[first]))


def test_version_that_differs_from_the_tag(reg: LiveRegistry, token: str, tmp_path: Path) -> None:
    name = "acme/wrong-tag"
    work, first = _agent(reg, token, tmp_path, name)
    head = commit(work, {"server.py": "print('v2?')\n"}, "still 0.1.0")
    git("tag", "v0.2.0", cwd=work)
    before = trace(reg, name)
    stderr = _refused_push(reg, token, work, name, "main", "v0.2.0")
    assert re.search(r"\[remote rejected\] +v0\.2\.0 -> v0\.2\.0 \(.*declares version 0\.1\.0", stderr), (
        stderr
    )
    assert_no_trace(reg, name, before, objects_of(work, head, exclude=[first]))


def test_a_release_tag_cannot_be_moved(reg: LiveRegistry, token: str, tmp_path: Path) -> None:
    name = "acme/moved"
    work, first = _agent(reg, token, tmp_path, name, publish=True)
    other = commit(work, {"server.py": "print('other code, same version')\n"}, "sneaky")
    git("tag", "-f", "v0.1.0", cwd=work)
    before = trace(reg, name)
    assert before.refs["refs/tags/v0.1.0"] == first
    done = git("push", "--force", reg.git_url(name, token), "refs/tags/v0.1.0", cwd=work, check=False)
    assert done.returncode != 0, done.stderr
    stderr = done.stderr
    assert re.search(r"\[remote rejected\] +v0\.1\.0 -> v0\.1\.0 \(.*bump the version", stderr), stderr
    assert_no_trace(reg, name, before, objects_of(work, other, exclude=[first]))
    assert release_rows(reg, name) == [("0.1.0", first)]


def test_a_release_tag_cannot_be_deleted(reg: LiveRegistry, token: str, tmp_path: Path) -> None:
    name = "acme/deleted"
    work, first = _agent(reg, token, tmp_path, name, publish=True)
    # A deletion alongside a branch update: the whole push is refused, so main stays too.
    head = commit(work, {"server.py": "print('after')\n"}, "after")
    before = trace(reg, name)
    stderr = _refused_push(reg, token, work, name, "main", ":refs/tags/v0.1.0")
    assert re.search(r"\[remote rejected\] +v0\.1\.0 \(.*cannot be deleted", stderr), stderr
    assert_no_trace(reg, name, before, objects_of(work, head, exclude=[first]))
    assert ls_remote(reg.git_url(name))["refs/tags/v0.1.0"] == first


@pytest.mark.parametrize(
    ("case", "tag", "declared", "reason"),
    [
        ("short-tag", "v1.0", "1.0.0", r"declares version 1\.0\.0"),
        ("padded-tag", "v01.0.0", "1.0.0", r"normal form"),
        ("rc-spelling", "v1.0.0-RC1", "1.0.0rc1", r"normal form"),
        ("word-tag", "vlatest", "0.2.0", r"not a PEP 440 version"),
    ],
    ids=["short-tag", "padded-tag", "rc-spelling", "word-tag"],
)
def test_release_tags_must_be_the_normal_version(
    reg: LiveRegistry, token: str, tmp_path: Path, case: str, tag: str, declared: str, reason: str
) -> None:
    name = f"acme/{case}"
    work, first = _agent(reg, token, tmp_path, name)
    head = set_version(work, declared, name)
    git("tag", tag, cwd=work)
    before = trace(reg, name)
    stderr = _refused_push(reg, token, work, name, "main", tag)
    assert re.search(rf"\[remote rejected\] +{re.escape(tag)} -> {re.escape(tag)} \(.*{reason}", stderr), (
        stderr
    )
    assert_no_trace(reg, name, before, objects_of(work, head, exclude=[first]))


@pytest.mark.parametrize("namespace", ["other", "ghost"])
def test_pushing_into_a_foreign_namespace(
    reg: LiveRegistry, token: str, tmp_path: Path, namespace: str
) -> None:
    name = f"{namespace}/x"
    work = tmp_path / "work"
    init_agent(work, name, "0.1.0")
    git("tag", "v0.1.0", cwd=work)
    response = httpx2.get(
        reg.git_url(name) + "/info/refs",
        params={"service": "git-receive-pack"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403
    stderr = _refused_push(reg, token, work, name, "main", "v0.1.0")
    assert "403" in stderr
    assert not bare_path(reg, name).exists()
    assert not (bare_path(reg, name).parent).exists() or not any(bare_path(reg, name).parent.iterdir())
    assert release_rows(reg, name) == []
    assert httpx2.get(f"{reg.url}/v1/agents/{name}").status_code == 404


def test_a_read_only_token_cannot_push(reg: LiveRegistry, token: str, tmp_path: Path) -> None:
    name = "acme/read-only"
    work, first = _agent(reg, token, tmp_path, name)
    reader = reg.account("acme", "read")
    head = commit(work, {"server.py": "print('more')\n"})
    before = trace(reg, name)
    done = git("push", reg.git_url(name, reader), "main", cwd=work, check=False)
    assert done.returncode != 0
    assert "403" in done.stderr
    assert_no_trace(reg, name, before, objects_of(work, head, exclude=[first]))


@pytest.mark.parametrize("ref", ["refs/notes/commits", "refs/pull/1/head", "refs/meta/config", "refs/x"])
def test_refs_outside_branches_and_tags(reg: LiveRegistry, token: str, tmp_path: Path, ref: str) -> None:
    name = "acme/refs-" + ref.split("/")[1]
    work, first = _agent(reg, token, tmp_path, name)
    head = commit(work, {"server.py": "print('elsewhere')\n"})
    before = trace(reg, name)
    stderr = _refused_push(reg, token, work, name, "main", f"HEAD:{ref}")
    assert re.search(r"\[remote rejected\] .*\(.*only branches", stderr), stderr
    assert_no_trace(reg, name, before, objects_of(work, head, exclude=[first]))


# --- hostile trees -------------------------------------------------------------------------------


def _blob(data: bytes) -> Blob:
    return Blob.from_string(data)


def _raw_tree(entries: list[tuple[bytes, bytes, bytes]], *, sort: bool = True) -> ShaFile:
    """A tree from (mode text, name, hex id) exactly as given: no validation, no normalising."""
    if sort:
        entries = sorted(entries, key=lambda e: e[1] + (b"/" if e[0].lstrip(b"0") == b"40000" else b""))
    raw = b"".join(mode + b" " + name + b"\0" + binascii.unhexlify(sha) for mode, name, sha in entries)
    return ShaFile.from_raw_string(Tree.type_num, raw)


@dataclass
class Hostile:
    """Objects to add and the entries they give the root tree (beside mcpz.toml and server.py)."""

    entries: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    objects: list[ShaFile] = field(default_factory=list)
    sort: bool = True

    def blob(self, data: bytes) -> bytes:
        b = _blob(data)
        self.objects.append(b)
        return b.id

    def tree(self, entries: list[tuple[bytes, bytes, bytes]], *, sort: bool = True) -> bytes:
        t = _raw_tree(entries, sort=sort)
        self.objects.append(t)
        return t.id


def _named(name: bytes, *, as_tree: bool = True) -> Callable[[Hostile], None]:
    def build(h: Hostile) -> None:
        if as_tree:
            inner = h.tree([(b"100644", b"config", h.blob(b"[core]\n\thooksPath = /tmp\n"))])
            h.entries.append((b"40000", name, inner))
        else:
            h.entries.append((b"100644", name, h.blob(b"payload for " + name + b"\n")))

    return build


def _symlink(name: bytes, target: bytes, *, under: bytes | None = None) -> Callable[[Hostile], None]:
    def build(h: Hostile) -> None:
        link = (b"120000", name, h.blob(target))
        if under is None:
            h.entries.append(link)
        else:
            h.entries.append((b"40000", under, h.tree([link])))

    return build


def _gitmodules(text: bytes) -> Callable[[Hostile], None]:
    def build(h: Hostile) -> None:
        h.entries.append((b"100644", b".gitmodules", h.blob(text)))

    return build


def _zero_padded(h: Hostile) -> None:
    inner = h.tree([(b"100644", b"file", h.blob(b"inside a zero-padded tree\n"))])
    h.entries.append((b"040000", b"sub", inner))


def _unsorted(h: Hostile) -> None:
    h.sort = False
    h.entries += [
        (b"100644", b"zz", h.blob(b"zz\n")),
        (b"100644", b"aa", h.blob(b"aa\n")),
    ]


def _duplicate(h: Hostile) -> None:
    h.entries += [
        (b"100644", b"twice", h.blob(b"first\n")),
        (b"100644", b"twice", h.blob(b"second\n")),
    ]


def _long_path(h: Hostile) -> None:
    tree = h.tree([(b"100644", b"deep.txt", h.blob(b"very deep\n"))])
    for i in range(17):  # 17 directories of 250 bytes: the path is over 4096 bytes
        tree = h.tree([(b"40000", bytes([ord("a") + i]) * 250, tree)])
    h.entries.append((b"40000", b"long", tree))


def _null_id(h: Hostile) -> None:
    h.entries.append((b"100644", b"nothing", ZERO.encode()))


# case -> (builder, what the reason on the pusher's terminal must show: the entry, and why)
HOSTILE: dict[str, tuple[Callable[[Hostile], None], str]] = {
    "dotgit": (_named(b".git"), r"'\.git'.*\.git"),
    "dotgit-upper": (_named(b".GIT"), r"'\.GIT'.*\.git"),
    "dotgit-file": (_named(b".git", as_tree=False), r"'\.git'.*\.git"),
    "ntfs-trailing-dot": (_named(b".git."), r"'\.git\.'.*\.git"),
    "ntfs-short-name": (_named(b"git~1"), r"'git~1'.*\.git"),
    "ntfs-trailing-space": (_named(b".git "), r"'\.git '.*\.git"),
    "hfs-ignorable": (_named(".g\u200cit".encode()), r"'\.g\\u200cit'.*\.git"),
    "dotdot": (_named(b".."), r"'\.\.'.*'\.\.'"),
    "dot": (_named(b"."), r"'\.'.*'\.'"),
    "empty-name": (_named(b"", as_tree=False), r"empty name"),
    "slash-in-name": (_named(b"a/b", as_tree=False), r"'a/b'.*'/'"),
    "symlink-absolute": (_symlink(b"link", b"/etc/passwd"), r"'link'.*absolute.*'/etc/passwd'"),
    "symlink-escapes": (
        _symlink(b"link", b"../../etc/passwd", under=b"sub"),
        r"'sub/link'.*'\.\./\.\./etc/passwd'.*outside",
    ),
    "symlink-escapes-root": (_symlink(b"link", b"../outside"), r"'link'.*'\.\./outside'.*outside"),
    "gitmodules-symlink": (
        _symlink(b".gitmodules", b"elsewhere/.gitmodules"),
        r"'\.gitmodules'.*symbolic link",
    ),
    "gitmodules-path-dotdot": (
        _gitmodules(b'[submodule "evil"]\n\tpath = ../evil\n\turl = https://example.com/evil.git\n'),
        r"'\.gitmodules'.*submodule path '\.\./evil'",
    ),
    "gitmodules-name-dotdot": (
        _gitmodules(b'[submodule "../../modules/evil"]\n\tpath = evil\n\turl = https://example.com/e.git\n'),
        r"'\.gitmodules'.*submodule name '\.\./\.\./modules/evil'",
    ),
    "gitmodules-url-dash": (
        _gitmodules(b'[submodule "evil"]\n\tpath = evil\n\turl = -u./payload\n'),
        r"'\.gitmodules'.*submodule url '-u\./payload'",
    ),
    "zero-padded-mode": (_zero_padded, r"'sub'.*040000.*zero-padded"),
    "unsorted": (_unsorted, r"'aa'.*order"),
    "duplicate": (_duplicate, r"'twice'.*twice"),
    "long-path": (_long_path, r"'long/.*4096|'long/.*4095"),
    "null-id": (_null_id, r"'nothing'.*null"),
}


def _build_hostile(work: Path, parent: str, build: Callable[[Hostile], None]) -> tuple[str, set[str]]:
    """Write the hostile commit into the local repository; return its id and every new object's id."""
    repo = Repo(str(work))
    try:
        base = repo[repo[parent.encode()].tree]
        h = Hostile()
        build(h)
        entries = [(b"%o" % mode, name, sha) for name, mode, sha in base.iteritems()] + h.entries
        root = _raw_tree(entries, sort=h.sort)
        c = Commit()
        c.tree = root.id
        c.parents = [parent.encode()]
        c.author = c.committer = b"Mallory <mallory@example.com>"
        c.author_time = c.commit_time = 1_700_000_000
        c.author_timezone = c.commit_timezone = 0
        c.message = b"hostile\n"
        for obj in [*h.objects, root, c]:
            repo.object_store.add_object(obj)
        repo.refs[b"refs/heads/main"] = c.id
        return c.id.decode(), {o.id.decode() for o in [*h.objects, root, c]} - objects_of(work, parent)
    finally:
        repo.close()


def _dulwich_push(
    reg: LiveRegistry, token: str, work: Path, name: str, head: str
) -> tuple[dict[str, str], str]:
    """Push `main` with dulwich's client, sending every object the remote lacks, unchecked.

    Returns the refused refs with their reasons, and what the registry said on the side band.
    """
    from dulwich.client import HttpGitClient
    from dulwich.pack import full_unpacked_object

    repo = Repo(str(work))
    messages: list[str] = []
    try:
        client = HttpGitClient(reg.url, username="mcpz", password=token)

        def update_refs(refs: dict[bytes, bytes]) -> dict[bytes, bytes]:
            return {**refs, b"refs/heads/main": head.encode()}

        def generate(have, want, *, ofs_delta=False, progress=None):  # type: ignore[no-untyped-def]
            known = objects_of(work, *(h.decode() for h in have)) if have else set()
            ids = [oid for oid in repo.object_store if oid.decode() not in known]
            return len(ids), iter([full_unpacked_object(repo.object_store[oid]) for oid in ids])

        result = client.send_pack(
            f"/git/{name}.git",
            update_refs,
            generate_pack_data=generate,
            progress=lambda data: messages.append(data.decode("utf-8", "replace")),
        )
        refused = {ref.decode(): err for ref, err in (result.ref_status or {}).items() if err}
        return refused, "".join(messages)
    finally:
        repo.close()


# git's own client will not send these: it stops at the empty name, or finds no null object.
NOT_SENT_BY_GIT = {"empty-name", "null-id"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tree_is_refused(reg: LiveRegistry, token: str, tmp_path: Path, case: str) -> None:
    name = f"acme/hostile-{case}"
    build, reason = HOSTILE[case]
    work, first = _agent(reg, token, tmp_path, name)
    head, created = _build_hostile(work, first, build)
    before = trace(reg, name)
    if case in NOT_SENT_BY_GIT:
        refused, said = _dulwich_push(reg, token, work, name, head)
        assert set(refused) == {"refs/heads/main"}, refused
        assert re.search(reason, refused["refs/heads/main"] + said), (refused, said)
        assert re.search(r"error: .*" + reason, said), said
    else:
        done = git("push", reg.git_url(name, token), "main", cwd=work, check=False)
        assert done.returncode != 0, done.stderr
        assert "[remote rejected] main -> main" in done.stderr
        assert re.search(r"remote: error: .*" + reason, done.stderr), done.stderr
    assert_no_trace(reg, name, before, created)


# --- what git's client never sends: raw protocol requests ---------------------------------------


def _receive_pack(
    reg: LiveRegistry, token: str, name: str, commands: list[tuple[str, str, str]], pack: bytes
) -> tuple[list[str], str] | None:
    """POST one receive-pack request; return the status lines and the side-band talk.

    None when the registry broke the response off instead of reporting a status.
    """
    from dulwich.protocol import pkt_line

    body = b""
    for i, (old, new, ref) in enumerate(commands):
        caps = b"\0report-status side-band-64k" if i == 0 else b""
        body += pkt_line(f"{old} {new} {ref}".encode() + caps)
    body += b"0000" + pack
    try:
        response = httpx2.post(
            reg.git_url(name) + "/git-receive-pack",
            content=body,
            timeout=30,
            headers={
                "Content-Type": "application/x-git-receive-pack-request",
                "Authorization": f"Bearer {token}",
            },
        )
    except httpx2.RemoteProtocolError:
        return None
    assert response.status_code == 200, response.text
    return _demux(response.content)


def _pkt_lines(data: bytes) -> Iterator[bytes]:
    i = 0
    while i < len(data):
        size = int(data[i : i + 4], 16)
        if size == 0:
            i += 4
            continue
        yield data[i + 4 : i + size]
        i += size


def _demux(body: bytes) -> tuple[list[str], str]:
    report, talk = b"", b""
    for payload in _pkt_lines(body):
        if payload[:1] == b"\x01":
            report += payload[1:]
        elif payload[:1] == b"\x02":
            talk += payload[1:]
    return [line.decode().rstrip("\n") for line in _pkt_lines(report)], talk.decode()


def _pack_of(work: Path, head: str, exclude: str) -> tuple[bytes, set[str]]:
    import io

    from dulwich.pack import write_pack_objects

    ids = objects_of(work, head, exclude=[exclude])
    repo = Repo(str(work))
    try:
        buf = io.BytesIO()
        write_pack_objects(buf.write, [repo[oid.encode()] for oid in sorted(ids)], repo.object_format)
    finally:
        repo.close()
    return buf.getvalue(), ids


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "missing"])
def test_a_broken_pack_is_refused_with_a_status(
    reg: LiveRegistry, token: str, tmp_path: Path, damage: str
) -> None:
    name = f"acme/pack-{damage}"
    work, first = _agent(reg, token, tmp_path, name)
    head = commit(work, {"server.py": f"print('{damage}')\n" * 50}, damage)
    pack, ids = _pack_of(work, head, first)
    broken = {
        "truncated": pack[: len(pack) // 2],
        "corrupted": pack[:40] + bytes([pack[40] ^ 0xFF]) + pack[41:],
        "missing": b"",
    }[damage]
    before = trace(reg, name)
    answer = _receive_pack(reg, token, name, [(first, head, "refs/heads/main")], broken)
    assert_no_trace(reg, name, before, ids)
    assert answer is not None, "the registry broke the response off instead of reporting the bad pack"
    status, _talk = answer
    assert status[0].startswith("unpack ") and status[0] != "unpack ok", status
    assert status[1].startswith("ng refs/heads/main "), status


@pytest.mark.parametrize(
    ("case", "ref"),
    [
        ("dotdot", "refs/heads/a..b"),
        ("climbs", "refs/heads/../../../config"),
        ("lock", "refs/heads/x.lock"),
        ("tag-climbs", "refs/tags/v0.1.0/../../heads/main"),
    ],
    ids=["dotdot", "climbs", "lock", "tag-climbs"],
)
def test_invalid_ref_names_are_refused(
    reg: LiveRegistry, token: str, tmp_path: Path, case: str, ref: str
) -> None:
    name = f"acme/refname-{case}"
    work, first = _agent(reg, token, tmp_path, name)
    head = commit(work, {"server.py": f"print({ref!r})\n"}, "funny ref")
    pack, ids = _pack_of(work, head, first)
    before = trace(reg, name)
    answer = _receive_pack(reg, token, name, [(ZERO, head, ref)], pack)
    refs = bare_path(reg, name) / "refs"
    assert sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file()) == ["heads/main"]
    assert not (bare_path(reg, name) / "config.lock").exists()
    assert_no_trace(reg, name, before, ids)
    assert answer is not None, "the registry broke the response off instead of refusing the ref"
    status, _talk = answer
    assert status[1].startswith(f"ng {ref} "), status


# --- size ----------------------------------------------------------------------------------------


def test_an_oversize_push_is_refused(tmp_path: Path) -> None:
    small = start_registry(tmp_path / "r", max_push_bytes=200_000)
    try:
        token = small.account("acme")
        name = "acme/big"
        work, first = _agent(small, token, tmp_path, name)
        head = commit(work, {"data.bin": os.urandom(1024 * 1024)}, "a megabyte of noise")
        before = trace(small, name)
        stderr = _refused_push(small, token, work, name, "main")
        assert "[remote rejected] main -> main" in stderr
        assert re.search(r"limit", stderr), stderr
        assert "0 MB" not in stderr, f"the message states the limit wrongly:\n{stderr}"
        assert_no_trace(small, name, before, objects_of(work, head, exclude=[first]))
        # Under the limit, the same registry takes a push.
        git("reset", "-q", "--hard", first, cwd=work)
        small_head = commit(work, {"data.bin": os.urandom(10_000)}, "ten kilobytes")
        git("push", "-f", small.git_url(name, token), "main", cwd=work)
        assert ls_remote(small.git_url(name))["refs/heads/main"] == small_head
        assert rev_parse(work, "HEAD") == small_head
    finally:
        small.stop()
