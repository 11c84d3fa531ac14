"""Keeping listings in step with the registry: after each publish or yank (a listener on the
registry state), and every `market_refresh_interval` seconds a sweep that rebuilds listings that
missed one and refreshes the usage figures search sorts by.

The listener runs on the replica that took the publish; the sweep on the replica holding the lease
"market" only (always, in the single-process registry), each of its transactions fenced by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mcpz.errors import McpzError
from registry_server.leases import Held, LeaseLost, fence
from registry_server.market import prices, service
from registry_server.state import RegistryState
from registry_server.tasks import cancel

log = logging.getLogger(__name__)

LEASE = "market"
SWEEP_BATCH = 1000
"""Listings rebuilt per sweep at most (a first start on a large registry catches up over several)."""


class MarketUpkeep:
    def __init__(self, state: RegistryState) -> None:
        self.state = state
        self.interval = state.settings.market_refresh_interval
        self._task: asyncio.Task[None] | None = None

    def agent_changed(self, name: str) -> None:
        """Rebuild `name`'s listing now; a failure is logged and left to the next sweep."""
        try:
            with self.state.db.session() as session:
                service.refresh_listing(session, self.state.repos, name)
                self._prices(session, [name])
        except (McpzError, SQLAlchemyError, OSError, ValueError) as e:
            log.error("listing not refreshed, the next sweep retries: %s", e, extra={"agent": name})

    def sweep(self, lease: Held | None = None) -> int:
        """Rebuild stale listings and refresh usage figures; returns the listings rebuilt.

        `lease`: the lease "market" every transaction is fenced by (LeaseLost once lost)."""
        with self.state.db.session() as session:
            self._fence(session, lease)
            rebuilt = service.refresh_stale(session, self.state.repos, SWEEP_BATCH)
        with self.state.db.session() as session:
            self._fence(session, lease)
            service.refresh_usage(session)
        with self.state.db.session() as session:
            self._fence(session, lease)
            self._prices(session, None)
        return rebuilt

    @staticmethod
    def _fence(session: Session, lease: Held | None) -> None:
        if lease is not None:
            fence(session, lease)

    def _prices(self, session: Session, names: list[str] | None) -> None:
        settings = self.state.settings
        prices.refresh_pricing(
            session, names, decimals=settings.currency_decimals, currency=settings.currency
        )

    async def start(self) -> None:
        self.state.agent_listeners.append(self.agent_changed)
        self.state.leadership.want(LEASE)
        await self._sweep_logged()
        self._task = asyncio.create_task(self._run(), name="mcpz-market-upkeep")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.state.agent_listeners.remove(self.agent_changed)
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._sweep_logged()

    async def _sweep_logged(self) -> None:
        lease = self.state.leadership.held(LEASE)
        if lease is None:
            return  # another replica sweeps
        try:
            rebuilt = await anyio.to_thread.run_sync(self.sweep, lease)
        except LeaseLost as e:
            log.warning("market sweep stopped: %s", e.message)
            return
        except (McpzError, SQLAlchemyError, OSError, ValueError) as e:
            log.error("market sweep failed, retried in %s s: %s", self.interval, e)
            return
        if rebuilt:
            log.info("listings rebuilt", extra={"count": rebuilt})
