"""upload-pack copying stored pack entries (registry_server.git.pack_reuse), checked by the real git.

Every pack the registry sends is indexed by `git index-pack --strict` or received by `git clone` /
`git fetch`, and the result passes `git fsck --strict`. The same requests are also served by
dulwich's own UploadPackHandler: the negotiation and the objects sent must be the same.
"""

from __future__ import annotations

import logging
import random
import shutil
import struct
import subprocess
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry
from dulwich.object_format import SHA1
from dulwich.pack import OFS_DELTA, PackData, pack_object_header
from dulwich.protocol import ReceivableProtocol, pkt_line
from dulwich.repo import Repo
from dulwich.server import Backend, UploadPackHandler
from gitutil import GIT, bare_path, commit, git, git_env, init_agent, objects_of, rev_parse

from registry_server.git import pack_reuse
from registry_server.git.pack_reuse import ReuseStats, ReusingUploadPackHandler, write_pack_reusing

NAME = "acme/x"
CAPS = b"multi_ack_detailed side-band-64k thin-pack ofs-delta include-tag agent=test"


# --- content that makes git store deltas --------------------------------------------------------------


def big_text(seed: int, lines: int = 3000) -> str:
    rnd = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    return "".join(f"{i:05d} " + " ".join(rnd.choice(words) for _ in range(8)) + "\n" for i in range(lines))


def edit_lines(path: Path, seed: int, count: int = 3) -> None:
    """Change a few lines of a large file: the next push sends it as a delta."""
    rnd = random.Random(seed)
    lines = path.read_text().splitlines(keepends=True)
    for _ in range(count):
        i = rnd.randrange(len(lines))
        lines[i] = f"edited {seed} {i}\n"
    path.write_text("".join(lines))


def edit_and_commit(work: Path, seed: int, files: int = 4) -> str:
    for i in range(files):
        edit_lines(work / "data" / f"f{i}.txt", seed * 100 + i)
    return commit(work, None, f"edit {seed}")


def start_history(work: Path, files: int = 4) -> str:
    """An agent with large text files; returns its first commit."""
    return init_agent(work, NAME, "0.1.0", files={f"data/f{i}.txt": big_text(i) for i in range(files)})


def stored_deltas(registry: Any) -> int:
    """How many objects the registry's packs hold as deltas (git verify-pack's chain lengths)."""
    total = 0
    for idx in sorted((bare_path(registry, NAME) / "objects" / "pack").glob("*.idx")):
        out = git("verify-pack", "-v", str(idx)).stdout
        total += sum(int(n) for n in _chain_counts(out))
    return total


def _chain_counts(verify_output: str) -> list[str]:
    return [
        line.split(":")[1].split()[0]
        for line in verify_output.splitlines()
        if line.startswith("chain length")
    ]


# --- the registry's log of each pack it wrote ----------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.stats: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        summary = getattr(record, "pack_reuse", None)
        if summary is not None:
            self.stats.append(summary)


@pytest.fixture
def pack_log() -> Iterator[_Records]:
    logger = logging.getLogger("registry_server.pack_reuse")
    handler = _Records()
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def fsck(path: Path) -> None:
    git("fsck", "--strict", "--no-dangling", cwd=path)


def same_history(clone: Path, work: Path, *revs: str) -> None:
    for rev in revs:
        assert rev_parse(clone, rev) == rev_parse(work, rev)
        assert rev_parse(clone, f"{rev}^{{tree}}") == rev_parse(work, f"{rev}^{{tree}}")
    assert objects_of(clone, *revs) == objects_of(work, *revs)


# --- through the real git client ------------------------------------------------------------------


def test_clone_and_thin_fetches_copy_stored_entries(
    sqlite_registry: LiveRegistry, tmp_path: Path, pack_log: _Records
) -> None:
    registry = sqlite_registry
    token = registry.account("acme")
    url = registry.git_url(NAME, token)
    work = tmp_path / "work"
    start_history(work)
    git("tag", "-a", "v0.1.0", "-m", "release 0.1.0", cwd=work)
    git("push", "-q", url, "main", "v0.1.0", cwd=work)
    for seed in range(1, 7):  # each push is stored as its own pack, its blobs as deltas
        edit_and_commit(work, seed)
        git("push", "-q", url, "main", cwd=work)
    assert stored_deltas(registry) >= 6 * 4

    clone = tmp_path / "clone"
    pack_log.stats.clear()
    git("clone", "-q", registry.git_url(NAME), str(clone))
    fsck(clone)
    same_history(clone, work, "HEAD", "v0.1.0")
    assert (clone / "data" / "f3.txt").read_text() == (work / "data" / "f3.txt").read_text()
    [stats] = pack_log.stats
    assert stats["objects"] == len(objects_of(work, "main", "v0.1.0"))
    # Every object came from a stored entry, the deltas with them.
    assert stats["full"] == {}
    assert stats["copied"] + stats["rebased"] == stats["objects"]
    assert stats["rebased"] >= 5 * 4  # deltas whose base now sits elsewhere in the new pack

    # More pushes, then a fetch: the client has the bases, so the pack is thin.
    before = rev_parse(work, "main")
    for seed in range(7, 10):
        edit_and_commit(work, seed)
        git("push", "-q", url, "main", cwd=work)
    pack_log.stats.clear()
    git("fetch", "-q", "origin", cwd=clone)
    git("merge", "-q", "--ff-only", "origin/main", cwd=clone)
    fsck(clone)
    same_history(clone, work, "HEAD")
    [stats] = pack_log.stats
    assert stats["objects"] == len(objects_of(work, "main", exclude=[before]))
    assert stats["full"] == {}
    assert stats["thin"] == 4  # the first new version of each file, against what the client has
    assert (clone / "data" / "f0.txt").read_text() == (work / "data" / "f0.txt").read_text()

    # A second clone after all of it, bare and then checked the same way.
    bare = tmp_path / "bare.git"
    git("clone", "-q", "--bare", registry.git_url(NAME), str(bare))
    fsck(bare)
    assert rev_parse(bare, "main^{tree}") == rev_parse(work, "main^{tree}")


def _push_two_branches_sharing_a_blob(url: str, work: Path) -> tuple[str, str, str]:
    """main then, in one push, `other` with a large blob and main with a smaller edit of it.

    git deltifies the smaller copy against the larger one inside that push's pack, so main's new
    blob is stored as a delta whose base only `other` reaches. Returns (first, main, other).
    """
    first = start_history(work, files=1)
    git("push", "-q", url, "main", cwd=work)
    shared = big_text(99, lines=4000)
    git("checkout", "-q", "-b", "other", cwd=work)
    other = commit(work, {"data/shared.txt": shared}, "the large copy")
    git("checkout", "-q", "main", cwd=work)
    smaller = shared.splitlines(keepends=True)
    del smaller[100:140]
    main = commit(work, {"data/shared.txt": "".join(smaller)}, "a smaller copy")
    git("push", "-q", url, "main", "other", cwd=work)
    return first, main, other


def _stored_base(registry: Any, oid: str) -> str | None:
    for idx in (bare_path(registry, NAME) / "objects" / "pack").glob("*.idx"):
        for line in git("verify-pack", "-v", str(idx)).stdout.splitlines():
            parts = line.split()
            if parts and parts[0] == oid:
                return parts[6] if len(parts) >= 7 else None
    raise AssertionError(f"{oid} is not in a pack")


def test_a_delta_against_a_base_the_client_lacks_is_sent_whole(
    sqlite_registry: LiveRegistry, tmp_path: Path, pack_log: _Records
) -> None:
    registry = sqlite_registry
    token = registry.account("acme")
    url = registry.git_url(NAME, token)
    work = tmp_path / "work"

    # A client that cloned main before the push below.
    first = start_history(work, files=1)
    git("push", "-q", url, "main", cwd=work)
    early = tmp_path / "early"
    git("clone", "-q", "--single-branch", "-b", "main", registry.git_url(NAME), str(early))
    assert rev_parse(early, "HEAD") == first

    shared = big_text(99, lines=4000)
    git("checkout", "-q", "-b", "other", cwd=work)
    other = commit(work, {"data/shared.txt": shared}, "the large copy")
    git("checkout", "-q", "main", cwd=work)
    smaller = shared.splitlines(keepends=True)
    del smaller[100:140]
    main = commit(work, {"data/shared.txt": "".join(smaller)}, "a smaller copy")
    git("push", "-q", url, "main", "other", cwd=work)
    small_blob = rev_parse(work, "main:data/shared.txt")
    large_blob = rev_parse(work, "other:data/shared.txt")
    # The premise: the registry stores main's blob as a delta of the blob only `other` has.
    assert _stored_base(registry, small_blob) == large_blob

    # The early client fetches main only: it lacks the base, so the blob comes whole.
    pack_log.stats.clear()
    git("fetch", "-q", "origin", cwd=early)
    git("merge", "-q", "--ff-only", "origin/main", cwd=early)
    fsck(early)
    same_history(early, work, "HEAD")
    assert rev_parse(early, "HEAD") == main
    [stats] = pack_log.stats
    assert stats["full"] == {"client lacks the delta base": 1}
    assert stats["objects"] == len(objects_of(work, "main", exclude=[first]))

    # A fresh single-branch clone: the same.
    pack_log.stats.clear()
    single = tmp_path / "single"
    git("clone", "-q", "--single-branch", "-b", "main", registry.git_url(NAME), str(single))
    fsck(single)
    same_history(single, work, "HEAD")
    assert git("cat-file", "-t", large_blob, cwd=single, check=False).returncode != 0
    [stats] = pack_log.stats
    assert stats["full"] == {"client lacks the delta base": 1}

    # Both branches: the base is sent too, and the delta is copied after it.
    pack_log.stats.clear()
    both = tmp_path / "both"
    git("clone", "-q", "--no-single-branch", registry.git_url(NAME), str(both))
    fsck(both)
    assert rev_parse(both, "origin/main") == main and rev_parse(both, "origin/other") == other
    assert objects_of(both, "origin/main", "origin/other") == objects_of(work, "main", "other")
    [stats] = pack_log.stats
    assert stats["full"] == {}


# --- against dulwich's own writer, in-process ------------------------------------------------------------


class _Backend(Backend):  # type: ignore[misc]
    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    def open_repository(self, path: str) -> Repo:
        return self.repo


def request(wants: Sequence[str], haves: Sequence[str] = (), caps: bytes = CAPS) -> bytes:
    body: bytes = pkt_line(b"want " + wants[0].encode() + b" " + caps + b"\n")
    body += b"".join(pkt_line(b"want " + w.encode() + b"\n") for w in wants[1:])
    body += pkt_line(None)
    body += b"".join(pkt_line(b"have " + h.encode() + b"\n") for h in haves)
    return body + bytes(pkt_line(b"done\n"))


def serve(repo_path: Path, handler_cls: type, body: bytes) -> tuple[list[bytes], bytes, Any]:
    """(every pkt-line but the pack data, the pack, the handler) of one stateless upload-pack."""
    repo = Repo(str(repo_path))
    out = BytesIO()
    try:
        handler = handler_cls(
            _Backend(repo), [NAME], ReceivableProtocol(BytesIO(body).read, out.write), stateless_rpc=True
        )
        handler.handle()
    finally:
        repo.close()
    data = out.getvalue()
    control: list[bytes] = []
    pack = bytearray()
    pos = 0
    while pos < len(data):
        size = int(data[pos : pos + 4], 16)
        if size == 0:
            control.append(b"0000")
            pos += 4
            continue
        line = data[pos + 4 : pos + size]
        assert size <= 65520
        pos += size
        if line[:1] == b"\x01":
            pack += line[1:]
        else:
            control.append(line)
    return control, bytes(pack), handler


def index_pack(pack: bytes, client: Path) -> set[str]:
    """Index `pack` into the bare repository `client` (completing a thin pack); the ids it carried."""
    done = subprocess.run(
        [GIT, "index-pack", "--stdin", "--fix-thin", "--strict"],
        input=pack,
        cwd=client,
        env=git_env(),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    name = done.stdout.decode().split()[-1]
    idx = client / "objects" / "pack" / f"pack-{name}.idx"
    with idx.open("rb") as f:
        shown = subprocess.run([GIT, "show-index"], stdin=f, capture_output=True, text=True, check=True)
    (count,) = struct.unpack(">L", pack[8:12])
    sent = {
        line.split()[1]
        for line in shown.stdout.splitlines()
        if int(line.split()[0]) < len(pack) - 20  # --fix-thin appends the bases after the pack
    }
    assert len(sent) == count
    return sent


def client_at(tmp_path: Path, name: str, source: Path, *revs: str) -> Path:
    """A bare repository holding exactly what `revs` (of `source`) reach, with refs at them."""
    client = tmp_path / name
    git("init", "-q", "--bare", str(client))
    for i, rev in enumerate(revs):
        oid = rev_parse(source, rev)
        git(
            "-c",
            "uploadpack.allowAnySHA1InWant=true",
            "fetch",
            "-q",
            str(source),
            f"{oid}:refs/heads/have{i}",
            cwd=client,
        )
    return client


def compare(
    repo_path: Path, tmp_path: Path, label: str, body: bytes, client: Path | None, work: Path
) -> ReuseStats:
    theirs_control, theirs_pack, _ = serve(repo_path, UploadPackHandler, body)
    ours_control, ours_pack, handler = serve(repo_path, ReusingUploadPackHandler, body)
    assert ours_control == theirs_control  # ACK/NAK, progress, flushes: the negotiation is dulwich's
    targets = []
    for side in ("dulwich", "ours"):
        target = tmp_path / f"{label}-{side}"
        if client is None:
            git("init", "-q", "--bare", str(target))
        else:
            shutil.copytree(client, target)
        targets.append(target)
    theirs = index_pack(theirs_pack, targets[0])
    ours = index_pack(ours_pack, targets[1])
    assert ours == theirs
    for target in targets:
        for line in body.split(b"\n"):
            if b"want " in line:
                oid = line.split(b"want ")[1].split()[0].decode()
                git("update-ref", f"refs/wanted/{oid}", oid, cwd=target)
        fsck(target)
    assert len(ours_pack) < len(theirs_pack)
    stats: ReuseStats = handler.stats
    assert stats is not None and stats.objects == len(ours)
    return stats


def test_the_same_objects_as_dulwich_sends(sqlite_registry: LiveRegistry, tmp_path: Path) -> None:
    registry = sqlite_registry
    token = registry.account("acme")
    url = registry.git_url(NAME, token)
    work = tmp_path / "work"
    _first, _main, other = _push_two_branches_sharing_a_blob(url, work)
    for seed in range(1, 5):
        edit_and_commit(work, seed, files=1)
        git("push", "-q", url, "main", cwd=work)
    head = rev_parse(work, "main")
    middle = rev_parse(work, "main~2")
    repo_path = bare_path(registry, NAME)

    # Clone of both branches: everything, no thin deltas possible.
    stats = compare(repo_path, tmp_path, "all", request([head, other]), None, work)
    assert stats.full == {} and stats.thin == 0
    assert stats.rebased > 0

    # main only: the shared blob's base is not sent and the client does not have it.
    stats = compare(repo_path, tmp_path, "main", request([head]), None, work)
    assert dict(stats.full) == {"client lacks the delta base": 1}

    # An incremental fetch from a client at `middle`: thin deltas against what it has.
    client = client_at(tmp_path, "at-middle", work, middle)
    stats = compare(repo_path, tmp_path, "fetch", request([head], [middle]), client, work)
    assert stats.full == {} and stats.thin == 1

    # The same fetch without thin-pack: the delta's base is outside the pack, so it comes whole.
    # (dulwich requires thin-pack of its clients; the writer is checked directly.)
    repo = Repo(str(repo_path))
    try:
        ids = sorted(objects_of(work, head, exclude=[middle]))
        out = BytesIO()
        stats = write_pack_reusing(
            out.write,
            repo.object_store,
            [i.encode() for i in ids],
            object_format=repo.object_format,
            client_has={o.encode() for o in objects_of(work, middle)},
            thin=False,
        )
    finally:
        repo.close()
    assert dict(stats.full) == {"client lacks the delta base": 1}
    target = tmp_path / "no-thin"
    shutil.copytree(client, target)
    assert index_pack(out.getvalue(), target) == set(ids)


# --- the writer on packs git wrote ---------------------------------------------------------------------


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    """A bare repository with one pack (offset deltas, by `git repack`) and its history."""
    work = tmp_path / "src"
    start_history(work, files=3)
    for seed in range(1, 6):
        edit_and_commit(work, seed, files=3)
    bare = tmp_path / "packed.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("repack", "-q", "-a", "-d", "-f", "--depth=50", "--window=50", cwd=bare)
    assert not list((bare / "objects").glob("??/*"))
    return bare


def all_objects(bare: Path) -> list[bytes]:
    return sorted(o.encode() for o in objects_of(bare, "--all"))


def write_all(bare: Path, ids: list[bytes] | None = None, **kw: Any) -> tuple[bytes, ReuseStats]:
    repo = Repo(str(bare))
    out = BytesIO()
    try:
        stats = write_pack_reusing(
            out.write, repo.object_store, ids or all_objects(bare), object_format=repo.object_format, **kw
        )
    finally:
        repo.close()
    return out.getvalue(), stats


def only_pack(bare: Path) -> Path:
    [pack] = (bare / "objects" / "pack").glob("*.pack")
    return pack


def check_pack(pack: bytes, tmp_path: Path, name: str, bare: Path) -> set[str]:
    target = tmp_path / name
    git("init", "-q", "--bare", str(target))
    sent = index_pack(pack, target)
    for ref, oid in (line.split() for line in git("show-ref", cwd=bare).stdout.splitlines()):
        git("update-ref", oid, ref, cwd=target)
    fsck(target)
    return sent


def test_a_whole_pack_is_copied_byte_for_byte(packed: Path, tmp_path: Path) -> None:
    assert _chain_counts(git("verify-pack", "-v", str(only_pack(packed).with_suffix(".idx"))).stdout)
    pack, stats = write_all(packed)
    assert pack == only_pack(packed).read_bytes()
    assert stats.copied == stats.objects and stats.rebased == stats.thin == 0 and not stats.full
    assert check_pack(pack, tmp_path, "copy", packed) == {o.decode() for o in all_objects(packed)}


def test_a_subset_rewrites_offsets_and_framing_fits_side_band(packed: Path, tmp_path: Path) -> None:
    head = rev_parse(packed, "main")
    ids = sorted(o.encode() for o in objects_of(packed, head, exclude=["main~2"]))
    writes: list[bytes] = []
    repo = Repo(str(packed))
    try:
        stats = write_pack_reusing(
            writes.append,
            repo.object_store,
            ids,
            object_format=repo.object_format,
            client_has={o.encode() for o in objects_of(packed, "main~2")},
            thin=True,
        )
    finally:
        repo.close()
    assert all(len(w) <= pack_reuse.SIDEBAND_MAX for w in writes)
    pack = b"".join(writes)
    assert stats.objects == len(ids) and not stats.full
    client = client_at(tmp_path, "client", packed, "main~2")
    assert index_pack(pack, client) == {i.decode() for i in ids}
    git("update-ref", "refs/heads/main", head, cwd=client)
    fsck(client)


def test_without_ofs_delta_every_delta_names_its_base(packed: Path, tmp_path: Path) -> None:
    pack, stats = write_all(packed, ofs_delta=False)
    assert stats.rebased > 0 and not stats.full
    check_pack(pack, tmp_path, "refs", packed)
    path = tmp_path / "refs.pack"
    path.write_bytes(pack)
    with PackData(str(path), object_format=SHA1) as data:
        types = {u.pack_type_num for u in data.iter_unpacked()}
    assert OFS_DELTA not in types and pack_reuse.REF_DELTA in types


def test_an_entry_whose_crc_does_not_match_is_sent_whole(packed: Path, tmp_path: Path) -> None:
    ids = all_objects(packed)
    idx = only_pack(packed).with_suffix(".idx")
    data = bytearray(idx.read_bytes())
    n = struct.unpack(">L", data[8 + 255 * 4 : 8 + 256 * 4])[0]
    crc_at = 8 + 1024 + 20 * n + 4 * 7  # the 8th object by name
    data[crc_at] ^= 0xFF
    idx.chmod(0o644)
    idx.write_bytes(bytes(data))
    pack, stats = write_all(packed, ids)
    assert dict(stats.full) == {"unusable entry": 1}
    assert stats.copied + stats.rebased == stats.objects - 1
    check_pack(pack, tmp_path, "crc", packed)


def test_a_version_1_index_is_checked_by_inflating(packed: Path, tmp_path: Path) -> None:
    pack_path = only_pack(packed)
    idx = pack_path.with_suffix(".idx")
    idx.chmod(0o644)
    idx.unlink()
    git("index-pack", "--index-version=1", "-o", str(idx), str(pack_path))
    assert idx.read_bytes()[:4] != pack_reuse.IDX_V2_MAGIC
    pack, stats = write_all(packed)
    assert pack == pack_path.read_bytes() and stats.copied == stats.objects
    check_pack(pack, tmp_path, "v1", packed)


def test_loose_objects_go_through_dulwich(packed: Path, tmp_path: Path) -> None:
    work = tmp_path / "more"
    git("clone", "-q", str(packed), str(work))
    edit_and_commit(work, 42, files=2)
    git("push", "-q", "origin", "main", cwd=work)  # a local push unpacks the few objects loose
    loose = list((packed / "objects").glob("??/*"))
    assert loose
    pack, stats = write_all(packed)
    assert dict(stats.full) == {"not in a pack": len(loose)}
    check_pack(pack, tmp_path, "loose", packed)


def test_an_idx_that_belongs_to_another_pack_is_not_used(packed: Path, tmp_path: Path) -> None:
    pack_path = only_pack(packed)
    data = bytearray(pack_path.read_bytes())
    data[-1] ^= 0xFF  # the trailer no longer matches the .idx's record of it
    pack_path.chmod(0o644)
    pack_path.write_bytes(bytes(data))
    with pytest.raises(pack_reuse._Unusable):
        pack_reuse._IndexedPack(str(pack_path.with_suffix(".idx")))


@pytest.mark.parametrize("distance", [1, 127, 128, 129, 16383, 16384, 16511, 16512, 2**21, 2**35 + 7])
def test_offset_encoding_matches_dulwich(distance: int) -> None:
    header = bytes(pack_object_header(OFS_DELTA, distance, 0, object_format=None))
    assert header[1:] == pack_reuse._encode_ofs(distance)


def test_dulwich_handle_is_the_one_copied() -> None:
    # A different dulwich makes the handler fall back to dulwich's own: update the copy and digest.
    assert pack_reuse.dulwich_handle_matches()
