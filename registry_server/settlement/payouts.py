"""Creator payouts in Merkle batches: built from earnings, committed on chain, followed to final.

`build` takes every creator whose available earnings reach `payout_minimum` and who has a wallet,
makes one leaf (index, wallet, amount) each, and in one database transaction records the batch, its
leaves and the ledger move creator:ID:available -> settlement:payouts. From then on those earnings are
the batch's: no later batch can take them again.

`drive` walks a batch through batches.py's state machine with the chain's answers: it signs
commitBatch at the operator's next nonce, records the signed transaction BEFORE broadcasting it,
broadcasts (again, after a crash), replaces a stuck one at the same nonce with higher fees, records the
receipt, the confirmations and finality; at final the ledger moves settlement:payouts ->
chain:payouts. Each write applies one event to the batch under a row lock and only if the batch's
`version` is still the one the step was decided on, so two drivers (two registry processes, or the
scheduled job and `mcpz registry payouts run`) never both act on one state. A kill -9 anywhere leaves
the batch at its last recorded event, and the next `drive` continues from there: the contract refuses
a batch id twice, and every transaction of a batch shares one nonce, so nothing is paid twice.

`MCPZ_TEST_PAYOUT_KILL=<point>` makes this process kill itself (SIGKILL) at that point, for the crash
tests: built, signed, sent, mined, confirmed, final.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from threading import Lock

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from mcpz.merkle import Leaf, MerkleTree, from_hex, to_hex
from registry_server.accounts.models import Account
from registry_server.billing import ledger, service
from registry_server.billing.models import LedgerBalance
from registry_server.db import Database
from registry_server.leases import Held, fence
from registry_server.settings import RegistrySettings
from registry_server.settlement import batches
from registry_server.settlement.batches import (
    AlreadyCommitted,
    Batch,
    BatchState,
    Broadcast,
    ChainView,
    Commit,
    Confirmed,
    Failed,
    Final,
    Mined,
    Policy,
    Receipt,
    Reorged,
    Replace,
    Sign,
    Wait,
)
from registry_server.settlement.chain import CommitRefused, SettlementChain
from registry_server.settlement.models import PayoutAttempt, PayoutBatch, PayoutLeaf
from registry_server.settlement.operator import Operator

log = logging.getLogger("registry_server.settlement")

KILL_VAR = "MCPZ_TEST_PAYOUT_KILL"
MAX_LEAVES = 100_000  # per batch: the tree and the proofs stay small enough to rebuild on request
MAX_STEPS = 32  # per drive: a batch needs at most about ten; more means the chain keeps changing under it
# zkSync Era: mainnet, Sepolia testnet, and the local dev node's ids. There "final" is the L1 batch
# executed; elsewhere it is the `finalized` block.
ZKSYNC_CHAINS = frozenset({324, 300, 260, 270, 271})


def _checkpoint(point: str) -> None:
    if os.environ.get(KILL_VAR) == point:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Candidate:
    account_id: int
    address: str
    amount: int


@dataclass
class Plan:
    payable: list[Candidate]
    no_wallet: list[int]  # creators with enough earnings and no wallet to pay them to

    @property
    def total(self) -> int:
        return sum(c.amount for c in self.payable)


def ledger_key(chain_id: int, batch_id: int, what: str) -> str:
    return f"payout:{chain_id}:{batch_id}:{what}"


def plan(session: Session, minimum: int) -> Plan:
    """Who a batch built now would pay, in account order (at most MAX_LEAVES creators)."""
    rows = session.execute(
        select(LedgerBalance.account, LedgerBalance.balance).where(
            LedgerBalance.account.like("creator:%:available"),
            LedgerBalance.balance >= max(minimum, 1),
        )
    ).all()
    amounts = {int(account.split(":")[1]): int(balance) for account, balance in rows}
    addresses: dict[int, str | None] = {
        account_id: address
        for account_id, address in session.execute(
            select(Account.id, Account.address).where(Account.id.in_(list(amounts)))
        )
    }
    payable = [
        Candidate(account_id, str(addresses[account_id]), amount)
        for account_id, amount in sorted(amounts.items())
        if addresses.get(account_id)
    ]
    no_wallet = sorted(a for a in amounts if not addresses.get(a))
    return Plan(payable=payable[:MAX_LEAVES], no_wallet=no_wallet)


def unfinished(session: Session, chain_id: int) -> PayoutBatch | None:
    """The chain's batch not final yet: batches go one at a time, so their nonces never interleave."""
    return session.scalar(
        select(PayoutBatch)
        .where(PayoutBatch.chain_id == chain_id, PayoutBatch.state != BatchState.FINAL.value)
        .order_by(PayoutBatch.batch_id)
        .limit(1)
    )


def build(
    db: Database,
    chain_id: int,
    contract: str,
    minimum: int,
    at_us: int | None = None,
    *,
    lease: Held | None = None,
) -> int | None:
    """Build the next batch and take its earnings into settlement:payouts; its id, or None when nobody
    is owed `minimum` or more (or another batch is not final yet: that one's id is returned).
    `lease`: the settlement job's lease, fencing the write (LeaseLost once another replica has it)."""
    at = service.now_us() if at_us is None else at_us
    with db.session() as session:
        _fence(session, lease)
        open_batch = unfinished(session, chain_id)
        if open_batch is not None:
            return open_batch.batch_id
        chosen = plan(session, minimum)
        if not chosen.payable:
            return None
        last = session.scalar(select(func.max(PayoutBatch.batch_id)).where(PayoutBatch.chain_id == chain_id))
        batch_id = (last or 0) + 1
        tree = MerkleTree([Leaf(i, c.address, c.amount) for i, c in enumerate(chosen.payable)])
        total = chosen.total
        session.add(
            PayoutBatch(
                chain_id=chain_id,
                batch_id=batch_id,
                contract=contract,
                root=to_hex(tree.root),
                total=total,
                leaves=len(chosen.payable),
                state=BatchState.PENDING.value,
                note="",
                version=0,
                created_us=at,
                updated_us=at,
            )
        )
        session.flush()  # the batch id is taken here: a second builder's insert fails, and it builds nothing
        session.execute(
            insert(PayoutLeaf),
            [
                {"chain_id": chain_id, "batch_id": batch_id, "idx": i, "account_id": c.account_id,
                 "address": c.address, "amount": c.amount}
                for i, c in enumerate(chosen.payable)
            ],
        )  # fmt: skip
        legs = [(ledger.creator_available(c.account_id), -c.amount) for c in chosen.payable]
        txn = ledger.transaction(
            ledger_key(chain_id, batch_id, "built"),
            "payout",
            [*legs, (ledger.SETTLEMENT_PAYOUTS, total)],
            f"payout batch {batch_id}: {len(chosen.payable)} creators",
        )
        service.post(session, txn, at)
    log.info("built a payout batch", extra={"batch": batch_id, "leaves": len(chosen.payable), "total": total})
    _checkpoint("built")
    return batch_id


# --- the state machine's batch, to and from its rows ---------------------------------------------


def _load(session: Session, chain_id: int, batch_id: int, *, lock: bool = False) -> tuple[PayoutBatch, Batch]:
    query = select(PayoutBatch).where(PayoutBatch.chain_id == chain_id, PayoutBatch.batch_id == batch_id)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise LookupError(f"no payout batch {batch_id} on chain {chain_id}")
    attempts = session.scalars(
        select(PayoutAttempt)
        .where(PayoutAttempt.chain_id == chain_id, PayoutAttempt.batch_id == batch_id)
        .order_by(PayoutAttempt.sent_us, PayoutAttempt.tx_hash)
    ).all()
    receipt = None
    if row.receipt_tx is not None and row.receipt_block is not None and row.receipt_block_hash is not None:
        receipt = Receipt(row.receipt_tx, row.receipt_block, row.receipt_block_hash, 1)
    batch = Batch(
        id=row.batch_id,
        root=row.root,
        total=row.total,
        leaves=row.leaves,
        state=BatchState(row.state),
        nonce=row.nonce,
        attempts=tuple(
            batches.Attempt(a.tx_hash, a.max_fee, a.priority_fee, a.sent_us / 1e6) for a in attempts
        ),
        receipt=receipt,
        final=row.state == BatchState.FINAL.value,
    )
    return row, batch


def _record(
    db: Database,
    chain_id: int,
    batch_id: int,
    version: int,
    event: batches.Event,
    *,
    raw: str | None = None,
    at_us: int | None = None,
    lease: Held | None = None,
) -> bool:
    """Apply `event` to the batch if it is still at `version`; False when another driver moved it."""
    at = service.now_us() if at_us is None else at_us
    with db.session() as session:
        _fence(session, lease)
        row, batch = _load(session, chain_id, batch_id, lock=True)
        if row.version != version:
            return False
        after = batches.apply(batch, event)
        if isinstance(event, batches.Sent):
            if raw is None:
                raise ValueError("a Sent event needs its signed transaction")
            session.add(
                PayoutAttempt(
                    tx_hash=event.attempt.tx_hash,
                    chain_id=chain_id,
                    batch_id=batch_id,
                    raw=raw,
                    max_fee=event.attempt.max_fee,
                    priority_fee=event.attempt.priority_fee,
                    sent_us=round(event.attempt.sent_at * 1e6),
                )
            )
        row.state, row.nonce = after.state.value, after.nonce
        receipt = after.receipt
        row.receipt_tx = receipt.tx_hash if receipt else None
        row.receipt_block = receipt.block_number if receipt else None
        row.receipt_block_hash = receipt.block_hash if receipt else None
        row.note, row.version, row.updated_us = "", row.version + 1, at
        if after.final:
            row.final_us = at
            service.post(
                session,
                ledger.transfer(
                    ledger_key(chain_id, batch_id, "final"),
                    "payout",
                    ledger.SETTLEMENT_PAYOUTS,
                    ledger.CHAIN_PAYOUTS,
                    row.total,
                    f"payout batch {batch_id} final in {row.receipt_tx}",
                ),
                at,
            )
    return True


def _fence(session: Session, lease: Held | None) -> None:
    if lease is not None:
        fence(session, lease)


def _note(db: Database, chain_id: int, batch_id: int, text: str, lease: Held | None = None) -> None:
    with db.session() as session:
        _fence(session, lease)
        row = session.get(PayoutBatch, (chain_id, batch_id))
        if row is not None and row.note != text:
            row.note = text[:1000]


# --- the chain's side ----------------------------------------------------------------------------


def read_view(chain: SettlementChain, batch: Batch, operator: str, start_block: int) -> ChainView:
    """What `next_step` needs to know of the chain for `batch`."""
    hashes = batches.hashes_to_look_up(batch)
    receipts = {h: r for h in hashes if (r := chain.receipt(h)) is not None}
    in_pool = frozenset(h for h in hashes if h not in receipts and chain.in_pool(h))
    head = chain.head()
    on_chain = chain.batch(batch.id)
    committed = None
    if on_chain.committed:
        ours = next((r for r in receipts.values() if r.status == 1), None)
        if ours is None:
            found = chain.commits(start_block, head, batch.id)
            ours = found[-1].receipt if found else None
        if ours is not None:
            committed = Commit(root=on_chain.root, receipt=ours)
    latest, pending = chain.nonces(operator)
    max_fee, priority_fee = chain.fees()
    executed: frozenset[str] = frozenset()
    finalized: int | None
    if chain.chain_id in ZKSYNC_CHAINS:
        finalized = None
        executed = frozenset(h for h, r in receipts.items() if r.status == 1 and _executed(chain.rpc_url, h))
    else:
        finalized = chain.finalized()
    return ChainView(
        head=head,
        finalized=finalized,
        receipts=receipts,
        in_pool=in_pool,
        committed=committed,
        nonce_latest=latest,
        nonce_pending=pending,
        max_fee=max_fee,
        priority_fee=priority_fee,
        executed=executed,
    )


def _executed(rpc_url: str, tx_hash: str) -> bool:
    from registry_server.settlement.zksync import ChainRpc

    async def ask() -> bool:
        async with ChainRpc(rpc_url) as rpc:
            return await rpc.finality(tx_hash) == "executed"

    return asyncio.run(ask())  # drive runs in a worker thread or the CLI: no event loop is running here


@dataclass
class Progress:
    batch_id: int
    state: str
    steps: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def final(self) -> bool:
        return self.state == BatchState.FINAL.value


def drive(
    db: Database,
    chain: SettlementChain,
    operator: Operator,
    batch_id: int,
    policy: Policy,
    *,
    start_block: int = 0,
    now: Callable[[], float] = time.time,
    lease: Held | None = None,
) -> Progress:
    """Take the batch as far as the chain allows now; stops at a wait, at final, or at a failure.
    Every write is fenced by `lease` (when given): a replica that lost it stops at LeaseLost,
    before it broadcasts a commit it could not record."""
    chain_id = chain.chain_id
    progress = Progress(batch_id, "")
    sent = False
    for _ in range(MAX_STEPS):
        with db.session() as session:
            row, batch = _load(session, chain_id, batch_id)
            version = row.version
            raws = {
                a.tx_hash: a.raw
                for a in session.scalars(
                    select(PayoutAttempt).where(
                        PayoutAttempt.chain_id == chain_id, PayoutAttempt.batch_id == batch_id
                    )
                )
            }
        progress.state = batch.state.value
        view = read_view(chain, batch, operator.address, start_block)
        step = batches.next_step(batch, view, now(), policy)
        if sent and isinstance(step, Replace | Broadcast):
            # Sent in this drive already: the chain needs time before anything is sent again.
            progress.note = "sent; waiting for the chain"
            return progress
        progress.steps.append(type(step).__name__)
        match step:
            case Final():
                if not batch.final and _record(
                    db, chain_id, batch_id, version, batches.Finalized(), lease=lease
                ):
                    log.info("payout batch final", extra={"batch": batch_id})
                    progress.state = BatchState.FINAL.value
                    _checkpoint("final")
                return progress
            case Sign() | Replace():
                if isinstance(step, Sign):
                    free = chain.unallocated()
                    if free < batch.total:
                        progress.note = (
                            f"the contract holds {free} unallocated and batch {batch_id} needs "
                            f"{batch.total}: it waits for deposits"
                        )
                        _note(db, chain_id, batch_id, progress.note, lease)
                        return progress
                try:
                    signed = chain.sign_commit(
                        operator.account, batch_id, batch.root, batch.total,
                        nonce=step.nonce, max_fee=step.max_fee, priority_fee=step.priority_fee,
                    )  # fmt: skip
                except CommitRefused as e:
                    progress.note = e.message
                    _note(db, chain_id, batch_id, e.message, lease)
                    return progress
                attempt = batches.Attempt(signed.tx_hash, step.max_fee, step.priority_fee, now())
                if not _record(
                    db,
                    chain_id,
                    batch_id,
                    version,
                    batches.Sent(step.nonce, attempt),
                    raw=signed.raw,
                    lease=lease,
                ):
                    continue  # another driver moved the batch: look again
                _checkpoint("signed")
                sent = True
                chain.broadcast(signed.raw)
                log.info(
                    "sent a payout batch's commit",
                    extra={"batch": batch_id, "tx": signed.tx_hash, "nonce": step.nonce,
                           "replacement": isinstance(step, Replace)},
                )  # fmt: skip
                _checkpoint("sent")
            case Broadcast(tx_hash=tx_hash):
                sent = True
                chain.broadcast(raws[tx_hash])
                _checkpoint("sent")
            case Mined(receipt=receipt):
                _record(db, chain_id, batch_id, version, batches.MinedEvent(receipt), lease=lease)
                _checkpoint("mined")
            case AlreadyCommitted(receipt=receipt):
                _record(db, chain_id, batch_id, version, batches.Adopted(receipt), lease=lease)
                _checkpoint("mined")
            case Confirmed():
                _record(db, chain_id, batch_id, version, batches.ConfirmedEvent(), lease=lease)
                _checkpoint("confirmed")
            case Reorged():
                log.warning("a payout batch's commit was reorganised away", extra={"batch": batch_id})
                _record(db, chain_id, batch_id, version, batches.ReorgedEvent(), lease=lease)
            case Wait(reason=reason):
                progress.note = reason
                return progress
            case Failed(reason=reason):
                log.error("a payout batch needs an operator", extra={"batch": batch_id, "reason": reason})
                progress.note = reason
                _note(db, chain_id, batch_id, reason, lease)
                return progress
    progress.note = f"stopped after {MAX_STEPS} steps; the next run goes on"
    return progress


# --- what creators see ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Payout:
    """One creator's leaf in a batch, with the proof that it is in the batch's root."""

    batch_id: int
    index: int
    address: str
    amount: int
    state: str
    root: str
    tx_hash: str | None
    proof: tuple[str, ...]


class _Trees:
    """Built trees of recent batches: a batch never changes once built, and rebuilding a 10,000-leaf
    tree for each creator who asks would cost a fifth of a second each time."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._trees: OrderedDict[tuple[int, int, str], MerkleTree] = OrderedDict()
        self._lock = Lock()

    def get(self, session: Session, chain_id: int, batch_id: int, root: str) -> MerkleTree:
        # The root is in the key: another database (a test's, a restored backup's) may hold another
        # batch under the same id.
        key = (chain_id, batch_id, root)
        with self._lock:
            if key in self._trees:
                self._trees.move_to_end(key)
                return self._trees[key]
        rows = session.execute(
            select(PayoutLeaf.idx, PayoutLeaf.address, PayoutLeaf.amount)
            .where(PayoutLeaf.chain_id == chain_id, PayoutLeaf.batch_id == batch_id)
            .order_by(PayoutLeaf.idx)
        ).all()
        tree = MerkleTree([Leaf(idx, address, amount) for idx, address, amount in rows])
        if to_hex(tree.root) != root:
            raise ValueError(f"payout batch {batch_id}'s leaves do not give its root {root}")
        with self._lock:
            self._trees[key] = tree
            while len(self._trees) > self.size:
                self._trees.popitem(last=False)
        return tree


_trees = _Trees()


def payouts_of(session: Session, chain_id: int, account_id: int, *, limit: int = 100) -> list[Payout]:
    """The account's payouts on the chain, newest batch first, each with its Merkle proof."""
    rows = session.execute(
        select(PayoutLeaf, PayoutBatch)
        .join(
            PayoutBatch,
            (PayoutBatch.chain_id == PayoutLeaf.chain_id) & (PayoutBatch.batch_id == PayoutLeaf.batch_id),
        )
        .where(PayoutLeaf.chain_id == chain_id, PayoutLeaf.account_id == account_id)
        .order_by(PayoutLeaf.batch_id.desc())
        .limit(limit)
    ).all()
    out = []
    for leaf, batch in rows:
        tree = _trees.get(session, chain_id, batch.batch_id, batch.root)
        out.append(
            Payout(
                batch_id=batch.batch_id,
                index=leaf.idx,
                address=leaf.address,
                amount=leaf.amount,
                state=batch.state,
                root=batch.root,
                tx_hash=batch.receipt_tx,
                proof=tuple(to_hex(p) for p in tree.proof(leaf.idx)),
            )
        )
    return out


def claim_calldata(payout: Payout) -> str:
    """The contract call that pays `payout`: what the dashboard's claim button has the browser's
    wallet send (any sender may; the tokens go to the leaf's address)."""
    from eth_abi.abi import encode
    from eth_utils.crypto import keccak

    selector = keccak(text="claim(uint256,uint256,address,uint256,bytes32[])")[:4]
    args = encode(
        ["uint256", "uint256", "address", "uint256", "bytes32[]"],
        [payout.batch_id, payout.index, payout.address, payout.amount, [from_hex(h) for h in payout.proof]],
    )
    return "0x" + (selector + args).hex()


def batch_row(session: Session, chain_id: int, batch_id: int) -> PayoutBatch | None:
    return session.get(PayoutBatch, (chain_id, batch_id))


def batches_of(session: Session, chain_id: int, limit: int = 50) -> list[PayoutBatch]:
    """The chain's batches, newest first (the operator's list)."""
    return list(
        session.scalars(
            select(PayoutBatch)
            .where(PayoutBatch.chain_id == chain_id)
            .order_by(PayoutBatch.batch_id.desc())
            .limit(limit)
        )
    )


# --- one run: what the schedule and `mcpz registry payouts run` do --------------------------------


def policy_of(settings: RegistrySettings) -> Policy:
    return Policy(
        confirmations=settings.settlement_confirmations,
        stuck_after=settings.settlement_stuck_after,
        max_fee=settings.settlement_max_fee_gwei * 10**9,
    )


def last_built_us(db: Database, chain_id: int) -> int | None:
    with db.session() as session:
        return session.scalar(
            select(func.max(PayoutBatch.created_us)).where(PayoutBatch.chain_id == chain_id)
        )


def run(
    db: Database,
    chain: SettlementChain,
    operator: Operator,
    settings: RegistrySettings,
    *,
    build_new: bool = True,
    lease: Held | None = None,
) -> Progress | None:
    """Drive the unfinished batch, or build the next one (when `build_new`) and drive it. None when
    there is nothing to do: no batch open and nobody owed `settlement_payout_minimum`. `lease`: the
    settlement job's, fencing every write."""
    chain_id = chain.chain_id
    with db.session() as session:
        open_batch = unfinished(session, chain_id)
        batch_id = open_batch.batch_id if open_batch is not None else None
    if batch_id is None and build_new:
        batch_id = build(db, chain_id, chain.address, settings.settlement_payout_minimum, lease=lease)
    if batch_id is None:
        return None
    return drive(
        db,
        chain,
        operator,
        batch_id,
        policy_of(settings),
        start_block=settings.settlement_start_block,
        lease=lease,
    )


def counts_for_metrics(session: Session, chain_id: int) -> tuple[dict[str, int], dict[str, int]]:
    """(payout batches by state, deposits by state) on the chain: the metrics' settlement gauges."""
    from registry_server.settlement.models import Deposit

    batch_rows = session.execute(
        select(PayoutBatch.state, func.count())
        .where(PayoutBatch.chain_id == chain_id)
        .group_by(PayoutBatch.state)
    )
    deposit_rows = session.execute(
        select(Deposit.state, func.count()).where(Deposit.chain_id == chain_id).group_by(Deposit.state)
    )
    return {str(k): int(v) for k, v in batch_rows}, {str(k): int(v) for k, v in deposit_rows}
