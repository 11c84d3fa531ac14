"""The log lines of each deployment's replicas: the last ones in memory, their live followers,
and, when given a folder, every line also in size-bounded rotating JSON-lines files.

Why the registry keeps the history rather than asking nodes for it: the lines already arrive here
in `log` frames, a node may be gone (lost, replaced) by the time someone reads its replica's
history, and no new mesh frame pair is needed. Each deployment has `<folder>/<namespace>/<name>.jsonl`
plus up to `files - 1` older ones (`.jsonl.1` is the newest of those); once the current file passes
`file_bytes` they shift down and the oldest goes. Every batch is one `write` to a file opened for
appending, so a crash can at worst tear the last line, which readers skip.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"
TAIL_WINDOW = 64 * 1024  # bytes read from the end of a file for its last seq: a few escaped lines


@dataclass(frozen=True, slots=True)
class LogLine:
    seq: int
    ts: float
    replica: str
    stream: str
    line: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "replica": self.replica,
            "stream": self.stream,
            "line": self.line,
        }

    def matches(self, after: int, since: float | None, replica: str) -> bool:
        return (
            self.seq > after
            and (since is None or self.ts >= since)
            and (not replica or self.replica.startswith(replica))
        )


class LogBook:
    """The last lines of each deployment's replicas, in memory, live followers, and on disk.

    A follower's queue is bounded: when it cannot keep up, its oldest lines are dropped.
    """

    def __init__(
        self,
        max_lines: int = 1000,
        max_line: int = 4096,
        follower_queue: int = 1000,
        *,
        folder: Path | None = None,
        file_bytes: int = 1024 * 1024,
        files: int = 3,
    ) -> None:
        self.max_lines = max_lines
        self.max_line = max_line
        self.follower_queue = follower_queue
        self.folder = folder if folder is not None and file_bytes > 0 and files > 0 else None
        self.file_bytes = file_bytes
        self.files = files
        self._lines: dict[str, deque[LogLine]] = {}
        self._followers: dict[str, set[asyncio.Queue[LogLine]]] = defaultdict(set)
        self._checked: set[str] = set()  # deployments whose current file this process appended to
        # Sequence numbers go on from the files' after a restart, so a follower's `after` holds.
        self._seq = self._last_seq() if self.folder is not None else 0

    def append(self, deployment: str, replica_id: str, stream: str, lines: Iterable[str], ts: float) -> None:
        buffer = self._lines.get(deployment)
        if buffer is None:
            buffer = self._lines[deployment] = deque(maxlen=self.max_lines)
        followers = self._followers.get(deployment, ())
        written: list[LogLine] = []
        for text in lines:
            self._seq += 1
            entry = LogLine(self._seq, ts, replica_id, stream, text[: self.max_line])
            buffer.append(entry)
            written.append(entry)
            for queue in followers:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(entry)
        if self.folder is not None and written:
            self._write(deployment, written)

    def tail(
        self, deployment: str, n: int, after: int = 0, *, since: float | None = None, replica: str = ""
    ) -> list[LogLine]:
        """The last `n` lines with a seq above `after`, written at or after `since`, by replicas
        whose id starts with `replica`: from memory when it holds them all, else from the files."""
        if n <= 0:
            return []
        # A copy made in one C call: routes call this from a worker thread while the event loop
        # appends, and iterating the deque itself there could see it change.
        memory = tuple(self._lines.get(deployment, ()))
        lines = [x for x in memory if x.matches(after, since, replica)]
        # Memory holds the newest lines, so it answers alone once it has n of them, or when what
        # it holds reaches back before `after`/`since` (nothing older could match).
        covered = bool(memory) and (memory[0].seq <= after or (since is not None and memory[0].ts < since))
        if self.folder is None or len(lines) >= n or covered:
            return lines[-n:]
        kept: deque[LogLine] = deque(maxlen=n)
        last = after
        for entry in self._read(deployment):
            # Increasing seq only: a rotation while reading may show a file twice.
            if entry.seq > last and entry.matches(after, since, replica):
                kept.append(entry)
                last = entry.seq
        return list(kept)

    def subscribe(self, deployment: str) -> asyncio.Queue[LogLine]:
        queue: asyncio.Queue[LogLine] = asyncio.Queue(self.follower_queue)
        self._followers[deployment].add(queue)
        return queue

    def unsubscribe(self, deployment: str, queue: asyncio.Queue[LogLine]) -> None:
        followers = self._followers.get(deployment)
        if followers is not None:
            followers.discard(queue)
            if not followers:
                del self._followers[deployment]

    def forget(self, deployment: str) -> None:
        """Drop a removed deployment's lines, on disk too: what the disk holds stays bounded by
        the deployments that exist."""
        self._lines.pop(deployment, None)
        if self.folder is not None:
            for path in self._paths(deployment):
                path.unlink(missing_ok=True)

    # --- files ------------------------------------------------------------------------------------

    def _path(self, deployment: str, index: int = 0) -> Path:
        assert self.folder is not None
        # Deployment names are validated agent names (`namespace/name`): safe as two path parts.
        base = self.folder / f"{deployment}{SUFFIX}"
        return base if index == 0 else base.with_name(f"{base.name}.{index}")

    def _paths(self, deployment: str) -> list[Path]:
        """Oldest first."""
        return [self._path(deployment, i) for i in reversed(range(self.files))]

    def _write(self, deployment: str, entries: list[LogLine]) -> None:
        path = self._path(deployment)
        data = "".join(json.dumps(e.to_dict(), separators=(",", ":")) + "\n" for e in entries).encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.file_bytes:
                self._rotate(deployment)
            elif size and deployment not in self._checked and not _ends_a_line(path):
                data = b"\n" + data  # a crash tore its last line: start ours on a line of their own
            self._checked.add(deployment)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:  # a full disk must not stop the mesh: memory still has the lines
            logger.warning("could not keep log lines of %s on disk: %s", deployment, e)

    def _rotate(self, deployment: str) -> None:
        for index in reversed(range(self.files - 1)):
            source = self._path(deployment, index)
            if source.exists():
                os.replace(source, self._path(deployment, index + 1))
        if self.files == 1:
            self._path(deployment).unlink(missing_ok=True)

    def _read(self, deployment: str) -> Iterator[LogLine]:
        for path in self._paths(deployment):
            try:
                with path.open("rb") as f:
                    for raw in f:
                        entry = _parse(raw)
                        if entry is not None:
                            yield entry
            except FileNotFoundError:
                continue

    def _last_seq(self) -> int:
        assert self.folder is not None
        highest = 0
        for path in self.folder.glob(f"*/*{SUFFIX}"):
            try:
                with path.open("rb") as f:
                    f.seek(max(0, path.stat().st_size - TAIL_WINDOW))
                    for raw in f.read().splitlines():
                        entry = _parse(raw)
                        if entry is not None:
                            highest = max(highest, entry.seq)
            except OSError:
                continue
        return highest


def _ends_a_line(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _parse(raw: bytes) -> LogLine | None:
    """One stored line, or None for a torn or foreign one."""
    try:
        item = json.loads(raw)
        return LogLine(
            int(item["seq"]), float(item["ts"]), str(item["replica"]), str(item["stream"]), str(item["line"])
        )
    except (ValueError, KeyError, TypeError):
        return None
