"""git's on-disk formats where speed matters: the index file, tree objects, loose objects, packs.

dulwich reads and writes all of these correctly but one Python object at a time; a commit in
a 2,000-file tree reads and writes the whole index and hashes every folder's tree, so these
paths work on whole buffers instead (struct over the index, raw bytes for trees, one pack
written in a single pass with its `.idx` built from offsets recorded on the way, rather than
re-reading the pack). Anything unusual (index v4, merge conflicts) falls back to dulwich.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import os
import struct
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from dulwich.file import GitFile
from dulwich.index import (
    ConflictedIndexEntry,
    IndexChecksumReader,
    IndexChecksumWriter,
    IndexEntry,
    read_index_dict_with_version,
    write_index_dict,
)
from dulwich.object_store import DiskObjectStore
from dulwich.objects import ObjectID
from dulwich.pack import write_pack_index_v2

from mcpz.repo.model import group_tree_entries

if TYPE_CHECKING:
    from dulwich.file import _GitFile

__all__ = [
    "ConflictedIndexEntry",
    "DiskObjectStore",
    "Entries",
    "IndexEntry",
    "IndexFile",
    "IndexLock",
    "RawObject",
    "build_trees",
    "index_bytes",
    "parse_index",
    "read_index",
    "write_objects",
]

Entries = dict[bytes, IndexEntry | ConflictedIndexEntry]
Side = tuple[int, bytes]  # (mode, hex id)

TREE_MODE = 0o040000
COMMIT, TREE, BLOB, TAG = 1, 2, 3, 4
TYPE_NAMES = {COMMIT: b"commit", TREE: b"tree", BLOB: b"blob", TAG: b"tag"}
# From this many new objects on, one pack is written instead of loose objects (git's own
# `fetch.unpackLimit` is 100). Objects are compressed at zlib level 1, as git writes loose
# objects; `git gc` recompresses if asked.
PACK_THRESHOLD = 100
COMPRESSION = 1

_ENTRY = struct.Struct(">10I20sH")
_FLAG_NAMEMASK = 0x0FFF
_FLAG_STAGEMASK = 0x3000
_FLAG_EXTENDED = 0x4000


# --- the index -----------------------------------------------------------------------------------


class IndexFile(NamedTuple):
    entries: Entries
    version: int
    mtime_ns: int  # when the index was written: entries touched since are "racily clean"


def parse_index(data: bytes) -> tuple[Entries, int]:
    """Entries and version of an index file's bytes (checksum verified)."""
    if len(data) < 32 or data[:4] != b"DIRC":
        raise ValueError("not a git index file (bad signature)")
    if hashlib.sha1(data[:-20]).digest() != data[-20:] and data[-20:] != b"\0" * 20:
        raise ValueError("the git index file is corrupt (checksum mismatch)")
    version, count = struct.unpack_from(">LL", data, 4)
    if version not in (2, 3):
        return _parse_index_dulwich(data)
    entries: Entries = {}
    pos = 12
    unpack = _ENTRY.unpack_from
    hexlify = binascii.hexlify
    for _ in range(count):
        cs, cn, ms, mn, dev, ino, mode, uid, gid, size, sha, flags = unpack(data, pos)
        if flags & _FLAG_STAGEMASK:
            return _parse_index_dulwich(data)
        start = pos + 62
        extended = 0
        if flags & _FLAG_EXTENDED:
            (extended,) = struct.unpack_from(">H", data, start)
            start += 2
        length = flags & _FLAG_NAMEMASK
        end = data.index(b"\0", start) if length == _FLAG_NAMEMASK else start + length
        entries[data[start:end]] = IndexEntry(
            ctime=(cs, cn),
            mtime=(ms, mn),
            dev=dev,
            ino=ino,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            sha=ObjectID(hexlify(sha)),
            flags=flags & ~_FLAG_NAMEMASK,
            extended_flags=extended,
        )
        pos += (end - pos + 8) & ~7
    return entries, version


def _parse_index_dulwich(data: bytes) -> tuple[Entries, int]:
    reader = IndexChecksumReader(io.BytesIO(data))
    entries, version, _extensions = read_index_dict_with_version(reader)
    return entries, version


def read_index(path: str) -> IndexFile:
    try:
        with open(path, "rb") as f:
            data = f.read()
            mtime_ns = os.fstat(f.fileno()).st_mtime_ns
    except FileNotFoundError:
        return IndexFile({}, 2, 0)
    entries, version = parse_index(data)
    return IndexFile(entries, version, mtime_ns)


def _ns_pair(value: int | float | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, tuple):
        return value
    if isinstance(value, int):
        return value, 0
    seconds = int(value)
    return seconds, int((value - seconds) * 1_000_000_000)


def index_bytes(entries: Entries, version: int) -> bytes:
    """The index file for `entries`: version 2, or 3 when an entry has extended flags.

    Extensions are dropped on purpose: a cache-tree (TREE) or untracked cache (UNTR) written by
    git would be stale after our changes; git rebuilds them when it wants them.
    """
    normal = [e for e in entries.values() if isinstance(e, IndexEntry)]
    if version == 4 or len(normal) != len(entries):
        buffer = io.BytesIO()
        writer = IndexChecksumWriter(buffer)
        write_index_dict(writer, entries, version=version)
        writer.write_checksum()
        return buffer.getvalue()
    extended = any(e.extended_flags for e in normal)
    parts = [b"DIRC", struct.pack(">LL", 3 if extended else 2, len(entries))]
    pack = _ENTRY.pack
    unhexlify = binascii.unhexlify
    for name in sorted(entries):
        e = entries[name]
        assert isinstance(e, IndexEntry)
        flags = (e.flags & ~(_FLAG_NAMEMASK | _FLAG_STAGEMASK | _FLAG_EXTENDED)) | min(len(name), 0xFFF)
        if e.extended_flags:
            flags |= _FLAG_EXTENDED
        ctime, mtime = _ns_pair(e.ctime), _ns_pair(e.mtime)
        parts.append(
            pack(
                ctime[0] & 0xFFFFFFFF,
                ctime[1],
                mtime[0] & 0xFFFFFFFF,
                mtime[1],
                e.dev & 0xFFFFFFFF,
                e.ino & 0xFFFFFFFF,
                e.mode,
                e.uid & 0xFFFFFFFF,
                e.gid & 0xFFFFFFFF,
                e.size & 0xFFFFFFFF,
                unhexlify(e.sha),
                flags,
            )
        )
        length = 62 + len(name)
        if e.extended_flags:
            parts.append(struct.pack(">H", e.extended_flags))
            length += 2
        parts.append(name)
        parts.append(b"\0" * (((length + 8) & ~7) - length))
    body = b"".join(parts)
    return body + hashlib.sha1(body).digest()


class IndexLock:
    """Holds `index.lock` as git does: `save` writes the new index and renames it into place,
    `release` leaves the index as it was. Raises dulwich's FileLocked if another process holds it."""

    def __init__(self, path: str) -> None:
        self._file: _GitFile = GitFile(path, "wb")
        self._open = True

    def save(self, entries: Entries, version: int) -> None:
        self._file.write(index_bytes(entries, version))
        self._file.close()
        self._open = False

    def release(self) -> None:
        if self._open:
            self._file.abort()
            self._open = False


# --- objects -------------------------------------------------------------------------------------


class RawObject(NamedTuple):
    type_num: int
    data: bytes
    id: bytes  # hex

    @classmethod
    def of(cls, type_num: int, data: bytes) -> RawObject:
        h = hashlib.sha1(b"%s %d\0" % (TYPE_NAMES[type_num], len(data)))
        h.update(data)
        return cls(type_num, data, h.hexdigest().encode("ascii"))


def tree_bytes(items: dict[bytes, Side]) -> bytes:
    """A tree object's body, entries in git's order (a folder sorts as if its name ended in /)."""
    unhexlify = binascii.unhexlify
    order = sorted(items, key=lambda n: n + b"/" if items[n][0] == TREE_MODE else n)
    return b"".join(b"%o %s\0%s" % (items[n][0], n, unhexlify(items[n][1])) for n in order)


def parse_tree(data: bytes) -> dict[bytes, Side]:
    items: dict[bytes, Side] = {}
    pos = 0
    hexlify = binascii.hexlify
    while pos < len(data):
        space = data.index(b" ", pos)
        nul = data.index(b"\0", space)
        items[data[space + 1 : nul]] = (int(data[pos:space], 8), hexlify(data[nul + 1 : nul + 21]))
        pos = nul + 21
    return items


def build_trees(
    entries: Iterable[tuple[bytes, int, bytes]],
) -> tuple[bytes, dict[bytes, RawObject], dict[bytes, dict[bytes, Side]]]:
    """Tree objects for flat `(path, mode, id)` entries.

    Returns the root tree's id, every tree as a RawObject by id, and every tree's items by id.
    """
    folders = group_tree_entries(entries)
    objects: dict[bytes, RawObject] = {}
    items_by_id: dict[bytes, dict[bytes, Side]] = {}
    ids: dict[bytes, bytes] = {}
    for folder in sorted(folders, key=lambda f: f.count(b"/") + (1 if f else 0), reverse=True):
        items: dict[bytes, Side] = {}
        for name, value in folders[folder].items():
            if value is None:
                items[name] = (TREE_MODE, ids[folder + b"/" + name if folder else name])
            else:
                items[name] = value
        obj = RawObject.of(TREE, tree_bytes(items))
        ids[folder] = obj.id
        objects[obj.id] = obj
        items_by_id[obj.id] = items
    return ids[b""], objects, items_by_id


def write_objects(store: DiskObjectStore, objects: Sequence[RawObject]) -> None:
    """Write the objects the store lacks: loose when few, else one pack."""
    seen: set[bytes] = set()
    missing = []
    for obj in objects:
        if obj.id not in seen and ObjectID(obj.id) not in store:
            seen.add(obj.id)
            missing.append(obj)
    if len(missing) >= PACK_THRESHOLD:
        write_pack(os.path.join(str(store.path), "pack"), missing)
    else:
        for obj in missing:
            write_loose(str(store.path), obj)


def write_loose(objects_dir: str, obj: RawObject) -> None:
    """One loose object, read-only like git's, moved into place whole."""
    sha = obj.id.decode("ascii")
    folder = os.path.join(objects_dir, sha[:2])
    target = os.path.join(folder, sha[2:])
    if os.path.exists(target):
        return
    os.makedirs(folder, exist_ok=True)
    compressed = zlib.compress(b"%s %d\0" % (TYPE_NAMES[obj.type_num], len(obj.data)) + obj.data, COMPRESSION)
    fd, temp = tempfile.mkstemp(prefix="tmp_obj_", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(compressed)
        os.chmod(temp, 0o444)
        os.replace(temp, target)
    except BaseException:
        _remove(temp)
        raise


def _pack_header(type_num: int, size: int) -> bytes:
    byte = (type_num << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)


def write_pack(pack_dir: str, objects: Sequence[RawObject]) -> str:
    """Write `objects` (no deltas) as one pack and its v2 index; return the pack's path.

    The `.idx` is built from the offsets and CRCs recorded while writing and is moved into
    place last, so readers (which look for `.idx` files) never see a half-written pack.
    """
    os.makedirs(pack_dir, exist_ok=True)
    fd, temp_pack = tempfile.mkstemp(prefix="tmp_pack_", dir=pack_dir)
    temp_idx = temp_pack + ".idx"
    try:
        entries: list[tuple[bytes, int, int]] = []
        digest = hashlib.sha1()
        with os.fdopen(fd, "wb") as f:
            header = b"PACK" + struct.pack(">LL", 2, len(objects))
            f.write(header)
            digest.update(header)
            offset = len(header)
            for obj in objects:
                chunk = _pack_header(obj.type_num, len(obj.data)) + zlib.compress(obj.data, COMPRESSION)
                f.write(chunk)
                digest.update(chunk)
                entries.append((binascii.unhexlify(obj.id), offset, zlib.crc32(chunk)))
                offset += len(chunk)
            checksum = digest.digest()
            f.write(checksum)
        entries.sort()
        with open(temp_idx, "wb") as f:
            write_pack_index_v2(f, entries, checksum)
        base = os.path.join(pack_dir, f"pack-{checksum.hex()}")
        for temp in (temp_pack, temp_idx):
            os.chmod(temp, 0o444)
        os.replace(temp_pack, base + ".pack")
        os.replace(temp_idx, base + ".idx")
        return base + ".pack"
    except BaseException:
        _remove(temp_pack)
        _remove(temp_idx)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
