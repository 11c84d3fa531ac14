"""Billing from the client side: prices, splits, balance, usage with amounts, subscriptions, spend
caps (the `/v1/billing/...` API), the registry's receipt key, and checking a paid call's receipt.

    key = await receipt_key("https://registry.example.com")          # "ed25519:..."
    checked = await verify_receipt(json.load(f), key=key)            # offline: no request made
    print(checked.receipt.price, checked.key_from)

    async with connect(url, token) as client:
        found = await balance(client)                                # integers in base units
        print(format_amount(found.available, decimals=found.decimals, currency=found.currency))

Amounts are integers in the settlement token's base units everywhere; the functions that take
amounts as text (`pricing_from_text`, `cap_amount`) parse them with the registry's own decimals.
The receipt format, and what its digests cover, are in `mcpz.keys.receipts` and docs/receipts.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import anyio.to_thread

from mcpz.client import chain
from mcpz.client.chain import SettlementInfo, Voucher
from mcpz.client.models import Payload, raw_field
from mcpz.client.registry import RegistryClient, connect
from mcpz.errors import NotFoundError, RemoteError, UsageError
from mcpz.keys import receipts
from mcpz.keys.receipts import Receipt
from mcpz.money import format_amount, parse_amount, parse_bps
from mcpz.names import AgentName

if TYPE_CHECKING:
    from mcpz.keys.ethkeys import LocalAccount

__all__ = [
    "Balance",
    "BillingUsage",
    "Charge",
    "Earnings",
    "Invoice",
    "InvoiceLine",
    "InvoiceList",
    "InvoiceSummary",
    "Payout",
    "Payouts",
    "PendingPricing",
    "Plans",
    "Pricing",
    "ReceiptKey",
    "Share",
    "SpendCap",
    "Statement",
    "StatementLine",
    "Subscription",
    "VerifiedReceipt",
    "Withdrawal",
    "Withdrawn",
    "balance",
    "cap",
    "caps",
    "fetch_receipt_key",
    "invoice",
    "invoices",
    "parse_shares",
    "payouts",
    "plans",
    "price",
    "pricing_from_text",
    "receipt_key",
    "remove_cap",
    "request_withdrawal",
    "set_cap",
    "set_prices",
    "set_splits",
    "settlement",
    "statement",
    "subscribe",
    "subscriptions",
    "unsubscribe",
    "usage",
    "verify_receipt",
    "withdraw",
    "withdrawals",
]


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiptKey(Payload):
    """`GET /v1/billing/receipt-key`: the key that signs a registry's receipts."""

    WHAT: ClassVar[str] = "receipt key"
    key: str
    registry: str
    algorithm: str
    raw: Mapping[str, Any] = raw_field()


async def fetch_receipt_key(client: RegistryClient) -> ReceiptKey:
    """The receipt key of the registry `client` talks to, its form checked."""
    answer = await client.typed(ReceiptKey, "GET", "/v1/billing/receipt-key")
    if answer.algorithm != "ed25519":
        raise RemoteError(
            f"the registry at {client.url} signs receipts with {answer.algorithm!r}, which this mcpz "
            "cannot check",
            hint="update mcpz: `pip install -U mcpz`",
        )
    try:
        receipts.parse_public_key(answer.key)
    except UsageError:
        raise RemoteError(f"the registry at {client.url} served a malformed receipt key") from None
    return answer


async def receipt_key(registry_url: str) -> str:
    """The `ed25519:...` key that signs the receipts of the registry at `registry_url` (no token)."""
    async with connect(registry_url) as client:
        return (await fetch_receipt_key(client)).key


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """A receipt that passed every check asked of it."""

    receipt: Receipt
    key_from: str
    """Where the trusted key came from: "given" (passed in), or the registry URL it was fetched from."""
    response_checked: bool
    """Whether the tool result was at hand, so that the receipt is known to be for it."""
    request_checked: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": True,
            "receipt": self.receipt.to_dict(),
            "key_from": self.key_from,
            "checked": {
                "signature": True,
                "response": self.response_checked,
                "request": self.request_checked,
            },
        }


async def verify_receipt(
    document: Any,
    *,
    key: str | None = None,
    registry: str | None = None,
    request_params: Any | None = None,
) -> VerifiedReceipt:
    """Check the receipt in `document` (a bare receipt, a tool result, or a JSON-RPC response).

    With `key` it is all offline. Without, the key is fetched from `registry`, else from the
    registry the receipt names: that proves only that the registry stands behind it; pass the key
    you got from the registry beforehand to rule out a receipt naming a registry of its forger's.
    `request_params`: the call's JSON-RPC params (or the whole request), to check the request too.
    """
    found = receipts.read_document(document)
    if key is None:
        url = (registry or found.receipt.registry).rstrip("/")
        trusted, key_from = await receipt_key(url), url
    else:
        trusted, key_from = key, "given"
    params = _params(request_params)
    receipts.verify_document(found, trusted, params)
    return VerifiedReceipt(found.receipt, key_from, found.result is not None, params is not None)


def _params(request: Any) -> Any:
    """The params of a whole JSON-RPC request; anything else is taken as the params themselves."""
    if isinstance(request, Mapping) and "jsonrpc" in request and "method" in request:
        return request.get("params")
    return request


# --- prices, splits, balance, usage, subscriptions, spend caps (/v1/billing/...) -----------------


@dataclasses.dataclass(frozen=True, slots=True)
class Pricing(Payload):
    """A listing's whole pricing, amounts in base units; a plan that is None is not offered."""

    WHAT: ClassVar[str] = "pricing"
    per_call: int | None
    tools: dict[str, int]
    monthly_fee: int | None
    included: int
    overage: int | None
    free_calls: int
    charge_tool_errors: bool
    raw: Mapping[str, Any] = raw_field()

    @property
    def free(self) -> bool:
        return self.per_call is None and self.monthly_fee is None


@dataclasses.dataclass(frozen=True, slots=True)
class PendingPricing(Payload):
    """A change of price waiting for its notice period: it applies at `effective_us`."""

    WHAT: ClassVar[str] = "pending pricing"
    effective_us: int
    raw: Mapping[str, Any] = raw_field()

    @property
    def pricing(self) -> Pricing:
        return Pricing.from_json(dict(self.raw))


@dataclasses.dataclass(frozen=True, slots=True)
class Share(Payload):
    """One creator's part of every charge, in basis points of what the platform fee leaves."""

    WHAT: ClassVar[str] = "share"
    account: str
    bps: int
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Plans(Payload):
    """`GET /v1/billing/plans/{name}`: what an agent costs now, what it will cost, who earns."""

    WHAT: ClassVar[str] = "plans"
    agent: str
    current: Pricing
    pending: list[PendingPricing]
    platform_fee_bps: int
    notice_days: float
    splits: list[Share]
    currency: str
    decimals: int
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Earnings(Payload):
    WHAT: ClassVar[str] = "earnings"
    pending: int
    """Earned inside the refund window: not yet payable."""
    available: int
    """Past the refund window: ready for payout."""
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Balance(Payload):
    """`GET /v1/billing/balance`: the caller's money, after its calls so far are rated."""

    WHAT: ClassVar[str] = "balance"
    account: str
    available: int
    reserved: int
    """Held for calls in flight or not yet rated: comes back to `available` when unused."""
    earnings: Earnings
    currency: str
    decimals: int
    raw: Mapping[str, Any] = raw_field()

    def to_json(self) -> dict[str, Any]:
        """What `mcpz billing balance --json` prints: integers in base units, and their token."""
        return {
            "available": self.available,
            "reserved": self.reserved,
            "earnings": {"pending": self.earnings.pending, "available": self.earnings.available},
            "currency": self.currency,
            "decimals": self.decimals,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Charge(Payload):
    """One charged call (or a subscription's month, with tool "")."""

    WHAT: ClassVar[str] = "charge"
    event: str
    agent: str
    version: str
    tool: str
    plan: str
    started_us: int
    price: int
    fee: int
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class BillingUsage(Payload):
    """`GET /v1/billing/usage`: what the caller was charged since a time, and the newest charges."""

    WHAT: ClassVar[str] = "billing usage"
    total: int
    calls: int
    charges: list[Charge]
    currency: str
    decimals: int
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Subscription(Payload):
    WHAT: ClassVar[str] = "subscription"
    agent: str
    plan: str
    started_us: int
    paid_through: str
    """The last month paid for, YYYY-MM."""
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class SpendCap(Payload):
    """At most `amount` per `period` ("day" or "month"), on one agent or all (""), on one key or
    the whole account (`token_id` 0)."""

    WHAT: ClassVar[str] = "spend cap"
    id: int
    period: str
    amount: int
    agent: str
    token_id: int
    raw: Mapping[str, Any] = raw_field()


PERIODS = ("day", "month")


def _agent(name: str) -> str:
    return str(AgentName.parse(name))


def _tool_price(text: str, decimals: int) -> tuple[str, int]:
    tool, sep, amount = text.partition("=")
    if not sep or not tool.strip():
        raise UsageError(f'--tool "{text}" is not TOOL=AMOUNT', hint="e.g. --tool forecast=0.005")
    return tool.strip(), parse_amount(amount, decimals=decimals, what=f"the price of tool {tool.strip()}")


def pricing_from_text(
    *,
    decimals: int,
    per_call: str | None = None,
    tools: Sequence[str] = (),
    monthly: str | None = None,
    included: int = 0,
    overage: str | None = None,
    free_calls: int = 0,
    charge_tool_errors: bool = False,
    free: bool = False,
) -> dict[str, Any]:
    """A whole pricing from amounts typed as decimal text (`"0.002"`), as `set_prices` sends it."""
    priced = per_call is not None or monthly is not None or bool(tools)
    if free and (priced or overage is not None or included):
        raise UsageError("--free takes no prices", hint="drop --free, or the prices")
    if not free and not priced:
        raise UsageError(
            "say what to charge: --per-call AMOUNT, --monthly AMOUNT, or --free",
            hint="e.g. `mcpz billing price acme/weather --per-call 0.002`",
        )
    if included < 0 or free_calls < 0:
        raise UsageError("--included and --free-calls must not be negative")
    prices = dict(_tool_price(t, decimals) for t in tools)
    if len(prices) != len(tools):
        raise UsageError("a tool is priced twice with --tool")

    def amount(text: str | None, what: str) -> int | None:
        return None if text is None else parse_amount(text, decimals=decimals, what=what)

    return {
        "per_call": amount(per_call, "--per-call"),
        "tools": prices,
        "monthly_fee": amount(monthly, "--monthly"),
        "included": included,
        "overage": amount(overage, "--overage"),
        "free_calls": free_calls,
        "charge_tool_errors": charge_tool_errors,
    }


def parse_shares(items: Sequence[str]) -> list[tuple[str, int]]:
    """`["alice=70%", "bob=3000"]` -> [("alice", 7000), ("bob", 3000)]: basis points summing to 10,000."""
    if not items:
        raise UsageError("name at least one ACCOUNT=SHARE", hint="e.g. alice=70% bob=30%")
    shares: list[tuple[str, int]] = []
    for item in items:
        account, sep, share = item.partition("=")
        if not sep or not account.strip():
            raise UsageError(f'"{item}" is not ACCOUNT=SHARE', hint="e.g. alice=70% bob=30%")
        shares.append((account.strip(), parse_bps(share, what=f"the share of {account.strip()}")))
    total = sum(bps for _, bps in shares)
    if total != 10_000:
        raise UsageError(
            f"the shares sum to {format_amount(total, decimals=2)}%, not 100%",
            hint="give every creator's share so that they add up to 100%",
        )
    return shares


async def plans(client: RegistryClient, name: str) -> Plans:
    return await client.typed(Plans, "GET", f"/v1/billing/plans/{_agent(name)}")


async def set_prices(client: RegistryClient, name: str, pricing: Mapping[str, Any]) -> Plans:
    """Replace an agent's pricing (base units, as `pricing_from_text` builds it). A decrease applies
    at once, an increase after the registry's notice period: see the answer's `pending`."""
    return await client.typed(Plans, "PUT", f"/v1/billing/plans/{_agent(name)}", json=dict(pricing))


async def price(client: RegistryClient, name: str, **text: Any) -> Plans:
    """`set_prices` from amounts as text (the arguments of `pricing_from_text`), parsed with the
    decimals of the registry's own token."""
    found = await plans(client, name)
    return await set_prices(client, name, pricing_from_text(decimals=found.decimals, **text))


async def set_splits(client: RegistryClient, name: str, shares: Sequence[tuple[str, int]]) -> Plans:
    body = {"shares": [{"account": account, "bps": bps} for account, bps in shares]}
    return await client.typed(Plans, "PUT", f"/v1/billing/splits/{_agent(name)}", json=body)


@dataclasses.dataclass(frozen=True, slots=True)
class Payout(Payload):
    """One of the caller's leaves in a payout batch, with the Merkle proof that claims it."""

    WHAT: ClassVar[str] = "payout"
    batch_id: int
    index: int
    address: str
    amount: int
    state: str
    """The batch's: pending, submitted, confirmed or final. Claimable once confirmed."""
    root: str
    tx_hash: str | None
    proof: list[str]
    raw: Mapping[str, Any] = raw_field()

    @property
    def claimable(self) -> bool:
        return self.state in ("confirmed", "final")


@dataclasses.dataclass(frozen=True, slots=True)
class Payouts(Payload):
    """`GET /v1/billing/payouts`: the caller's payouts, newest batch first, and the contract to claim at."""

    WHAT: ClassVar[str] = "payouts"
    chain_id: int
    contract: str
    payouts: list[Payout]
    raw: Mapping[str, Any] = raw_field()


async def payouts(client: RegistryClient) -> Payouts:
    return await client.typed(Payouts, "GET", "/v1/billing/payouts")


async def balance(client: RegistryClient) -> Balance:
    return await client.typed(Balance, "GET", "/v1/billing/balance")


async def usage(client: RegistryClient, *, since: str | None = None, limit: int = 100) -> BillingUsage:
    """Charges since `since` (ISO 8601, Unix seconds or an age such as 7d; default: this month)."""
    params: dict[str, Any] = {"limit": limit}
    if since is not None:
        params["since"] = since
    return await client.typed(BillingUsage, "GET", "/v1/billing/usage", params=params)


async def subscriptions(client: RegistryClient) -> list[Subscription]:
    return await client.typed_list(Subscription, "GET", "/v1/billing/subscriptions")


async def subscribe(client: RegistryClient, name: str, plan: str = "monthly") -> Subscription:
    """Subscribe to an agent's monthly plan: the registry takes this month's fee from the balance."""
    body = {"agent": _agent(name), "plan": plan}
    return await client.typed(Subscription, "POST", "/v1/billing/subscriptions", json=body)


async def unsubscribe(client: RegistryClient, name: str) -> Subscription:
    return await client.typed(Subscription, "DELETE", f"/v1/billing/subscriptions/{_agent(name)}")


async def caps(client: RegistryClient) -> list[SpendCap]:
    return await client.typed_list(SpendCap, "GET", "/v1/billing/caps")


async def set_cap(
    client: RegistryClient, period: str, amount: int, *, agent: str = "", token_id: int = 0
) -> list[SpendCap]:
    """Set a spend cap of `amount` base units per `period`; one that exists changes its amount."""
    if period not in PERIODS:
        raise UsageError(f'a spend cap is per "day" or "month", not "{period}"')
    body = {"period": period, "amount": amount, "agent": _agent(agent) if agent else "", "token_id": token_id}
    return await client.typed_list(SpendCap, "PUT", "/v1/billing/caps", json=body)


async def cap(
    client: RegistryClient, period: str, amount: str, *, agent: str = "", token_id: int = 0
) -> list[SpendCap]:
    """`set_cap` with the amount as decimal text, parsed with the registry's token decimals."""
    decimals = (await balance(client)).decimals
    units = parse_amount(amount, decimals=decimals, what="the cap")
    return await set_cap(client, period, units, agent=agent, token_id=token_id)


async def remove_cap(client: RegistryClient, cap_id: int) -> list[SpendCap]:
    return await client.typed_list(SpendCap, "DELETE", f"/v1/billing/caps/{cap_id}")


# -- invoices, credit notes and creator statements (docs/invoices.md)
#
#     async with connect(url, token) as client:
#         for row in (await invoices(client)).invoices: ...
#         draft = await invoice(client, "draft")          # this month so far
#         earned = await statement(client, "2026-11")     # as a creator


@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceLine(Payload):
    """Charges of one agent's tool under one plan (kind "charge"), or what was refunded of them."""

    kind: str
    agent: str
    tool: str
    plan: str
    calls: int
    amount: int
    event: str = ""
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Invoice(Payload):
    """`GET /v1/billing/invoices/{number}` or `/draft`: a month's charges, paid from the balance."""

    WHAT: ClassVar[str] = "invoice"
    number: int | None
    kind: str
    status: str
    account: str
    period: str
    total: int
    lines: list[InvoiceLine]
    finalized_us: int | None
    refers_to: int | None
    paid: bool
    paid_from: str
    amount_due: int
    currency: str
    decimals: int
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceSummary(Payload):
    number: int
    kind: str
    period: str
    total: int
    finalized_us: int
    refers_to: int | None
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceList(Payload):
    """`GET /v1/billing/invoices`: the caller's invoices and credit notes, newest first."""

    WHAT: ClassVar[str] = "invoice list"
    invoices: list[InvoiceSummary]
    currency: str
    decimals: int
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class StatementLine(Payload):
    agent: str
    tool: str
    plan: str
    calls: int
    earnings: int
    fees: int
    refunds: int
    net: int
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Statement(Payload):
    """`GET /v1/billing/statement`: a creator's month: earnings, fees, refunds, payouts."""

    WHAT: ClassVar[str] = "statement"
    account: str
    period: str
    lines: list[StatementLine]
    earnings: int
    fees: int
    refunds: int
    net: int
    payouts: int
    payouts_note: str
    currency: str
    decimals: int
    raw: Mapping[str, Any] = raw_field()


async def invoices(client: RegistryClient) -> InvoiceList:
    return await client.typed(InvoiceList, "GET", "/v1/billing/invoices")


async def invoice(client: RegistryClient, number: int | str) -> Invoice:
    """Invoice or credit note `number`, or "draft": the running month so far."""
    if number != "draft" and not (isinstance(number, int) or str(number).isdigit()):
        raise UsageError(f'"{number}" is not an invoice: give its number or "draft"')
    return await client.typed(Invoice, "GET", f"/v1/billing/invoices/{number}")


async def statement(client: RegistryClient, period: str | None = None) -> Statement:
    """The caller's creator statement for `period` (YYYY-MM; default: this month)."""
    params = {"period": period} if period else {}
    return await client.typed(Statement, "GET", "/v1/billing/statement", params=params)


# -- withdrawals: unspent balance back to the wallet on chain (docs/settlement.md#withdrawals)
#
#     async with connect(url, token) as client:
#         done = await withdraw(client, rpc_url, wallet_key, 5_000_000)   # 5 USDC, base units
#         print(done.tx_hash, done.available)


@dataclasses.dataclass(frozen=True, slots=True)
class Withdrawal(Payload):
    """A withdrawal voucher (`/v1/billing/withdrawals`): its amount is held off the balance until it is
    used on chain (`withdrawn`) or expires unused (`expired`, the amount back)."""

    WHAT: ClassVar[str] = "withdrawal voucher"
    id: int
    nonce: int
    chain_id: int
    contract: str
    address: str
    """The wallet it pays: only that wallet can send it."""
    amount: int
    expiry: int
    """Unix seconds: usable in blocks whose timestamp is at most this."""
    signature: str
    state: str
    tx_hash: str | None
    created_us: int
    settled_us: int | None
    raw: Mapping[str, Any] = raw_field()

    def voucher(self) -> Voucher:
        return Voucher(
            chain_id=self.chain_id,
            contract=self.contract,
            account=self.address,
            amount=self.amount,
            nonce=self.nonce,
            expiry=self.expiry,
            signature=self.signature,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Withdrawn:
    """What `withdraw` did: the voucher, the mined transaction, and the balance after."""

    voucher: Withdrawal
    tx_hash: str
    block: int
    available: int
    currency: str
    decimals: int

    def to_json(self) -> dict[str, Any]:
        return {
            "voucher": self.voucher.id,
            "tx_hash": self.tx_hash,
            "block": self.block,
            "address": self.voucher.address,
            "amount": self.voucher.amount,
            "available": self.available,
            "currency": self.currency,
            "decimals": self.decimals,
        }


async def settlement(client: RegistryClient) -> SettlementInfo:
    """Where the registry settles on chain; a UsageError when it does not."""
    try:
        return SettlementInfo.from_json(await client.json("GET", "/v1/billing/settlement"))
    except NotFoundError:
        raise UsageError(
            "this registry settles nothing on chain (settlement is not configured)",
            hint="deposits and withdrawals need a registry with settlement set up (docs/settlement.md)",
        ) from None


async def request_withdrawal(
    client: RegistryClient, amount: int, *, address: str | None = None
) -> Withdrawal:
    """A voucher for `amount` base units of the available balance, which the registry holds from now
    until the voucher is used or expires. `address`: the wallet that will send it (refused unless it
    is the account's, before anything is held)."""
    if amount <= 0:
        raise UsageError("the amount to withdraw must be more than 0")
    body: dict[str, Any] = {"amount": amount}
    if address is not None:
        body["address"] = address
    return await client.typed(Withdrawal, "POST", "/v1/billing/withdrawals", json=body)


async def withdrawals(client: RegistryClient, *, limit: int = 100) -> list[Withdrawal]:
    """The caller's vouchers, newest first."""
    return await client.typed_list(Withdrawal, "GET", "/v1/billing/withdrawals", params={"limit": limit})


async def withdraw(
    client: RegistryClient,
    rpc_url: str,
    key: LocalAccount,
    amount: int | None = None,
    *,
    voucher_id: int | None = None,
    on_sent: Callable[[str], None] | None = None,
) -> Withdrawn:
    """Take `amount` base units of the balance back to `key`'s wallet: ask the registry for a voucher
    and send it from the wallet, then read the balance. `voucher_id` sends a voucher issued before
    (one whose transaction failed) instead of asking for a new one. The chain is checked before any
    voucher is asked for, so a wrong RPC URL holds no money."""
    if (amount is None) == (voucher_id is None):
        raise UsageError("give an amount to withdraw, or the id of an issued voucher, not both")
    info = await settlement(client)
    await anyio.to_thread.run_sync(lambda: chain.check_chain(rpc_url, info.chain_id))
    if amount is not None:
        voucher = await request_withdrawal(client, amount, address=key.address)
    else:
        found = [v for v in await withdrawals(client, limit=1000) if v.id == voucher_id]
        if not found:
            raise NotFoundError(f"no withdrawal voucher {voucher_id}", hint="see `mcpz billing withdrawals`")
        voucher = found[0]
        if voucher.state != "issued":
            raise UsageError(f"withdrawal voucher {voucher_id} is {voucher.state}: it can be used no more")
    done = await anyio.to_thread.run_sync(
        lambda: chain.withdraw(rpc_url, voucher.voucher(), key, on_sent=on_sent)
    )
    after = await balance(client)
    return Withdrawn(voucher, done.tx_hash, done.block, after.available, after.currency, after.decimals)
