"""Usage journals of replicas that died, written to the database by a surviving replica.

With `--replica`, each replica journals usage in its own folder, `usage/replicas/<name>/`, and
holds that folder's `lock` (flock) while it runs (registry_server.usage.service). A folder whose
lock no process holds belongs to a replica that stopped or died; whatever its journal still holds
would wait for that replica to come back. The replica holding the lease "usage-orphans" looks every
`ORPHAN_INTERVAL` seconds, and for each such folder, under its lock:

1. replays the journal like the dead replica's own start would (`UsageRecorder` on that folder);
2. rates the events (a batch claims its events, so this is safe beside the billing leader);
3. gives back the holds of the dead replica's billing gate (`billing/gate-id` in that folder),
   as the dead replica's own next start would.

Every step is idempotent (events by id, holds by their release time), so nothing needs fencing: a
former lease holder that resumes can only repeat work already done. The folder's lock keeps the
dead replica from restarting mid-replay: it would be refused with "another registry process uses
the data folder" and should simply be started again.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from pathlib import Path

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError

from mcpz.errors import McpzError
from registry_server.billing import service as billing
from registry_server.state import RegistryState
from registry_server.tasks import cancel
from registry_server.usage.service import UsageRecorder

log = logging.getLogger("registry_server.usage")

LEASE = "usage-orphans"
ORPHAN_INTERVAL = 5.0
"""Seconds between looks at the other replicas' folders."""


def other_folders(state: RegistryState) -> list[Path]:
    """The usage folders of every replica but this one."""
    settings = state.settings
    root = settings.data_dir / "usage" / "replicas"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p != settings.usage_dir)


def lock_if_dead(folder: Path) -> int | None:
    """The folder's lock taken (a descriptor) when no process holds it; None while its replica runs."""
    try:
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _has_journal(folder: Path) -> bool:
    return any(p.name.startswith("journal") and p.stat().st_size > 0 for p in folder.iterdir() if p.is_file())


def _gate_of(folder: Path) -> str | None:
    path = folder / "billing" / "gate-id"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class OrphanJournals:
    """The job of the lease "usage-orphans" (see the module docstring); only with `--replica`."""

    def __init__(self, state: RegistryState, interval: float = ORPHAN_INTERVAL) -> None:
        self.state = state
        self.interval = interval
        self.replayed = 0  # folders replayed by this process
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.state.settings.replica:
            return  # one process, one folder: its own start replays it
        self.state.leadership.want(LEASE)
        self._task = asyncio.create_task(self._run(), name="mcpz-usage-orphans")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.state.leadership.leads(LEASE):
                continue
            try:
                await self.sweep()
            except (McpzError, SQLAlchemyError, OSError) as e:
                log.error("replaying dead replicas' usage failed, retried in %s s: %s", self.interval, e)

    async def sweep(self) -> int:
        """Replay every dead replica's folder; returns how many had something to replay."""
        done = 0
        for folder in await anyio.to_thread.run_sync(other_folders, self.state):
            fd = lock_if_dead(folder)
            if fd is None:
                continue
            try:
                if await self._replay(folder, fd):
                    done += 1
            finally:
                os.close(fd)
        self.replayed += done
        return done

    async def _replay(self, folder: Path, fd: int) -> bool:
        gate = _gate_of(folder)
        journal = await anyio.to_thread.run_sync(_has_journal, folder)
        holds = gate is not None and await anyio.to_thread.run_sync(self._open_holds, gate)
        if not journal and not holds:
            return False
        if journal:
            # The recorder's own start replays a journal; its stop writes it and closes the lock
            # (a duplicate: this sweep keeps the folder locked until the holds are given back).
            recorder = UsageRecorder(self.state, held_lock=os.dup(fd), directory=folder)
            await recorder.start()
            await recorder.stop()
            if recorder.stats.pending:
                return True  # the database did not take them all: the holds wait for the next round
            log.info(
                "replayed a dead replica's usage journal",
                extra={"replica": folder.name, "events": recorder.stats.written + recorder.stats.duplicates},
            )
        if gate is not None:
            released = await anyio.to_thread.run_sync(self._release_holds, gate)
            if released:
                log.info(
                    "gave back a dead replica's holds", extra={"replica": folder.name, "holds": released}
                )
        return True

    def _open_holds(self, gate: str) -> bool:
        with self.state.db.session() as session:
            return bool(billing.open_holds(session, gate))

    def _release_holds(self, gate: str) -> int:
        settings = self.state.settings
        billing.rate_all(self.state.db, settings.platform_fee_bps)  # every replayed call rated first
        with self.state.db.session() as session:
            ids = [h.id for h in billing.open_holds(session, gate)]
        released = 0
        for hold_id in ids:
            with self.state.db.session() as session:
                released += billing.release_hold(session, hold_id, None, billing.now_us())
        return released
