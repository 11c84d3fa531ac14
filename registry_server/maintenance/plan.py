"""What garbage collection may take, decided from plain data (no I/O): the rules in one place.

The safety rules (docs/operations.md, "Garbage collection"):

- Roots are every ref (branches, and the `v*` release tags), every published release's commit from
  the index (yanked or not), every object of a pack or loose file younger than the grace period,
  and every object of a push still in its quarantine. What the roots reach is kept.
- Only packs and loose objects older than the grace period are rewritten: what a push or fetch in
  flight may still lean on arrived recently, so it is left where it is (git's `gc.pruneExpire`).
- The new pack is complete, fsynced and renamed in (`.pack` first, `.idx` last) before anything
  is deleted, so a kill at any point leaves every object either in an old pack or in the new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A pack (its `.pack`, `.idx` and `.rev` together) or one loose object, as found on disk."""

    name: str  # pack-<hex> for a pack, the hex id for a loose object
    mtime: float
    size: int


@dataclass(frozen=True, slots=True)
class Split:
    """Which stored files a run may rewrite (`old`) and which it leaves alone (`young`)."""

    old_packs: tuple[StoredFile, ...]
    young_packs: tuple[StoredFile, ...]
    old_loose: tuple[StoredFile, ...]
    young_loose: tuple[StoredFile, ...]


def split_by_age(packs: Iterable[StoredFile], loose: Iterable[StoredFile], cutoff: float) -> Split:
    """Files last written at or before `cutoff` (Unix seconds) are old; the rest are young."""
    packs, loose = list(packs), list(loose)
    return Split(
        old_packs=tuple(p for p in packs if p.mtime <= cutoff),
        young_packs=tuple(p for p in packs if p.mtime > cutoff),
        old_loose=tuple(o for o in loose if o.mtime <= cutoff),
        young_loose=tuple(o for o in loose if o.mtime > cutoff),
    )


def needs_rewrite(split: Split, dropped: int) -> bool:
    """Whether rewriting the old files changes anything: garbage to drop, or several to merge."""
    return dropped > 0 or len(split.old_packs) > 1 or bool(split.old_loose)


def unsafe_drops(dropped: set[bytes], referenced_late: Iterable[bytes]) -> set[bytes]:
    """Objects about to be dropped that something seen after the walk (a moved ref, a push in
    its quarantine) refers to: while there are any, the old files must stay."""
    return {sha for sha in referenced_late if sha in dropped}


@dataclass
class Freed:
    """What one kind of garbage amounted to: how many things and their bytes."""

    kind: str
    count: int = 0
    bytes: int = 0
    detail: list[str] = field(default_factory=list)

    def add(self, size: int, what: str | None = None) -> None:
        self.count += 1
        self.bytes += size
        if what is not None and len(self.detail) < 50:
            self.detail.append(what)


KINDS = (
    "git objects",
    "quarantines",
    "empty repositories",
    "nonces",
    "tokens",
    "usage segments",
)


@dataclass
class GcReport:
    """The whole run: what each kind freed (or would free, on a dry run) and what was put off."""

    dry_run: bool
    kinds: dict[str, Freed] = field(default_factory=lambda: {k: Freed(k) for k in KINDS})
    deferred: list[str] = field(default_factory=list)
    repositories: int = 0

    def freed(self, kind: str) -> Freed:
        return self.kinds[kind]

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.kinds.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "repositories": self.repositories,
            "freed_bytes": self.total_bytes,
            "kinds": [
                {"kind": f.kind, "count": f.count, "bytes": f.bytes, "detail": list(f.detail)}
                for f in self.kinds.values()
            ],
            "deferred": list(self.deferred),
        }
