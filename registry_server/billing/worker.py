"""Billing's background work in a registry process: rate usage events as they are written, give
back holds whose calls are rated, let earnings mature past the refund window, expire promotional
credit, renew monthly subscriptions and close the month that ended (billing/periods.py). Every
step is idempotent, so any number of registry processes may run it at once.

With several replicas the periodic rating and upkeep run on the one holding the lease "billing",
each transaction fenced by it. Giving back holds stays with each replica: the holds are its own
gate's (`gate_id`, one per replica). Rating before that at start and at stop is each replica's own
recovery step, safe beside the leader's because a batch claims its events.
"""

from __future__ import annotations

import asyncio
import logging
import os

import anyio.to_thread

from registry_server.billing import invoices, periods, service
from registry_server.billing.gate import BillingGate
from registry_server.leases import Held, LeaseLost, fence
from registry_server.state import RegistryState
from registry_server.tasks import cancel

log = logging.getLogger("registry_server.billing")

LEASE = "billing"
MAX_BACKOFF = 30.0
# Test-only: events per rating batch (tests that kill a registry mid-rating make batches small, so a
# backlog takes many of them). Read once, at import; unset, the service's own size.
_TEST_BATCH = int(os.environ.get("MCPZ_TEST_RATE_BATCH") or service.RATE_BATCH)


class BillingWorker:
    def __init__(self, state: RegistryState, gate: BillingGate) -> None:
        self.state = state
        self.gate = gate
        self.interval = state.settings.usage_flush_interval
        self.fee_bps = state.settings.platform_fee_bps
        self.window_us = int(state.settings.refund_window_days * service.DAY_US)
        self._task: asyncio.Task[None] | None = None
        self.rated = 0
        self.closed: str | None = None  # the last month this process closed (or found closed)

    async def start(self) -> None:
        """In the background: rate what a stopped registry left (the usage journal was replayed
        before this), give back this data folder's holds from before, then keep going. Serving
        does not wait for a backlog: until then the old holds stay reserved, nothing more."""
        self.state.leadership.want(LEASE)
        self._task = asyncio.create_task(self._run(), name="billing")

    async def _recover(self) -> None:
        await self.rate()
        released = await anyio.to_thread.run_sync(self.gate.recover)
        if released:
            log.info("gave back holds a stopped registry left", extra={"holds": released})

    async def stop(self) -> None:
        """After the gateway and usage recorder stopped: rate the last events, give back every hold."""
        await cancel(self._task)
        try:
            await self.rate()
            self.gate.close_all()
            await self.gate.release_ready()
        except Exception:  # the next start recovers the holds
            log.exception("billing could not finish its work at stop; the next start will")

    async def rate(self, lease: Held | None = None) -> int:
        """Rate every unrated event, each batch fenced by `lease`; None (a request catching up, a
        replica's start or stop) is safe anywhere: a batch claims its events."""
        done = await anyio.to_thread.run_sync(
            lambda: service.rate_all(self.state.db, self.fee_bps, _TEST_BATCH, lease=lease)
        )
        self.rated += done.events
        return done.events

    async def tick(self) -> None:
        lease = self.state.leadership.held(LEASE)
        if lease is not None:
            try:
                await self.rate(lease)
                await anyio.to_thread.run_sync(self._upkeep, lease)
            except LeaseLost as e:
                log.warning("billing work stopped: %s", e.message)
        await self.gate.release_ready()  # this replica's own holds, leader or not

    def _upkeep(self, lease: Held) -> None:
        now = service.now_us()
        with self.state.db.session() as session:
            fence(session, lease)
            service.mature_earnings(session, self.window_us, now)
            service.expire_credits(session, now)
        self._month_turn(now, lease)

    def _month_turn(self, now: int, lease: Held) -> None:
        """Renew subscriptions into this month; close the month before, once per process."""
        with self.state.db.session() as session:
            fence(session, lease)
            periods.renew_subscriptions(session, self.fee_bps, now)
        due = periods.month_closing_due(now)
        if due is None or due == self.closed:
            return
        with self.state.db.session() as session:
            fence(session, lease)
            numbers = invoices.close_period(session, due, now)
        if numbers:
            log.info("closed a month", extra={"period": due, "invoices": len(numbers)})
        self.closed = due

    async def _run(self) -> None:
        backoff = self.interval
        while True:
            try:
                await self._recover()
                break
            except Exception:
                log.exception("billing could not recover holds; trying again")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        backoff = self.interval
        while True:
            await asyncio.sleep(backoff)
            try:
                await self.tick()
                backoff = self.interval
            except Exception:
                log.exception("billing work failed; trying again")
                backoff = min(backoff * 2, MAX_BACKOFF)
