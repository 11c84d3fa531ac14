"""`/v1/billing/...`: prices, splits, subscriptions, balances, usage with amounts, spend caps, and
the public key that signs receipts.

Amounts are integers in the settlement token's base units (`currency`, `decimals` say which).
Reading a listing's prices needs no token; everything else is the caller's own account: scope
`read` (or `call`) to look, `call` to subscribe, `admin` to change spend caps (a key that may only
call cannot lift its own cap), and the namespace's owner with scope `publish` to price an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from mcpz.instants import parse_instant
from registry_server.accounts.auth import Forbidden, require
from registry_server.accounts.http import Caller
from registry_server.accounts.namespaces import find_account, role_of
from registry_server.accounts.service import Principal, names_of
from registry_server.billing import service
from registry_server.billing.gate import BillingGate
from registry_server.billing.models import Subscription
from registry_server.billing.pricing import Pricing
from registry_server.billing.receipt_key import ReceiptSigner
from registry_server.billing.worker import BillingWorker
from registry_server.http import State, agent_name, checked_agent_name
from registry_server.openapi import PART_PATTERN, errors
from registry_server.orm import utcnow
from registry_server.state import RegistryState
from registry_server.usage.service import UsageRecorder

router = APIRouter(tags=["billing"])

NamespacePart = Annotated[str, Path(pattern=PART_PATTERN, max_length=64)]
CATCH_UP = 3.0
"""Seconds a balance or usage query waits for calls just made to be written and rated, at most."""
MAX_USAGE = 1000

Amount = Annotated[int, Field(ge=0, le=10**30)]


class Money(BaseModel):
    currency: str
    decimals: int


class PricingIn(BaseModel):
    """A listing's whole pricing. Amounts in base units; omit a plan to not offer it."""

    per_call: Amount | None = None
    tools: dict[str, Amount] = Field(default_factory=dict, max_length=256)
    monthly_fee: Amount | None = None
    included: Annotated[int, Field(ge=0, le=10**12)] = 0
    overage: Amount | None = None
    free_calls: Annotated[int, Field(ge=0, le=10**12)] = 0
    charge_tool_errors: bool = False
    x402: bool = Field(False, description="Also take x402 payments per call, from anyone (docs/x402.md)")


class PricingOut(PricingIn):
    free: bool
    plans: list[str]


class PendingOut(PricingIn):
    effective_us: int = Field(description="When this pricing applies, Unix microseconds")


class ShareOut(BaseModel):
    account: str
    bps: int


class PlansOut(Money):
    agent: str
    current: PricingOut
    pending: list[PendingOut]
    platform_fee_bps: int
    notice_days: float
    splits: list[ShareOut]


class ShareIn(BaseModel):
    account: str = Field(max_length=64, description="An account name or wallet address")
    bps: Annotated[int, Field(ge=1, le=10_000)]


class SplitsIn(BaseModel):
    shares: list[ShareIn] = Field(min_length=1, max_length=32)


class SubscribeIn(BaseModel):
    agent: str = Field(max_length=129)
    plan: str = Field(max_length=16)


class SubscriptionOut(BaseModel):
    agent: str
    plan: str
    started_us: int
    paid_through: str


class EarningsOut(BaseModel):
    pending: int = Field(description="Inside the refund window")
    available: int = Field(description="Past it: ready for payout")


class BalanceOut(Money):
    account: str
    available: int
    reserved: int = Field(description="Held for calls in flight or not yet rated")
    earnings: EarningsOut


class CapIn(BaseModel):
    period: str = Field(pattern="^(day|month)$")
    amount: Amount
    agent: str = Field(default="", max_length=129)
    token_id: Annotated[int, Field(ge=0)] = 0


class CapOut(CapIn):
    id: int


class ChargeOut(BaseModel):
    event: str
    agent: str
    version: str
    tool: str
    plan: str
    started_us: int
    price: int
    fee: int


class UsageOut(Money):
    total: int
    calls: int
    charges: list[ChargeOut]


def _money(state: RegistryState) -> dict[str, Any]:
    return {"currency": state.settings.currency, "decimals": state.settings.currency_decimals}


def _pricing_out(pricing: Pricing) -> dict[str, Any]:
    return {**pricing.to_dict(), "free": pricing.free, "plans": pricing.plans()}


def _plans(state: RegistryState, agent: str) -> PlansOut:
    with state.db.session() as session:
        prices = service.prices_of(session, agent)
        shares = service.splits_of(session, [agent])[agent]
        names = names_of(session, [a for a, _ in shares])
    return PlansOut(
        **_money(state),
        agent=agent,
        current=PricingOut(**_pricing_out(prices.current)),
        pending=[PendingOut(effective_us=at, **p.to_dict()) for at, p in prices.pending],
        platform_fee_bps=state.settings.platform_fee_bps,
        notice_days=state.settings.price_notice_days,
        splits=[ShareOut(account=names.get(a, str(a)), bps=b) for a, b in shares],
    )


def _require_owner(state: RegistryState, principal: Principal | None, namespace: str) -> Principal:
    principal = require(principal, "publish", db=state.db)
    with state.db.session() as session:
        if role_of(session, principal.account_id, namespace) != "owner":
            raise Forbidden(f'only an owner of the namespace "{namespace}" sets its agents\' prices')
    return principal


def _reader(state: RegistryState, principal: Principal | None) -> Principal:
    return require(
        principal, "call" if principal is not None and principal.has("call") else "read", db=state.db
    )


def _gate(request: Request) -> BillingGate | None:
    return getattr(request.app.state, "billing_gate", None)


def _forget_account(request: Request, principal: Principal | None) -> None:
    """The caller's caps or subscriptions changed: the gateway looks again at its next call."""
    gate = _gate(request)
    if gate is not None and principal is not None:
        gate.forget_account(principal.account_id)


def _subscription_out(s: Subscription) -> SubscriptionOut:
    return SubscriptionOut(agent=s.agent, plan=s.plan, started_us=s.started_us, paid_through=s.paid_through)


async def _catch_up(request: Request) -> None:
    """Let calls made before this request be written and rated, so a caller sees its own charges."""
    recorder: UsageRecorder | None = getattr(request.app.state, "usage", None)
    worker: BillingWorker | None = getattr(request.app.state, "billing", None)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CATCH_UP):
            if recorder is not None:
                await asyncio.shield(recorder.flush())
            if worker is not None:
                await asyncio.shield(worker.rate())


@router.get("/v1/billing/plans/{namespace}/{name}", response_model=PlansOut, responses=errors(404, 422))
async def plans(state: State, namespace: NamespacePart, name: NamespacePart) -> PlansOut:
    """A listing's prices: the current pricing, a change waiting for its notice, the revenue split."""
    agent = agent_name(namespace, name)
    return await anyio.to_thread.run_sync(lambda: _plans(state, agent))


@router.put(
    "/v1/billing/plans/{namespace}/{name}", response_model=PlansOut, responses=errors(400, 401, 403, 404, 422)
)
async def set_plans(
    request: Request,
    state: State,
    principal: Caller,
    namespace: NamespacePart,
    name: NamespacePart,
    body: PricingIn,
) -> PlansOut:
    """Price an agent. A decrease applies at once; an increase or a new charge after the notice period."""
    agent = agent_name(namespace, name)

    def run() -> PlansOut:
        owner = _require_owner(state, principal, namespace)
        notice = int(state.settings.price_notice_days * service.DAY_US)
        with state.db.session() as session:
            service.set_prices(
                session, agent, Pricing.from_dict(body.model_dump()), by=owner.account_id, notice_us=notice
            )
        return _plans(state, agent)

    out = await anyio.to_thread.run_sync(run)
    gate = _gate(request)
    if gate is not None:
        gate.forget_prices(agent)
    state.agent_changed(agent)  # the marketplace shows prices
    return out


@router.put(
    "/v1/billing/splits/{namespace}/{name}",
    response_model=PlansOut,
    responses=errors(400, 401, 403, 404, 422),
)
async def set_splits(
    state: State, principal: Caller, namespace: NamespacePart, name: NamespacePart, body: SplitsIn
) -> PlansOut:
    """Divide the creators' share of every charge among accounts, in basis points summing to 10,000."""
    agent = agent_name(namespace, name)

    def run() -> PlansOut:
        _require_owner(state, principal, namespace)
        with state.db.session() as session:
            shares = [(find_account(session, s.account).id, s.bps) for s in body.shares]
            service.set_splits(session, agent, shares)
        return _plans(state, agent)

    return await anyio.to_thread.run_sync(run)


@router.get("/v1/billing/balance", response_model=BalanceOut, responses=errors(401, 403))
async def balance(request: Request, state: State, principal: Caller) -> BalanceOut:
    """The caller's balance and earnings, after the calls it made so far are rated."""
    who = await anyio.to_thread.run_sync(lambda: _reader(state, principal))
    await _catch_up(request)

    def run() -> service.Balance:
        with state.db.session() as session:
            return service.balance_of(session, who.account_id)

    found = await anyio.to_thread.run_sync(run)
    return BalanceOut(
        **_money(state),
        account=who.account_name,
        available=found.available,
        reserved=found.reserved,
        earnings=EarningsOut(pending=found.pending, available=found.earned),
    )


@router.get("/v1/billing/usage", response_model=UsageOut, responses=errors(400, 401, 403, 422))
async def usage(
    request: Request,
    state: State,
    principal: Caller,
    since: Annotated[str | None, Query(description="ISO 8601, Unix seconds, or an age (1h, 7d)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_USAGE)] = 100,
) -> UsageOut:
    """What the caller's calls cost: the total and count since `since` (default: this month), and the
    newest charges."""
    who = await anyio.to_thread.run_sync(lambda: _reader(state, principal))
    start = parse_instant(since, utcnow()) if since else None
    await _catch_up(request)
    since_us = round(start.timestamp() * 1e6) if start else service.month_start_us(service.now_us())

    def run() -> UsageOut:
        with state.db.session() as session:
            total, calls, rows = service.charges_of(session, who.account_id, since_us, limit)
        return UsageOut(
            **_money(state), total=total, calls=calls, charges=[ChargeOut.model_validate(r) for r in rows]
        )

    return await anyio.to_thread.run_sync(run)


@router.get("/v1/billing/subscriptions", response_model=list[SubscriptionOut], responses=errors(401, 403))
async def subscriptions(state: State, principal: Caller) -> list[SubscriptionOut]:
    def run() -> list[SubscriptionOut]:
        who = _reader(state, principal)
        with state.db.session() as session:
            rows = service.active_subscriptions(session, who.account_id)
            return [_subscription_out(s) for s in rows]

    return await anyio.to_thread.run_sync(run)


@router.post(
    "/v1/billing/subscriptions",
    response_model=SubscriptionOut,
    status_code=201,
    responses=errors(400, 401, 403, 404, 422),
)
async def subscribe(request: Request, state: State, principal: Caller, body: SubscribeIn) -> SubscriptionOut:
    """Subscribe to an agent's monthly plan: this month's fee is paid from the balance now."""
    agent = checked_agent_name(body.agent)

    def run() -> SubscriptionOut:
        who = require(principal, "call", db=state.db)
        with state.db.session() as session:
            s = service.subscribe(
                session, who.account_id, agent, body.plan, state.settings.platform_fee_bps, service.now_us()
            )
            return _subscription_out(s)

    out = await anyio.to_thread.run_sync(run)
    _forget_account(request, principal)
    return out


@router.delete(
    "/v1/billing/subscriptions/{namespace}/{name}",
    response_model=SubscriptionOut,
    responses=errors(401, 403, 404, 422),
)
async def unsubscribe(
    request: Request, state: State, principal: Caller, namespace: NamespacePart, name: NamespacePart
) -> SubscriptionOut:
    """End a subscription now (the month paid for is not refunded)."""
    agent = agent_name(namespace, name)

    def run() -> SubscriptionOut:
        who = require(principal, "call", db=state.db)
        with state.db.session() as session:
            s = service.unsubscribe(session, who.account_id, agent, service.now_us())
            return _subscription_out(s)

    out = await anyio.to_thread.run_sync(run)
    _forget_account(request, principal)
    return out


def _caps(state: RegistryState, account_id: int) -> list[CapOut]:
    with state.db.session() as session:
        rows = service.caps_of(session, account_id)
        return [
            CapOut(id=c.id, period=c.period, amount=c.amount, agent=c.agent, token_id=c.token_id)
            for c in rows
        ]


@router.get("/v1/billing/caps", response_model=list[CapOut], responses=errors(401, 403))
async def caps(state: State, principal: Caller) -> list[CapOut]:
    """The caller's spend caps."""
    return await anyio.to_thread.run_sync(lambda: _caps(state, _reader(state, principal).account_id))


@router.put("/v1/billing/caps", response_model=list[CapOut], responses=errors(400, 401, 403, 404, 422))
async def set_cap(request: Request, state: State, principal: Caller, body: CapIn) -> list[CapOut]:
    """Set a spend cap (per day or month; on the account or one key; on every agent or one).
    Setting one that exists changes its amount."""

    def run() -> list[CapOut]:
        who = require(principal, "admin", db=state.db)
        if body.agent:
            checked_agent_name(body.agent)
        with state.db.session() as session:
            if body.token_id:
                service.own_token(session, who.account_id, body.token_id)
            service.set_cap(session, who.account_id, body.period, body.amount, body.agent, body.token_id)
        return _caps(state, who.account_id)

    out = await anyio.to_thread.run_sync(run)
    _forget_account(request, principal)
    return out


@router.delete("/v1/billing/caps/{cap_id}", response_model=list[CapOut], responses=errors(401, 403, 404, 422))
async def remove_cap(request: Request, state: State, principal: Caller, cap_id: int) -> list[CapOut]:
    def run() -> list[CapOut]:
        who = require(principal, "admin", db=state.db)
        with state.db.session() as session:
            service.remove_cap(session, who.account_id, cap_id)
        return _caps(state, who.account_id)

    out = await anyio.to_thread.run_sync(run)
    _forget_account(request, principal)
    return out


def receipt_signer(request: Request) -> ReceiptSigner:
    return request.app.state.receipts  # type: ignore[no-any-return]


Signer = Annotated[ReceiptSigner, Depends(receipt_signer)]


class ReceiptKeyOut(BaseModel):
    key: str = Field(description='The public key: "ed25519:" and its 32 bytes in base64url, unpadded')
    registry: str = Field(description="The registry URL its receipts name")
    algorithm: Literal["ed25519"]


@router.get("/v1/billing/receipt-key", response_model=ReceiptKeyOut)
async def receipt_key(signer: Signer) -> ReceiptKeyOut:
    """The key that signs the receipts of paid calls: check one offline with
    `mcpz billing verify-receipt FILE --key KEY` (docs/receipts.md)."""
    return ReceiptKeyOut(key=signer.public_key, registry=signer.registry, algorithm="ed25519")


# -- invoices, credit notes and creator statements (billing/invoices.py, docs/invoices.md)

from registry_server.billing import invoice_api  # noqa: E402


@router.get("/v1/billing/invoices", response_model=invoice_api.InvoiceListOut, responses=errors(401, 403))
async def list_invoices(state: State, principal: Caller) -> invoice_api.InvoiceListOut:
    """The caller's finalized invoices and credit notes, newest first."""

    def run() -> invoice_api.InvoiceListOut:
        return invoice_api.list_invoices(state, _reader(state, principal).account_id)

    return await anyio.to_thread.run_sync(run)


@router.get("/v1/billing/invoices/draft", response_model=invoice_api.InvoiceOut, responses=errors(401, 403))
async def draft_invoice(request: Request, state: State, principal: Caller) -> invoice_api.InvoiceOut:
    """This month so far: what its invoice would say if the month ended now."""
    who = await anyio.to_thread.run_sync(lambda: _reader(state, principal))
    await _catch_up(request)
    return await anyio.to_thread.run_sync(
        lambda: invoice_api.draft_invoice(state, who.account_id, who.account_name)
    )


@router.get(
    "/v1/billing/invoices/{number}",
    response_model=invoice_api.InvoiceOut,
    responses=errors(401, 403, 404, 422),
)
async def invoice(
    state: State, principal: Caller, number: Annotated[int, Path(ge=1)]
) -> invoice_api.InvoiceOut:
    """One of the caller's invoices or credit notes; another account's is not found."""

    def run() -> invoice_api.InvoiceOut:
        who = _reader(state, principal)
        return invoice_api.one_invoice(state, who.account_id, who.account_name, number)

    return await anyio.to_thread.run_sync(run)


@router.get(
    "/v1/billing/statement", response_model=invoice_api.StatementOut, responses=errors(400, 401, 403, 422)
)
async def statement(
    request: Request,
    state: State,
    principal: Caller,
    period: Annotated[str | None, Query(description="YYYY-MM; default: this month")] = None,
) -> invoice_api.StatementOut:
    """The caller's earnings as a creator in one month: per agent and tool, fees, refunds, payouts."""
    who = await anyio.to_thread.run_sync(lambda: _reader(state, principal))
    await _catch_up(request)
    return await anyio.to_thread.run_sync(
        lambda: invoice_api.creator_statement(state, who.account_id, who.account_name, period)
    )
