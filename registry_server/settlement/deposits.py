"""Deposits on chain, credited to the ledger once they are confirmed, exactly once.

`scan` reads the contract's `Deposited` logs from the block after the cursor up to the head (at most
`max_range` blocks a call) and keeps each as `seen`, with its block's hash. A seen deposit in a block
with at least `confirmations` confirmations (the block itself counts as one) is credited: its block's
hash is checked against the chain as it is now, and the ledger moves the amount from `chain:deposits`
to the account's available balance under the key "deposit:{chain_id}:{tx_hash}:{log_index}", so two
scanners, or one scanning twice, credit it once.

A seen deposit whose block was replaced (another hash at that height, or the height is past the head)
is `dropped` and never credited; when the same log shows up again in the new chain it is seen again,
with the new block. A replaced cursor block moves the cursor back `confirmations` blocks (no deeper
reorganisation is assumed: a deeper one would undo credited deposits, which confirmations exist to
rule out) and those blocks are read again. A deposit naming no account here is kept as
`unknown-account` and logged, never credited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from registry_server.accounts.models import Account
from registry_server.billing import ledger, service
from registry_server.db import Database
from registry_server.settlement.chain import DepositLog, SettlementChain
from registry_server.settlement.models import CREDITED, DROPPED, SEEN, UNKNOWN_ACCOUNT, Cursor, Deposit

log = logging.getLogger("registry_server.settlement")

MAX_RANGE = 2000  # blocks per eth_getLogs: public nodes refuse wider ranges
MAX_AMOUNT = 2**63 - 1  # what a BigInteger column holds


@dataclass
class Scanned:
    head: int
    scanned_to: int  # the cursor after this call
    seen: int = 0  # logs read and stored (new, or seen again in a new block)
    credited: list[str] = field(default_factory=list)  # ledger keys posted by this call
    dropped: list[str] = field(default_factory=list)  # ledger keys their credit would have had
    unknown: list[str] = field(default_factory=list)  # same, for deposits naming no account
    rewound_to: int | None = None  # the cursor moved back to this block: a reorganisation

    @property
    def caught_up(self) -> bool:
        return self.scanned_to >= self.head


def ledger_key(chain_id: int, tx_hash: str, log_index: int) -> str:
    return f"deposit:{chain_id}:{tx_hash}:{log_index}"


def scan(
    db: Database,
    chain: SettlementChain,
    confirmations: int,
    *,
    start_block: int = 0,
    max_range: int = MAX_RANGE,
    at_us: int | None = None,
) -> Scanned:
    """One step of the watcher: notice reorganisations, read new logs, credit confirmed deposits.
    A chain never scanned before is read from `start_block` (the contract's deployment block)."""
    chain_id = chain.chain_id
    at = service.now_us() if at_us is None else at_us
    head = chain.head()
    hashes: dict[int, str | None] = {}

    def hash_at(number: int) -> str | None:
        if number not in hashes:
            hashes[number] = chain.block_hash(number)
        return hashes[number]

    with db.session() as session:
        cursor = session.get(Cursor, chain_id)
        last = cursor.block if cursor is not None else start_block - 1
        last_hash = cursor.block_hash if cursor is not None else ""
        seen = _seen(session, chain_id)
    result = Scanned(head=head, scanned_to=last)
    fork = last
    if cursor is not None and last >= start_block and hash_at(last) != last_hash:
        fork = max(start_block - 1, min(last, head) - confirmations)
    gone = [d for d in seen if hash_at(d.block_number) != d.block_hash]
    if gone:
        fork = max(start_block - 1, min(fork, min(d.block_number for d in gone) - 1))
        with db.session() as session:
            _drop(session, [d.id for d in gone], at)
        result.dropped += [ledger_key(chain_id, d.tx_hash, d.log_index) for d in gone]
        for d in gone:
            log.warning(
                "a deposit's block was reorganised away before it was confirmed; it is not credited",
                extra={"tx": d.tx_hash, "log_index": d.log_index, "block": d.block_number},
            )
    if fork < last:
        result.rewound_to = fork
        log.warning("the settlement chain reorganised; scanning again", extra={"from_block": fork + 1})

    start = fork + 1
    end = min(head, start + max_range - 1)
    if start <= end:
        # The end block's hash is read before its logs: a reorganisation after this read changes it,
        # and the next scan notices and reads these blocks again.
        end_hash = hash_at(end)
        logs = chain.deposits(start, end)
        with db.session() as session:
            result.seen = _store(session, chain_id, logs, at)
            _move_cursor(session, chain_id, end, end_hash or "")
        result.scanned_to = end
    elif fork < last:
        with db.session() as session:
            _move_cursor(session, chain_id, fork, (hash_at(fork) or "") if fork >= 0 else "")
        result.scanned_to = fork

    _credit_confirmed(db, chain_id, head - confirmations + 1, hash_at, at, result)
    return result


def _seen(session: Session, chain_id: int) -> list[Deposit]:
    rows = session.scalars(select(Deposit).where(Deposit.chain_id == chain_id, Deposit.state == SEEN))
    out = list(rows)
    session.expunge_all()
    return out


def _drop(session: Session, ids: Sequence[int], at_us: int) -> None:
    session.execute(
        update(Deposit)
        .where(Deposit.id.in_(ids), Deposit.state == SEEN)
        .values(state=DROPPED, settled_us=at_us)
    )


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _store(session: Session, chain_id: int, logs: Sequence[DepositLog], at_us: int) -> int:
    stored = 0
    for item in logs:
        if not 0 < item.amount <= MAX_AMOUNT:
            log.error(
                "a deposit's amount is out of range and is not recorded",
                extra={"tx": item.tx_hash, "log_index": item.log_index, "amount": str(item.amount)},
            )
            continue
        row = session.scalar(
            select(Deposit).where(
                Deposit.chain_id == chain_id,
                Deposit.tx_hash == item.tx_hash,
                Deposit.log_index == item.log_index,
            )
        )
        if row is None:
            values = {
                "chain_id": chain_id,
                "tx_hash": item.tx_hash,
                "log_index": item.log_index,
                "sender": item.sender,
                "account": item.account[:200],
                "account_id": _account_id(session, item.account),
                "amount": item.amount,
                "block_number": item.block_number,
                "block_hash": item.block_hash,
                "state": SEEN,
                "seen_us": at_us,
            }
            # Another scanner may store the same log at the same time: the first one's row stands.
            statement = _insert(session)(Deposit).on_conflict_do_nothing(
                index_elements=["chain_id", "tx_hash", "log_index"]
            )
            session.execute(statement, [values])
            stored += 1
        elif row.state in (SEEN, DROPPED):
            if row.state == DROPPED or row.block_hash != item.block_hash:
                row.state, row.settled_us = SEEN, None
                row.block_number, row.block_hash = item.block_number, item.block_hash
                stored += 1
        elif row.block_hash != item.block_hash:
            log.error(
                "a deposit already settled moved to another block: a reorganisation deeper than "
                "settlement_confirmations",
                extra={"tx": item.tx_hash, "log_index": item.log_index, "state": row.state},
            )
    return stored


def _move_cursor(session: Session, chain_id: int, block: int, block_hash: str) -> None:
    cursor = session.get(Cursor, chain_id)
    if cursor is None:
        session.add(Cursor(chain_id=chain_id, block=block, block_hash=block_hash))
    else:
        cursor.block, cursor.block_hash = block, block_hash


def _account_id(session: Session, name: str) -> int | None:
    return session.scalar(select(Account.id).where(Account.name == name))


def _credit_confirmed(
    db: Database,
    chain_id: int,
    last_confirmed: int,
    hash_at: Callable[[int], str | None],
    at_us: int,
    result: Scanned,
) -> None:
    if last_confirmed < 0:
        return
    with db.session() as session:
        due = session.execute(
            select(Deposit.id, Deposit.block_number)
            .where(
                Deposit.chain_id == chain_id,
                Deposit.state == SEEN,
                Deposit.block_number <= last_confirmed,
            )
            .order_by(Deposit.block_number, Deposit.log_index)
        ).all()
    if not due:
        return
    # The chain is asked outside the database transaction; the rows are read again under a lock.
    current = {number: hash_at(number) for _id, number in due}
    with db.session() as session:
        for deposit_id, _number in due:
            # Another scanner may have settled it since.
            row = session.scalar(select(Deposit).where(Deposit.id == deposit_id).with_for_update())
            if row is None or row.state != SEEN:
                continue
            key = ledger_key(chain_id, row.tx_hash, row.log_index)
            if current[row.block_number] != row.block_hash:
                row.state, row.settled_us = DROPPED, at_us
                result.dropped.append(key)
                continue
            if row.account_id is None:
                row.account_id = _account_id(session, row.account)
            if row.account_id is None:
                row.state, row.settled_us = UNKNOWN_ACCOUNT, at_us
                result.unknown.append(key)
                log.warning(
                    "a confirmed deposit names no account on this registry; it is kept, not credited",
                    extra={"account": row.account, "tx": row.tx_hash, "amount": row.amount},
                )
                continue
            txn = ledger.transfer(
                key,
                "deposit",
                ledger.CHAIN_DEPOSITS,
                ledger.consumer_available(row.account_id),
                row.amount,
                f"from {row.sender} in {row.tx_hash}",
            )
            if service.post(session, txn, at_us):
                result.credited.append(key)
            row.state, row.ledger_key, row.settled_us = CREDITED, key, at_us
    for key in result.credited:
        log.info("credited a deposit", extra={"key": key})


def deposits_of(session: Session, chain_id: int, state: str | None = None) -> list[Deposit]:
    """Deposits on `chain_id`, in chain order; only those in `state` when given (e.g. unknown-account)."""
    query = select(Deposit).where(Deposit.chain_id == chain_id)
    if state is not None:
        query = query.where(Deposit.state == state)
    return list(session.scalars(query.order_by(Deposit.block_number, Deposit.log_index)))
