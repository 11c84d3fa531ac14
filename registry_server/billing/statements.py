"""A creator's monthly statement: earnings per agent and tool, the platform's fees on them, refunds
and payouts.

Fees. A charge's platform fee is stored once (on its seq-0 row); when the creators' share is split
among several accounts, each is shown the fee pro rata to its earning: fee x earning / (price - fee),
rounded down per charge. With one creator (no split) that is the charge's whole fee, exactly.
Refunds are the charges of the month that were refunded (settled by a `refund:` transaction); net
is earnings minus refunds. Payouts are none yet: on-chain settlement comes with its own issue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, aliased

from registry_server.billing.invoices import REFUND_PREFIX, period_bounds
from registry_server.billing.models import Charge

PAYOUTS_NOTE = "payouts: none (on-chain settlement not yet available)"


@dataclass(frozen=True)
class StatementLine:
    agent: str
    tool: str
    plan: str
    calls: int
    earnings: int
    fees: int
    refunds: int  # what was refunded of these earnings (positive)

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "tool": self.tool,
            "plan": self.plan,
            "calls": self.calls,
            "earnings": self.earnings,
            "fees": self.fees,
            "refunds": self.refunds,
            "net": self.earnings - self.refunds,
        }


@dataclass(frozen=True)
class Statement:
    account_id: int
    period: str
    lines: list[StatementLine] = field(default_factory=list)

    @property
    def earnings(self) -> int:
        return sum(line.earnings for line in self.lines)

    @property
    def fees(self) -> int:
        return sum(line.fees for line in self.lines)

    @property
    def refunds(self) -> int:
        return sum(line.refunds for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "lines": [line.to_dict() for line in self.lines],
            "earnings": self.earnings,
            "fees": self.fees,
            "refunds": self.refunds,
            "net": self.earnings - self.refunds,
            "payouts": 0,
            "payouts_note": PAYOUTS_NOTE,
        }


def statement(session: Session, account_id: int, period: str) -> Statement:
    start, end = period_bounds(period)
    mine = aliased(Charge)
    head = aliased(Charge)  # the charge's seq-0 row: its price and fee
    share = mine.earning
    fee = func.coalesce((head.fee * share) // func.nullif(head.price - head.fee, 0), 0)
    refunded = case((mine.settled.like(f"{REFUND_PREFIX}%"), share), else_=0)
    group = (mine.agent, mine.tool, mine.plan)
    rows = session.execute(
        select(*group, func.count(), func.sum(share), func.sum(fee), func.sum(refunded))
        .join(head, (head.event_id == mine.event_id) & (head.seq == 0))
        .where(mine.creator_id == account_id, mine.started_us >= start, mine.started_us < end)
        .group_by(*group)
        .order_by(*group)
    ).all()
    return Statement(
        account_id,
        period,
        [
            StatementLine(a, t, p, int(n), int(e or 0), int(f or 0), int(r or 0))
            for a, t, p, n, e, f, r in rows
        ],
    )
