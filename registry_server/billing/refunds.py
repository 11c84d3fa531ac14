"""Refunding one charge while its earnings are still pending (inside the refund window).

A refund reverses the charge in one ledger transaction `refund:{event}` (the consumer's available
balance gets the price back, the platform its fee, each creator their pending earning), marks the
charge's rows settled by it, and, when the charge's month already has a finalized invoice, issues a
credit note against that invoice. The charge's rows are claimed with one UPDATE where `settled` is
NULL, so a refund racing earnings maturing (which claims the same rows) cannot both happen.
Refunding again answers what the first refund did.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from mcpz.errors import NotFoundError, UsageError
from registry_server.billing import ledger
from registry_server.billing.invoices import (
    CREDIT_NOTE,
    REFUND_PREFIX,
    Line,
    invoice_of_month,
    issue_credit_note,
    lock_numbers,
)
from registry_server.billing.models import Charge, Invoice
from registry_server.billing.service import month_of, now_us, post


@dataclass(frozen=True)
class Refund:
    event: str
    account_id: int
    amount: int
    new: bool  # False: refunded before, nothing changed now
    credit_note: int | None  # its number, when the month was already invoiced

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "account_id": self.account_id,
            "amount": self.amount,
            "new": self.new,
            "credit_note": self.credit_note,
        }


def refund(
    session: Session, event: str, window_us: int, *, reason: str = "", at_us: int | None = None
) -> Refund:
    at = now_us() if at_us is None else at_us
    key = f"{REFUND_PREFIX}{event}"
    rows = session.scalars(select(Charge).where(Charge.event_id == event).order_by(Charge.seq)).all()
    if not rows:
        raise NotFoundError(
            f"no charge {event}", hint="charges' event ids are in `mcpz billing usage --json`"
        )
    first = rows[0]
    if all(row.settled == key for row in rows):
        return Refund(event, first.consumer_id, first.price, False, _credit_note_for(session, event))
    if any(row.settled is not None for row in rows) or first.started_us < at - window_us:
        raise UsageError(
            f"charge {event} is past the refund window: its earnings were released to its creators",
            hint="a refund is only possible while the creators' earnings of it are pending",
        )
    lock_numbers(session)  # taken before the month's invoice is looked at: a closer waits for us
    table: Table = Charge.__table__  # type: ignore[assignment]
    claimed = session.execute(
        update(table)
        .where(table.c.event_id == event, table.c.settled.is_(None))
        .values(settled=key)
        .returning(table.c.seq)
    ).all()
    if len(claimed) != len(rows):  # earnings matured between our read and our claim
        raise UsageError(f"charge {event} just passed the refund window; it can no longer be refunded")
    legs: dict[str, int] = defaultdict(int)
    legs[ledger.consumer_available(first.consumer_id)] += first.price
    legs[ledger.PLATFORM_FEES] -= first.fee
    for row in rows:
        legs[ledger.creator_pending(row.creator_id)] -= row.earning
    if first.price:
        post(session, ledger.transaction(key, "refund", legs.items(), reason or f"refund of {event}"), at)
    note = None
    invoice = invoice_of_month(session, first.consumer_id, month_of(first.started_us))
    if invoice is not None:
        line = Line("refund", first.agent, first.tool, first.plan, -1, -first.price, event)
        note = issue_credit_note(session, invoice, line, at)
    return Refund(event, first.consumer_id, first.price, True, note)


def _credit_note_for(session: Session, event: str) -> int | None:
    number = session.scalar(
        select(Invoice.number)
        .where(Invoice.kind == CREDIT_NOTE, Invoice.lines.contains(f'"event": "{event}"', autoescape=True))
        .order_by(Invoice.number)
        .limit(1)
    )
    return None if number is None else int(number)
