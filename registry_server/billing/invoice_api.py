"""What `/v1/billing/invoices...` and `/v1/billing/statement` answer, and the database reads behind
them, kept out of routes.py (which only checks the caller and calls these)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from registry_server.billing import invoices, statements
from registry_server.billing.service import month_of, now_us
from registry_server.state import RegistryState

MAX_INVOICES = 1000


class Currency(BaseModel):
    currency: str
    decimals: int


class InvoiceLineOut(BaseModel):
    kind: str = Field(description='"charge", or "refund" (negative)')
    agent: str
    tool: str = Field(description='"" for a subscription\'s monthly fee')
    plan: str
    calls: int
    amount: int
    event: str = Field(default="", description="A credit note's refunded charge")


class InvoiceSummaryOut(BaseModel):
    number: int
    kind: str = Field(description='"invoice" or "credit-note"')
    period: str = Field(description="YYYY-MM: the month it covers (a credit note: its invoice's)")
    total: int
    finalized_us: int
    refers_to: int | None = Field(description="A credit note's invoice")


class InvoiceListOut(Currency):
    invoices: list[InvoiceSummaryOut]


class InvoiceOut(Currency):
    number: int | None = Field(description="None on the draft")
    kind: str = Field(description='"invoice", "credit-note" or "draft"')
    status: str = Field(description='"draft" or "final"')
    account: str
    period: str
    total: int
    lines: list[InvoiceLineOut]
    finalized_us: int | None
    refers_to: int | None
    paid: bool = Field(description="Charges are paid from the balance as they happen")
    paid_from: str
    amount_due: int


class StatementLineOut(BaseModel):
    agent: str
    tool: str
    plan: str
    calls: int
    earnings: int
    fees: int = Field(description="The platform's fee on these charges, pro rata to this account's share")
    refunds: int
    net: int


class StatementOut(Currency):
    account: str
    period: str
    lines: list[StatementLineOut]
    earnings: int
    fees: int
    refunds: int
    net: int
    payouts: int
    payouts_note: str


def _currency(state: RegistryState) -> Currency:
    return Currency(currency=state.settings.currency, decimals=state.settings.currency_decimals)


def _out(state: RegistryState, view: invoices.InvoiceView, account: str) -> InvoiceOut:
    return InvoiceOut(**_currency(state).model_dump(), account=account, **view.to_dict())


def list_invoices(state: RegistryState, account_id: int, limit: int = MAX_INVOICES) -> InvoiceListOut:
    with state.db.session() as session:
        views = invoices.invoices_of(session, account_id, limit)
    return InvoiceListOut(
        **_currency(state).model_dump(),
        invoices=[
            InvoiceSummaryOut(
                number=v.number or 0,
                kind=v.kind,
                period=v.period,
                total=v.total,
                finalized_us=v.finalized_us or 0,
                refers_to=v.refers_to,
            )
            for v in views
        ],
    )


def one_invoice(state: RegistryState, account_id: int, account: str, number: int) -> InvoiceOut:
    with state.db.session() as session:
        view = invoices.invoice_by_number(session, account_id, number)
    return _out(state, view, account)


def draft_invoice(state: RegistryState, account_id: int, account: str) -> InvoiceOut:
    with state.db.session() as session:
        view = invoices.draft(session, account_id)
    return _out(state, view, account)


def creator_statement(
    state: RegistryState, account_id: int, account: str, period: str | None
) -> StatementOut:
    month = period or month_of(now_us())
    with state.db.session() as session:
        found = statements.statement(session, account_id, month)
    return StatementOut(**_currency(state).model_dump(), account=account, **found.to_dict())
