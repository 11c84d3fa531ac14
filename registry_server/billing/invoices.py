"""Invoices and credit notes: a consumer's month as a live draft, then finalized once, numbered in
one registry-wide sequence without gaps, never edited afterwards (a correction is a credit note).

What an invoice records. Every charge was already paid from the balance when it was made (calls
from holds, subscription months when charged), so an invoice is the month's record of what was
charged, marked paid from the balance with nothing due. Its lines group the month's charges (the
seq-0 rows of billing_charges, by `started_us`) by agent, tool and plan; a charge refunded before the
month was closed appears again as a negative "refund" line, one refunded later gets a credit note.

Closing once. Numbers are handed out under one lock held to the end of the closing transaction:
PostgreSQL's transaction-scoped advisory lock, SQLite's write lock (every write transaction starts
with BEGIN IMMEDIATE). Under it a closer reads which invoices exist and takes max(number) + 1, so
two closers racing (threads, processes, registries on one PostgreSQL) take turns: the second finds
the first's invoices and adds none. The unique (account, period, kind) constraint and the number
being the primary key refuse anything that would slip past. A rolled-back closer used no number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from mcpz.errors import NotFoundError, UsageError
from registry_server.billing.models import Charge, Invoice
from registry_server.billing.service import month_of, next_month_start_us, now_us

INVOICE = "invoice"
CREDIT_NOTE = "credit-note"
DRAFT = "draft"
NUMBERS_LOCK = 0x6D63707A_0001  # "mcpz" and 1: the advisory lock that guards invoice numbers
REFUND_PREFIX = "refund:"
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def period_bounds(period: str) -> tuple[int, int]:
    """The month `YYYY-MM` as [start, end) in Unix microseconds (UTC)."""
    if not _PERIOD.match(period):
        raise UsageError(f'"{period}" is not a month: write it as YYYY-MM, e.g. 2026-11')
    year, month = int(period[:4]), int(period[5:])
    start = int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1_000_000
    return start, next_month_start_us(start)


def previous_period(at_us: int) -> str:
    start, _ = period_bounds(month_of(at_us))
    return month_of(start - 1)


@dataclass(frozen=True)
class Line:
    kind: str  # "charge" or "refund"
    agent: str
    tool: str  # "" for a subscription's monthly fee
    plan: str
    calls: int
    amount: int  # negative on a refund
    event: str = ""  # a credit note's refunded charge

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "agent": self.agent,
            "tool": self.tool,
            "plan": self.plan,
            "calls": self.calls,
            "amount": self.amount,
        }
        if self.event:
            out["event"] = self.event
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Line:
        return cls(
            data["kind"],
            data["agent"],
            data["tool"],
            data["plan"],
            int(data["calls"]),
            int(data["amount"]),
            data.get("event", ""),
        )


@dataclass(frozen=True)
class InvoiceView:
    """An invoice, credit note or draft as the API, the CLI and the web page show it."""

    number: int | None  # None: a draft
    kind: str
    account_id: int
    period: str  # the month it covers (a credit note: the month of the invoice it corrects)
    total: int
    lines: list[Line] = field(default_factory=list)
    finalized_us: int | None = None
    refers_to: int | None = None

    @property
    def calls(self) -> int:
        return sum(line.calls for line in self.lines if line.kind == "charge")

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "kind": self.kind,
            "status": DRAFT if self.number is None else "final",
            "period": self.period,
            "total": self.total,
            "lines": [line.to_dict() for line in self.lines],
            "finalized_us": self.finalized_us,
            "refers_to": self.refers_to,
            # Charges are paid from the balance as they happen: an invoice records, it asks nothing.
            "paid": True,
            "paid_from": "balance",
            "amount_due": 0,
        }


def lock_numbers(session: Session) -> None:
    """Hold the invoice-number lock until this transaction ends (see the module's docstring)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": NUMBERS_LOCK})


def next_number(session: Session) -> int:
    """The next number, under `lock_numbers`: numbers are used in order and never skipped."""
    return int(session.scalar(select(func.coalesce(func.max(Invoice.number), 0))) or 0) + 1


def month_lines(session: Session, account_id: int, period: str) -> list[Line]:
    """An account's charges in `period` by agent, tool and plan, then what was refunded of them."""
    start, end = period_bounds(period)
    c = Charge
    where = (c.consumer_id == account_id, c.seq == 0, c.started_us >= start, c.started_us < end)
    group = (c.agent, c.tool, c.plan)
    charged = session.execute(
        select(*group, func.count(), func.coalesce(func.sum(c.price), 0))
        .where(*where)
        .group_by(*group)
        .order_by(*group)
    ).all()
    refunded = session.execute(
        select(*group, func.count(), func.coalesce(func.sum(c.price), 0))
        .where(*where, c.settled.like(f"{REFUND_PREFIX}%"))
        .group_by(*group)
        .order_by(*group)
    ).all()
    lines = [Line("charge", a, t, p, int(n), int(v)) for a, t, p, n, v in charged]
    lines += [Line("refund", a, t, p, -int(n), -int(v)) for a, t, p, n, v in refunded]
    return lines


def draft(session: Session, account_id: int, at_us: int | None = None) -> InvoiceView:
    """The current month so far: what its invoice would say if the month ended now."""
    period = month_of(now_us() if at_us is None else at_us)
    lines = month_lines(session, account_id, period)
    return InvoiceView(None, DRAFT, account_id, period, sum(line.amount for line in lines), lines)


def _check_closed(period: str, at_us: int) -> None:
    if period >= month_of(at_us):
        raise UsageError(
            f"{period} is not over yet: only a past month can be closed",
            hint="see the running month with `mcpz billing invoice draft`",
        )


def close_period(session: Session, period: str, at_us: int | None = None) -> list[int]:
    """Finalize the invoice of every account with charges in `period` (a past month) that has none
    yet; returns the new invoices' numbers. Closing again adds nothing."""
    at = now_us() if at_us is None else at_us
    start, end = period_bounds(period)
    _check_closed(period, at)
    lock_numbers(session)
    c = Charge
    charged = set(
        session.scalars(
            select(c.consumer_id)
            # consumer 0: anonymous x402 payers, whose receipt is their transaction on chain
            .where(c.seq == 0, c.started_us >= start, c.started_us < end, c.consumer_id > 0)
            .group_by(c.consumer_id)
        )
    )
    invoiced = set(
        session.scalars(select(Invoice.account_id).where(Invoice.period == period, Invoice.kind == INVOICE))
    )
    numbers: list[int] = []
    number = next_number(session)
    for account_id in sorted(charged - invoiced):
        lines = month_lines(session, account_id, period)
        session.add(
            Invoice(
                number=number,
                kind=INVOICE,
                account_id=account_id,
                period=period,
                total=sum(line.amount for line in lines),
                lines=json.dumps([line.to_dict() for line in lines], sort_keys=True),
                finalized_us=at,
                refers_to=None,
            )
        )
        numbers.append(number)
        number += 1
    session.flush()
    return numbers


def invoice_of_month(session: Session, account_id: int, period: str) -> Invoice | None:
    return session.scalar(
        select(Invoice).where(
            Invoice.account_id == account_id, Invoice.period == period, Invoice.kind == INVOICE
        )
    )


def issue_credit_note(session: Session, invoice: Invoice, line: Line, at_us: int) -> int:
    """A numbered credit note against a finalized invoice; the caller holds `lock_numbers`.

    Its `period` column holds its own number: the unique (account, period, kind) constraint then
    allows any number of credit notes per month, and the month it corrects is its invoice's."""
    number = next_number(session)
    session.add(
        Invoice(
            number=number,
            kind=CREDIT_NOTE,
            account_id=invoice.account_id,
            period=str(number),
            total=line.amount,
            lines=json.dumps([line.to_dict()], sort_keys=True),
            finalized_us=at_us,
            refers_to=invoice.number,
        )
    )
    session.flush()
    return number


def _view(session: Session, row: Invoice) -> InvoiceView:
    period = row.period
    if row.kind == CREDIT_NOTE and row.refers_to is not None:
        period = session.scalar(select(Invoice.period).where(Invoice.number == row.refers_to)) or ""
    lines = [Line.from_dict(d) for d in json.loads(row.lines)]
    return InvoiceView(
        row.number, row.kind, row.account_id, period, row.total, lines, row.finalized_us, row.refers_to
    )


def invoices_of(session: Session, account_id: int, limit: int = 100) -> list[InvoiceView]:
    """An account's invoices and credit notes, newest first."""
    rows = session.scalars(
        select(Invoice).where(Invoice.account_id == account_id).order_by(Invoice.number.desc()).limit(limit)
    ).all()
    return [_view(session, row) for row in rows]


def invoice_by_number(session: Session, account_id: int, number: int) -> InvoiceView:
    """The account's own invoice or credit note `number`; another account's is not found alike, so
    numbers reveal nothing about other accounts."""
    row = session.get(Invoice, number)
    if row is None or row.account_id != account_id:
        raise NotFoundError(f"you have no invoice {number}", hint="see `mcpz billing invoices`")
    return _view(session, row)


def all_numbers(session: Session) -> list[int]:
    return list(session.scalars(select(Invoice.number).order_by(Invoice.number)))
