"""Garbage collection of one bare repository: keep what the roots reach, rewrite old packs, drop the rest.

The rules are in registry_server.maintenance.plan. The steps, and why each is safe while the
registry serves:

1. Snapshot the refs; list the packs and loose objects, split by age at the grace cutoff.
2. Walk from the roots (refs, release commits, every young object, every object of a push in its
   quarantine). Nothing is locked: pushes and fetches go on.
3. Write the kept objects of the old files into one new pack (stored entries copied, not
   recompressed: registry_server.git.pack_reuse) with its `.idx`, in a folder of our own beside
   `objects/`, fsync both, and give the pack the newest mtime of what it replaces, so that the
   grace period still counts from when its objects arrived.
4. Under the repository's writer lock (every push holds it while it moves packs and refs): walk
   again from refs that moved and from quarantines a push filled meanwhile; if any of them reaches
   an object about to go, stop here and leave the old files (the next run tries again). Else move
   the new pack in (`.pack`, then `.idx`: readers only see a pack with its index), and only then
   delete the old `.idx` files, their packs, and the old loose objects.

A kill at any step leaves every object either in an old file or in the complete new pack; what
a killed run leaves (its folder, a `.pack` without `.idx`) the next run and start-up recovery remove.
"""

from __future__ import annotations

import binascii
import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import shutil
import signal
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dulwich.object_format import SHA1
from dulwich.object_store import DiskObjectStore
from dulwich.objects import parse_tree
from dulwich.pack import load_pack_index, write_pack_index_v2
from dulwich.repo import Repo

from mcpz.atomic import write_atomic
from registry_server.git.pack_reuse import write_pack_reusing
from registry_server.git.recovery import quarantine_in_use
from registry_server.maintenance.packread import PackReader
from registry_server.maintenance.plan import Split, StoredFile, needs_rewrite, split_by_age, unsafe_drops

log = logging.getLogger(__name__)

GC_LOCK = "mcpz-gc.lock"
"""At the repository's root, flock-ed by the run that collects it: one run per repository at a time."""
GC_DONE = "mcpz-gc.done"
"""At the repository's root: the signature of what the last run found nothing to do on."""
GC_TMP = "mcpz-gc-tmp"
"""At the repository's root (same file system as `objects/`, out of git's sight): the pack being written."""

CRASH_STEPS = ("pack-written", "mid-swap", "after-swap", "mid-delete")
_CRASH_AT = os.environ.get("MCPZ_TEST_GC_CRASH_AT", "")
if _CRASH_AT and _CRASH_AT not in CRASH_STEPS:
    raise RuntimeError(f"MCPZ_TEST_GC_CRASH_AT={_CRASH_AT!r} names no step; one of: {', '.join(CRASH_STEPS)}")


def _crash_point(step: str) -> None:
    """Test-only, like registry_server.git.crash_points: die here as `kill -9` would."""
    if step == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


_COMMIT, _TREE, _BLOB, _TAG = 1, 2, 3, 4
_GITLINK = 0o160000
_TREE_MODE = 0o040000


@dataclass
class RepoResult:
    """What collecting one repository did (or, on a dry run, would do)."""

    kept: int = 0
    dropped: int = 0
    freed_bytes: int = 0
    removed_files: list[str] = field(default_factory=list)
    leftovers: list[tuple[Path, int]] = field(default_factory=list)  # of killed runs, and their bytes
    deferred: str | None = None


@dataclass
class _Inventory:
    split: Split
    # Hex ids of the objects in the old packs and loose files, and the size each one takes there.
    old_objects: dict[bytes, int]
    old_pack_paths: list[Path]
    old_loose_paths: list[Path]
    newest_old: float


def _index_entries(idx: Path) -> list[tuple[bytes, int]]:
    """(binary id, offset) of every object a `.idx` lists."""
    index = load_pack_index(str(idx), SHA1)
    try:
        return [(sha, offset) for sha, offset, _crc in index.iterentries()]
    finally:
        index.close()


def _pack_files(pack_dir: Path) -> Iterator[tuple[str, Path]]:
    for idx in sorted(pack_dir.glob("pack-*.idx")):
        if idx.with_suffix(".pack").exists():
            yield idx.stem, idx


def _size_of_pack(idx: Path) -> int:
    total = 0
    for suffix in (".pack", ".idx", ".rev", ".bitmap"):
        with contextlib.suppress(OSError):
            total += idx.with_suffix(suffix).stat().st_size
    return total


def _loose_files(objects: Path) -> Iterator[tuple[str, Path]]:
    for sub in sorted(objects.iterdir()):
        if len(sub.name) == 2 and sub.is_dir():
            for path in sorted(sub.iterdir()):
                name = sub.name + path.name
                if len(name) == 40 and all(c in "0123456789abcdef" for c in name):
                    yield name, path


def _inventory(objects: Path, cutoff: float) -> _Inventory:
    packs: list[StoredFile] = []
    idx_of: dict[str, Path] = {}
    for name, idx in _pack_files(objects / "pack"):
        # A pack someone marked `.keep` is never rewritten: counted young, so its objects are roots.
        kept = idx.with_suffix(".keep").exists()
        mtime = float("inf") if kept else idx.with_suffix(".pack").stat().st_mtime
        packs.append(StoredFile(name, mtime, _size_of_pack(idx)))
        idx_of[name] = idx
    loose: list[StoredFile] = []
    loose_of: dict[str, Path] = {}
    for name, path in _loose_files(objects):
        st = path.stat()
        loose.append(StoredFile(name, st.st_mtime, st.st_size))
        loose_of[name] = path
    split = split_by_age(packs, loose, cutoff)
    old_objects: dict[bytes, int] = {}
    for pack in split.old_packs:
        idx_path = idx_of[pack.name]
        pack_size = idx_path.with_suffix(".pack").stat().st_size
        entries = sorted((offset, sha) for sha, offset in _index_entries(idx_path))
        # An entry's stored size runs to the next entry, the last one to the trailer.
        ends = [offset for offset, _ in entries[1:]] + [pack_size - 20] * bool(entries)
        for (offset, sha), end in zip(entries, ends, strict=True):
            old_objects.setdefault(binascii.hexlify(sha), end - offset)
    for obj in split.old_loose:
        old_objects.setdefault(obj.name.encode("ascii"), obj.size)
    newest = max((f.mtime for f in (*split.old_packs, *split.old_loose)), default=0.0)
    return _Inventory(
        split,
        old_objects,
        [idx_of[p.name] for p in split.old_packs],
        [loose_of[o.name] for o in split.old_loose],
        newest,
    )


class _Walker:
    """Marks everything reachable from the objects it is given; reads only commits, trees and tags.

    Ids are hex here (what trees and commits spell them as): no conversion per tree entry.
    """

    def __init__(self, get_raw: Callable[[bytes], tuple[int, bytes] | None]) -> None:
        self.get_raw = get_raw  # takes a binary id
        self.seen: set[bytes] = set()

    def walk(self, starts: Iterable[bytes]) -> set[bytes]:
        """Mark what `starts` (binary ids) reach; returns the hex ids newly marked."""
        seen = self.seen
        found: set[bytes] = set()
        stack = [binascii.hexlify(s) for s in starts]
        while stack:
            hexsha = stack.pop()
            if hexsha in seen:
                continue
            seen.add(hexsha)
            found.add(hexsha)
            raw = self.get_raw(binascii.unhexlify(hexsha))
            if raw is None:
                continue  # absent already: nothing to keep, nothing it could lead to
            type_num, data = raw
            if type_num == _TREE:
                for _name, mode, entry in parse_tree(data, 20):
                    if entry in seen or mode == _GITLINK:
                        continue
                    if mode == _TREE_MODE:
                        stack.append(entry)
                    else:
                        # A blob refers to nothing: marked without being read.
                        seen.add(entry)
                        found.add(entry)
            elif type_num == _COMMIT:
                stack.extend(_commit_links(data))
            elif type_num == _TAG:
                stack.extend(_tag_links(data))
        return found


def _commit_links(data: bytes) -> list[bytes]:
    links = []
    for line in data.split(b"\n"):
        if not line:
            break  # the headers end at the first empty line
        if line.startswith(b"tree "):
            links.append(line[5:45])
        elif line.startswith(b"parent "):
            links.append(line[7:47])
    return links


def _tag_links(data: bytes) -> list[bytes]:
    for line in data.split(b"\n"):
        if not line:
            break
        if line.startswith(b"object "):
            return [line[7:47]]
    return []


def _lookup(
    readers: list[PackReader], stores: list[DiskObjectStore]
) -> Callable[[bytes], tuple[int, bytes] | None]:
    """Packs through our fast readers first, then each store (its loose objects, anything else)."""

    def get_raw(sha: bytes) -> tuple[int, bytes] | None:
        for reader in readers:
            found = reader.get_raw(sha)
            if found is not None:
                return found
        hexsha = binascii.hexlify(sha)
        for store in stores:
            try:
                return store.get_raw(hexsha)  # type: ignore[no-any-return]
            except KeyError:
                continue
        return None

    return get_raw


def _ref_values(repo_path: Path) -> dict[bytes, bytes]:
    """Every ref and the object it names (binary ids), read afresh from disk."""
    repo = Repo(str(repo_path), bare=True)
    try:
        values: dict[bytes, bytes] = {}
        for ref, sha in repo.refs.as_dict().items():
            if len(sha) == 40:
                values[ref] = binascii.unhexlify(sha)
        return values
    finally:
        repo.close()


def _quarantine_objects(objects: Path) -> tuple[list[bytes], list[DiskObjectStore]]:
    """The objects of every push in its quarantine, and stores to read them from."""
    ids: list[bytes] = []
    stores: list[DiskObjectStore] = []
    for quarantine in sorted(objects.glob("incoming-*")):
        if not quarantine.is_dir() or not quarantine_in_use(quarantine):
            continue
        indexes = sorted((quarantine / "pack").glob("pack-*.idx"))
        if not indexes:
            continue
        for idx in indexes:
            with contextlib.suppress(OSError, ValueError):
                ids.extend(sha for sha, _offset in _index_entries(idx))
        stores.append(DiskObjectStore(str(quarantine)))
    return ids, stores


@contextlib.contextmanager
def _gc_lock(repo_path: Path) -> Iterator[bool]:
    with open(repo_path / GC_LOCK, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_pack(
    repo_path: Path, store: DiskObjectStore, keep: list[bytes], mtime: float
) -> tuple[Path, Path]:
    """The pack of `keep` and its `.idx`, complete and fsynced, in our folder beside `objects/`."""
    tmp_root = repo_path / GC_TMP
    tmp_root.mkdir(exist_ok=True)
    folder = tmp_root / secrets.token_hex(8)
    folder.mkdir()
    tmp_pack = folder / "tmp.pack"
    offsets: dict[bytes, int] = {}
    repo = Repo(str(repo_path), bare=True)
    try:
        with open(tmp_pack, "wb") as f:
            write_pack_reusing(
                f.write,
                store,
                keep,
                object_format=repo.object_format,
                offsets=offsets,
            )
            f.flush()
            os.fsync(f.fileno())
    finally:
        repo.close()
    with open(tmp_pack, "rb") as r, mmap.mmap(r.fileno(), 0, access=mmap.ACCESS_READ) as view:
        checksum = bytes(view[-20:])
        by_offset = sorted((offset, sha) for sha, offset in offsets.items())
        ends = [offset for offset, _ in by_offset[1:]] + [len(view) - 20]
        entries = [
            (sha, offset, zlib.crc32(view[offset:end]))
            for (offset, sha), end in zip(by_offset, ends, strict=True)
        ]
    entries.sort()
    name = f"pack-{checksum.hex()}"
    pack_path = folder / f"{name}.pack"
    os.replace(tmp_pack, pack_path)
    idx_path = folder / f"{name}.idx"
    with open(idx_path, "wb") as f:
        write_pack_index_v2(f, entries, checksum)
        f.flush()
        os.fsync(f.fileno())
    for path in (pack_path, idx_path):
        os.utime(path, (mtime, mtime))
    return pack_path, idx_path


def _remove_pack(idx: Path) -> None:
    # The .idx first: without it no reader sees the pack, so a kill after it leaves only dead weight.
    idx.unlink(missing_ok=True)
    for suffix in (".pack", ".rev", ".bitmap"):
        idx.with_suffix(suffix).unlink(missing_ok=True)


def remove_leftovers(repo_path: Path, *, dry_run: bool = False) -> list[tuple[Path, int]]:
    """What killed runs left: our temporary folders and `.pack` files without their `.idx`.

    Call under the repository's writer lock (a push moves a `.pack` before its `.idx` under it)
    and the repository's gc lock (a running gc writes in our temporary folder without the first).
    """
    removed: list[tuple[Path, int]] = []
    tmp_root = repo_path / GC_TMP
    if tmp_root.is_dir():
        for folder in tmp_root.iterdir():
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            if not dry_run:
                shutil.rmtree(folder, ignore_errors=True)
            removed.append((folder, size))
    for path in sorted((repo_path / "objects" / "pack").glob("pack-*.pack")):
        if not path.with_suffix(".idx").exists():
            size = path.stat().st_size
            if not dry_run:
                path.unlink(missing_ok=True)
            removed.append((path, size))
    return removed


def collect(
    repo_path: Path,
    *,
    release_commits: Iterable[str],
    cutoff: float,
    writer_lock: Callable[[], contextlib.AbstractContextManager[None]],
    dry_run: bool = False,
    before_swap: Callable[[], None] | None = None,
) -> RepoResult:
    """Collect the repository at `repo_path` (see the module's docstring); `cutoff` in Unix seconds.

    `writer_lock` is the lock every push holds while it moves packs and refs. `before_swap`, a
    test hook, runs just before the writer lock is taken for the swap.
    """
    result = RepoResult()
    with _gc_lock(repo_path) as mine:
        if not mine:
            result.deferred = "another gc is collecting it"
            return result
        with writer_lock():
            result.leftovers = remove_leftovers(repo_path, dry_run=dry_run)
        objects = repo_path / "objects"
        refs = _ref_values(repo_path)
        inventory = _inventory(objects, cutoff)
        releases = _release_ids(release_commits)
        signature = _signature(refs, releases, inventory, objects)
        if _last_signature(repo_path) == signature:
            return result  # nothing changed since a run that left nothing to do: no walk needed
        store = DiskObjectStore(str(objects))
        reader = PackReader(sorted((objects / "pack").glob("pack-*.idx")))
        try:
            walker = _Walker(_lookup([reader], [store]))
            quarantined, q_stores = _quarantine_objects(objects)
            young = [binascii.unhexlify(o.name) for o in inventory.split.young_loose]
            for pack in inventory.split.young_packs:
                idx = objects / "pack" / f"{pack.name}.idx"
                with contextlib.suppress(OSError, ValueError):
                    young.extend(sha for sha, _offset in _index_entries(idx))
            roots = [*refs.values(), *releases, *young]
            walker.walk(roots)
            walker.get_raw = _lookup([reader], [store, *q_stores])
            walker.walk(quarantined)
            for q in q_stores:
                q.close()
            keep = [sha for sha in inventory.old_objects if sha in walker.seen]
            dropped = {sha for sha in inventory.old_objects if sha not in walker.seen}
            result.kept, result.dropped = len(keep), len(dropped)
            if not needs_rewrite(inventory.split, len(dropped)):
                if not dry_run and not quarantined:
                    _remember(repo_path, signature)
                return result
            if dry_run:
                result.freed_bytes = sum(inventory.old_objects[sha] for sha in dropped)
                return result
            old_bytes = sum(f.size for f in (*inventory.split.old_packs, *inventory.split.old_loose))
            written = _write_pack(repo_path, store, keep, inventory.newest_old) if keep else None
        finally:
            reader.close()
            store.close()
        new_bytes = sum(p.stat().st_size for p in written) if written else 0
        _crash_point("pack-written")
        if before_swap is not None:
            before_swap()
        with writer_lock():
            late = _late_references(repo_path, refs, walker)
            if unsafe_drops(dropped, late):
                if written:
                    shutil.rmtree(written[0].parent, ignore_errors=True)
                result.deferred = "a push or a moved ref needs objects that were unreachable; run gc again"
                result.dropped = 0
                return result
            pack_dir = objects / "pack"
            if written:
                # The .pack first, the .idx last: a reader only sees a pack once its index exists.
                for path in written:
                    os.replace(path, pack_dir / path.name)
                    _crash_point("mid-swap")
                _fsync_dir(pack_dir)
                _crash_point("after-swap")
                shutil.rmtree(written[0].parent, ignore_errors=True)
            new_idx_name = written[1].name if written else ""
            for idx in inventory.old_pack_paths:
                if idx.name != new_idx_name:
                    _remove_pack(idx)
                    _crash_point("mid-delete")
                    result.removed_files.append(str(idx.with_suffix(".pack")))
            for path in inventory.old_loose_paths:
                path.unlink(missing_ok=True)
            result.removed_files += [str(p) for p in inventory.old_loose_paths]
        result.freed_bytes = old_bytes - new_bytes
        return result


def _signature(refs: dict[bytes, bytes], releases: list[bytes], inventory: _Inventory, objects: Path) -> str:
    """What a run's answer depends on: refs, release commits, which packs are old or young, and
    whether any quarantine or loose object exists. Equal to the last run's, the answer is too."""
    digest = hashlib.sha256()
    for ref, sha in sorted(refs.items()):
        digest.update(b"ref %s %s\n" % (ref, sha))
    for sha in sorted(releases):
        digest.update(b"release %s\n" % sha)
    split = inventory.split
    for label, files in (("old", split.old_packs), ("young", split.young_packs)):
        for f in sorted(split_file.name for split_file in files):
            digest.update(f"{label} {f}\n".encode())
    digest.update(f"loose {len(split.old_loose)} {len(split.young_loose)}\n".encode())
    digest.update(f"quarantines {len(list(objects.glob('incoming-*')))}\n".encode())
    return digest.hexdigest()


def _last_signature(repo_path: Path) -> str | None:
    try:
        return (repo_path / GC_DONE).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None


def _remember(repo_path: Path, signature: str) -> None:
    with contextlib.suppress(OSError):
        write_atomic(repo_path / GC_DONE, signature + "\n")


def _release_ids(commits: Iterable[str]) -> list[bytes]:
    ids = []
    for commit in commits:
        with contextlib.suppress(ValueError, binascii.Error):
            if len(commit) == 40:
                ids.append(binascii.unhexlify(commit))
    return ids


def _late_references(repo_path: Path, before: dict[bytes, bytes], walker: _Walker) -> set[bytes]:
    """What refs that moved since the walk, and pushes now in quarantine, reach beyond it."""
    now = _ref_values(repo_path)
    moved = [sha for ref, sha in now.items() if before.get(ref) != sha]
    objects = repo_path / "objects"
    quarantined, q_stores = _quarantine_objects(objects)
    store = DiskObjectStore(str(objects))
    reader = PackReader(sorted((objects / "pack").glob("pack-*.idx")))
    try:
        walker.get_raw = _lookup([reader], [store, *q_stores])
        return walker.walk([*moved, *quarantined])
    finally:
        reader.close()
        store.close()
        for q in q_stores:
            q.close()
