"""The last log lines of each deployment's replicas, in memory, and their live followers."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


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


class LogBook:
    """The last lines of each deployment's replicas, in memory, and live followers.

    A follower's queue is bounded: when it cannot keep up, its oldest lines are dropped.
    """

    def __init__(self, max_lines: int = 1000, max_line: int = 4096, follower_queue: int = 1000) -> None:
        self.max_lines = max_lines
        self.max_line = max_line
        self.follower_queue = follower_queue
        self._lines: dict[str, deque[LogLine]] = {}
        self._followers: dict[str, set[asyncio.Queue[LogLine]]] = defaultdict(set)
        self._seq = 0

    def append(self, deployment: str, replica_id: str, stream: str, lines: Iterable[str], ts: float) -> None:
        buffer = self._lines.get(deployment)
        if buffer is None:
            buffer = self._lines[deployment] = deque(maxlen=self.max_lines)
        followers = self._followers.get(deployment, ())
        for text in lines:
            self._seq += 1
            entry = LogLine(self._seq, ts, replica_id, stream, text[: self.max_line])
            buffer.append(entry)
            for queue in followers:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(entry)

    def tail(self, deployment: str, n: int, after: int = 0) -> list[LogLine]:
        lines = [x for x in self._lines.get(deployment, ()) if x.seq > after]
        return lines[-n:] if n > 0 else []

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
        self._lines.pop(deployment, None)
