"""Billing's tables: prices, revenue splits, subscriptions, tiers, spend caps, holds, credits,
charges, invoices, and the ledger (transactions, entries, balances derived from them).

Schema changes go through Alembic (migration 0011). Amounts are BigInteger base units of the
settlement token (mcpz.money), times are Unix microseconds: both compare and sum exactly on
SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry_server.orm import Base


class PriceChange(Base):
    """A listing's whole pricing from `effective_us` on; the newest effective row is the price."""

    __tablename__ = "billing_prices"
    __table_args__ = (Index("ix_billing_prices_agent", "agent", "effective_us"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent: Mapped[str] = mapped_column(String(200))
    effective_us: Mapped[int] = mapped_column(BigInteger)
    pricing: Mapped[str] = mapped_column(Text)  # pricing.Pricing.to_dict() as JSON
    created_us: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[int] = mapped_column(ForeignKey("accounts.id"))


class Split(Base):
    """How a listing's creator share divides among accounts, in basis points summing to 10,000.
    No rows: all of it to the namespace's owner."""

    __tablename__ = "billing_splits"

    agent: Mapped[str] = mapped_column(String(200), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    bps: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer, default=0)  # ties of the remainder go to the first


class Subscription(Base):
    """A consumer's monthly plan of one agent; `paid_through` is the last month (YYYY-MM) paid."""

    __tablename__ = "billing_subscriptions"
    __table_args__ = (Index("ix_billing_subscriptions_account", "account_id", "agent"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    agent: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(16))
    started_us: Mapped[int] = mapped_column(BigInteger)
    ended_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    paid_through: Mapped[str] = mapped_column(String(7))


class AccountTier(Base):
    """The platform tier of a consumer account; accounts without a row have the default tier."""

    __tablename__ = "billing_tiers"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    tier: Mapped[str] = mapped_column(String(32))


class SpendCap(Base):
    """At most `amount` spent per `period` (day, month) by an account, or by one of its keys, on
    every agent or on one."""

    __tablename__ = "billing_caps"
    __table_args__ = (UniqueConstraint("account_id", "token_id", "agent", "period", name="uq_billing_caps"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    token_id: Mapped[int] = mapped_column(Integer, default=0)  # 0: every key of the account
    agent: Mapped[str] = mapped_column(String(200), default="")  # "": every agent
    period: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)


class Hold(Base):
    """Money a gateway process set aside from a consumer's balance to serve paid calls from memory.

    Taken in one transaction (available -> reserved), used call by call without the database,
    released (the unused rest back to available) once every call made under it is rated.
    """

    __tablename__ = "billing_holds"
    __table_args__ = (Index("ix_billing_holds_gate", "gate", "released_us"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gate: Mapped[str] = mapped_column(String(64))  # the gateway process's lasting id (its data folder)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    created_us: Mapped[int] = mapped_column(BigInteger)
    released_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    captured: Mapped[int] = mapped_column(BigInteger, default=0)  # set when released


class Credit(Base):
    """Operator credit given to an account (`mcpz registry credit`)."""

    __tablename__ = "billing_credits"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)  # the ledger transaction's key
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text, default="")
    expires_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expired: Mapped[int] = mapped_column(BigInteger, default=0)  # what expired unspent, once it did
    created_us: Mapped[int] = mapped_column(BigInteger)


class Charge(Base):
    """One creator's part of one rated usage event. The event's first row (seq 0) also carries the
    whole price and the platform fee, so sums over seq 0 are what consumers paid."""

    __tablename__ = "billing_charges"
    __table_args__ = (
        Index("ix_billing_charges_consumer", "consumer_id", "started_us"),
        Index("ix_billing_charges_creator", "creator_id", "started_us"),
        Index("ix_billing_charges_token", "token_id", "started_us"),
    )

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    consumer_id: Mapped[int] = mapped_column(Integer)
    token_id: Mapped[int] = mapped_column(Integer, default=0)
    creator_id: Mapped[int] = mapped_column(Integer)
    agent: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    tool: Mapped[str] = mapped_column(String(256))
    plan: Mapped[str] = mapped_column(String(16))
    started_us: Mapped[int] = mapped_column(BigInteger)
    price: Mapped[int] = mapped_column(BigInteger)  # seq 0 only; 0 on the others
    fee: Mapped[int] = mapped_column(BigInteger)  # seq 0 only
    earning: Mapped[int] = mapped_column(BigInteger)  # this creator's part
    txn: Mapped[str] = mapped_column(String(128))  # the ledger transaction that posted it
    # The ledger transaction that moved this earning from pending to available (or refunded it).
    settled: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Invoice(Base):
    """A consumer's month, finalized: numbered in sequence, immutable; `lines` as JSON."""

    __tablename__ = "billing_invoices"
    __table_args__ = (UniqueConstraint("account_id", "period", "kind", name="uq_billing_invoice_period"),)

    number: Mapped[int] = mapped_column(Integer, primary_key=True)  # sequential, registry-wide
    kind: Mapped[str] = mapped_column(String(16))  # "invoice" or "credit-note"
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM; a credit note: its own key
    total: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[str] = mapped_column(Text)
    finalized_us: Mapped[int] = mapped_column(BigInteger)
    refers_to: Mapped[int | None] = mapped_column(Integer, nullable=True)  # a credit note's invoice


class LedgerTransaction(Base):
    __tablename__ = "ledger_transactions"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)  # the idempotency key
    kind: Mapped[str] = mapped_column(String(32))
    created_us: Mapped[int] = mapped_column(BigInteger)
    memo: Mapped[str] = mapped_column(Text, default="")


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_account", "account", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    txn: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.key"), index=True)
    account: Mapped[str] = mapped_column(String(96))
    amount: Mapped[int] = mapped_column(BigInteger)


class LedgerBalance(Base):
    """Each ledger account's balance, kept in the same transaction as its entries and checked
    against them by `service.verify_ledger`."""

    __tablename__ = "ledger_balances"

    account: Mapped[str] = mapped_column(String(96), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger)
