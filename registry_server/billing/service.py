"""Billing on the database: posting to the ledger, credit, prices, splits, subscriptions, holds,
rating usage events exactly once, earnings maturing, and checking the ledger.

Exactly once. A usage event is rated by claiming it: one UPDATE sets its `rated` column to the
rating batch's key where it was NULL, in the same transaction that posts the batch's ledger
transaction and its charges. Two raters (threads, processes, registries on one PostgreSQL) that
race for the same events each get only the ones their UPDATE changed; a rater killed mid-batch
rolls back and leaves the events to the next. Every other posting carries an idempotency key
that the ledger refuses to post twice (a credit, a hold, a release, a subscription's month).
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, and_, any_, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from mcpz.errors import NotFoundError, UsageError
from registry_server.accounts.models import Account, Namespace, Token
from registry_server.billing import ledger
from registry_server.billing.ledger import LedgerError, Transaction
from registry_server.billing.models import (
    Charge,
    Credit,
    Hold,
    LedgerBalance,
    LedgerEntry,
    LedgerTransaction,
    PriceChange,
    SpendCap,
    Split,
    Subscription,
)
from registry_server.billing.pricing import FREE, MONTHLY, Pricing, schedule
from registry_server.db import Database, chunks
from registry_server.leases import Held, fence
from registry_server.usage.models import UsageEventRow

DAY_US = 86_400_000_000
RATE_BATCH = 5000
"""Events one rating transaction claims: large enough to amortise, small enough to stay brief."""


def now_us() -> int:
    return time.time_ns() // 1000


def month_of(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m")


def month_start_us(us: int) -> int:
    moment = datetime.fromtimestamp(us // 1_000_000, UTC)
    return int(datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()) * 1_000_000


def next_month_start_us(us: int) -> int:
    moment = datetime.fromtimestamp(us // 1_000_000, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1_000_000


def day_start_us(us: int) -> int:
    return us - us % DAY_US


# -- the ledger


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def post(session: Session, txn: Transaction, at_us: int | None = None) -> bool:
    """Post `txn` once, in the caller's transaction. False: the same key was posted alike before."""
    return post_many(session, [txn], at_us) == 1


def post_many(session: Session, txns: Sequence[Transaction], at_us: int | None = None) -> int:
    """Post transactions not posted yet (by key); returns how many were new. Raises LedgerError when
    a key was used before for different entries."""
    if not txns:
        return 0
    for txn in txns:
        txn.check()
    at = now_us() if at_us is None else at_us
    table = LedgerTransaction.__table__
    statement = (
        _insert(session)(table).on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key)  # type: ignore[attr-defined]
    )
    rows = [{"key": t.key, "kind": t.kind, "created_us": at, "memo": t.memo} for t in txns]
    new: set[str] = set()
    for part in chunks(rows, 500):
        new.update(session.scalars(statement, list(part)))
    for txn in txns:
        if txn.key not in new:
            stored = session.execute(
                select(LedgerEntry.account, LedgerEntry.amount).where(LedgerEntry.txn == txn.key)
            )
            kind = session.scalar(select(LedgerTransaction.kind).where(LedgerTransaction.key == txn.key))
            posted = Transaction(txn.key, kind or "", tuple(ledger.Entry(a, v) for a, v in stored))
            if not posted.same_as(txn):
                raise LedgerError(f"idempotency key {txn.key} was already used for another transaction")
    fresh = [t for t in txns if t.key in new]
    entries = [{"txn": t.key, "account": e.account, "amount": e.amount} for t in fresh for e in t.entries]
    if entries:
        session.execute(insert(LedgerEntry), entries)
        _add_to_balances(session, ledger.sums(fresh))
    return len(fresh)


def _add_to_balances(session: Session, deltas: dict[str, int]) -> None:
    if not deltas:
        return
    table = LedgerBalance.__table__
    statement = _insert(session)(table)
    statement = statement.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=["account"], set_={"balance": table.c.balance + statement.excluded.balance}
    )
    # Sorted: two transactions touching the same accounts lock them in the same order (PostgreSQL).
    session.execute(statement, [{"account": a, "balance": v} for a, v in sorted(deltas.items())])


def balances(session: Session, accounts: Iterable[str]) -> dict[str, int]:
    names = list(accounts)
    found = dict(
        session.execute(
            select(LedgerBalance.account, LedgerBalance.balance).where(LedgerBalance.account.in_(names))
        ).all()
    )
    return {name: found.get(name, 0) for name in names}


@dataclass(frozen=True)
class Balance:
    available: int
    reserved: int
    pending: int  # earnings inside the refund window
    earned: int  # earnings available for payout

    def to_dict(self) -> dict[str, int]:
        return {
            "available": self.available,
            "reserved": self.reserved,
            "pending": self.pending,
            "earned": self.earned,
        }


def balance_of(session: Session, account_id: int) -> Balance:
    names = (
        ledger.consumer_available(account_id),
        ledger.consumer_reserved(account_id),
        ledger.creator_pending(account_id),
        ledger.creator_available(account_id),
    )
    found = balances(session, names)
    return Balance(*(found[n] for n in names))


@dataclass(frozen=True)
class LedgerCheck:
    transactions: int
    entries: int
    accounts: int
    unbalanced: list[str]
    mismatched: list[str]  # accounts whose stored balance differs from their entries

    @property
    def ok(self) -> bool:
        return not self.unbalanced and not self.mismatched

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "transactions": self.transactions,
            "entries": self.entries,
            "accounts": self.accounts,
            "unbalanced": self.unbalanced[:20],
            "mismatched": self.mismatched[:20],
        }


def verify_ledger(session: Session) -> LedgerCheck:
    """Check in the database: every transaction sums to zero; every balance equals its entries."""
    unbalanced = list(
        session.scalars(
            select(LedgerEntry.txn)
            .group_by(LedgerEntry.txn)
            .having(func.sum(LedgerEntry.amount) != 0)
            .limit(100)
        )
    )
    derived = dict(
        session.execute(
            select(LedgerEntry.account, func.sum(LedgerEntry.amount)).group_by(LedgerEntry.account)
        ).all()
    )
    stored = dict(session.execute(select(LedgerBalance.account, LedgerBalance.balance)).all())
    entries = session.scalar(select(func.count()).select_from(LedgerEntry)) or 0
    txns = session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0
    return LedgerCheck(
        txns,
        entries,
        len(derived),
        unbalanced,
        ledger.compare_balances({k: int(v) for k, v in derived.items()}, stored),
    )


# -- credit


def credit(
    session: Session,
    account_id: int,
    amount: int,
    *,
    reason: str = "",
    key: str | None = None,
    expires_us: int | None = None,
    at_us: int | None = None,
) -> tuple[str, bool]:
    """Operator credit to an account's balance: (its key, whether it was new)."""
    if amount <= 0:
        raise UsageError("a credit must be a positive amount")
    at = now_us() if at_us is None else at_us
    key = key or f"credit:{secrets.token_hex(8)}"
    txn = ledger.transfer(
        key, "credit", ledger.PLATFORM_CREDIT, ledger.consumer_available(account_id), amount, reason
    )
    new = post(session, txn, at)
    if new:
        session.add(
            Credit(
                key=key,
                account_id=account_id,
                amount=amount,
                reason=reason,
                expires_us=expires_us,
                created_us=at,
            )
        )
    return key, new


def expire_credits(session: Session, at_us: int) -> int:
    """Take back what is left of promotional credit past its expiry: at most the credit, at most
    what the account still has available (what was spent stays spent). Returns what expired."""
    total = 0
    due = session.scalars(
        select(Credit).where(Credit.expires_us.is_not(None), Credit.expires_us <= at_us, Credit.expired == 0)
    ).all()
    for grant in due:
        available = balances(session, [ledger.consumer_available(grant.account_id)])
        spent_since = session.scalar(
            select(func.coalesce(func.sum(Charge.price), 0)).where(
                Charge.consumer_id == grant.account_id, Charge.started_us >= grant.created_us, Charge.seq == 0
            )
        )
        left = max(0, min(grant.amount - int(spent_since or 0), next(iter(available.values()))))
        if left:
            post(
                session,
                ledger.transfer(
                    f"expire:{grant.key}",
                    "credit-expired",
                    ledger.consumer_available(grant.account_id),
                    ledger.PLATFORM_CREDIT,
                    left,
                ),
                at_us,
            )
        grant.expired = left or -1  # -1: looked at, nothing left to take back
        total += left
    return total


# -- prices and splits


@dataclass(frozen=True)
class Prices:
    current: Pricing
    pending: list[tuple[int, Pricing]]  # (effective time, pricing), soonest first

    def to_dict(self) -> dict[str, object]:
        return {
            "current": self.current.to_dict(),
            "free": self.current.free,
            "pending": [{"effective_us": at, **p.to_dict()} for at, p in self.pending],
        }


def prices_of(session: Session, agent: str, at_us: int | None = None) -> Prices:
    at = now_us() if at_us is None else at_us
    rows = session.execute(
        select(PriceChange.effective_us, PriceChange.pricing)
        .where(PriceChange.agent == agent)
        .order_by(PriceChange.effective_us, PriceChange.id)
    ).all()
    current = FREE
    pending: list[tuple[int, Pricing]] = []
    for effective, data in rows:
        pricing = Pricing.from_dict(json.loads(data))
        if effective <= at:
            current = pricing
        else:
            pending.append((effective, pricing))
    return Prices(current, pending)


def set_prices(
    session: Session, agent: str, new: Pricing, *, by: int, notice_us: int, at_us: int | None = None
) -> Prices:
    """Record a change of price: decreases at once, increases after `notice_us` (pricing.schedule).
    A change still pending is replaced by this one."""
    try:
        new.check()
    except ValueError as e:
        raise UsageError(str(e)) from None
    at = now_us() if at_us is None else at_us
    current = prices_of(session, agent, at).current
    session.execute(delete(PriceChange).where(PriceChange.agent == agent, PriceChange.effective_us > at))
    for effective, pricing in schedule(current, new, at, notice_us):
        session.add(
            PriceChange(
                agent=agent,
                effective_us=effective,
                pricing=json.dumps(pricing.to_dict(), sort_keys=True),
                created_us=at,
                created_by=by,
            )
        )
    session.flush()
    return prices_of(session, agent, at)


def owner_of(session: Session, agent: str) -> int:
    namespace = agent.split("/", 1)[0]
    owner = session.scalar(select(Namespace.owner_id).where(Namespace.name == namespace))
    if owner is None:
        raise NotFoundError(f"no namespace {namespace}")
    return owner


def splits_of(session: Session, agents: Iterable[str]) -> dict[str, list[tuple[int, int]]]:
    """Each agent's creator shares [(account id, bps)]: its split rows, else all to its owner."""
    names = sorted(set(agents))
    found: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for agent, account_id, bps in session.execute(
        select(Split.agent, Split.account_id, Split.bps)
        .where(Split.agent.in_(names))
        .order_by(Split.agent, Split.position)
    ):
        found[agent].append((account_id, bps))
    for agent in names:
        if agent not in found:
            found[agent] = [(owner_of(session, agent), 10_000)]
    return dict(found)


def set_splits(session: Session, agent: str, shares: Sequence[tuple[int, int]]) -> None:
    if sum(bps for _, bps in shares) != 10_000 or any(bps <= 0 for _, bps in shares):
        raise UsageError("creator shares must be positive and sum to 100 % (10,000 basis points)")
    if len({a for a, _ in shares}) != len(shares):
        raise UsageError("an account is named twice in the split")
    session.execute(delete(Split).where(Split.agent == agent))
    session.add_all(Split(agent=agent, account_id=a, bps=b, position=i) for i, (a, b) in enumerate(shares))


# -- holds


def take_hold(
    session: Session,
    gate: str,
    account_id: int,
    want: int,
    least: int,
    at_us: int,
    hold_id: str | None = None,
) -> Hold | None:
    """Set aside up to `want` (at least `least`) of the account's available balance for `gate`; None
    when not even `least` is available. The balance row is locked for the check (PostgreSQL)."""
    name = ledger.consumer_available(account_id)
    query = select(LedgerBalance.balance).where(LedgerBalance.account == name)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    available = session.scalar(query) or 0
    amount = min(want, available)
    if amount < least or amount <= 0:
        return None
    hold = Hold(
        id=f"h{secrets.token_hex(12)}", gate=gate, account_id=account_id, amount=amount, created_us=at_us
    )
    session.add(hold)
    post(
        session,
        ledger.transfer(f"hold:{hold.id}", "hold", name, ledger.consumer_reserved(account_id), amount),
        at_us,
    )
    return hold


def release_hold(session: Session, hold_id: str, captures: int | None, at_us: int) -> bool:
    """Give back what a hold did not pay for, once every call made under it is rated.

    `captures`: the calls the gate charged under it; None after a restart, when the usage journal
    was replayed and rated first, so every such call is in the database. False: not yet.
    """
    hold = session.get(Hold, hold_id)
    if hold is None or hold.released_us is not None:
        return hold is not None
    rated_count, rated_sum = session.execute(
        select(func.count(), func.coalesce(func.sum(UsageEventRow.price), 0)).where(
            UsageEventRow.hold == hold_id, UsageEventRow.rated.is_not(None)
        )
    ).one()
    unrated = session.scalar(
        select(func.count()).where(
            UsageEventRow.hold == hold_id, UsageEventRow.rated.is_(None), UsageEventRow.price > 0
        )
    )
    if unrated or (captures is not None and rated_count < captures):
        return False
    rest = hold.amount - int(rated_sum)
    if rest < 0:
        raise LedgerError(f"hold {hold_id} paid for more than it held")
    if rest:
        post(
            session,
            ledger.transfer(
                f"release:{hold_id}",
                "release",
                ledger.consumer_reserved(hold.account_id),
                ledger.consumer_available(hold.account_id),
                rest,
            ),
            at_us,
        )
    hold.released_us, hold.captured = at_us, int(rated_sum)
    return True


def open_holds(session: Session, gate: str) -> list[Hold]:
    return list(session.scalars(select(Hold).where(Hold.gate == gate, Hold.released_us.is_(None))))


# -- rating


@dataclass(frozen=True)
class Rated:
    events: int
    amount: int


def rate_pending(db: Database, fee_bps: int, limit: int = RATE_BATCH, *, lease: Held | None = None) -> Rated:
    """Rate one batch of priced, unrated usage events: claim them, post one ledger transaction, and
    write their charges, all in one database transaction (fenced by `lease` when given)."""
    with db.session() as session:
        if lease is not None:
            fence(session, lease)
        return rate_batch(session, fee_bps, limit)


def rate_all(db: Database, fee_bps: int, limit: int = RATE_BATCH, *, lease: Held | None = None) -> Rated:
    events = amount = 0
    while True:
        done = rate_pending(db, fee_bps, limit, lease=lease)
        events, amount = events + done.events, amount + done.amount
        if done.events == 0:
            return Rated(events, amount)


def rate_batch(session: Session, fee_bps: int, limit: int = RATE_BATCH, at_us: int | None = None) -> Rated:
    at = now_us() if at_us is None else at_us
    key = f"usage:{secrets.token_hex(12)}"
    table: Table = UsageEventRow.__table__  # type: ignore[assignment]
    c = table.c
    postgres = session.get_bind().dialect.name == "postgresql"
    pick = select(c.id).where(c.price > 0, c.rated.is_(None)).order_by(c.started_us).limit(limit)
    chosen: ColumnElement[bool] = c.id.in_(pick.scalar_subquery())
    if postgres:  # two raters split the work instead of queueing on each other's rows
        pick = pick.with_for_update(skip_locked=True)
        # `= ANY(ARRAY(...))`: the picked ids are found by primary key. With `IN (...)` PostgreSQL
        # may hash-join them against a scan of the whole table, which only grows.
        chosen = c.id == any_(func.array(pick.scalar_subquery()))
    claimed = session.execute(
        update(table)
        .where(chosen, c.rated.is_(None))
        .values(rated=key)
        .returning(
            c.id, c.account_id, c.token_id, c.agent, c.version, c.tool, c.plan, c.started_us, c.price, c.hold
        )
    ).all()
    if not claimed:
        return Rated(0, 0)
    shares = splits_of(session, (row.agent for row in claimed))
    legs: dict[str, int] = defaultdict(int)
    charges: list[tuple[object, ...]] = []
    splits: dict[tuple[str, int], tuple[int, list[tuple[int, int, str]]]] = {}
    sources: dict[tuple[int, bool], str] = {}
    total = 0
    fees = 0
    # Rows unpacked as tuples and names built once per batch: this loop runs once per event.
    for event_id, account_id, token_id, agent, version, tool, plan, started_us, price, hold in claimed:
        # Prices repeat across a batch: each (agent, price) is split once.
        divided = splits.get((agent, price))
        if divided is None:
            fee, parts = ledger.split(price, fee_bps, shares[agent])
            divided = splits[(agent, price)] = (fee, [(cr, v, ledger.creator_pending(cr)) for cr, v in parts])
        fee, named = divided
        source = sources.get((account_id, bool(hold)))
        if source is None:
            source = sources[(account_id, bool(hold))] = (
                ledger.consumer_reserved(account_id) if hold else ledger.consumer_available(account_id)
            )
        legs[source] -= price
        fees += fee
        total += price
        token = token_id or 0
        for seq, (creator, earning, pending) in enumerate(named):
            legs[pending] += earning
            charges.append(
                (
                    event_id, seq, account_id, token, creator, agent, version, tool, plan, started_us,
                    price if seq == 0 else 0, fee if seq == 0 else 0, earning, key, None,
                )
            )  # fmt: skip
    legs[ledger.PLATFORM_FEES] += fees
    post(session, ledger.transaction(key, "usage", legs.items(), f"{len(claimed)} calls"), at)
    _insert_rows(session, Charge.__table__, _CHARGE_COLUMNS, charges)  # type: ignore[arg-type]
    return Rated(len(claimed), total)


_CHARGE_COLUMNS = (
    "event_id", "seq", "consumer_id", "token_id", "creator_id", "agent", "version", "tool", "plan",
    "started_us", "price", "fee", "earning", "txn", "settled",
)  # fmt: skip


def _insert_rows(
    session: Session, table: Table, columns: Sequence[str], rows: list[tuple[object, ...]]
) -> None:
    """Many rows in the session's transaction, past the ORM's per-row work (most of a rating
    batch's time with it): COPY on PostgreSQL, one executemany on SQLite. A duplicate key still
    fails the transaction, as an INSERT would."""
    if not rows:
        return
    connection = session.connection()
    names = ", ".join(columns)
    if connection.dialect.name == "postgresql":
        driver: Any = connection.connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        marks = ", ".join("?" for _ in columns)
        connection.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", rows)


def mature_earnings(session: Session, window_us: int, at_us: int) -> int:
    """Move earnings older than the refund window from pending to available; returns the amount."""
    key = f"mature:{secrets.token_hex(12)}"
    cutoff = at_us - window_us
    charges: Table = Charge.__table__  # type: ignore[assignment]
    c = charges.c
    moved = session.execute(
        update(charges)
        .where(c.settled.is_(None), c.started_us < cutoff, c.earning > 0)
        .values(settled=key)
        .returning(c.creator_id, c.earning)
    ).all()
    per_creator: dict[int, int] = defaultdict(int)
    for creator, earning in moved:
        per_creator[creator] += earning
    legs = [
        leg
        for cr, v in per_creator.items()
        for leg in ((ledger.creator_pending(cr), -v), (ledger.creator_available(cr), v))
    ]
    if legs:
        post(session, ledger.transaction(key, "mature", legs), at_us)
    return sum(per_creator.values())


# -- subscriptions


def subscription_of(session: Session, account_id: int, agent: str) -> Subscription | None:
    return session.scalar(
        select(Subscription).where(
            Subscription.account_id == account_id,
            Subscription.agent == agent,
            Subscription.ended_us.is_(None),
        )
    )


def subscribe(
    session: Session, account_id: int, agent: str, plan: str, fee_bps: int, at_us: int
) -> Subscription:
    """Start the monthly plan: this month's fee is charged now, from the available balance."""
    if plan != MONTHLY:
        raise UsageError(
            f'no plan "{plan}" to subscribe to: only "monthly" is a subscription (per-call needs none)'
        )
    pricing = prices_of(session, agent, at_us).current
    if pricing.monthly_fee is None:
        raise UsageError(f"{agent} has no monthly plan", hint=f"see `mcpz billing plans {agent}`")
    if subscription_of(session, account_id, agent) is not None:
        raise UsageError(f"you already subscribe to {agent}")
    subscription = Subscription(
        account_id=account_id, agent=agent, plan=plan, started_us=at_us, paid_through=month_of(at_us)
    )
    session.add(subscription)
    session.flush()
    charge_fee(session, subscription, pricing.monthly_fee, fee_bps, at_us)
    return subscription


class InsufficientBalance(UsageError):
    pass


def charge_fee(session: Session, subscription: Subscription, fee: int, fee_bps: int, at_us: int) -> None:
    """Charge one month of a subscription (idempotent per subscription and month)."""
    if fee == 0:
        return
    period = month_of(at_us)
    key = f"subscription:{subscription.id}:{period}"
    account = ledger.consumer_available(subscription.account_id)
    if session.get(LedgerTransaction, key) is not None:
        return  # this month is paid
    if balances(session, [account])[account] < fee:
        raise InsufficientBalance(
            f"the balance does not cover the monthly fee of {subscription.agent}",
            hint="add funds (an operator credits with `mcpz registry credit`), then subscribe again",
        )
    platform, parts = ledger.split(fee, fee_bps, splits_of(session, [subscription.agent])[subscription.agent])
    legs = [(account, -fee), (ledger.PLATFORM_FEES, platform)]
    legs += [(ledger.creator_pending(creator), v) for creator, v in parts]
    if not post(session, ledger.transaction(key, "subscription", legs, subscription.agent), at_us):
        return
    session.execute(
        insert(Charge),
        [
            {
                "event_id": key,
                "seq": seq,
                "consumer_id": subscription.account_id,
                "token_id": 0,
                "creator_id": creator,
                "agent": subscription.agent,
                "version": "",
                "tool": "",
                "plan": MONTHLY,
                "started_us": at_us,
                "price": fee if seq == 0 else 0,
                "fee": platform if seq == 0 else 0,
                "earning": earning,
                "txn": key,
                "settled": None,
            }
            for seq, (creator, earning) in enumerate(parts)
        ],
    )


def unsubscribe(session: Session, account_id: int, agent: str, at_us: int) -> Subscription:
    subscription = subscription_of(session, account_id, agent)
    if subscription is None:
        raise NotFoundError(f"you do not subscribe to {agent}")
    subscription.ended_us = at_us  # the month paid for is not refunded; the plan ends now
    return subscription


def account_id_of(session: Session, name: str) -> int:
    account_id = session.scalar(select(Account.id).where(Account.name == name))
    if account_id is None:
        raise NotFoundError(f"no account {name}")
    return account_id


def charged_in(
    session: Session, account_id: int, since_us: int, *, token_id: int = 0, agent: str = ""
) -> int:
    """What an account (or one of its keys, on one agent or all) was charged since `since_us`,
    rated or not yet: the start of a spend cap's window."""
    u = UsageEventRow
    where = [u.account_id == account_id, u.started_us >= since_us, u.price > 0]
    if token_id:
        where.append(u.token_id == token_id)
    if agent:
        where.append(u.agent == agent)
    return int(session.scalar(select(func.coalesce(func.sum(u.price), 0)).where(and_(*where))) or 0)


def plan_calls_in(session: Session, account_id: int, agent: str, since_us: int) -> int:
    """Calls of `agent` by the account since `since_us` that counted toward its plan (free calls,
    included calls and paid ones; failed calls do not count)."""
    u = UsageEventRow
    return int(
        session.scalar(
            select(func.count()).where(
                u.account_id == account_id, u.agent == agent, u.started_us >= since_us, u.plan != ""
            )
        )
        or 0
    )


def charges_of(
    session: Session, account_id: int, since_us: int, limit: int
) -> tuple[int, int, list[dict[str, object]]]:
    """A consumer's charges since `since_us`: (total, count, the newest `limit` as dicts)."""
    c = Charge
    where = (c.consumer_id == account_id, c.started_us >= since_us, c.seq == 0)
    total, count = session.execute(
        select(func.coalesce(func.sum(c.price), 0), func.count()).where(*where)
    ).one()
    rows = session.execute(
        select(c.event_id, c.agent, c.version, c.tool, c.plan, c.started_us, c.price, c.fee)
        .where(*where)
        .order_by(c.started_us.desc())
        .limit(limit)
    ).all()
    keys = ("event", "agent", "version", "tool", "plan", "started_us", "price", "fee")
    return int(total), int(count), [dict(zip(keys, row, strict=True)) for row in rows]


def own_token(session: Session, account_id: int, token_id: int) -> None:
    if session.scalar(select(Token.id).where(Token.id == token_id, Token.account_id == account_id)) is None:
        raise NotFoundError(f"you have no key {token_id}", hint="see `mcpz keys list`")


def set_cap(session: Session, account_id: int, period: str, amount: int, agent: str, token_id: int) -> None:
    if period not in ("day", "month"):
        raise UsageError(f'a spend cap is per "day" or "month", not "{period}"')
    found = session.scalar(
        select(SpendCap).where(
            SpendCap.account_id == account_id,
            SpendCap.period == period,
            SpendCap.agent == agent,
            SpendCap.token_id == token_id,
        )
    )
    if found is None:
        session.add(
            SpendCap(account_id=account_id, period=period, amount=amount, agent=agent, token_id=token_id)
        )
    else:
        found.amount = amount


def active_subscriptions(session: Session, account_id: int) -> list[Subscription]:
    return list(
        session.scalars(
            select(Subscription).where(Subscription.account_id == account_id, Subscription.ended_us.is_(None))
        )
    )


def caps_of(session: Session, account_id: int) -> list[SpendCap]:
    return list(
        session.scalars(select(SpendCap).where(SpendCap.account_id == account_id).order_by(SpendCap.id))
    )


def remove_cap(session: Session, account_id: int, cap_id: int) -> None:
    cap = session.scalar(select(SpendCap).where(SpendCap.id == cap_id, SpendCap.account_id == account_id))
    if cap is None:
        raise NotFoundError(f"you have no spend cap {cap_id}", hint="see `mcpz billing caps`")
    session.delete(cap)


def earnings_by_agent(session: Session, creator_id: int, since_us: int) -> dict[str, int]:
    """A creator's earnings per agent since `since_us` (refunded charges excluded)."""
    rows = session.execute(
        select(Charge.agent, func.sum(Charge.earning))
        .where(Charge.creator_id == creator_id, Charge.started_us >= since_us)
        .where((Charge.settled.is_(None)) | (~Charge.settled.startswith("refund:")))
        .group_by(Charge.agent)
    ).all()
    return {agent: int(total or 0) for agent, total in rows}


def priced_agents(session: Session) -> list[str]:
    """Agents that have, or had, a price: the ones whose listing label may need a refresh."""
    return list(session.scalars(select(PriceChange.agent).distinct()))


def rating_lag(session: Session, at_us: int | None = None) -> tuple[int, float]:
    """(priced usage events not rated yet, age in seconds of the oldest of them): the rating lag."""
    at = now_us() if at_us is None else at_us
    count, oldest = session.execute(
        select(func.count(), func.min(UsageEventRow.started_us)).where(
            UsageEventRow.price > 0, UsageEventRow.rated.is_(None)
        )
    ).one()
    return int(count), (max(0, at - int(oldest)) / 1e6 if oldest is not None else 0.0)
