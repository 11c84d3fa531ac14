"""The payout batch state machine, pure: what to do next with a batch, given what the chain shows.

A batch moves pending -> submitted (nonce, one or more signed transactions) -> confirmed (the
committing transaction has `confirmations` blocks on top, same block hash) -> final (its block is at
or below the finalized block, or zkSync reports its L1 batch executed). `next_step` reads a `Batch`
(as last persisted) and a `ChainView` (filled in by the caller from the chain) and answers one `Step`;
`apply` records what happened as a new `Batch`. No I/O here: the time, the chain's facts and the
signing are the caller's.

Why a crash at any step is safe:
- Write-ahead: a signed transaction is recorded (`Sent`, persisted) BEFORE it is broadcast. A crash
  before the record loses a transaction nobody saw; a crash after it leaves a hash the node may not
  know, and `next_step` answers `Broadcast` for it.
- One nonce per batch, fixed by its first `Sent`: replacements keep it, so at most one of a batch's
  transactions can ever be mined, and whichever is mined is the batch's commit.
- The contract is the truth: a batch id the contract holds with this batch's root is committed
  whatever our records say (a crash after mining, before recording); with another root it is
  `Failed` and an operator must look. No step signs a commit once the contract holds the batch id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

MIN_FEE_BUMP_BPS = 1250  # nodes refuse a same-nonce replacement that raises fees by less than 12.5 %


class BatchState(StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"
    CONFIRMED = "confirmed"
    FINAL = "final"


class TransitionError(Exception):
    """An event that cannot happen to a batch in its state: a bug in the caller, never applied."""


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: str
    block_number: int
    block_hash: str
    status: int  # 1 succeeded, 0 reverted


@dataclass(frozen=True, slots=True)
class Attempt:
    """One signed commitBatch transaction; every attempt of a batch has the batch's nonce."""

    tx_hash: str
    max_fee: int  # wei per gas
    priority_fee: int
    sent_at: float  # seconds since the epoch, when it was signed and recorded


@dataclass(frozen=True, slots=True)
class Batch:
    id: int  # the on-chain batch id
    root: str  # hex bytes32
    total: int  # base units
    leaves: int
    state: BatchState = BatchState.PENDING
    nonce: int | None = None
    attempts: tuple[Attempt, ...] = ()
    receipt: Receipt | None = None  # the committing transaction once mined (ours, or adopted)
    final: bool = False


@dataclass(frozen=True, slots=True)
class Commit:
    """What the contract holds for a batch id: `batches(id).root` and its BatchCommitted event."""

    root: str
    receipt: Receipt


@dataclass(frozen=True, slots=True)
class ChainView:
    """The chain as the caller read it, for one batch (`hashes_to_look_up` names the transactions)."""

    head: int
    finalized: int | None  # the `finalized` block's number; None where the chain has none
    receipts: Mapping[str, Receipt] = field(default_factory=dict)  # mined transactions only
    in_pool: frozenset[str] = frozenset()  # known to the node, not mined yet
    committed: Commit | None = None  # None while batches(id).root == 0
    nonce_latest: int = 0  # the account's next nonce counting mined transactions only
    nonce_pending: int = 0  # ... counting the pool too
    max_fee: int = 0  # the node's suggestion now, wei per gas
    priority_fee: int = 0
    executed: frozenset[str] = frozenset()  # zkSync: transactions whose L1 batch is executed (final)


@dataclass(frozen=True, slots=True)
class Policy:
    confirmations: int
    stuck_after: float  # seconds a transaction may sit in the pool before it is replaced
    fee_bump_bps: int = MIN_FEE_BUMP_BPS
    max_fee: int = 500 * 10**9  # wei per gas: never sign above it

    def __post_init__(self) -> None:
        if self.confirmations < 1:
            raise ValueError("confirmations must be at least 1")
        if self.fee_bump_bps < MIN_FEE_BUMP_BPS:
            raise ValueError(f"fee_bump_bps must be at least {MIN_FEE_BUMP_BPS}: nodes refuse smaller bumps")
        if self.max_fee < 1:
            raise ValueError("max_fee must be positive")


# Steps: what the caller does next.


@dataclass(frozen=True, slots=True)
class Sign:
    """Sign commitBatch at `nonce`; record it (`Sent`) and persist it BEFORE broadcasting it."""

    nonce: int
    max_fee: int
    priority_fee: int


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send again a recorded signed transaction the node does not know (crash before sending, or dropped)."""

    tx_hash: str


@dataclass(frozen=True, slots=True)
class Replace:
    """Sign a replacement at the same nonce with these fees; record and persist it before broadcasting."""

    nonce: int
    max_fee: int
    priority_fee: int


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Mined:
    """One of the batch's transactions is in a block: record its receipt (`apply` with `MinedEvent`)."""

    receipt: Receipt


@dataclass(frozen=True, slots=True)
class Confirmed:
    tx_hash: str
    block: int


@dataclass(frozen=True, slots=True)
class Final:
    """The batch is final (record it with `Finalized` unless `batch.final` already says so)."""


@dataclass(frozen=True, slots=True)
class Reorged:
    """The recorded receipt vanished or its block changed: record `ReorgedEvent`, back to submitted."""


@dataclass(frozen=True, slots=True)
class Failed:
    """An operator must look; nothing is recorded, so the next look at the chain decides afresh."""

    reason: str


@dataclass(frozen=True, slots=True)
class AlreadyCommitted:
    """The contract holds this batch id with this root from a transaction we have no record of."""

    receipt: Receipt


Step = Sign | Broadcast | Replace | Wait | Mined | Confirmed | Final | Reorged | Failed | AlreadyCommitted


# Events: what happened, recorded by `apply`.


@dataclass(frozen=True, slots=True)
class Sent:
    nonce: int
    attempt: Attempt


@dataclass(frozen=True, slots=True)
class MinedEvent:
    receipt: Receipt


@dataclass(frozen=True, slots=True)
class Adopted:
    """The commit found on chain (`AlreadyCommitted`) becomes the batch's receipt."""

    receipt: Receipt


@dataclass(frozen=True, slots=True)
class ConfirmedEvent:
    pass


@dataclass(frozen=True, slots=True)
class Finalized:
    pass


@dataclass(frozen=True, slots=True)
class ReorgedEvent:
    pass


Event = Sent | MinedEvent | Adopted | ConfirmedEvent | Finalized | ReorgedEvent


def hashes_to_look_up(batch: Batch) -> tuple[str, ...]:
    """The transactions whose receipts and pool presence the caller puts in the `ChainView`."""
    hashes = [a.tx_hash for a in batch.attempts]
    if batch.receipt is not None and batch.receipt.tx_hash not in hashes:
        hashes.append(batch.receipt.tx_hash)
    return tuple(hashes)


def bump(fee: int, bps: int) -> int:
    """`fee` raised by `bps` basis points, rounded up so the raise is never below what nodes require."""
    return -(-fee * (10_000 + bps) // 10_000)


def next_step(batch: Batch, view: ChainView, now: float, policy: Policy) -> Step:
    if batch.final:
        return Final()
    if batch.receipt is not None:
        return _after_mined(batch, batch.receipt, view, policy)
    mined = [view.receipts[a.tx_hash] for a in batch.attempts if a.tx_hash in view.receipts]
    if len(mined) > 1:
        raise ValueError(f"batch {batch.id}: the chain view shows two transactions mined at one nonce")
    commit = view.committed
    if commit is not None and commit.root.lower() != batch.root.lower():
        return Failed(
            f"batch id {batch.id} holds another root on chain ({commit.root}); an operator must look"
        )
    if mined and mined[0].status == 1:
        return Mined(mined[0])
    if commit is not None:
        ours = {a.tx_hash for a in batch.attempts}
        if commit.receipt.tx_hash in ours:
            return Mined(commit.receipt)
        return AlreadyCommitted(commit.receipt)
    if mined:  # reverted, and the contract does not hold the batch
        return Failed(f"commitBatch {mined[0].tx_hash} for batch {batch.id} reverted; an operator must look")
    if batch.nonce is None:
        return Sign(view.nonce_pending, *_fees(view.max_fee, view.priority_fee, policy.max_fee))
    if view.nonce_latest > batch.nonce:
        # Our nonce is used and none of ours is mined: another transaction took it. Nothing is
        # recorded, so a view read in a race (receipt not visible yet) is corrected by the next look.
        return Failed(f"nonce {batch.nonce} of batch {batch.id} was used by another transaction")
    latest = batch.attempts[-1]
    if latest.tx_hash not in view.in_pool:
        return Broadcast(latest.tx_hash)
    if now - latest.sent_at < policy.stuck_after:
        return Wait("in the pool")
    fees = _replacement_fees(latest, view, policy)
    if fees is None:
        return Wait(f"stuck, and a 12.5 % higher fee would pass the policy's max fee {policy.max_fee}")
    return Replace(batch.nonce, *fees)


def _after_mined(batch: Batch, receipt: Receipt, view: ChainView, policy: Policy) -> Step:
    now_seen = view.receipts.get(receipt.tx_hash)
    if now_seen is None or now_seen.block_hash != receipt.block_hash:
        return Reorged()
    is_final = receipt.block_number <= (view.finalized if view.finalized is not None else -1) or (
        receipt.tx_hash in view.executed
    )
    if batch.state is BatchState.CONFIRMED:
        return Final() if is_final else Wait("confirmed, not final yet")
    if is_final or view.head - receipt.block_number + 1 >= policy.confirmations:
        return Confirmed(receipt.tx_hash, receipt.block_number)
    return Wait("mined, waiting for confirmations")


def _fees(max_fee: int, priority_fee: int, cap: int) -> tuple[int, int]:
    max_fee = min(max(max_fee, 1), cap)
    return max_fee, min(priority_fee, max_fee)


def _replacement_fees(last: Attempt, view: ChainView, policy: Policy) -> tuple[int, int] | None:
    need_max = bump(last.max_fee, policy.fee_bump_bps)
    need_priority = bump(last.priority_fee, policy.fee_bump_bps)
    max_fee = min(max(need_max, view.max_fee), policy.max_fee)
    priority_fee = min(max(need_priority, view.priority_fee), max_fee)
    if max_fee < need_max or priority_fee < need_priority:
        return None
    return max_fee, priority_fee


def apply(batch: Batch, event: Event) -> Batch:
    """The batch after `event`; raises `TransitionError` for an event that cannot happen now."""
    if batch.final:
        raise TransitionError(f"batch {batch.id} is final: nothing more can happen to it")
    match event:
        case Sent(nonce=nonce, attempt=attempt):
            if batch.state is not BatchState.PENDING and batch.state is not BatchState.SUBMITTED:
                raise TransitionError(f"batch {batch.id} is {batch.state}: no transaction can be sent for it")
            if batch.receipt is not None:
                raise TransitionError(f"batch {batch.id} is mined: no transaction can be sent for it")
            if batch.nonce is not None and nonce != batch.nonce:
                raise TransitionError(
                    f"batch {batch.id} has nonce {batch.nonce}; a transaction at {nonce} is refused"
                )
            if any(a.tx_hash == attempt.tx_hash for a in batch.attempts):
                raise TransitionError(f"batch {batch.id}: transaction {attempt.tx_hash} is already recorded")
            return replace(
                batch, state=BatchState.SUBMITTED, nonce=nonce, attempts=(*batch.attempts, attempt)
            )
        case MinedEvent(receipt=receipt):
            if all(a.tx_hash != receipt.tx_hash for a in batch.attempts):
                raise TransitionError(f"batch {batch.id}: {receipt.tx_hash} is not one of its transactions")
            return _record_receipt(batch, receipt)
        case Adopted(receipt=receipt):
            return _record_receipt(batch, receipt)
        case ConfirmedEvent():
            if batch.state is not BatchState.SUBMITTED or batch.receipt is None:
                raise TransitionError(
                    f"batch {batch.id} is {batch.state} and not mined: it cannot be confirmed"
                )
            return replace(batch, state=BatchState.CONFIRMED)
        case Finalized():
            if batch.state is not BatchState.CONFIRMED:
                raise TransitionError(
                    f"batch {batch.id} is {batch.state}: only a confirmed batch becomes final"
                )
            return replace(batch, state=BatchState.FINAL, final=True)
        case ReorgedEvent():
            if batch.receipt is None:
                raise TransitionError(f"batch {batch.id} has no receipt to lose")
            # An adopted commit leaves no attempt behind: with nothing signed the batch is pending again.
            state = BatchState.SUBMITTED if batch.attempts else BatchState.PENDING
            return replace(batch, state=state, receipt=None)
    raise TransitionError(f"unknown event {event!r}")


def _record_receipt(batch: Batch, receipt: Receipt) -> Batch:
    if batch.state is not BatchState.PENDING and batch.state is not BatchState.SUBMITTED:
        raise TransitionError(f"batch {batch.id} is {batch.state}: it cannot be mined again")
    if batch.receipt is not None:
        raise TransitionError(f"batch {batch.id} is already mined in block {batch.receipt.block_number}")
    if receipt.status != 1:
        raise TransitionError(f"batch {batch.id}: a reverted transaction does not commit it")
    return replace(batch, state=BatchState.SUBMITTED, receipt=receipt)
