"""Withdrawal vouchers: a consumer takes unspent balance back out of the settlement contract.

`issue` holds the amount off the consumer's balance and signs an EIP-712
`Withdrawal(address account,uint256 amount,uint256 nonce,uint256 expiry)` with the operator's key, in
one database transaction: the row (its id is the voucher's nonce) and the ledger move
`consumer:{id}:available` -> `settlement:withdrawals` under "withdraw:{chain_id}:{id}". The voucher pays
only the account's signed-in wallet: the contract binds it to `msg.sender`.

`Watcher.step` settles vouchers from the chain, at confirmed blocks only (head - confirmations + 1):

- A `Withdrawn(account, amount, nonce)` event whose nonce, account and amount are a voucher's marks it
  withdrawn and moves the amount `settlement:withdrawals` -> `chain:withdrawals`
  ("withdrawn:{chain_id}:{id}"). An event that matches no voucher here is logged and left alone.
- An issued voucher is expired when a confirmed block's timestamp is past its expiry and the contract
  says at that block that its nonce is unused. The contract refuses a voucher once
  `block.timestamp > expiry`, and block timestamps never go back, so no later block can use it: the
  amount goes back to the consumer ("withdraw-expired:{chain_id}:{id}"), and a voucher is never both
  withdrawn and expired. A withdrawal mined in the last block before its expiry is found by the same
  look (its nonce is used at that block), and its event by the scan, which reaches every block the
  expiry check looks at first.

Every move is guarded by the row's state, read again under a lock, and by the ledger's idempotency
keys, so any number of registry processes may run the watcher at once. How far the events were read
lives in the watcher (in memory): a new one starts a little before the oldest issued voucher was
signed, found by the blocks' timestamps, since no voucher can be used before it exists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mcpz.errors import RefusedError, UsageError
from mcpz.keys.ethkeys import LocalAccount
from mcpz.money import format_amount
from registry_server.accounts.models import Account
from registry_server.accounts.namespaces import checksum
from registry_server.billing import ledger, service
from registry_server.billing.models import LedgerBalance
from registry_server.db import Database
from registry_server.settlement.chain import SettlementChain, WithdrawnLog
from registry_server.settlement.models import (
    VOUCHER_EXPIRED,
    VOUCHER_ISSUED,
    VOUCHER_WITHDRAWN,
    Withdrawal,
)
from registry_server.settlement.operator import Operator

log = logging.getLogger("registry_server.settlement")

MAX_AMOUNT = 2**63 - 1  # what a BigInteger column holds
MAX_NONCE = 2**31 - 1  # the id column is an Integer: a larger nonce on chain is none of ours
MAX_RANGE = 2000  # blocks per eth_getLogs, as for deposits
CATCH_UP_RANGES = 20  # log ranges one step reads before it returns
# Seconds the chain's clock may trail the registry's: a new watcher reads events from this long before
# the oldest issued voucher was signed.
CLOCK_SKEW = 3600

WITHDRAWAL_TYPES = {
    "Withdrawal": [
        {"name": "account", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "expiry", "type": "uint256"},
    ]
}


@dataclass(frozen=True)
class VoucherDomain:
    """The EIP-712 domain a voucher is signed for: one contract on one chain."""

    chain_id: int
    contract: str  # checksummed

    def to_eip712(self) -> dict[str, object]:
        return {
            "name": "McpzSettlement",
            "version": "1",
            "chainId": self.chain_id,
            "verifyingContract": self.contract,
        }


def issue_key(chain_id: int, voucher_id: int) -> str:
    return f"withdraw:{chain_id}:{voucher_id}"


def withdrawn_key(chain_id: int, voucher_id: int) -> str:
    return f"withdrawn:{chain_id}:{voucher_id}"


def expired_key(chain_id: int, voucher_id: int) -> str:
    return f"withdraw-expired:{chain_id}:{voucher_id}"


def sign_voucher(
    key: LocalAccount, domain: VoucherDomain, account: str, amount: int, nonce: int, expiry: int
) -> str:
    """The operator's EIP-712 signature of a Withdrawal, 0x and 130 hex digits."""
    signed = key.sign_typed_data(
        domain.to_eip712(),
        WITHDRAWAL_TYPES,
        {"account": account, "amount": amount, "nonce": nonce, "expiry": expiry},
    )
    return "0x" + bytes(signed.signature).hex()


def _available_locked(session: Session, account_id: int) -> int:
    """The account's available balance, its row locked (PostgreSQL) until the transaction ends, so two
    vouchers at once cannot both take the same money. SQLite's BEGIN IMMEDIATE already serialises."""
    query = select(LedgerBalance.balance).where(
        LedgerBalance.account == ledger.consumer_available(account_id)
    )
    return session.scalar(query.with_for_update()) or 0


def issue(
    session: Session,
    account: Account,
    amount: int,
    operator: Operator | None,
    domain: VoucherDomain,
    now_us: int,
    *,
    ttl: int,
    address: str | None = None,
    decimals: int = 6,
) -> Withdrawal:
    """Hold `amount` of `account`'s available balance and sign a voucher for it, valid `ttl` seconds.
    `address`, when given, is the wallet the caller will send from: refused unless it is the account's,
    before anything is held."""
    if operator is None:
        raise RefusedError(
            "this registry cannot sign withdrawal vouchers: it has no settlement operator key",
            status=409,
            hint="its operator sets MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY (docs/settlement.md)",
        )
    if account.address is None:
        raise RefusedError(
            f'account "{account.name}" has no wallet to withdraw to',
            status=409,
            hint="a voucher pays the wallet you sign in with: `mcpz login --wallet`",
        )
    if address is not None and checksum(address) != account.address:
        raise RefusedError(
            f"a voucher of account {account.name} pays its wallet {account.address}, not {checksum(address)}",
            status=409,
            hint="send from the wallet you sign in with, or sign in with this one (`mcpz login --wallet`)",
        )
    if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:
        raise UsageError("the amount to withdraw must be a whole number of base units above 0")
    available = _available_locked(session, account.id)
    if amount > available:
        raise service.InsufficientBalance(
            f"the available balance, {format_amount(available, decimals=decimals)}, is less than the "
            f"{format_amount(amount, decimals=decimals)} to withdraw",
            hint="see `mcpz billing balance`; money reserved for calls in flight comes back when they end",
        )
    row = Withdrawal(
        chain_id=domain.chain_id,
        contract=domain.contract,
        account_id=account.id,
        address=account.address,
        amount=amount,
        expiry=now_us // 1_000_000 + ttl,
        signature="",
        state=VOUCHER_ISSUED,
        created_us=now_us,
    )
    session.add(row)
    session.flush()  # the id is the nonce the voucher signs
    row.signature = sign_voucher(operator.account, domain, row.address, amount, row.id, row.expiry)
    txn = ledger.transfer(
        issue_key(domain.chain_id, row.id),
        "withdraw",
        ledger.consumer_available(account.id),
        ledger.SETTLEMENT_WITHDRAWALS,
        amount,
        f"voucher {row.id} to {row.address}",
    )
    service.post(session, txn, now_us)
    return row


def vouchers_of(session: Session, account_id: int, chain_id: int, limit: int = 100) -> list[Withdrawal]:
    """The account's vouchers on `chain_id`, newest first."""
    query = (
        select(Withdrawal)
        .where(Withdrawal.account_id == account_id, Withdrawal.chain_id == chain_id)
        .order_by(Withdrawal.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


# -- the watcher


@dataclass
class Watched:
    confirmed: int  # the newest confirmed block (below the start block: nothing was read)
    scanned_to: int = -1  # events are read up to this block
    withdrawn: list[str] = field(default_factory=list)  # ledger keys posted by this step
    expired: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # "tx:log index" of events matching no voucher

    @property
    def caught_up(self) -> bool:
        return self.scanned_to >= self.confirmed


class Watcher:
    """Settles one contract's vouchers from the chain; `step` is one look (blocking: run it in a thread)."""

    def __init__(
        self,
        db: Database,
        chain: SettlementChain,
        confirmations: int,
        *,
        start_block: int = 0,
        max_range: int = MAX_RANGE,
    ) -> None:
        self.db = db
        self.chain = chain
        self.confirmations = confirmations
        self.start_block = start_block
        self.max_range = max_range
        self.scanned_to: int | None = None  # the last block whose events were read

    def step(self, at_us: int | None = None) -> Watched:
        at = service.now_us() if at_us is None else at_us
        # The head is read before the database: a voucher issued after that read cannot be in a
        # block mined before it, so starting past the head when none is issued misses nothing.
        confirmed = self.chain.head() - self.confirmations + 1
        result = Watched(confirmed=confirmed)
        if confirmed < self.start_block:
            return result
        if self.scanned_to is None:
            self.scanned_to = self._first_block(confirmed) - 1
        for _ in range(CATCH_UP_RANGES):
            start = self.scanned_to + 1
            if start > confirmed:
                break
            end = min(confirmed, start + self.max_range - 1)
            events = self.chain.withdrawals(start, end)
            with self.db.session() as session:
                self._settle_used(session, events, at, result)
            self.scanned_to = end
        result.scanned_to = self.scanned_to
        # Only blocks whose events were read: a voucher used in one has been settled by now.
        self._expire(min(self.scanned_to, confirmed), at, result)
        return result

    def _issued(self, session: Session) -> Sequence[Withdrawal]:
        return session.scalars(
            select(Withdrawal).where(
                Withdrawal.chain_id == self.chain.chain_id,
                Withdrawal.state == VOUCHER_ISSUED,
                func.lower(Withdrawal.contract) == self.chain.address.lower(),
            )
        ).all()

    def _first_block(self, confirmed: int) -> int:
        """Where a new watcher starts reading events: the first block a little before the oldest issued
        voucher was signed (by block timestamps, a binary search), else past the confirmed head."""
        with self.db.session() as session:
            oldest = min((v.created_us for v in self._issued(session)), default=None)
        if oldest is None:
            return confirmed + 1
        since = oldest // 1_000_000 - CLOCK_SKEW
        low, high = self.start_block, confirmed + 1
        while low < high:
            middle = (low + high) // 2
            stamp = self.chain.block_timestamp(middle)
            if stamp is not None and stamp >= since:
                high = middle
            else:
                low = middle + 1
        return low

    def _settle_used(
        self, session: Session, events: Sequence[WithdrawnLog], at_us: int, result: Watched
    ) -> None:
        chain_id = self.chain.chain_id
        for event in events:
            where = f"{event.tx_hash}:{event.log_index}"
            row = None
            if 0 < event.nonce <= MAX_NONCE:
                row = session.scalar(
                    select(Withdrawal)
                    .where(Withdrawal.id == event.nonce, Withdrawal.chain_id == chain_id)
                    .with_for_update()
                )
            if (
                row is None
                or row.contract.lower() != self.chain.address.lower()
                or row.address.lower() != event.account.lower()
                or row.amount != event.amount
            ):
                result.unmatched.append(where)
                log.error(
                    "a Withdrawn event matches no withdrawal voucher of this registry; it is not settled",
                    extra={"tx": event.tx_hash, "account": event.account, "nonce": str(event.nonce),
                           "amount": str(event.amount)},
                )  # fmt: skip
                continue
            if row.state == VOUCHER_WITHDRAWN:
                continue  # read again (a new watcher, or another process): settled once already
            if row.state == VOUCHER_EXPIRED:
                result.unmatched.append(where)
                log.error(
                    "a voucher already expired (its amount returned) was used on chain: a reorganisation "
                    "deeper than settlement_confirmations",
                    extra={"tx": event.tx_hash, "voucher": row.id, "amount": row.amount},
                )
                continue
            key = withdrawn_key(chain_id, row.id)
            txn = ledger.transfer(
                key, "withdrawn", ledger.SETTLEMENT_WITHDRAWALS, ledger.CHAIN_WITHDRAWALS, row.amount,
                f"voucher {row.id} in {event.tx_hash}",
            )  # fmt: skip
            service.post(session, txn, at_us)
            row.state, row.tx_hash, row.settled_us = VOUCHER_WITHDRAWN, event.tx_hash, at_us
            result.withdrawn.append(key)
            log.info("a withdrawal voucher was used", extra={"key": key, "tx": event.tx_hash})

    def _expire(self, block: int, at_us: int, result: Watched) -> None:
        if block < self.start_block:
            return
        stamp = self.chain.block_timestamp(block)
        if stamp is None:
            return
        with self.db.session() as session:
            due = [(v.id, v.address) for v in self._issued(session) if v.expiry < stamp]
        if not due:
            return
        # The chain is asked outside the database transaction; the rows are read again under a lock.
        unused = {i for i, address in due if not self.chain.nonce_used(address, i, block)}
        chain_id = self.chain.chain_id
        with self.db.session() as session:
            for voucher_id, address in due:
                if voucher_id not in unused:
                    log.error(
                        "a withdrawal voucher past its expiry is used on chain but no Withdrawn event of "
                        "it was matched; it stays issued",
                        extra={"voucher": voucher_id, "account": address, "block": block},
                    )
                    continue
                row = session.scalar(select(Withdrawal).where(Withdrawal.id == voucher_id).with_for_update())
                if row is None or row.state != VOUCHER_ISSUED:
                    continue  # another process settled it since
                key = expired_key(chain_id, row.id)
                txn = ledger.transfer(
                    key, "withdraw-expired", ledger.SETTLEMENT_WITHDRAWALS,
                    ledger.consumer_available(row.account_id), row.amount,
                    f"voucher {row.id} unused at block {block}",
                )  # fmt: skip
                service.post(session, txn, at_us)
                row.state, row.settled_us = VOUCHER_EXPIRED, at_us
                result.expired.append(key)
                log.info("a withdrawal voucher expired unused; its amount is back", extra={"key": key})
