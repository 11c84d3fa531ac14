"""Leases: which registry replica runs a job (the reconciler, payouts, gc...), fenced by an epoch.

A lease is a row (`leases`: name, holder, epoch, expiry). A replica takes a free or expired lease
in one transaction that raises its epoch, and renews it while it lives; a replica that dies or
pauses past the expiry loses it to the next one that asks. The epoch is the fence: a job's writes
call `fence(session, held)` in their own transaction, which reads the lease row under a share
lock and refuses (`LeaseLost`) unless the writer still holds the same epoch. A takeover updates
that row, so it waits for a fenced write in flight to commit, and every write that starts after
it sees the new epoch: a former holder resumed after a SIGSTOP cannot write, whatever it
believes.

Time is the database's clock on PostgreSQL (replicas on several machines need not agree on the
time) and this process's on SQLite (one machine).

In the single-process default there is nobody to share with: `Leadership.solo()` holds every
lease for good and its fence costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio.to_thread
from sqlalchemy import BigInteger, String, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from mcpz.errors import McpzError
from registry_server.db import Database
from registry_server.orm import Base
from registry_server.tasks import cancel

log = logging.getLogger(__name__)


class LeaseRow(Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    epoch: Mapped[int] = mapped_column(BigInteger)
    expires_us: Mapped[int] = mapped_column(BigInteger)


class LeaseLost(McpzError):
    """A job tried to write under a lease this replica no longer holds: the write is rolled back."""


@dataclass(frozen=True, slots=True)
class Held:
    """A lease as its holder took it. `epoch` 0 is the solo registry's: never fenced."""

    name: str
    holder: str
    epoch: int
    # Seconds the lease was taken for: a fenced transaction left idle that long (its process
    # paused) is ended by PostgreSQL, so it cannot commit when it resumes.
    ttl: float = field(default=0.0, compare=False)


def now_us(session: Session) -> int:
    """Microseconds since the epoch on the database's clock (PostgreSQL) or this process's."""
    if session.get_bind().dialect.name == "postgresql":
        value = session.execute(text("SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint"))
        return int(value.scalar_one())
    return time.time_ns() // 1000


def _bounded_wait(session: Session) -> None:
    """A row lock held by a paused writer must not stall the lease loop: give up after a second
    (the next round tries again)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL lock_timeout = 1000"))


def acquire(db: Database, name: str, holder: str, ttl: float) -> Held | None:
    """Take `name` for `ttl` seconds if it is free, expired or already ours (then renewed, its
    epoch kept); None when another holder's lease is still running, or its row is locked by a
    fenced write in flight."""
    try:
        with db.session() as session:
            _bounded_wait(session)
            now = now_us(session)
            row = session.execute(select(LeaseRow).where(LeaseRow.name == name).with_for_update()).scalar()
            expires = now + int(ttl * 1_000_000)
            if row is None:
                session.add(LeaseRow(name=name, holder=holder, epoch=1, expires_us=expires))
                return Held(name, holder, 1, ttl)
            if row.holder == holder and row.expires_us > now:
                row.expires_us = expires
                return Held(name, holder, row.epoch, ttl)
            if row.expires_us > now:
                return None
            row.holder, row.epoch, row.expires_us = holder, row.epoch + 1, expires
            return Held(name, holder, row.epoch, ttl)
    except IntegrityError:
        return None  # another replica inserted the first row at the same moment: it holds it
    except OperationalError as e:
        if _lock_timeout(e):
            return None
        raise


def renew(db: Database, held: Held, ttl: float) -> bool:
    """Extend a lease still held at its epoch; False when it ran out or was taken."""
    with db.session() as session:
        _bounded_wait(session)
        now = now_us(session)
        done = session.execute(
            update(LeaseRow)
            .where(
                LeaseRow.name == held.name,
                LeaseRow.holder == held.holder,
                LeaseRow.epoch == held.epoch,
                LeaseRow.expires_us > now,
            )
            .values(expires_us=now + int(ttl * 1_000_000))
        )
        return bool(getattr(done, "rowcount", 0))


def release(db: Database, held: Held) -> None:
    """Give a lease up (a replica stopping in order), so the next takes it without waiting."""
    with db.session() as session:
        session.execute(
            update(LeaseRow)
            .where(LeaseRow.name == held.name, LeaseRow.holder == held.holder, LeaseRow.epoch == held.epoch)
            .values(expires_us=0)
        )


def fence(session: Session, held: Held | None) -> None:
    """Within the caller's transaction: raise LeaseLost unless `held` is still the lease's current
    holder, epoch and unexpired. The row is read under a share lock (PostgreSQL), so a takeover
    waits for this transaction to end."""
    if held is None:
        raise LeaseLost("this replica does not hold a lease for this write")
    if held.epoch == 0:
        return
    query = select(LeaseRow).where(LeaseRow.name == held.name)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(read=True)
        if held.ttl > 0:
            # The share lock would otherwise hold a takeover off for as long as a paused holder
            # sleeps; ended by the server, its transaction cannot commit when it wakes.
            timeout = max(1000, int(held.ttl * 1000))
            session.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {timeout}"))
    row = session.execute(query).scalar()
    current = row is not None and (row.holder, row.epoch) == (held.holder, held.epoch)
    if row is None or not current or row.expires_us <= now_us(session):
        raise LeaseLost(
            f"lease {held.name!r} epoch {held.epoch} is no longer held by {held.holder}",
            hint="another replica leads this job now; this write was rolled back",
        )


def _lock_timeout(error: OperationalError) -> bool:
    return getattr(error.orig, "sqlstate", "") == "55P03"  # lock_not_available


Callback = Callable[[Held], Awaitable[None] | None]


class Leadership:
    """The leases this replica wants, kept: taken when free, renewed every third of their time to
    live, and reported through callbacks when won and lost.

    `held(name)` is the current lease or None; jobs pass it to `fence` in their writes. A renewal
    that fails, or that cannot reach the database before the lease would run out, counts as lost at
    once: a replica never believes it leads for longer than its lease.
    """

    def __init__(self, db: Database | None, holder: str, *, ttl: float = 5.0) -> None:
        self.db = db
        self.holder = holder
        self.ttl = ttl
        self._held: dict[str, Held] = {}
        self._deadline: dict[str, float] = {}  # monotonic time a held lease surely ran out by
        self._wanted: dict[str, tuple[Callback | None, Callback | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @classmethod
    def solo(cls) -> Leadership:
        """The single-process registry's: every lease held, epoch 0, never fenced."""
        return cls(None, "solo")

    @property
    def clustered(self) -> bool:
        return self.db is not None

    def want(self, name: str, on_won: Callback | None = None, on_lost: Callback | None = None) -> None:
        """Compete for `name` from now on (a solo registry holds it at once)."""
        self._wanted[name] = (on_won, on_lost)
        if self.db is None:
            self._held[name] = Held(name, self.holder, 0)
        self._wake.set()

    def held(self, name: str) -> Held | None:
        lease = self._held.get(name)
        if lease is None or self.db is None:
            return lease
        if time.monotonic() >= self._deadline.get(name, 0.0):
            return None  # not renewed in time: assume another replica has it
        return lease

    def leads(self, name: str) -> bool:
        return self.held(name) is not None

    async def start(self) -> None:
        if self.db is not None and self._task is None:
            self._task = asyncio.create_task(self._keep(), name="leases")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self.db is not None:
            for lease in list(self._held.values()):
                with contextlib.suppress(SQLAlchemyError):
                    await anyio.to_thread.run_sync(release, self.db, lease)
        self._held.clear()

    async def _keep(self) -> None:
        assert self.db is not None
        db = self.db
        while True:
            for name in list(self._wanted):
                started = time.monotonic()
                current = self._held.get(name)
                try:
                    if current is not None:
                        ok = await anyio.to_thread.run_sync(renew, db, current, self.ttl)
                        lease = current if ok else None
                    else:
                        lease = await anyio.to_thread.run_sync(acquire, db, name, self.holder, self.ttl)
                except (SQLAlchemyError, McpzError) as e:
                    log.warning("cannot reach the database for lease %s: %s", name, e)
                    alive = current is not None and time.monotonic() < self._deadline[name]
                    lease = current if alive else None
                else:
                    if lease is not None:
                        # Counted from before the round trip: the database's expiry is later still.
                        self._deadline[name] = started + self.ttl
                await self._settle(name, current, lease)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ttl / 3):
                    await self._wake.wait()

    async def _settle(self, name: str, before: Held | None, after: Held | None) -> None:
        if before == after:
            return
        on_won, on_lost = self._wanted[name]
        if before is not None:
            self._held.pop(name, None)
            log.warning("lease lost", extra={"lease": name, "epoch": before.epoch})
            await _call(on_lost, before)
        if after is not None:
            self._held[name] = after
            log.info("lease won", extra={"lease": name, "epoch": after.epoch})
            await _call(on_won, after)


async def _call(callback: Callback | None, held: Held) -> None:
    if callback is None:
        return
    try:
        result = callback(held)
        if result is not None:
            await result
    except Exception:  # a job's callback must not stop the leases of the others
        log.exception("lease callback failed", extra={"lease": held.name})
