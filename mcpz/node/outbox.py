"""What a node has to tell the hub, waiting for the connection: replies and statuses in order,
log lines bounded in rate and in memory.

- **Control items** (`ack`, `error`, `status`) keep their order: an ack always goes
  before the statuses of the deploy it acknowledges. They belong to one connection: `reset()`
  drops them when a new connection starts (acks answer frames of the old one, and the new
  `hello` carries every replica's status anyway).
- **Log lines** survive reconnects, up to `max_lines` in all; past that the oldest go first and
  the node logs how many it dropped. Each replica may add `rate` lines a second (bursts up to
  `burst`); lines over that are counted and replaced by one note saying how many were dropped.
  Lines are batched into `log` frames by replica, epoch and stream, at most `batch_lines` lines
  and about `batch_bytes` bytes each, and sent once the oldest waiting line is `linger` seconds
  old, so a chatty agent makes a few frames a second rather than one per line.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import anyio

from mcpz.mesh import Ack, Error, Log, LogStream, ReplicaStatus, Status, Tools
from mcpz.mesh.frames import MAX_TEXT

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StatusItem:
    replica_id: str
    epoch: int
    status: ReplicaStatus
    detail: str = ""
    exit_code: int | None = None

    def frame(self, frame_id: int) -> Status:
        return Status(
            id=frame_id,
            replica_id=self.replica_id,
            epoch=self.epoch,
            status=self.status,
            detail=_cut(self.detail),
            exit_code=self.exit_code
            if self.exit_code is None
            else max(-(2**31), min(self.exit_code, 2**31 - 1)),
        )


@dataclass(frozen=True, slots=True)
class AckItem:
    ref: int

    def frame(self, frame_id: int) -> Ack:
        return Ack(id=frame_id, ref=self.ref)


@dataclass(frozen=True, slots=True)
class ErrorItem:
    ref: int | None
    code: str
    message: str

    def frame(self, frame_id: int) -> Error:
        return Error(id=frame_id, code=self.code, message=_cut(self.message), ref=self.ref)


@dataclass(frozen=True, slots=True)
class ToolsItem:
    replica_id: str
    epoch: int
    payload: bytes  # the UTF-8 JSON array of the replica's tools/list entries

    def frame(self, frame_id: int) -> Tools:
        return Tools(id=frame_id, replica_id=self.replica_id, epoch=self.epoch, payload=self.payload)


ControlItem = StatusItem | AckItem | ErrorItem | ToolsItem


@dataclass(frozen=True, slots=True)
class _Line:
    replica_id: str
    epoch: int
    stream: LogStream
    text: str
    timestamp: float
    queued: float


def _cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Outbox:
    """The node's queue toward the hub. Sync `put_*` methods, one async `wait()`."""

    def __init__(
        self,
        *,
        max_lines: int = 10_000,
        rate: float = 200.0,
        burst: float = 2_000.0,
        max_line_chars: int = 8_192,
        batch_lines: int = 500,
        batch_bytes: int = 512 * 1024,
        linger: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.max_line_chars = max_line_chars
        self.rate = rate
        self.burst = burst
        self.batch_lines = batch_lines
        self.batch_bytes = batch_bytes
        self.linger = linger
        self.clock = clock
        self.wall = wall
        self._control: deque[ControlItem] = deque()
        self._lines: deque[_Line] = deque(maxlen=max_lines)
        self._buckets: dict[str, tuple[float, float]] = {}  # replica id -> (tokens, at)
        self._throttled: dict[str, int] = {}  # replica id -> lines dropped by the rate limit
        self.overflowed = 0  # lines dropped because the buffer was full
        self._event = anyio.Event()

    # -- putting ------------------------------------------------------------------------------

    def put(self, item: ControlItem) -> None:
        self._control.append(item)
        self._event.set()

    def log(self, replica_id: str, epoch: int, stream: LogStream, text: str) -> None:
        """Queue one line a replica wrote, unless its rate is spent."""
        now = self.clock()
        tokens, at = self._buckets.get(replica_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[replica_id] = (tokens, now)
            self._throttled[replica_id] = self._throttled.get(replica_id, 0) + 1
            return
        self._buckets[replica_id] = (tokens - 1.0, now)
        dropped = self._throttled.pop(replica_id, 0)
        if dropped:
            note = (
                f"[mcpz node] dropped {dropped} line{'s' if dropped != 1 else ''} over {self.rate:g} lines/s"
            )
            self._append(_Line(replica_id, epoch, stream, note, self.wall(), now))
        if len(text) > self.max_line_chars:
            text = text[: self.max_line_chars] + " [line cut]"
        self._append(_Line(replica_id, epoch, stream, text, self.wall(), now))

    def _append(self, line: _Line) -> None:
        if len(self._lines) == self._lines.maxlen:
            self.overflowed += 1
        self._lines.append(line)
        self._event.set()

    def forget(self, replica_id: str) -> None:
        """Drop the rate state of a replica the node no longer holds."""
        self._buckets.pop(replica_id, None)
        self._throttled.pop(replica_id, None)

    # -- taking -------------------------------------------------------------------------------

    def reset(self) -> None:
        """A new connection: replies and statuses meant for the old one are dropped."""
        self._control.clear()

    def take_control(self) -> list[ControlItem]:
        items = list(self._control)
        self._control.clear()
        return items

    def log_delay(self) -> float | None:
        """Seconds until the waiting lines should go (0: now); None when none are waiting."""
        if not self._lines:
            return None
        if len(self._lines) >= self.batch_lines:
            return 0.0
        return max(0.0, self._lines[0].queued + self.linger - self.clock())

    def take_logs(self, next_id: Callable[[], int]) -> Iterator[Log]:
        """`log` frames for every waiting line, oldest first."""
        if self.overflowed:
            logger.warning(
                "dropped %d replica log lines: the registry connection could not keep up", self.overflowed
            )
            self.overflowed = 0
        while self._lines:
            first = self._lines[0]
            key = (first.replica_id, first.epoch, first.stream)
            texts: list[str] = []
            size = 0
            while self._lines and len(texts) < self.batch_lines and size < self.batch_bytes:
                line = self._lines[0]
                if (line.replica_id, line.epoch, line.stream) != key:
                    break
                self._lines.popleft()
                texts.append(line.text)
                size += len(line.text.encode("utf-8", "replace")) + 8
            yield Log(
                id=next_id(),
                replica_id=first.replica_id,
                epoch=first.epoch,
                stream=first.stream,
                lines=tuple(texts),
                timestamp=first.timestamp,
            )

    async def wait(self, timeout: float | None = None) -> None:
        """Until something is put, or `timeout` seconds pass."""
        if self._control:
            return
        event = self._event
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            await event.wait()
        if event.is_set():
            self._event = anyio.Event()
