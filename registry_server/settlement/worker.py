"""Settlement's background work in a registry process: watch the chain for deposits and credit them
once confirmed (settlement/deposits.py), and, with an operator key, build a payout batch every
`settlement_payout_interval` seconds and drive the open one towards final (settlement/payouts.py);
settle withdrawal vouchers used or expired on chain (settlement/withdrawals.py).
Every step is idempotent, so any number of registry processes may run it at once; a chain that
cannot be reached is tried again with a growing pause. With several replicas only the one holding
the lease "settlement" works, and the payout job's writes are fenced by it: a replica paused past
its lease cannot record (nor so broadcast) a commit after another took over.
"""

from __future__ import annotations

import asyncio
import logging

import anyio.to_thread

from registry_server.billing.service import now_us
from registry_server.leases import Held, LeaseLost
from registry_server.settlement import deposits, payouts, withdrawals
from registry_server.settlement.chain import SettlementChain, TokenInfo
from registry_server.settlement.operator import Operator
from registry_server.state import RegistryState
from registry_server.tasks import cancel

log = logging.getLogger("registry_server.settlement")

LEASE = "settlement"
MAX_BACKOFF = 60.0
CATCH_UP_ROUNDS = 20  # scans one tick may make to work off a backlog before it yields


class SettlementWorker:
    def __init__(
        self, state: RegistryState, chain: SettlementChain, operator: Operator | None = None
    ) -> None:
        self.state = state
        self.chain = chain
        # Not needed for deposits; loaded at start so that a wrong key or passphrase stops the
        # registry now, not at its first payout.
        self.operator = operator
        self.confirmations = state.settings.settlement_confirmations
        self.start_block = state.settings.settlement_start_block
        self.interval = state.settings.settlement_poll_interval
        self._token: TokenInfo | None = None
        self._checked = False
        self._task: asyncio.Task[None] | None = None
        self.credited = 0
        self.withdrawals = withdrawals.Watcher(
            state.db, chain, self.confirmations, start_block=self.start_block
        )

    async def start(self) -> None:
        self.state.leadership.want(LEASE)
        self._task = asyncio.create_task(self._run(), name="settlement")

    async def stop(self) -> None:
        await cancel(self._task)

    async def token(self) -> TokenInfo:
        """The settlement token, read from the contract once."""
        if self._token is None:
            self._token = await anyio.to_thread.run_sync(self.chain.token)
        return self._token

    async def tick(self) -> None:
        lease = self.state.leadership.held(LEASE)
        if lease is None:
            return  # another replica watches the chain and pays out
        if not self._checked:
            # A node of another chain would have its blocks taken for ours; nothing is read until it is right.
            await anyio.to_thread.run_sync(self.chain.check)
            self._checked = True
        await anyio.to_thread.run_sync(self.withdrawals.step)
        for _ in range(CATCH_UP_ROUNDS):
            done = await anyio.to_thread.run_sync(
                lambda: deposits.scan(
                    self.state.db, self.chain, self.confirmations, start_block=self.start_block
                )
            )
            self.credited += len(done.credited)
            if done.caught_up:
                break
        if self.operator is not None:
            try:
                await anyio.to_thread.run_sync(self._payouts, self.operator, lease)
            except LeaseLost as e:
                log.warning("payouts stopped: %s", e.message)

    def _payouts(self, operator: Operator, lease: Held | None = None) -> payouts.Progress | None:
        interval = self.state.settings.settlement_payout_interval
        last = payouts.last_built_us(self.state.db, self.chain.chain_id)
        due = interval > 0 and (last is None or now_us() - last >= interval * 1_000_000)
        return payouts.run(
            self.state.db, self.chain, operator, self.state.settings, build_new=due, lease=lease
        )

    async def _run(self) -> None:
        backoff = self.interval
        while True:
            try:
                await self.tick()
                backoff = self.interval
            except Exception as e:  # the chain is down or the database busy: the next tick catches up
                log.warning("settlement scan failed; trying again", extra={"error": str(e)[:300]})
                backoff = min(backoff * 2, MAX_BACKOFF)
            await asyncio.sleep(backoff)
