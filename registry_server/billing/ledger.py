"""The double-entry ledger, pure: accounts, transactions that sum to zero, balances derived from entries.

Every movement of money is a `Transaction`: entries (ledger account, signed amount in base units)
whose amounts sum to zero, under an idempotency key. Posting a key twice with the same entries
changes nothing; with different entries it is a conflict, refused. A balance is the sum of its
account's entries, so it can always be recomputed and checked (`Ledger.verify`, and
`service.verify_ledger` against the database).

Ledger accounts are named by text: `consumer:42:available`, `creator:7:pending`, `platform:fees`.
Money enters through `platform:credit` (operator credit) and, with settlement, `chain:deposits`;
those source accounts go negative by what they issued.

No I/O here: the service stores what these functions build.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PLATFORM_FEES = "platform:fees"
PLATFORM_CREDIT = "platform:credit"  # operator credit issued: negative by what was credited
CHAIN_DEPOSITS = "chain:deposits"  # confirmed deposits on chain: negative by what was credited
# Settlement's money on its way out. A payout batch takes creators' available earnings into
# `settlement:payouts` when it is built and moves them to `chain:payouts` once its commit is final; a
# withdrawal voucher holds a consumer's amount in `settlement:withdrawals` until the chain shows it used
# (then `chain:withdrawals`) or it expires unused (then back to the consumer).
SETTLEMENT_PAYOUTS = "settlement:payouts"
CHAIN_PAYOUTS = "chain:payouts"
SETTLEMENT_WITHDRAWALS = "settlement:withdrawals"
CHAIN_WITHDRAWALS = "chain:withdrawals"
# x402 payments settled on chain into the settlement contract (docs/x402.md): negative by what they paid.
CHAIN_X402 = "chain:x402"


def consumer_available(account_id: int) -> str:
    return f"consumer:{account_id}:available"


def consumer_reserved(account_id: int) -> str:
    """Money held for calls in flight or not yet rated (the gateway's holds)."""
    return f"consumer:{account_id}:reserved"


def creator_pending(account_id: int) -> str:
    """Earnings inside the refund window."""
    return f"creator:{account_id}:pending"


def creator_available(account_id: int) -> str:
    """Earnings past the refund window, ready for payout."""
    return f"creator:{account_id}:available"


class LedgerError(Exception):
    """A transaction that would break the ledger: unbalanced, empty, not integers, or a key reused."""


@dataclass(frozen=True, slots=True)
class Entry:
    account: str
    amount: int  # base units; positive adds to the account, negative takes from it


@dataclass(frozen=True, slots=True)
class Transaction:
    key: str  # the idempotency key: usage batch, credit, invoice, hold, payout ...
    kind: str
    entries: tuple[Entry, ...]
    memo: str = ""

    def check(self) -> None:
        if not self.key:
            raise LedgerError("a transaction needs an idempotency key")
        if not self.entries:
            raise LedgerError(f"transaction {self.key} has no entries")
        for entry in self.entries:
            if type(entry.amount) is not int:  # bool is an int too, and is refused here
                raise LedgerError(f"transaction {self.key}: amounts must be integers of base units")
            if entry.amount == 0:
                raise LedgerError(f"transaction {self.key}: an entry of zero moves nothing")
        total = sum(e.amount for e in self.entries)
        if total != 0:
            raise LedgerError(f"transaction {self.key} does not balance: its entries sum to {total}")

    def same_as(self, other: Transaction) -> bool:
        """Equal up to the order of entries: what a retried post must match."""
        return self.kind == other.kind and sorted((e.account, e.amount) for e in self.entries) == sorted(
            (e.account, e.amount) for e in other.entries
        )


def transaction(key: str, kind: str, legs: Iterable[tuple[str, int]], memo: str = "") -> Transaction:
    """A checked transaction from (account, amount) legs: legs of one account merge, zeros drop."""
    merged: dict[str, int] = defaultdict(int)
    for account, amount in legs:
        # Checked before merging: 0 + True is the int 1, and the bool would pass `check` unseen.
        if type(amount) is not int:
            raise LedgerError(f"transaction {key}: amounts must be integers of base units")
        merged[account] += amount
    txn = Transaction(key, kind, tuple(Entry(a, v) for a, v in sorted(merged.items()) if v != 0), memo)
    txn.check()
    return txn


def transfer(key: str, kind: str, source: str, destination: str, amount: int, memo: str = "") -> Transaction:
    if type(amount) is not int or amount <= 0:
        raise LedgerError(f"transaction {key}: a transfer moves a positive integer amount")
    return transaction(key, kind, [(source, -amount), (destination, amount)], memo)


def split(amount: int, fee_bps: int, shares: Sequence[tuple[int, int]]) -> tuple[int, list[tuple[int, int]]]:
    """Divide a charge: (platform fee, [(creator account id, amount)]), exactly.

    The fee is `amount * fee_bps // 10_000` (rounded down: the remainder goes to the creators).
    The creators' part is divided by their basis points (summing to 10,000) by the largest-remainder
    rule: each gets the rounded-down share, then the units left over go one each to the largest
    fractional remainders, ties to the one listed first. The parts always sum to `amount`.
    """
    if type(amount) is not int or amount < 0:
        raise LedgerError("a charge is a non-negative integer of base units")
    if not 0 <= fee_bps <= 10_000:
        raise LedgerError("the platform fee must be between 0 and 10,000 basis points")
    if not shares or sum(bps for _, bps in shares) != 10_000 or any(bps < 0 for _, bps in shares):
        raise LedgerError("creator shares must be non-negative basis points summing to 10,000")
    fee = amount * fee_bps // 10_000
    rest = amount - fee
    parts = [rest * bps // 10_000 for _, bps in shares]
    left = rest - sum(parts)
    order = sorted(range(len(shares)), key=lambda i: (-(rest * shares[i][1] % 10_000), i))
    for i in order[:left]:
        parts[i] += 1
    return fee, [(account, part) for (account, _), part in zip(shares, parts, strict=True)]


class Ledger:
    """An in-memory ledger: the reference model the database-backed one is tested against."""

    def __init__(self) -> None:
        self.transactions: dict[str, Transaction] = {}
        self.balances: dict[str, int] = defaultdict(int)

    def post(self, txn: Transaction) -> bool:
        """Apply `txn` once: True when it was new, False when the same key was already posted alike."""
        txn.check()
        known = self.transactions.get(txn.key)
        if known is not None:
            if not known.same_as(txn):
                raise LedgerError(f"idempotency key {txn.key} was already used for another transaction")
            return False
        self.transactions[txn.key] = txn
        for entry in txn.entries:
            self.balances[entry.account] += entry.amount
        return True

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def verify(self) -> None:
        """Raise unless every transaction balances and every balance equals the sum of its entries."""
        verify_entries((t.key, e.account, e.amount) for t in self.transactions.values() for e in t.entries)
        recomputed = sums(self.transactions.values())
        stored = {a: v for a, v in self.balances.items() if v != 0}
        if recomputed != stored:
            raise LedgerError("a balance differs from the sum of its entries")


def sums(transactions: Iterable[Transaction]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for txn in transactions:
        for entry in txn.entries:
            total[entry.account] += entry.amount
    return {a: v for a, v in total.items() if v != 0}


def verify_entries(rows: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    """Check (transaction key, account, amount) rows: each transaction sums to zero. Returns balances."""
    per_txn: dict[str, int] = defaultdict(int)
    balances: dict[str, int] = defaultdict(int)
    for key, account, amount in rows:
        per_txn[key] += amount
        balances[account] += amount
    unbalanced = [k for k, v in per_txn.items() if v != 0]
    if unbalanced:
        raise LedgerError(f"{len(unbalanced)} transactions do not balance, e.g. {unbalanced[0]}")
    return dict(balances)


def compare_balances(derived: Mapping[str, int], stored: Mapping[str, int]) -> list[str]:
    """The accounts whose stored balance differs from the one derived from entries."""
    accounts = set(derived) | set(stored)
    return sorted(a for a in accounts if derived.get(a, 0) != stored.get(a, 0))
