"""Each replica's stdout/stderr lines kept on the node, in size-bounded rotating files.

The registry gets the same lines in `log` frames and keeps its own history; these files are what
an operator on the node reads when the registry is out of reach, and what outlives a lost
connection past the outbox's bound. One JSON object per line (`ts`, `replica`, `epoch`, `stream`,
`line`) in `<data>/logs/<replica id>.jsonl`; once it passes `file_bytes` the files shift down
(`.jsonl.1` is the newest older one) and the oldest of `files` goes. Lines are appended with one
`write` each to a file opened for appending, so a crash can at worst tear the last line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_FILES", "DEFAULT_FILE_BYTES", "RETENTION", "ReplicaLogs"]

logger = logging.getLogger(__name__)

DEFAULT_FILE_BYTES = 1024 * 1024
DEFAULT_FILES = 3
# The files of a replica the node no longer runs are removed this long after their last line
# (at start-up), so the folder stays bounded by what the node ran lately.
RETENTION = 7 * 86400.0
SUFFIX = ".jsonl"


class ReplicaLogs:
    """Rotating JSON-lines files per replica under `folder`; off when `file_bytes` or `files` is 0."""

    def __init__(
        self, folder: Path, file_bytes: int = DEFAULT_FILE_BYTES, files: int = DEFAULT_FILES
    ) -> None:
        self.folder = folder
        self.file_bytes = file_bytes
        self.files = files
        self.enabled = file_bytes > 0 and files > 0
        self._open: dict[str, tuple[int, int]] = {}  # replica id -> (fd, size so far)
        self._failed = False

    def path(self, replica_id: str, index: int = 0) -> Path:
        # Replica ids are idents the registry chose and the node checked: safe file names.
        base = self.folder / f"{replica_id}{SUFFIX}"
        return base if index == 0 else base.with_name(f"{base.name}.{index}")

    def write(self, replica_id: str, epoch: int, stream: str, line: str, ts: float | None = None) -> None:
        if not self.enabled:
            return
        record = {
            "ts": round(time.time() if ts is None else ts, 3),
            "replica": replica_id,
            "epoch": epoch,
            "stream": stream,
            "line": line,
        }
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            fd, size = self._fd(replica_id)
            if size and size + len(data) > self.file_bytes:
                self.close(replica_id)
                self._rotate(replica_id)
                fd, size = self._fd(replica_id)
            os.write(fd, data)
            self._open[replica_id] = (fd, size + len(data))
            self._failed = False
        except OSError as e:  # a full disk must not stop the replica: the registry still gets its lines
            if not self._failed:
                logger.warning("could not keep replica %s's log lines on disk: %s", replica_id, e)
            self._failed = True

    def read(self, replica_id: str) -> Iterator[dict[str, Any]]:
        """The replica's kept lines, oldest first (torn ones skipped)."""
        for index in reversed(range(max(self.files, 1))):
            try:
                with self.path(replica_id, index).open("rb") as f:
                    for raw in f:
                        try:
                            item = json.loads(raw)
                        except ValueError:
                            continue
                        if isinstance(item, dict):
                            yield item
            except FileNotFoundError:
                continue

    def close(self, replica_id: str) -> None:
        held = self._open.pop(replica_id, None)
        if held is not None:
            os.close(held[0])

    def close_all(self) -> None:
        for replica_id in list(self._open):
            self.close(replica_id)

    def prune(self, keep: Iterable[str], older_than: float = RETENTION) -> int:
        """Remove the files of replicas not in `keep` untouched for `older_than` seconds; how many."""
        held = set(keep)
        cutoff = time.time() - older_than
        removed = 0
        if not self.folder.is_dir():
            return 0
        for path in self.folder.iterdir():
            replica_id = path.name.split(SUFFIX, 1)[0]
            if SUFFIX not in path.name or replica_id in held or replica_id in self._open:
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    def _fd(self, replica_id: str) -> tuple[int, int]:
        held = self._open.get(replica_id)
        if held is not None:
            return held
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(replica_id)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        entry = (fd, os.fstat(fd).st_size)
        if entry[1]:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a crash tore its last line: ours start on their own
                    os.write(fd, b"\n")
                    entry = (fd, entry[1] + 1)
        self._open[replica_id] = entry
        return entry

    def _rotate(self, replica_id: str) -> None:
        for index in reversed(range(self.files - 1)):
            source = self.path(replica_id, index)
            if source.exists():
                os.replace(source, self.path(replica_id, index + 1))
        if self.files == 1:
            self.path(replica_id).unlink(missing_ok=True)
