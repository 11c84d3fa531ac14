"""Usage metering: each event journaled to disk when recorded, written to the database in batches.

Durability. `record()` appends the event's canonical JSON line to `{data_dir}/usage/journal` with
one `os.write` on an O_APPEND descriptor before it returns, and fsyncs nothing: the line is in the
kernel's page cache, so a process crash (SIGKILL, OOM kill) or a stop loses nothing, while an OS
crash or power loss can lose the last lines not yet written back to disk. That keeps the gateway's
call path to a few microseconds.

The flusher, every `usage_flush_interval` seconds or as soon as ~`batch_size` events wait:

1. rotates the journal: `journal` -> `journal.<n>.flushing`, and a fresh `journal` for `record()`;
2. writes every pending event in ONE transaction, idempotently (`record_many`);
3. deletes the `.flushing` files once that transaction committed.

A database failure keeps the files and the events, and the next round retries (with backoff). On
`start()`, journals a dead process left behind are replayed first. A row already stored under an
event's id counts the event once if its digest is the same; with another digest the event is a
conflict: logged at ERROR, counted, and appended to `usage/conflicts.jsonl`, never silently dropped.

One process per data folder: `usage/lock` is held (flock) from `start()` to `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from mcpz.errors import McpzError, UsageError
from registry_server.db import Database, chunks
from registry_server.orm import utcnow
from registry_server.state import RegistryState
from registry_server.usage.events import UsageEvent
from registry_server.usage.models import UsageEventRow

# The logger keeps its name from before the domain packages, so logging configs still match.
log = logging.getLogger("registry_server.usage")

BATCH_SIZE = 500
"""Events waiting that wake the flusher before its interval is up."""
CHUNK = 500
"""Rows per INSERT or SELECT: 500 x 15 parameters stays under SQLite's and PostgreSQL's limits."""
MAX_BACKOFF = 30.0
"""Seconds between retries, at most, while the database fails."""

_JOURNAL = "journal"
_FLUSHING = re.compile(r"journal\.(\d+)\.flushing")
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
T = TypeVar("T")


@dataclass(frozen=True)
class RecordOutcome:
    """What one `record_many` did: new rows, events already stored alike, ids refused."""

    inserted: int
    duplicates: int
    conflicts: list[str] = field(default_factory=list)


@dataclass
class UsageStats:
    recorded: int = 0  # events given to record() by this process
    written: int = 0  # rows inserted
    duplicates: int = 0  # events whose id was already stored with the same digest: counted once
    conflicts: int = 0  # events refused: their id is stored with another digest
    pending: int = 0  # events journaled and not yet in the database
    journal_errors: int = 0  # record() calls whose journal write failed (kept in memory only)


@dataclass
class _Pending:
    """A rotated journal file and the events it holds, until they are committed."""

    path: Path
    events: list[UsageEvent]


class UsageRecorder:
    """Records usage events for the registry `state`; see the module docstring for the guarantees."""

    def __init__(
        self,
        state: RegistryState,
        *,
        batch_size: int = BATCH_SIZE,
        held_lock: int | None = None,
        directory: Path | None = None,
    ) -> None:
        """`held_lock`: the data folder's lock, already taken with `take_data_lock` (it is then
        this recorder's to release). `directory`: another usage folder than this process's own
        (a dead replica's, replayed by registry_server.billing.orphans)."""
        self.db: Database = state.db
        self.metrics = state.metrics
        self.directory = directory or state.settings.usage_dir
        self.interval = state.settings.usage_flush_interval
        self.batch_size = batch_size
        self.stats = UsageStats()
        # record() may be called from any thread; rotation must not split an append in two files.
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._held_lock = held_lock
        self._batch: list[UsageEvent] = []
        self._pending: list[_Pending] = []
        self._sequence = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = False
        self._failures = 0
        self._retry_at = 0.0

    @property
    def journal(self) -> Path:
        return self.directory / _JOURNAL

    # --- the call path ------------------------------------------------------------------------

    def record(self, event: UsageEvent) -> None:
        """Journal `event` and queue it for the database; once this returned, a crash cannot lose it.

        Cheap and non-blocking (one `write` to the page cache), for the gateway's call path.
        """
        line = event.canonical() + b"\n"
        self.metrics.call(
            event.agent, event.tool, event.outcome, event.duration_us / 1e6, event.bytes_in, event.bytes_out
        )
        with self._lock:
            if self._fd is None:
                raise McpzError("the usage recorder is not running", hint="await UsageRecorder.start() first")
            self._batch.append(event)
            self.stats.recorded += 1
            self.stats.pending += 1
            try:
                _write_all(self._fd, line)
            except OSError as e:
                # The call already happened: keep the event in memory for the next flush rather
                # than fail it; only a crash before that flush could now lose it.
                self.stats.journal_errors += 1
                log.error("usage event not journaled: %s", e, extra={"event_id": event.id})
            full = len(self._batch) >= self.batch_size
        if full:
            self._wake_soon()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the data folder's usage lock, replay what a dead process left, start the flusher.

        UsageError if another registry process uses the same data folder.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        held, self._held_lock = self._held_lock, None
        self._lock_fd = held if held is not None else take_data_lock(self.directory)
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        try:
            leftovers = await anyio.to_thread.run_sync(self._load_leftovers)
            fd = os.open(self.journal, _APPEND, 0o600)
        except OSError as e:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise McpzError(f"cannot open the usage journal in {self.directory}: {e}") from e
        with self._lock:
            self._fd = fd
            self._pending.extend(leftovers)
            self.stats.pending += sum(len(p.events) for p in leftovers)
        if leftovers:
            count = sum(len(p.events) for p in leftovers)
            log.info("replaying usage journal", extra={"files": len(leftovers), "events": count})
            await self.flush()  # on failure the files stay, and the flusher retries them
        self._task = asyncio.create_task(self._run(), name="mcpz-usage-flusher")

    async def stop(self) -> None:
        """Write everything recorded so far, then close the journal and release the lock.

        Events the database did not take stay in the journal files, for the next start.
        """
        if self._lock_fd is None:
            return
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        written = await self.flush()
        with self._lock:
            fd, self._fd = self._fd, None
            left = self.stats.pending
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            if self.journal.stat().st_size == 0:
                self.journal.unlink()
        if not written or left:
            log.warning(
                "usage events not yet in the database are kept in the journal; the next start writes them",
                extra={"events": left, "directory": str(self.directory)},
            )
        os.close(self._lock_fd)
        self._lock_fd = None

    async def flush(self) -> bool:
        """Write every event recorded so far to the database. False if it failed: they stay journaled.

        Flushes run one at a time; a caller that must see its events awaits this (shielded, so a
        timeout does not interrupt a write halfway).
        """
        async with self._flush_lock:
            self._rotate()
            pending = list(self._pending)
            if not pending:
                return True
            try:
                await anyio.to_thread.run_sync(self._write, pending)
            except (SQLAlchemyError, OSError) as e:
                self._failures += 1
                backoff = min(MAX_BACKOFF, self.interval * 2**self._failures)
                self._retry_at = time.monotonic() + backoff
                count = sum(len(p.events) for p in pending)
                log.error(
                    "usage events not written to the database, kept in the journal: %s",
                    e,
                    extra={"events": count, "retry_in": round(backoff, 3)},
                )
                return False
            self._failures = 0
            del self._pending[: len(pending)]
            with self._lock:
                self.stats.pending -= sum(len(p.events) for p in pending)
            return True

    async def _run(self) -> None:
        while not self._stopping:
            wait = max(0.0, self._retry_at - time.monotonic()) if self._failures else self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            if self._stopping:
                return
            # A full batch does not shorten the backoff while the database fails.
            if self._failures and time.monotonic() < self._retry_at:
                continue
            await self.flush()

    def _wake_soon(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    # --- journal files --------------------------------------------------------------------------

    def _rotate(self) -> None:
        """Move the live journal aside with its batch, for the database; record() goes on in a new one."""
        with self._lock:
            if self._fd is None or not self._batch:
                return
            path = self.directory / f"journal.{self._sequence + 1}.flushing"
            try:
                os.rename(self.journal, path)
            except OSError as e:
                log.error("cannot rotate the usage journal: %s", e)
                return
            try:
                fresh = os.open(self.journal, _APPEND, 0o600)
            except OSError as e:
                os.rename(path, self.journal)  # the open descriptor still writes to it: keep one journal
                log.error("cannot open a new usage journal: %s", e)
                return
            self._sequence += 1
            old, self._fd = self._fd, fresh
            events, self._batch = self._batch, []
        os.close(old)
        self._pending.append(_Pending(path, events))

    def _load_leftovers(self) -> list[_Pending]:
        """Journal files of a process that stopped before writing them, oldest first."""
        numbered = sorted(
            (int(m.group(1)), p)
            for p in self.directory.iterdir()
            if (m := _FLUSHING.fullmatch(p.name)) is not None
        )
        self._sequence = numbered[-1][0] if numbered else 0
        files = [p for _, p in numbered]
        if self.journal.exists():
            if self.journal.stat().st_size > 0:
                self._sequence += 1
                path = self.directory / f"journal.{self._sequence}.flushing"
                os.rename(self.journal, path)
                files.append(path)
            else:
                self.journal.unlink()
        return [_Pending(path, self._read(path)) for path in files]

    def _read(self, path: Path) -> list[UsageEvent]:
        events = []
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    events.append(UsageEvent.from_dict(json.loads(line)))
                except (ValueError, KeyError, TypeError) as e:
                    # A torn last line after an OS crash: keep it for a person, do not guess.
                    log.error(
                        "unreadable usage journal line kept in damaged.jsonl: %s",
                        e,
                        extra={"file": path.name, "line": number},
                    )
                    self._append(self.directory / "damaged.jsonl", [line.rstrip(b"\n")])
        return events

    def _write(self, pending: list[_Pending]) -> None:
        """In a worker thread: commit the events of `pending`, then delete their files."""
        self.record_many([event for p in pending for event in p.events])
        for p in pending:
            p.path.unlink(missing_ok=True)

    @staticmethod
    def _append(path: Path, lines: list[bytes]) -> None:
        # fsynced: once the journal file is deleted, this is the refused event's only copy.
        fd = os.open(path, _APPEND, 0o600)
        try:
            _write_all(fd, b"".join(line + b"\n" for line in lines))
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- the database ---------------------------------------------------------------------------

    def record_many(self, events: Sequence[UsageEvent]) -> RecordOutcome:
        """Store `events` in one transaction, each id once; refuse an id stored with another payload.

        Synchronous (it blocks on the database): the flusher runs it in a worker thread.
        """
        digests: dict[str, str] = {}
        unique: dict[str, UsageEvent] = {}
        duplicates = 0
        refused: list[tuple[UsageEvent, str, str]] = []  # (event, its digest, the digest kept)
        for event in events:
            digest = event.digest()
            first = digests.get(event.id)
            if first is None:
                digests[event.id] = digest
                unique[event.id] = event
            elif first == digest:
                duplicates += 1
            else:
                refused.append((event, digest, first))

        table: Table = UsageEventRow.__table__  # type: ignore[assignment]
        insert = postgresql.insert if self.db.engine.dialect.name == "postgresql" else sqlite.insert
        inserted: set[str] = set()
        with self.db.session() as session:
            rows = [
                {"price": 0, "plan": "", "hold": "", **event.to_dict(), "digest": digests[event.id]}
                for event in unique.values()
            ]
            # SQLAlchemy sends rows as multi-row INSERTs ("insertmanyvalues") and gathers the
            # RETURNING ids of those inserted. Each row count is a statement of its own, prepared
            # and kept in the driver's statement cache of every pooled connection (a few hundred
            # KB each at hundreds of rows): power-of-two chunks keep those statements few.
            statement = insert(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)
            for part in _power_of_two_chunks(rows, CHUNK):
                inserted.update(session.scalars(statement, part))
            # Ids that were already there: a retry (same digest) or a conflict (another digest).
            for ids in chunks([i for i in unique if i not in inserted], CHUNK):
                found = session.execute(select(table.c.id, table.c.digest).where(table.c.id.in_(ids)))
                for event_id, stored in found:
                    if stored == digests[event_id]:
                        duplicates += 1
                    else:
                        refused.append((unique[event_id], digests[event_id], stored))
        if refused:
            self._keep_conflicts(refused)
        self.stats.written += len(inserted)
        self.stats.duplicates += duplicates
        self.stats.conflicts += len(refused)
        return RecordOutcome(len(inserted), duplicates, [event.id for event, _, _ in refused])

    def _keep_conflicts(self, refused: list[tuple[UsageEvent, str, str]]) -> None:
        at = utcnow().isoformat()
        lines = []
        for event, digest, stored in refused:
            log.error(
                "usage event refused: its id is already recorded with another payload",
                extra={"event_id": event.id, "digest": digest, "stored_digest": stored},
            )
            record: dict[str, Any] = {
                "at": at,
                "digest": digest,
                "stored_digest": stored,
                "event": event.to_dict(),
            }
            lines.append(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
        self.directory.mkdir(parents=True, exist_ok=True)
        self._append(self.directory / "conflicts.jsonl", lines)


def _power_of_two_chunks(items: list[T], largest: int) -> Iterator[list[T]]:
    """`items` in consecutive chunks whose sizes are powers of two, none over `largest`."""
    size = 1 << (max(1, largest).bit_length() - 1)
    start = 0
    while start < len(items):
        while size > len(items) - start:
            size //= 2
        yield items[start : start + size]
        start += size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def take_data_lock(usage_dir: Path) -> int:
    """Lock the usage folder (`RegistrySettings.usage_dir`) for this process (flock on its `lock`)
    and return the descriptor holding it.

    UsageError if another registry process holds it.
    """
    path = usage_dir / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise UsageError(
            f"another registry process (pid {holder}) uses the data folder {_data_folder(usage_dir)}",
            hint="stop it, or give this registry its own data folder (--data or MCPZ_REGISTRY_DATA)",
        ) from None
    # The holder's pid, for the message above; the lock itself is the flock, not the content.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _data_folder(usage_dir: Path) -> Path:
    """The data folder a usage folder belongs to (a replica's is `<data>/usage/replicas/<name>`)."""
    return usage_dir.parent if usage_dir.name == "usage" else usage_dir.parents[2]
