"""The client's caches under the user cache folder, and how to empty them (`mcpz cache clean`).

- `index/`: the registry index answers `mcpz lock` keeps between runs (mcpz.client.index);
- `git/`: the bare repository of fetched releases `mcpz install` shares between projects
  (mcpz.deps.install).

Nothing in them is the only copy of anything: the registry has it all, and a lockfile names exact
commits, so the next `mcpz lock` or `mcpz install` fetches again what it needs. Each folder is
first renamed aside (atomic), then deleted, so no command ever reads a half-deleted cache: one
running at that very moment fails cleanly and can be run again.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CacheReport", "clean_caches"]

_TRASH = ".trash-"


@dataclass
class CacheReport:
    """What `clean_caches` removed (on a dry run: would remove), folder by folder."""

    root: Path
    dry_run: bool
    folders: dict[str, int] = field(default_factory=dict)  # name -> bytes

    @property
    def freed_bytes(self) -> int:
        return sum(self.folders.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache": str(self.root),
            "dry_run": self.dry_run,
            "freed_bytes": self.freed_bytes,
            "folders": [{"name": name, "bytes": size} for name, size in sorted(self.folders.items())],
        }


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # gone meanwhile
    return total


def clean_caches(root: Path, *, dry_run: bool = False) -> CacheReport:
    """Empty the cache folder `root` (each entry in it, and what an interrupted clean left)."""
    report = CacheReport(root, dry_run)
    if not root.is_dir():
        return report
    for entry in sorted(root.iterdir()):
        name = "(interrupted clean)" if entry.name.startswith(_TRASH) else entry.name
        report.folders[name] = report.folders.get(name, 0) + _size(entry)
        if dry_run:
            continue
        if entry.is_dir() and not entry.is_symlink():
            aside = entry if entry.name.startswith(_TRASH) else root / f"{_TRASH}{secrets.token_hex(6)}"
            if aside != entry:
                os.replace(entry, aside)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return report
