"""Settlement's tables: deposits seen on chain, and how far the chain has been scanned.

Migration 0012 creates them. A deposit is one `Deposited` log, unique by (chain, transaction, log
index); its amount is BigInteger base units of the settlement token.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry_server.orm import Base

SEEN = "seen"  # in a block, not yet confirmed
CREDITED = "credited"  # confirmed and credited to the account's balance, once
DROPPED = "dropped"  # its block was reorganised away before it was confirmed: never credited
UNKNOWN_ACCOUNT = "unknown-account"  # confirmed, but names no account here: kept, not credited
STATES = (SEEN, CREDITED, DROPPED, UNKNOWN_ACCOUNT)


class Deposit(Base):
    __tablename__ = "settlement_deposits"
    __table_args__ = (
        UniqueConstraint("chain_id", "tx_hash", "log_index", name="uq_settlement_deposits_log"),
        Index("ix_settlement_deposits_state", "chain_id", "state", "block_number"),
        Index("ix_settlement_deposits_account", "account_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)
    sender: Mapped[str] = mapped_column(String(42))
    account: Mapped[str] = mapped_column(String(200))  # the name the depositor gave, as given
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), nullable=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[str] = mapped_column(String(66))
    state: Mapped[str] = mapped_column(String(16))
    ledger_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    seen_us: Mapped[int] = mapped_column(BigInteger)
    settled_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Cursor(Base):
    """The last block scanned on a chain; a reorganisation moves it back to the fork point."""

    __tablename__ = "settlement_cursor"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    block: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[str] = mapped_column(String(66))  # to notice when that block is replaced
