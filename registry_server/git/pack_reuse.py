"""Serve `git-upload-pack` by copying stored pack entries instead of recompressing every object.

Dulwich writes a fetch's pack with `write_pack_from_container`, which inflates every object
(twice: once looking for reusable deltas, once reading it) and deflates it again. C git copies
the compressed entries of its packs as they are. `ReusingUploadPackHandler` keeps dulwich's
negotiation and its computation of the objects to send exactly, and replaces only how the pack
bytes are produced (`write_pack_reusing`):

- each object is looked up in the `.idx` of the repository's packs; its stored entry runs from its
  offset to the next entry's offset in offset order (the last one to the pack's trailer);
- entries are written pack by pack in pack order; whole objects are copied byte for byte, and so
  are deltas, with only the base reference rewritten: an offset to the base's position in the new
  pack when the base was already written, a ref-delta naming the base when the base is further on
  in the same stored pack, or a ref-delta against an object the client already has (thin pack);
- a delta whose base is none of those is sent as a whole object (inflated and deflated by dulwich),
  and so is an entry whose CRC32 does not match its v2 `.idx` (or, for a v1 `.idx`, whose zlib stream
  does not inflate to its stated size exactly), and every object no pack holds (loose objects);
- a new header carries the object count and a SHA-1 trailer covers everything.

Deltas only ever point backwards in the new pack, or forwards inside one stored pack along that
pack's own delta edges, so no delta cycle can be formed from objects stored twice. Packs are read
oldest first (see `_pack_paths`); each response maps the files itself and unmaps them at its end.

`handle` is a copy of dulwich's, pinned by a digest of dulwich's source: with any other dulwich the
handler runs dulwich's own `handle` (and writes packs the slow way) rather than a stale copy.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import inspect
import logging
import mmap
import os
import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dulwich.object_filters import (
    CombineFilter,
    FilterSpec,
    SparseOidFilter,
    TreeDepthFilter,
    filter_pack_objects,
    filter_pack_objects_with_paths,
)
from dulwich.object_store import PackBasedObjectStore
from dulwich.pack import PackFileDisappeared, pack_object_chunks, write_pack_from_container
from dulwich.protocol import CAPABILITY_NO_DONE, CAPABILITY_OFS_DELTA, CAPABILITY_THIN_PACK
from dulwich.server import UploadPackHandler, _ProtocolGraphWalker

# The logger keeps its name from before the domain packages, so logging configs still match.
log = logging.getLogger("registry_server.pack_reuse")

OFS_DELTA = 6
REF_DELTA = 7
WHOLE_TYPES = (1, 2, 3, 4)  # commit, tree, blob, tag
HASH_SIZE = 20  # SHA-1: other object formats go through dulwich's own writer
IDX_V2_MAGIC = b"\377tOc"
SIDEBAND_MAX = 65515  # the largest side-band-64k payload: one pkt-line per write
_SLICE = 1 << 20

# Digest of the dulwich `UploadPackHandler.handle` that `ReusingUploadPackHandler.handle` copies.
# Another dulwich means another negotiation: the handler then runs dulwich's own, unchanged.
DULWICH_HANDLE_DIGEST = "d22afce7b2f3d21727478d8211482c062629b6702f2f8d329841f2b385dacaa3"


def _source_digest(func: Callable[..., Any]) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()
    except (OSError, TypeError):
        return None


@functools.cache
def dulwich_handle_matches() -> bool:
    """Whether the installed dulwich's `UploadPackHandler.handle` is the one copied below."""
    if _source_digest(UploadPackHandler.handle) == DULWICH_HANDLE_DIGEST:
        return True
    log.warning("dulwich's UploadPackHandler.handle is not the one copied here: packs are written by dulwich")
    return False


@dataclass
class ReuseStats:
    """What one `write_pack_reusing` did with each object."""

    objects: int = 0
    copied: int = 0  # entries copied byte for byte (whole objects, and deltas whose base keeps its form)
    rebased: int = 0  # deltas copied with a rewritten base reference (new offset, or offset <-> ref)
    thin: int = 0  # ref-deltas against a base the client has and is not sent
    full: Counter[str] = field(default_factory=Counter)  # sent whole through dulwich, by reason
    pack_bytes: int = 0

    @property
    def reused(self) -> int:
        return self.copied + self.rebased + self.thin

    def summary(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "copied": self.copied,
            "rebased": self.rebased,
            "thin": self.thin,
            "full": dict(self.full),
            "pack_bytes": self.pack_bytes,
        }


class _Unusable(Exception):
    """A pack file (or one entry of it) this module will not copy from."""


def _encode_ofs(distance: int) -> bytes:
    """The OFS_DELTA base distance in git's offset encoding (big-endian, +1 per continuation)."""
    out = [distance & 0x7F]
    distance >>= 7
    while distance:
        distance -= 1
        out.append(0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(reversed(out))


def _inflates_to(data: memoryview, size: int) -> bool:
    """True when `data` is exactly one zlib stream that inflates to `size` bytes."""
    d = zlib.decompressobj()
    got = 0
    rest: bytes | memoryview = data
    try:
        while True:
            got += len(d.decompress(rest, _SLICE))
            rest = d.unconsumed_tail
            if d.eof or not rest or got > size:
                break
    except zlib.error:
        return False
    return d.eof and not d.unused_data and not d.unconsumed_tail and got == size


@dataclass
class _Entry:
    type_num: int
    size: int
    header_end: int  # end of the type-and-size bytes
    data_start: int  # start of the zlib stream
    ofs_base: int | None  # absolute offset of an OFS_DELTA's base
    ref_base: bytes | None  # name of a REF_DELTA's base


class _IndexedPack:
    """One `pack-*.pack` with its `.idx`, both memory-mapped for the time of one response."""

    def __init__(self, idx_path: str) -> None:
        self.idx_path = idx_path
        self.pack_path = idx_path[: -len(".idx")] + ".pack"
        self._maps: list[mmap.mmap] = []
        self._sorted: list[int] = []  # offsets in pack order, once check_offsets() ran
        self._order: list[int] = []  # the .idx position of each of them
        try:
            self.idx = self._map(idx_path)
            self.data = self._map(self.pack_path)
            self.view = memoryview(self.data)
            self._parse()
        except BaseException:
            self.close()
            raise

    def _map(self, path: str) -> mmap.mmap:
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps.append(m)
        return m

    def close(self) -> None:
        view = self.__dict__.pop("view", None)
        for closable in (view, *self._maps):
            try:
                if closable is not None:
                    closable.release() if isinstance(closable, memoryview) else closable.close()
            except BufferError:
                # A slice is still referenced (by a traceback on the way out): unmapped when collected.
                pass
        self._maps.clear()

    def _parse(self) -> None:
        idx, data = self.idx, self.data
        if len(data) < 12 + HASH_SIZE or data[:4] != b"PACK":
            raise _Unusable("not a pack file")
        version, count = struct.unpack_from(">LL", data, 4)
        if version not in (2, 3):
            raise _Unusable(f"pack version {version}")
        self.end = len(data) - HASH_SIZE  # where the trailer starts
        if idx[:4] == IDX_V2_MAGIC:
            if struct.unpack_from(">L", idx, 4)[0] != 2:
                raise _Unusable("unknown .idx version")
            self.v2 = True
            fanout_at = 8
        else:
            self.v2 = False
            fanout_at = 0
        self.fanout: tuple[int, ...] = struct.unpack_from(">256L", idx, fanout_at)
        n = self.fanout[-1]
        self.count = n
        if n != count:
            raise _Unusable(f"the .idx lists {n} objects, the pack holds {count}")
        if self.v2:
            self._names_at = fanout_at + 1024
            self._crcs_at = self._names_at + HASH_SIZE * n
            offsets_at = self._crcs_at + 4 * n
            large_at = offsets_at + 4 * n
            if len(idx) < large_at + 2 * HASH_SIZE:
                raise _Unusable("truncated .idx")
            small = array("I")
            if small.itemsize != 4:  # pragma: no cover - no such platform in use
                raise _Unusable("no 32-bit array type")
            small.frombytes(idx[offsets_at : offsets_at + 4 * n])
            if sys.byteorder == "little":
                small.byteswap()
            if n and max(small) & 0x80000000:
                self.offsets: Sequence[int] = [
                    v
                    if not v & 0x80000000
                    else struct.unpack_from(">Q", idx, large_at + 8 * (v & 0x7FFFFFFF))[0]
                    for v in small
                ]
            else:
                self.offsets = small
        else:
            self._names_at = 1024 + 4  # entries are (4-byte offset, name)
            if len(idx) < 1024 + (4 + HASH_SIZE) * n + 2 * HASH_SIZE:
                raise _Unusable("truncated .idx")
            self.offsets = [o for (o,) in struct.iter_unpack(">L20x", idx[1024 : 1024 + (4 + HASH_SIZE) * n])]
        if idx[-2 * HASH_SIZE : -HASH_SIZE] != data[-HASH_SIZE:]:
            raise _Unusable("the .idx belongs to another pack")

    def name(self, pos: int) -> bytes:
        at = self._names_at + (HASH_SIZE if self.v2 else HASH_SIZE + 4) * pos
        return self.idx[at : at + HASH_SIZE]

    def crc32(self, pos: int) -> int | None:
        if not self.v2:
            return None
        value: int = struct.unpack_from(">L", self.idx, self._crcs_at + 4 * pos)[0]
        return value

    def lookup(self, raw: bytes) -> int | None:
        """The position of object `raw` in the .idx, or None."""
        first = raw[0]
        lo = self.fanout[first - 1] if first else 0
        hi = self.fanout[first]
        while lo < hi:
            mid = (lo + hi) // 2
            name = self.name(mid)
            if name < raw:
                lo = mid + 1
            elif name > raw:
                hi = mid
            else:
                return mid
        return None

    def check_offsets(self) -> None:
        """Sort the entries by offset (where each one ends), refusing offsets no pack can have."""
        offsets = self.offsets
        order = sorted(range(self.count), key=offsets.__getitem__)
        ordered = [offsets[i] for i in order]
        if ordered and (ordered[0] < 12 or ordered[-1] >= self.end or len(set(ordered)) != len(ordered)):
            raise _Unusable("the .idx offsets do not fit the pack")
        self._order, self._sorted = order, ordered

    def entry_end(self, offset: int) -> int:
        ordered = self._sorted
        j = bisect_left(ordered, offset)
        return ordered[j + 1] if j + 1 < len(ordered) else self.end

    def position_at(self, offset: int) -> int | None:
        ordered = self._sorted
        j = bisect_left(ordered, offset)
        if j < len(ordered) and ordered[j] == offset:
            return self._order[j]
        return None

    def parse_entry(self, offset: int, end: int) -> _Entry:
        data = self.data
        pos = offset
        byte = data[pos]
        type_num = (byte >> 4) & 7
        size = byte & 0x0F
        shift = 4
        pos += 1
        while byte & 0x80:
            if pos >= end:
                raise _Unusable("entry header runs past the entry")
            byte = data[pos]
            size |= (byte & 0x7F) << shift
            shift += 7
            pos += 1
        header_end = pos
        ofs_base: int | None = None
        ref_base: bytes | None = None
        if type_num == OFS_DELTA:
            if pos >= end:
                raise _Unusable("entry header runs past the entry")
            byte = data[pos]
            distance = byte & 0x7F
            pos += 1
            while byte & 0x80:
                if pos >= end:
                    raise _Unusable("entry header runs past the entry")
                byte = data[pos]
                distance = ((distance + 1) << 7) | (byte & 0x7F)
                pos += 1
            if not 0 < distance <= offset:
                raise _Unusable("delta base offset outside the pack")
            ofs_base = offset - distance
        elif type_num == REF_DELTA:
            ref_base = data[pos : pos + HASH_SIZE]
            pos += HASH_SIZE
        elif type_num not in WHOLE_TYPES:
            raise _Unusable(f"object type {type_num}")
        if pos >= end:
            raise _Unusable("entry has no data")
        return _Entry(type_num, size, header_end, pos, ofs_base, ref_base)

    def entry_is_intact(self, pos: int, offset: int, end: int, entry: _Entry) -> bool:
        expected = self.crc32(pos)
        if expected is not None:
            return binascii.crc32(self.view[offset:end]) == expected
        return _inflates_to(self.view[entry.data_start : end], entry.size)


class _PackOutput:
    """The pack being sent: hashed, counted, and handed on in side-band-sized writes."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._buf = bytearray()
        self._sha = hashlib.sha1()
        self.offset = 0

    def add(self, data: bytes | bytearray | memoryview) -> None:
        for start in range(0, len(data), _SLICE):
            piece = data[start : start + _SLICE] if len(data) > _SLICE else data
            self._sha.update(piece)
            self.offset += len(piece)
            self._buf += piece
            self._drain()

    def _drain(self) -> None:
        buf = self._buf
        while len(buf) >= SIDEBAND_MAX:
            self._write(bytes(buf[:SIDEBAND_MAX]))
            del buf[:SIDEBAND_MAX]

    def finish(self) -> bytes:
        digest = self._sha.digest()
        self._buf += digest
        self._drain()
        if self._buf:
            self._write(bytes(self._buf))
            self._buf.clear()
        return digest


def _pack_paths(store: Any) -> list[str]:
    """The store's `.idx` files, oldest pack first.

    An object stored twice is sent from the first pack holding it. The registry stores each push
    as a pack completed with whole copies of the bases its deltas need, so the oldest copy is the
    one stored as the delta that continues the chain from the pushes before it.
    """
    found = []
    for pack in store.packs:
        try:
            path = getattr(pack.index, "path", None)
        except PackFileDisappeared:
            # Removed since the store listed it (`mcpz registry gc` swapped it for a new pack):
            # its objects are read through the store, which rescans the pack folder.
            continue
        if isinstance(path, str) and path.endswith(".idx"):
            try:
                mtime = os.stat(path[: -len(".idx")] + ".pack").st_mtime_ns
            except OSError:
                continue
            found.append((mtime, path))
    return [path for _mtime, path in sorted(found)]


def write_pack_reusing(
    write: Callable[[bytes], object],
    store: Any,
    object_ids: Iterable[bytes],
    *,
    object_format: Any,
    client_has: Collection[bytes] = (),
    thin: bool = False,
    ofs_delta: bool = True,
    offsets: dict[bytes, int] | None = None,
) -> ReuseStats:
    """Write a pack of `object_ids` (hex) from `store`, copying stored entries where it can.

    `client_has` (hex ids) are objects the client is known to hold; with `thin` a delta whose base
    is one of them and is not sent is written as a ref-delta against it. Without `ofs_delta` every
    delta is written as a ref-delta. Objects are sent once each, whatever their order in
    `object_ids`. `offsets`, when given, is filled with each object's (binary id) offset in the
    pack: what a `.idx` of it needs (registry_server.maintenance.repack).
    """
    wanted = {binascii.unhexlify(h): None for h in object_ids}
    stats = ReuseStats(objects=len(wanted))
    opened: list[_IndexedPack] = []
    try:
        # Which stored entry each object is sent from: the first pack that holds it.
        remaining = set(wanted)
        sources: list[tuple[_IndexedPack, list[tuple[int, int]]]] = []
        assigned: dict[bytes, _IndexedPack] = {}
        for idx_path in _pack_paths(store) if remaining else []:
            try:
                pack = _IndexedPack(idx_path)
            except (_Unusable, OSError, ValueError, struct.error) as e:
                log.warning("pack not copied from", extra={"pack": idx_path, "reason": str(e)})
                continue
            opened.append(pack)
            found = [(raw, pos) for raw in remaining if (pos := pack.lookup(raw)) is not None]
            if not found:
                continue
            try:
                pack.check_offsets()
            except _Unusable as e:
                log.warning("pack not copied from", extra={"pack": idx_path, "reason": str(e)})
                continue
            for raw, _pos in found:
                assigned[raw] = pack
            remaining.difference_update(raw for raw, _pos in found)
            sources.append((pack, sorted((pack.offsets[pos], pos) for _raw, pos in found)))
            if not remaining:
                break

        out = _PackOutput(write)
        for chunk in (b"PACK", struct.pack(">LL", 2, len(wanted))):
            out.add(chunk)
        written: dict[bytes, int] = {} if offsets is None else offsets

        def send_full(raw: bytes, reason: str) -> None:
            written[raw] = out.offset
            type_num, data = store.get_raw(binascii.hexlify(raw))
            for chunk in pack_object_chunks(type_num, [data], object_format=object_format):
                out.add(chunk)
            stats.full[reason] += 1

        # Objects no pack holds go first, so that deltas against them can point back at them.
        for raw in wanted:
            if raw in remaining:
                send_full(raw, "not in a pack")

        for pack, entries in sources:
            view = pack.view
            for offset, pos in entries:
                raw = pack.name(pos)
                try:
                    end = pack.entry_end(offset)
                    entry = pack.parse_entry(offset, end)
                    if not pack.entry_is_intact(pos, offset, end, entry):
                        raise _Unusable("CRC32 mismatch")
                except _Unusable as e:
                    log.warning(
                        "pack entry not copied",
                        extra={"pack": pack.pack_path, "object": raw.hex(), "reason": str(e)},
                    )
                    send_full(raw, "unusable entry")
                    continue
                if entry.ofs_base is None and entry.ref_base is None:
                    written[raw] = out.offset
                    out.add(view[offset:end])
                    stats.copied += 1
                    continue
                if entry.ref_base is not None:
                    base: bytes | None = entry.ref_base
                else:
                    assert entry.ofs_base is not None
                    base_pos = pack.position_at(entry.ofs_base)
                    base = pack.name(base_pos) if base_pos is not None else None
                if base is None or base == raw:
                    send_full(raw, "delta base not in the .idx")
                    continue
                here = out.offset
                thin_base = False
                if base in written and ofs_delta:
                    new_type, reference = OFS_DELTA, _encode_ofs(here - written[base])
                elif base in written or assigned.get(base) is pack:
                    # Already sent, or sent further on from this same pack (along its own delta edge).
                    new_type, reference = REF_DELTA, base
                elif base not in wanted and thin and binascii.hexlify(base) in client_has:
                    new_type, reference, thin_base = REF_DELTA, base, True
                else:
                    send_full(raw, "client lacks the delta base")
                    continue
                written[raw] = here
                if new_type == entry.type_num and view[entry.header_end : entry.data_start] == reference:
                    out.add(view[offset:end])
                    verbatim = True
                else:
                    out.add(bytes([(view[offset] & 0x8F) | (new_type << 4)]))
                    out.add(view[offset + 1 : entry.header_end])
                    out.add(reference)
                    out.add(view[entry.data_start : end])
                    verbatim = False
                if thin_base:
                    stats.thin += 1
                elif verbatim:
                    stats.copied += 1
                else:
                    stats.rebased += 1
        out.finish()
        stats.pack_bytes = out.offset + HASH_SIZE
        return stats
    finally:
        for pack in opened:
            pack.close()


def can_reuse(store: Any, object_format: Any) -> bool:
    """Whether `write_pack_reusing` serves this store (SHA-1 objects in pack files)."""
    return isinstance(store, PackBasedObjectStore) and getattr(object_format, "name", None) == "sha1"


class ReusingUploadPackHandler(UploadPackHandler):  # type: ignore[misc]
    """dulwich's upload-pack, writing its pack by copying stored entries (`write_pack_reusing`)."""

    stats: ReuseStats | None = None

    def handle(self) -> None:
        if not dulwich_handle_matches():
            super().handle()
            return
        # From here to the pack: dulwich 1.2's UploadPackHandler.handle, unchanged.
        self._processing_have_lines = True

        graph_walker = _ProtocolGraphWalker(
            self,
            self.repo.object_store,
            self.repo.get_peeled,
            self.repo.refs.get_symrefs,
        )
        wants: list[bytes] = []

        def wants_wrapper(refs: Any, depth: int | None = None) -> list[bytes]:
            wants.extend(graph_walker.determine_wants(refs, depth))
            return wants

        missing_objects = self.repo.find_missing_objects(
            wants_wrapper,
            graph_walker,
            self.progress,
            get_tagged=self.get_tagged,
        )

        if len(wants) == 0:
            return

        if missing_objects is None:
            return

        object_ids = list(missing_objects)

        if not graph_walker.handle_done(not self.has_capability(CAPABILITY_NO_DONE), self._done_received):
            return

        self._start_pack_send_phase()

        if self.filter_spec is not None:
            original_count = len(object_ids)

            def needs_path_tracking(filter_spec: FilterSpec) -> bool:
                if isinstance(filter_spec, TreeDepthFilter | SparseOidFilter):
                    return True
                if isinstance(filter_spec, CombineFilter):
                    return any(needs_path_tracking(f) for f in filter_spec.filters)
                return False

            if needs_path_tracking(self.filter_spec):
                filtered_oids = filter_pack_objects_with_paths(
                    self.repo.object_store,
                    wants,
                    self.filter_spec,
                    progress=self.progress,
                )
                object_ids = [(oid, None) for oid in filtered_oids]
            else:
                oid_list = [oid for oid, _hint in object_ids]
                filtered_oids = filter_pack_objects(self.repo.object_store, oid_list, self.filter_spec)
                filtered_oid_set = set(filtered_oids)
                object_ids = [(oid, hint) for oid, hint in object_ids if oid in filtered_oid_set]

            filtered_count = original_count - len(object_ids)
            if filtered_count > 0:
                self.progress((f"filtered {filtered_count} objects.\n").encode("ascii"))

        self.progress((f"counting objects: {len(object_ids)}, done.\n").encode("ascii"))

        # The one change: how the pack's bytes are produced.
        store = self.repo.object_store
        if can_reuse(store, self.repo.object_format):
            # A partial clone may lack the blobs of the commits it has: no thin deltas for it.
            client_has: Collection[bytes] = ()
            if self.filter_spec is None and hasattr(missing_objects, "get_remote_has"):
                client_has = missing_objects.get_remote_has()
            self.stats = write_pack_reusing(
                self.write_pack_data,
                store,
                [oid for oid, _hint in object_ids],
                object_format=self.repo.object_format,
                client_has=client_has,
                thin=self.has_capability(CAPABILITY_THIN_PACK),
                ofs_delta=self.has_capability(CAPABILITY_OFS_DELTA),
            )
            log.debug("upload-pack wrote its pack", extra={"pack_reuse": self.stats.summary()})
        else:
            write_pack_from_container(
                self.write_pack_data,
                self.repo.object_store,
                object_ids,
                object_format=self.repo.object_format,
            )
        # we are done
        self.proto.write_pkt_line(None)


# For readers of stored packs elsewhere in the registry (registry_server.maintenance.packread).
IndexedPack = _IndexedPack
Unusable = _Unusable
