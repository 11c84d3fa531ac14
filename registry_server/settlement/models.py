"""Settlement's tables: deposits seen on chain and how far the chain has been scanned (migration 0012);
payout batches, their leaves and signed transactions, and withdrawal vouchers (migration 0013).

A deposit is one `Deposited` log, unique by (chain, transaction, log index); amounts are BigInteger
base units of the settlement token. A payout batch is keyed by (chain, batch id), the id it has on
chain; its state is batches.py's, and `version` counts its writes so that two drivers never both
apply a step decided on the same state.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
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


class PayoutBatch(Base):
    __tablename__ = "settlement_payout_batches"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    batch_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    contract: Mapped[str] = mapped_column(String(42))
    root: Mapped[str] = mapped_column(String(66))
    total: Mapped[int] = mapped_column(BigInteger)
    leaves: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # batches.BatchState
    nonce: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The committing transaction once mined (ours, or adopted from the chain).
    receipt_tx: Mapped[str | None] = mapped_column(String(66), nullable=True)
    receipt_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    receipt_block_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")  # why it waits or what an operator must look at
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)
    final_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class PayoutLeaf(Base):
    """One creator's payout in a batch: the Merkle leaf (index, address, amount)."""

    __tablename__ = "settlement_payout_leaves"
    __table_args__ = (Index("ix_settlement_payout_leaves_account", "account_id", "chain_id", "batch_id"),)

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    batch_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    address: Mapped[str] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(BigInteger)


class PayoutAttempt(Base):
    """A signed commitBatch transaction, recorded before it is broadcast (the write-ahead rule)."""

    __tablename__ = "settlement_payout_attempts"
    __table_args__ = (Index("ix_settlement_payout_attempts_batch", "chain_id", "batch_id"),)

    tx_hash: Mapped[str] = mapped_column(String(66), primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    batch_id: Mapped[int] = mapped_column(BigInteger)
    raw: Mapped[str] = mapped_column(Text)  # the signed transaction, hex: what a restart broadcasts again
    max_fee: Mapped[int] = mapped_column(BigInteger)
    priority_fee: Mapped[int] = mapped_column(BigInteger)
    sent_us: Mapped[int] = mapped_column(BigInteger)


VOUCHER_ISSUED = "issued"  # signed and handed out; the amount is held off the account's balance
VOUCHER_WITHDRAWN = "withdrawn"  # used on chain (a confirmed Withdrawn event)
VOUCHER_EXPIRED = "expired"  # past its expiry unused: the amount went back to the account
VOUCHER_STATES = (VOUCHER_ISSUED, VOUCHER_WITHDRAWN, VOUCHER_EXPIRED)


class Withdrawal(Base):
    """An EIP-712 withdrawal voucher the operator signed for a consumer; its id is the voucher's nonce."""

    __tablename__ = "settlement_withdrawals"
    __table_args__ = (
        Index("ix_settlement_withdrawals_account", "account_id"),
        Index("ix_settlement_withdrawals_state", "chain_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    contract: Mapped[str] = mapped_column(String(42))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    address: Mapped[str] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(BigInteger)
    expiry: Mapped[int] = mapped_column(BigInteger)  # unix seconds, as the contract compares it
    signature: Mapped[str] = mapped_column(String(132))
    state: Mapped[str] = mapped_column(String(16))
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    created_us: Mapped[int] = mapped_column(BigInteger)
    settled_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class X402Payment(Base):
    """One x402 payment the gateway took (migration 0014): its payload's digest, so that a retry with
    the same payment identifier gets the same answer and another payload under it a conflict; the
    settlement transaction, so that an unknown outcome is settled by its hash, never by a new 402."""

    __tablename__ = "x402_payments"
    __table_args__ = (UniqueConstraint("payer", "nonce", name="uq_x402_payments_authorization"),)

    key: Mapped[str] = mapped_column(String(160), primary_key=True)  # "id:<payment id>" or "auth:<nonce>"
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the payment payload's canonical JSON
    payer: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[str] = mapped_column(String(66))
    agent: Mapped[str] = mapped_column(String(200))
    tool: Mapped[str] = mapped_column(String(256))
    price: Mapped[int] = mapped_column(BigInteger)
    account_id: Mapped[int] = mapped_column(Integer, default=0)  # 0: an anonymous payer
    state: Mapped[str] = mapped_column(String(16))  # x402.STATES
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)  # the JSON-RPC answer given
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)
    # Migration 0017: the deployment's version (for the ledger), and the settlement transaction as
    # signed by the relayer at its nonce, recorded before it is broadcast: a retry broadcasts it again.
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    relayer: Mapped[str | None] = mapped_column(String(42), nullable=True)
    relayer_nonce: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    raw: Mapped[str | None] = mapped_column(Text, nullable=True)


class X402RelayerNonce(Base):
    """The next nonce of x402's relayer account on a chain (migration 0017). Every replica takes it
    under this row's lock, signs at it and records the transaction before the lock is let go, so two
    replicas never sign two transactions at one nonce (docs/x402.md)."""

    __tablename__ = "x402_relayer_nonces"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    next_nonce: Mapped[int] = mapped_column(BigInteger)
