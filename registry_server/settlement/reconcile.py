"""The ledger against the chain: what `mcpz registry payouts reconcile` reports.

Each row puts a figure the registry's books give beside the same figure read from the contract's
events, up to the last confirmed block; a healthy registry shows zero difference on every row:

- deposits: what the ledger credited from chain:deposits, plus confirmed deposits kept unclaimed
  (naming no account here), against the `Deposited` events;
- payouts committed: the totals of the batches whose commit is mined, against the
  `BatchCommitted` events (and chain:payouts and settlement:payouts must equal the final and the
  open batches' totals);
- withdrawals: chain:withdrawals against the `Withdrawn` events;
- x402 payments: what the ledger took from chain:x402 against the token's transfers into the contract
  made by an EIP-3009 authorization (x402's settlements: the token's `Transfer` to the contract with
  `AuthorizationUsed` in the same transaction), up to the head (the ledger posts them once mined).

Batch by batch, the root and total the contract holds are checked against ours, and a batch id on
chain that we have no record of is reported. Money still in flight (a batch built and not yet mined)
is shown, not counted as a difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from registry_server.billing import ledger, service
from registry_server.db import Database
from registry_server.settlement.chain import SettlementChain
from registry_server.settlement.deposits import MAX_RANGE
from registry_server.settlement.models import CREDITED, UNKNOWN_ACCOUNT, Deposit, PayoutBatch


@dataclass(frozen=True)
class Row:
    what: str
    ledger: int
    chain: int

    @property
    def difference(self) -> int:
        return self.ledger - self.chain


@dataclass
class Report:
    chain_id: int
    to_block: int
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    in_flight: int = 0  # built batches not mined yet: in settlement:payouts, not on chain
    claimed: int = 0  # paid out to creators on chain, of the committed total

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.difference == 0 for r in self.rows)


def _events(chain: SettlementChain, event: str, amount: str, start: int, end: int) -> int:
    total = 0
    for lo in range(start, end + 1, MAX_RANGE):
        total += chain.event_totals(event, amount, lo, min(end, lo + MAX_RANGE - 1))
    return total


def reconcile(db: Database, chain: SettlementChain, confirmations: int, start_block: int = 0) -> Report:
    chain_id = chain.chain_id
    to_block = chain.head() - confirmations + 1
    report = Report(chain_id=chain_id, to_block=to_block)
    if to_block < start_block:
        return report
    with db.session() as session:
        balances = service.balances(
            session,
            [
                ledger.CHAIN_DEPOSITS,
                ledger.CHAIN_PAYOUTS,
                ledger.SETTLEMENT_PAYOUTS,
                ledger.CHAIN_WITHDRAWALS,
                ledger.CHAIN_X402,
            ],
        )
        unknown = session.scalar(
            select(func.coalesce(func.sum(Deposit.amount), 0)).where(
                Deposit.chain_id == chain_id, Deposit.state == UNKNOWN_ACCOUNT
            )
        )
        credited_rows = session.scalar(
            select(func.coalesce(func.sum(Deposit.amount), 0)).where(
                Deposit.chain_id == chain_id, Deposit.state == CREDITED
            )
        )
        batches = list(session.scalars(select(PayoutBatch).where(PayoutBatch.chain_id == chain_id)))
    credited = -balances.get(ledger.CHAIN_DEPOSITS, 0)
    if credited != int(credited_rows or 0):
        report.problems.append(
            f"the ledger credited {credited} from chain:deposits, the deposit records say {credited_rows}"
        )
    deposited = _events(chain, "Deposited", "amount", start_block, to_block)
    report.rows.append(Row("deposits", credited + int(unknown or 0), deposited))

    mined = [b for b in batches if b.receipt_block is not None and b.receipt_block <= to_block]
    report.in_flight = sum(b.total for b in batches if b.receipt_block is None)
    committed = chain.commits(start_block, to_block) if to_block >= start_block else []
    report.rows.append(Row("payouts committed", sum(b.total for b in mined), sum(c.total for c in committed)))
    final_total = sum(b.total for b in batches if b.state == "final")
    open_total = sum(b.total for b in batches if b.state != "final")
    for account, expected in ((ledger.CHAIN_PAYOUTS, final_total), (ledger.SETTLEMENT_PAYOUTS, open_total)):
        if balances.get(account, 0) != expected:
            report.problems.append(
                f"{account} holds {balances.get(account, 0)} and the batches say {expected}"
            )
    withdrawn = _events(chain, "Withdrawn", "amount", start_block, to_block)
    report.rows.append(Row("withdrawals", balances.get(ledger.CHAIN_WITHDRAWALS, 0), withdrawn))
    report.claimed = _events(chain, "Claimed", "amount", start_block, to_block)
    # To the head, not the last confirmed block: the gateway posts a payment once its transfer is
    # mined, so a reorganisation that drops one is a difference to see, not money in flight.
    x402_in, head = 0, to_block + confirmations - 1
    for lo in range(start_block, head + 1, MAX_RANGE):
        x402_in += chain.x402_transfers(lo, min(head, lo + MAX_RANGE - 1))
    report.rows.append(Row("x402 payments", -balances.get(ledger.CHAIN_X402, 0), x402_in))

    ours = {b.batch_id: b for b in batches}
    for c in committed:
        mine = ours.get(c.batch_id)
        if mine is None:
            report.problems.append(f"batch {c.batch_id} is committed on chain and unknown to this registry")
        elif mine.root.lower() != c.root.lower() or mine.total != c.total:
            report.problems.append(f"batch {c.batch_id} holds another root or total on chain than ours")
    for b in mined:
        held = chain.batch(b.batch_id)
        if not held.committed:
            report.problems.append(
                f"batch {b.batch_id} is recorded as mined and the contract does not hold it"
            )
    return report
