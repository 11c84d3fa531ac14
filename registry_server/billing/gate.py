"""The gateway's side of billing: price, admit and charge each paid call from memory.

The call path never waits for the database once an account is warm. Per consumer the gate keeps:

- **holds**: money set aside from the balance in one database transaction (`service.take_hold`,
  enough for `HOLD_CALLS` calls), which calls then reserve from and capture into, in memory.
  Holds make the balance exact across registry processes: two processes never spend the same
  money, because each spends only what it holds.
- **counters**: what the account spent per key and agent today and this month (for spend caps),
  and its calls per agent this month (for free and included calls), seeded from the database the
  first time the account calls in this process, then kept in memory.

Admission and reservation happen with no `await` between them, so concurrent calls are exact: a
spend cap or a balance is never exceeded by a single unit. A call that succeeds is captured (its
usage event carries price, plan and hold, and rating posts it); a call that fails is released.
A hold is given back (its unused rest to the available balance) once every call made under it is
rated (`release_ready`), at stop, and, after a crash, at the next start (`recover`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread
from sqlalchemy import func, select

from mcpz.atomic import write_atomic
from mcpz.money import format_amount
from mcpz.private import private_dir
from registry_server.accounts.service import Principal
from registry_server.billing import service
from registry_server.billing.models import SpendCap
from registry_server.billing.pricing import Pricing, quote
from registry_server.settings import RegistrySettings
from registry_server.state import RegistryState
from registry_server.usage.events import Outcome
from registry_server.usage.models import UsageEventRow

log = logging.getLogger("registry_server.billing")

HOLD_CALLS = 200
"""A hold covers this many calls at the price that asked for it (or the whole balance, if less)."""
CACHE_TTL = 5.0
"""Seconds a listing's price or an account's caps and subscriptions are trusted without a look."""
HOLD_IDLE = 30.0
"""Seconds unused before a hold is closed and its rest given back."""


@dataclass(frozen=True)
class Refusal:
    """Why a call may not run, and the command that fixes it."""

    reason: str
    fix: str

    @property
    def message(self) -> str:
        return f"{self.reason}: {self.fix}"


@dataclass(eq=False)
class HeldMoney:
    id: str
    amount: int
    left: int  # not yet reserved or captured
    captures: int = 0
    inflight: int = 0
    used: float = field(default_factory=time.monotonic)
    closed: bool = False


@dataclass(eq=False)
class Authorization:
    """A call admitted: its price is reserved in `hold` until `finish`."""

    account_id: int
    token_id: int
    agent: str
    plan: str
    price: int
    pricing: Pricing
    hold: HeldMoney | None
    day: int
    month: int


@dataclass
class Wallet:
    """One consumer's state in this process."""

    holds: list[HeldMoney] = field(default_factory=list)
    # Spent per (window start, token id, agent): captured and reserved, for spend caps.
    spent: dict[tuple[int, int, str], int] = field(default_factory=lambda: defaultdict(int))
    caps: list[SpendCap] = field(default_factory=list)
    caps_at: float = -1e9
    subscriptions: dict[str, tuple[bool, float]] = field(default_factory=dict)
    # Calls per (agent, month start) that counted toward the plan, and those in flight.
    calls: dict[tuple[str, int], int] = field(default_factory=dict)
    seeded_month: int = -1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def gate_id(data_dir: Path) -> str:
    """This data folder's lasting gate id: holds taken before a crash are found again after it.

    Replicas sharing a data folder each pass their own usage folder (`gate_home`): a gate id shared
    between live processes would let one give back the other's holds."""
    folder = private_dir(data_dir / "billing")
    path = folder / "gate-id"
    if path.exists():
        return path.read_text().strip()
    value = f"g{secrets.token_hex(8)}"
    write_atomic(path, value + "\n", mode=0o600)
    return value


def gate_home(settings: RegistrySettings) -> Path:
    """The folder whose `billing/gate-id` names this process's gate: the data folder, or with
    `--replica` this replica's usage folder (read by the replica replaying a dead one's journal)."""
    return settings.usage_dir if settings.replica else settings.data_dir


class BillingGate:
    def __init__(self, state: RegistryState) -> None:
        self.state = state
        self.db = state.db
        self.id = gate_id(gate_home(state.settings))
        self.decimals = state.settings.currency_decimals
        self.currency = state.settings.currency
        self.prices: dict[str, tuple[Pricing, float]] = {}
        self.wallets: dict[int, Wallet] = {}
        self.closed: list[HeldMoney] = []  # closed holds waiting for their calls to be rated
        self.taken: set[str] = set()  # every hold this process took (never given back by `recover`)

    # -- admission

    async def authorize(self, principal: Principal, agent: str, tool: str) -> Authorization | Refusal | None:
        """None for a free call (nothing to track); a Refusal; or the reservation for a paid plan."""
        pricing = await self._pricing(agent)
        if pricing.free:
            return None
        account = principal.account_id
        wallet = await self._wallet(account)
        now_us = service.now_us()
        month = service.month_start_us(now_us)
        day = service.day_start_us(now_us)
        subscribed = await self._subscribed(wallet, account, agent)
        if (agent, month) not in wallet.calls:
            count = await anyio.to_thread.run_sync(self._plan_calls, account, agent, month)
            wallet.calls.setdefault((agent, month), count)
        if wallet.seeded_month != month:
            async with wallet.lock:  # once: a second seeding would forget the first's reservations
                if wallet.seeded_month != month:
                    await self._seed_spent(wallet, account, day, month)
        if time.monotonic() - wallet.caps_at > CACHE_TTL:
            caps = await anyio.to_thread.run_sync(self._caps, account)
            wallet.caps, wallet.caps_at = caps, time.monotonic()
        # From here to the reservation there is no await unless a hold must be taken, and then the
        # account's lock keeps the others of its calls from admitting against a half-known balance.
        offer = quote(pricing, tool, subscribed=subscribed, calls_this_month=wallet.calls[(agent, month)])
        if offer.refusal:
            fix = (
                f"`mcpz billing subscribe {agent} monthly`"
                if "subscription" in offer.refusal
                else (f"see `mcpz billing plans {agent}`")
            )
            return Refusal(offer.refusal, fix)
        token = principal.token_id
        refusal = self._over_cap(wallet, token, agent, offer.price, day, month)
        if refusal is not None:
            return refusal
        hold: HeldMoney | None = None
        if offer.price:
            hold = self._find_hold(wallet, offer.price)
            if hold is None:
                async with wallet.lock:
                    hold = self._find_hold(wallet, offer.price)
                    if hold is None:
                        hold = await self._take_hold(wallet, account, offer.price)
                if hold is None:
                    return Refusal(
                        f"your balance does not cover this call's price of {self._show(offer.price)}",
                        "add funds, then call again (see `mcpz billing balance`)",
                    )
                # The await above let other calls run: check the caps again before reserving.
                refusal = self._over_cap(wallet, token, agent, offer.price, day, month)
                if refusal is not None:
                    return refusal
            hold.left -= offer.price
            hold.inflight += 1
            hold.used = time.monotonic()
        for key in self._cap_keys(day, month, token, agent):
            wallet.spent[key] += offer.price
        wallet.calls[(agent, month)] += 1  # in flight counts: 20 callers cannot share one free call
        return Authorization(account, token, agent, offer.plan, offer.price, pricing, hold, day, month)

    def finish(self, auth: Authorization, outcome: str) -> tuple[int, str, str]:
        """Capture or release the call's reservation: the (price, plan, hold id) its event records."""
        charged = outcome == Outcome.OK or (outcome == Outcome.TOOL_ERROR and auth.pricing.charge_tool_errors)
        if auth.hold is not None:
            auth.hold.inflight -= 1
        if charged:
            if auth.hold is not None:
                auth.hold.captures += 1
            return auth.price, auth.plan, auth.hold.id if auth.hold is not None else ""
        wallet = self.wallets.get(auth.account_id)
        if wallet is not None:
            for key in self._cap_keys(auth.day, auth.month, auth.token_id, auth.agent):
                wallet.spent[key] -= auth.price
            wallet.calls[(auth.agent, auth.month)] -= 1
        if auth.hold is not None:
            auth.hold.left += auth.price
        return 0, "", ""

    # -- caps

    @staticmethod
    def _cap_keys(day: int, month: int, token: int, agent: str) -> tuple[tuple[int, int, str], ...]:
        return ((day, token, agent), (month, token, agent))

    def _over_cap(
        self, wallet: Wallet, token: int, agent: str, price: int, day: int, month: int
    ) -> Refusal | None:
        for cap in wallet.caps:
            if (cap.token_id and cap.token_id != token) or (cap.agent and cap.agent != agent):
                continue
            start = day if cap.period == "day" else month
            spent = sum(
                v
                for (window, t, a), v in wallet.spent.items()
                if window == start
                and (not cap.token_id or t == cap.token_id)
                and (not cap.agent or a == cap.agent)
            )
            if spent + price > cap.amount:
                scope = f"key {cap.token_id}" if cap.token_id else "account"
                what = f" on {cap.agent}" if cap.agent else ""
                return Refusal(
                    f"the {scope}'s spend cap of {self._show(cap.amount)} per {cap.period}{what} is reached",
                    "raise it with `mcpz billing caps set`, or wait for the next " + cap.period,
                )
        return None

    async def _seed_spent(self, wallet: Wallet, account: int, day: int, month: int) -> None:
        rows = await anyio.to_thread.run_sync(self._spent_rows, account, month, day)
        wallet.spent = defaultdict(int, {k: v for k, v in wallet.spent.items() if k[0] >= month})
        for since, token, agent, spent in rows:
            wallet.spent[(since, token, agent)] += spent
        wallet.seeded_month = month

    def _spent_rows(self, account: int, month: int, day: int) -> list[tuple[int, int, str, int]]:
        """(window start, token, agent, spent) this month and today, summed by the database."""
        u = UsageEventRow
        rows: list[tuple[int, int, str, int]] = []
        with self.db.session() as session:
            for since in (month, day):
                for token, agent, total in session.execute(
                    select(u.token_id, u.agent, func.sum(u.price))
                    .where(u.account_id == account, u.started_us >= since, u.price > 0)
                    .group_by(u.token_id, u.agent)
                ):
                    rows.append((since, token or 0, agent, int(total or 0)))
        return rows

    def _caps(self, account: int) -> list[SpendCap]:
        with self.db.session() as session:
            caps = list(session.scalars(select(SpendCap).where(SpendCap.account_id == account)))
            session.expunge_all()
        return caps

    # -- holds

    def _find_hold(self, wallet: Wallet, price: int) -> HeldMoney | None:
        for hold in wallet.holds:
            if hold.left >= price:
                return hold
        return None

    async def _take_hold(self, wallet: Wallet, account: int, price: int) -> HeldMoney | None:
        hold_id = f"h{secrets.token_hex(12)}"
        self.taken.add(hold_id)  # before it exists: `recover`, in another thread, must never release it

        def take() -> HeldMoney | None:
            with self.db.session() as session:
                row = service.take_hold(
                    session, self.id, account, price * HOLD_CALLS, price, service.now_us(), hold_id
                )
                return None if row is None else HeldMoney(row.id, row.amount, row.amount)

        hold = await anyio.to_thread.run_sync(take)
        if hold is None:
            return None
        # Holds too small for another call are closed, so their rest goes back to the balance.
        for old in [h for h in wallet.holds if h.left < price]:
            wallet.holds.remove(old)
            old.closed = True
            self.closed.append(old)
        wallet.holds.append(hold)
        return hold

    async def release_ready(self) -> int:
        """Close idle holds, and give back closed ones whose calls are all rated."""
        idle = time.monotonic() - HOLD_IDLE
        for wallet in self.wallets.values():
            for hold in [h for h in wallet.holds if h.used < idle and h.inflight == 0]:
                wallet.holds.remove(hold)
                hold.closed = True
                self.closed.append(hold)
        waiting = [(h.id, h.captures) for h in self.closed if h.inflight == 0]
        if not waiting:
            return 0

        def release() -> set[str]:
            done: set[str] = set()
            for hold_id, captures in waiting:
                with self.db.session() as session:
                    if service.release_hold(session, hold_id, captures, service.now_us()):
                        done.add(hold_id)
            return done

        done = await anyio.to_thread.run_sync(release)
        self.closed = [h for h in self.closed if h.id not in done]
        return len(done)

    def close_all(self) -> None:
        for wallet in self.wallets.values():
            for hold in wallet.holds:
                hold.closed = True
                self.closed.append(hold)
            wallet.holds.clear()

    def recover(self) -> int:
        """After a restart (the usage journal replayed and rated): release this gate's old holds."""
        with self.db.session() as session:
            holds = service.open_holds(session, self.id)
            # Holds of this run are in use: only those a stopped process left are given back.
            ids = [h.id for h in holds if h.id not in self.taken]
        released = 0
        for hold_id in ids:
            with self.db.session() as session:
                released += service.release_hold(session, hold_id, None, service.now_us())
        return released

    # -- caches

    async def _pricing(self, agent: str) -> Pricing:
        cached = self.prices.get(agent)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        prices = await anyio.to_thread.run_sync(self._load_prices, agent)
        valid = now + CACHE_TTL
        if prices.pending:
            valid = min(valid, now + (prices.pending[0][0] - service.now_us()) / 1e6)
        self.prices[agent] = (prices.current, valid)
        return prices.current

    def _load_prices(self, agent: str) -> service.Prices:
        with self.db.session() as session:
            return service.prices_of(session, agent)

    def forget_prices(self, agent: str) -> None:
        self.prices.pop(agent, None)

    async def _wallet(self, account: int) -> Wallet:
        wallet = self.wallets.get(account)
        if wallet is None:
            wallet = self.wallets.setdefault(account, Wallet())
        return wallet

    def forget_account(self, account: int) -> None:
        """Caps and subscriptions changed: look again at the next call."""
        wallet = self.wallets.get(account)
        if wallet is not None:
            wallet.caps_at = -1e9
            wallet.subscriptions.clear()

    async def _subscribed(self, wallet: Wallet, account: int, agent: str) -> bool:
        cached = wallet.subscriptions.get(agent)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]

        def load() -> bool:
            with self.db.session() as session:
                return service.subscription_of(session, account, agent) is not None

        value = await anyio.to_thread.run_sync(load)
        wallet.subscriptions[agent] = (value, time.monotonic() + CACHE_TTL)
        return value

    def _plan_calls(self, account: int, agent: str, month: int) -> int:
        with self.db.session() as session:
            return service.plan_calls_in(session, account, agent, month)

    def _show(self, units: int) -> str:
        return format_amount(units, decimals=self.decimals, currency=self.currency)
