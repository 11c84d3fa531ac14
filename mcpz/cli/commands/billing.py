"""`mcpz billing ...`: plans, price, split, subscribe, unsubscribe, subscriptions, balance, usage,
caps (set, remove), verify-receipt, invoices, invoice, statement, and on chain deposit, payouts, claim,
verify-payout, withdraw and withdrawals."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from mcpz.cli.common import RegistryOpt, TokenOpt, run, with_client
from mcpz.cli.output import out
from mcpz.errors import NetworkError, NotFoundError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from mcpz.client.billing import Balance, Payout, Payouts, Plans, Pricing, SpendCap
    from mcpz.client.chain import Leaf
    from mcpz.client.registry import RegistryClient

T = TypeVar("T")

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
billing_app = typer.Typer(
    help="Billing: prices, balance, usage with amounts, spend caps, and the receipts of paid calls.",
    no_args_is_help=True,
)
app.add_typer(billing_app, name="billing")


def _read_json(path: str, what: str) -> Any:
    from mcpz.jsonlimits import JSONError, loads

    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise NotFoundError(f"no such file: {path}") from None
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
    try:
        return loads(data)
    except JSONError as e:
        raise UsageError(f"{what} {path} is not JSON: {e}") from None


@billing_app.command("verify-receipt")
def verify_receipt(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="JSON: a receipt, a tool result holding one, or a JSON-RPC response; - reads stdin.",
        ),
    ],
    key: Annotated[
        str | None,
        typer.Option(
            "--key", metavar="KEY", help='The registry\'s receipt key ("ed25519:..."): check offline.'
        ),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(
            "--registry",
            metavar="URL",
            help="Fetch the key from this registry (else the one the receipt names).",
        ),
    ] = None,
    request: Annotated[
        str | None,
        typer.Option(
            "--request", metavar="FILE", help="JSON of the call's request (or its params): check it too."
        ),
    ] = None,
) -> None:
    """Check a paid call's receipt: signed by the registry, for this result (and request)."""
    from mcpz.client import billing
    from mcpz.money import format_amount

    if file == "-" and request == "-":
        raise UsageError("FILE and --request cannot both be read from stdin")
    document = _read_json(file, "FILE")
    params = _read_json(request, "--request") if request is not None else None
    checked = run(lambda: billing.verify_receipt(document, key=key, registry=registry, request_params=params))
    o = out()
    receipt = checked.receipt
    if checked.key_from != "given":
        o.info(f"key from {checked.key_from}")
    if not checked.response_checked:
        o.info("note: FILE holds the receipt alone: its signature is checked, not the result it is for")
    amount = format_amount(receipt.price, decimals=receipt.decimals)
    o.lines(
        {**checked.to_json(), "amount": amount},
        lambda: [
            f"receipt valid: {receipt.event} {receipt.agent}@{receipt.version} {receipt.tool} "
            f"{amount} {receipt.currency}, signed by {receipt.key}"
        ],
    )


# --- prices, balance, usage, subscriptions, spend caps ------------------------------------------

RpcOpt = Annotated[
    str | None,
    typer.Option(
        "--rpc", metavar="URL", help="JSON-RPC URL of the chain (else MCPZ_CHAIN_RPC, config chain_rpc)."
    ),
]

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The agent: namespace/name.")]


def _billing(
    registry: str | None,
    token: str | None,
    fn: Callable[[RegistryClient], Awaitable[T]],
    *,
    need_token: bool = True,
) -> T:
    return with_client(registry, token, fn, need_token=need_token)


def _money(units: int, decimals: int, currency: str) -> str:
    from mcpz.money import format_amount

    return format_amount(units, decimals=decimals, currency=currency)


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _describe(pricing: Pricing, decimals: int, currency: str) -> str:
    """One line of what a pricing charges, in the words of `mcpz billing price`'s options."""

    def m(units: int) -> str:
        return _money(units, decimals, currency)

    parts: list[str] = []
    if pricing.free:
        parts.append("free")
    if pricing.per_call is not None:
        parts.append(f"{m(pricing.per_call)} per call")
        parts += [f"{tool} {m(units)} per call" for tool, units in sorted(pricing.tools.items())]
    if pricing.monthly_fee is not None:
        monthly = f"monthly {m(pricing.monthly_fee)} with {pricing.included} calls"
        overage = (
            "no calls past them" if pricing.overage is None else f"{m(pricing.overage)} per call past them"
        )
        parts.append(f"{monthly}, {overage}")
    if pricing.free_calls:
        parts.append(f"{pricing.free_calls} free calls a month")
    if pricing.charge_tool_errors and not pricing.free:
        parts.append("tool errors charged")
    return "; ".join(parts)


def _plan_lines(found: Plans) -> list[str]:
    lines = [f"{found.agent}", f"  now: {_describe(found.current, found.decimals, found.currency)}"]
    lines += [
        f"  from {_when(p.effective_us)}: {_describe(p.pricing, found.decimals, found.currency)}"
        for p in found.pending
    ]
    shares = ", ".join(f"{s.account} {_percent(s.bps)}" for s in found.splits)
    lines.append(f"  earnings: {shares} of what the platform fee ({_percent(found.platform_fee_bps)}) leaves")
    return lines


def _percent(bps: int) -> str:
    """Basis points as a percentage, exactly: 2000 -> "20%", 1250 -> "12.5%"."""
    whole, part = divmod(bps, 100)
    return f"{whole}.{part:02d}".rstrip("0").rstrip(".") + "%" if part else f"{whole}%"


@billing_app.command("plans")
def plans(
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="[NAME]", help="The agent: namespace/name (none: the agents of your namespaces)."
        ),
    ] = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """An agent's prices: now, a change waiting for its notice (and its date), the revenue split."""
    from mcpz.client import billing

    if name is not None:
        one = _billing(registry, token, lambda c: billing.plans(c, name), need_token=False)
        out().lines(one.to_dict(), lambda: _plan_lines(one))
        return
    found = _billing(registry, token, _own_plans)
    out().lines(
        [p.to_dict() for p in found],
        lambda: [line for p in found for line in _plan_lines(p)] or ["no agents in your namespaces"],
    )


async def _own_plans(client: RegistryClient) -> list[Plans]:
    """The plans of every listed agent in the namespaces the caller belongs to."""
    from mcpz.client import billing
    from mcpz.client.market import MAX_LIMIT, Market

    market = Market(client)
    names: list[str] = []
    for namespace in (await client.whoami()).namespaces:
        found = await market.search(namespace=namespace, limit=MAX_LIMIT)
        names += [item.name for item in found.results if item.name.startswith(f"{namespace}/")]
    return [await billing.plans(client, name) for name in sorted(set(names))]


@billing_app.command("price")
def price(
    name: NameArg,
    per_call: Annotated[
        str | None, typer.Option("--per-call", metavar="AMOUNT", help="Price of one call, e.g. 0.002.")
    ] = None,
    tool: Annotated[
        list[str] | None,
        typer.Option(
            "--tool", metavar="TOOL=AMOUNT", help="Price of one tool's calls (repeatable); needs --per-call."
        ),
    ] = None,
    monthly: Annotated[
        str | None, typer.Option("--monthly", metavar="AMOUNT", help="A monthly plan's fee.")
    ] = None,
    included: Annotated[
        int, typer.Option("--included", metavar="N", min=0, help="Calls the monthly fee includes.")
    ] = 0,
    overage: Annotated[
        str | None,
        typer.Option(
            "--overage", metavar="AMOUNT", help="Price per call past the included ones (else refused)."
        ),
    ] = None,
    free_calls: Annotated[
        int, typer.Option("--free-calls", metavar="N", min=0, help="Free calls per caller per month.")
    ] = 0,
    charge_tool_errors: Annotated[
        bool, typer.Option("--charge-tool-errors", help="Charge calls that end in a tool error too.")
    ] = False,
    free: Annotated[bool, typer.Option("--free", help="Make the agent free.")] = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Price an agent (owner). A decrease applies at once; an increase after the notice period.

    Amounts are decimal text in the registry's token (0.002 is 2,000 base units of USDC). The
    pricing given replaces the whole pricing: a plan not given is no longer offered.
    """
    from mcpz.client import billing

    found = _billing(
        registry,
        token,
        lambda c: billing.price(
            c,
            name,
            per_call=per_call,
            tools=tool or [],
            monthly=monthly,
            included=included,
            overage=overage,
            free_calls=free_calls,
            charge_tool_errors=charge_tool_errors,
            free=free,
        ),
    )
    o = out()
    for pending in found.pending:
        o.info(
            f"the change raises a price: it applies on {_when(pending.effective_us)}, after "
            f"{found.notice_days:g} days' notice (what it lowers applies now)"
        )
    o.lines(found.to_dict(), lambda: _plan_lines(found))


@billing_app.command("split")
def split(
    name: NameArg,
    shares: Annotated[
        list[str],
        typer.Argument(
            metavar="ACCOUNT=SHARE...",
            help="Accounts (name or wallet) and their shares, e.g. alice=70% bob=30%; sum 100%.",
        ),
    ],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Divide the creators' part of every charge among accounts (owner)."""
    from mcpz.client import billing

    parsed = billing.parse_shares(shares)
    found = _billing(registry, token, lambda c: billing.set_splits(c, name, parsed))
    out().lines(found.to_dict(), lambda: _plan_lines(found))


@billing_app.command("subscribe")
def subscribe(
    name: NameArg,
    plan: Annotated[str, typer.Argument(metavar="PLAN", help='The plan: "monthly".')] = "monthly",
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Subscribe to an agent's monthly plan: this month's fee is paid from your balance now."""
    from mcpz.client import billing

    found = _billing(registry, token, lambda c: billing.subscribe(c, name, plan))
    out().lines(
        found.to_dict(),
        lambda: [f"subscribed to {found.agent} ({found.plan}), paid through {found.paid_through}"],
    )


@billing_app.command("unsubscribe")
def unsubscribe(name: NameArg, registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """End a subscription now (the month paid for is not refunded)."""
    from mcpz.client import billing

    found = _billing(registry, token, lambda c: billing.unsubscribe(c, name))
    out().lines(found.to_dict(), lambda: [f"unsubscribed from {found.agent} ({found.plan})"])


@billing_app.command("subscriptions")
def subscriptions(registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Your subscriptions, and the month each is paid through."""
    from mcpz.client import billing

    found = _billing(registry, token, billing.subscriptions)
    out().lines(
        [s.to_dict() for s in found],
        lambda: (
            [f"{s.agent}  {s.plan}  paid through {s.paid_through}" for s in found] or ["no subscriptions"]
        ),
    )


@billing_app.command("balance")
def balance(registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Your balance (available, reserved for calls in flight) and, as a creator, your earnings.

    With --json: integers in base units, and the token's currency and decimals.
    """
    from mcpz.client import billing

    found = _billing(registry, token, billing.balance)

    def m(units: int) -> str:
        return _money(units, found.decimals, found.currency)

    out().lines(
        found.to_json(),
        lambda: [
            f"account {found.account}",
            f"available  {m(found.available)}",
            f"reserved   {m(found.reserved)}",
            f"earnings   {m(found.earnings.pending)} pending (refund window), "
            f"{m(found.earnings.available)} available",
        ],
    )


@billing_app.command("usage")
def usage(
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Charges since: 30m, 1h, 7d, or an ISO date/time (default: this month)."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", metavar="N", min=1, max=1000, help="List the newest N charges.")
    ] = 20,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """What your calls cost: the total and count since a time, and the newest charges."""
    from mcpz.client import billing
    from mcpz.instants import parse_since

    start = parse_since(since) if since is not None else None
    found = _billing(registry, token, lambda c: billing.usage(c, since=start, limit=limit))

    def m(units: int) -> str:
        return _money(units, found.decimals, found.currency)

    def lines() -> list[str]:
        window = f"since {since}" if since else "this month"
        calls = "1 call" if found.calls == 1 else f"{found.calls} calls"
        shown = [f"charged {m(found.total)} for {calls} {window}"]
        for c in found.charges:
            what = c.tool or "(monthly fee)"
            shown.append(f"  {_when(c.started_us)}  {c.agent}  {what}  {c.plan}  {m(c.price)}")
        return shown

    out().lines(found.to_dict(), lines)


caps_app = typer.Typer(
    help="Your spend caps: at most an amount per day or month, on every agent or one, per key or all.",
    invoke_without_command=True,
)
billing_app.add_typer(caps_app, name="caps")


def _cap_lines(found: list[SpendCap], decimals: int, currency: str) -> list[str]:
    lines = []
    for c in found:
        scope = f"on {c.agent}" if c.agent else "on every agent"
        key = f", key {c.token_id}" if c.token_id else ""
        lines.append(f"{c.id}  {_money(c.amount, decimals, currency)} per {c.period} {scope}{key}")
    return lines or ["no spend caps"]


async def _caps_with_money(
    client: RegistryClient, change: Callable[[RegistryClient], Awaitable[list[SpendCap]]]
) -> tuple[list[SpendCap], int, str]:
    from mcpz.client import billing

    found = await change(client)
    money = await billing.balance(client)
    return found, money.decimals, money.currency


def _show_caps(found: tuple[list[SpendCap], int, str]) -> None:
    caps, decimals, currency = found
    out().lines([c.to_dict() for c in caps], lambda: _cap_lines(caps, decimals, currency))


@caps_app.callback()
def caps(ctx: typer.Context, registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Your spend caps: at most an amount per day or month, on every agent or one, per key or all."""
    from mcpz.client import billing

    if ctx.invoked_subcommand is not None:
        return
    _show_caps(_billing(registry, token, lambda c: _caps_with_money(c, billing.caps)))


@caps_app.command("set")
def caps_set(
    amount: Annotated[str, typer.Argument(metavar="AMOUNT", help="At most this much, e.g. 5 or 0.50.")],
    per: Annotated[str, typer.Option("--per", metavar="day|month", help="The period: day or month.")],
    agent: Annotated[
        str | None, typer.Option("--agent", metavar="NAME", help="Only calls of this agent.")
    ] = None,
    key: Annotated[
        int | None,
        typer.Option(
            "--key", metavar="ID", min=1, help="Only calls made with this API key (`mcpz keys list`)."
        ),
    ] = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Set a spend cap (a token with scope admin); setting one that exists changes its amount."""
    from mcpz.client import billing

    def change(c: RegistryClient) -> Awaitable[list[SpendCap]]:
        return billing.cap(c, per, amount, agent=agent or "", token_id=key or 0)

    _show_caps(_billing(registry, token, lambda c: _caps_with_money(c, change)))


@caps_app.command("remove")
def caps_remove(
    cap_id: Annotated[int, typer.Argument(metavar="ID", help="The cap's id (see `mcpz billing caps`).")],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Remove a spend cap."""
    from mcpz.client import billing

    _show_caps(
        _billing(registry, token, lambda c: _caps_with_money(c, lambda c2: billing.remove_cap(c2, cap_id)))
    )


# -- invoices and creator statements (docs/invoices.md)

if TYPE_CHECKING:
    from mcpz.client.billing import Invoice


def _issued(us: int | None) -> str:
    return "-" if us is None else _when(us)


@billing_app.command("invoices")
def invoices_command(registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Your invoices and credit notes, newest first (`mcpz billing invoice draft`: this month so far)."""
    from rich.table import Table

    from mcpz.client import billing
    from mcpz.money import format_amount

    found = with_client(registry, token, billing.invoices, need_token=True)

    def render(console: Console) -> None:
        if not found.invoices:
            console.print("no invoices yet: a month's invoice is issued when it ends", markup=False)
            return
        table = Table("number", "kind", "period", "total", "issued", box=None)
        table.columns[3].justify = "right"
        for row in found.invoices:
            kind = row.kind if row.refers_to is None else f"{row.kind} (on {row.refers_to})"
            total = format_amount(row.total, decimals=found.decimals, currency=found.currency)
            table.add_row(str(row.number), kind, row.period, total, _issued(row.finalized_us))
        console.print(table)

    out().data([row.to_dict() for row in found.invoices], render)


@billing_app.command("invoice")
def invoice_command(
    number: Annotated[
        str, typer.Argument(metavar="ID", help='An invoice\'s number, or "draft" (this month).')
    ],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """One invoice or credit note with its lines; "draft" shows the running month."""
    from mcpz.client import billing

    found = with_client(registry, token, lambda c: billing.invoice(c, number), need_token=True)
    out().data(found.to_dict(), lambda console: _render_invoice(console, found))


def _render_invoice(console: Console, found: Invoice) -> None:
    from rich.table import Table

    from mcpz.money import format_amount

    def money(units: int) -> str:
        return format_amount(units, decimals=found.decimals, currency=found.currency)

    title = {"draft": "draft invoice", "credit-note": "credit note"}.get(found.kind, found.kind)
    head = f"{title} {found.number}" if found.number is not None else title
    console.print(f"{head} - {found.account} - {found.period}", markup=False)
    if found.refers_to is not None:
        console.print(f"corrects invoice {found.refers_to}", markup=False)
    if found.number is not None:
        console.print(f"issued {_issued(found.finalized_us)}", markup=False)
    table = Table("agent", "tool", "plan", "calls", "amount", box=None)
    for column in table.columns[3:]:
        column.justify = "right"
    for line in found.lines:
        what = line.tool or "(monthly fee)"
        if line.kind == "refund":
            what = f"{what} refund" + (f" {line.event}" if line.event else "")
        table.add_row(line.agent, what, line.plan, str(line.calls), money(line.amount))
    table.add_row("total", "", "", "", money(found.total), style="bold")
    console.print(table)
    console.print(f"paid from the balance; amount due {money(found.amount_due)}", markup=False)


@billing_app.command("statement")
def statement_command(
    period: Annotated[
        str | None, typer.Option("--period", metavar="YYYY-MM", help="The month (default: this one).")
    ] = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Your earnings as a creator in a month: per agent and tool, fees, refunds, payouts."""
    from rich.table import Table

    from mcpz.client import billing
    from mcpz.money import format_amount

    found = with_client(registry, token, lambda c: billing.statement(c, period), need_token=True)

    def money(units: int) -> str:
        return format_amount(units, decimals=found.decimals, currency=found.currency)

    def render(console: Console) -> None:
        console.print(f"statement - {found.account} - {found.period}", markup=False)
        if not found.lines:
            console.print("no earnings this month", markup=False)
        else:
            table = Table("agent", "tool", "plan", "calls", "earnings", "fees", "refunds", "net", box=None)
            for column in table.columns[3:]:
                column.justify = "right"
            for line in found.lines:
                table.add_row(
                    line.agent,
                    line.tool or "(monthly fee)",
                    line.plan,
                    str(line.calls),
                    money(line.earnings),
                    money(line.fees),
                    money(line.refunds),
                    money(line.net),
                )
            table.add_row(
                "total",
                "",
                "",
                "",
                money(found.earnings),
                money(found.fees),
                money(found.refunds),
                money(found.net),
                style="bold",
            )
            console.print(table)
        console.print(found.payouts_note, markup=False)

    out().data(found.to_dict(), render)


# --- deposit on chain ----------------------------------------------------------------------------

DEPOSIT_WAIT = 900.0  # seconds to wait for the registry to credit: confirmations on a slow chain


@billing_app.command("deposit")
def deposit_command(
    amount: Annotated[
        str, typer.Argument(metavar="AMOUNT", help="Tokens to deposit, e.g. 5 or 0.25 (not base units).")
    ],
    account: Annotated[
        str | None,
        typer.Option("--account", metavar="NAME", help="The account to credit (default: the logged-in one)."),
    ] = None,
    rpc: RpcOpt = None,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Wait until the registry credits the deposit."),
    ] = True,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Deposit tokens from your wallet into the registry's settlement contract, credited to your balance.

    Signs with your wallet (`mcpz wallet create`): one depositWithPermit transaction when the token takes
    permits, else approve then deposit. The registry credits it after its confirmations.
    """
    import time

    from mcpz.cli.prompts import unlock_wallet
    from mcpz.client import billing
    from mcpz.client.chain import SettlementInfo, deposit
    from mcpz.config import Settings
    from mcpz.money import format_amount, parse_amount

    async def ask(client: RegistryClient) -> tuple[SettlementInfo, Balance]:
        try:
            info = SettlementInfo.from_json(await client.json("GET", "/v1/billing/settlement"))
        except NotFoundError:
            raise UsageError(
                "this registry does not take deposits (settlement is not configured)",
                hint="deposit on a registry whose operator set up settlement (docs/settlement.md)",
            ) from None
        return info, await billing.balance(client)

    if parse_amount(amount) <= 0:  # refuse a bad amount before asking anyone anything
        raise UsageError("the amount to deposit must be more than 0")
    url = rpc or Settings.load().chain_rpc
    if not url:
        raise UsageError(
            "no chain RPC URL to send the deposit through",
            hint="pass --rpc URL, set MCPZ_CHAIN_RPC, or `mcpz config set chain_rpc URL`",
        )
    info, before = _billing(registry, token, ask)
    units = parse_amount(amount, decimals=info.decimals)
    to = account or before.account
    key = unlock_wallet()

    def money(n: int) -> str:
        return format_amount(n, decimals=info.decimals, currency=before.currency)

    done = deposit(url, info, key, to, units, on_sent=lambda h: out().info(f"sent {h}"))
    out().info(
        f"mined in block {done.block}; the registry credits it after {info.confirmations} confirmations"
    )
    result: dict[str, Any] = {
        "tx_hash": done.tx_hash,
        "block": done.block,
        "from": done.sender,
        "account": to,
        "amount": units,
        "method": done.method,
        "decimals": info.decimals,
        "credited": False,
    }
    # The balance is only ours to read when crediting the logged-in account.
    if wait and to == before.account:
        deadline = time.monotonic() + DEPOSIT_WAIT
        while True:
            now = _billing(registry, token, billing.balance)
            if now.available >= before.available + units:
                result.update(credited=True, available=now.available)
                break
            if time.monotonic() > deadline:
                raise NetworkError(
                    f"the registry has not credited {done.tx_hash} within {DEPOSIT_WAIT:g} s",
                    hint="it will once the chain confirms it; see `mcpz billing balance`",
                )
            time.sleep(1.0)
    lines = [f"deposited {money(units)} to {to}: {done.tx_hash}"]
    if result["credited"]:
        lines.append(f"credited; available {money(result['available'])}")
    out().lines(result, lambda: lines)


# --- payouts: list, claim, verify against the chain ----------------------------------------------


def _rpc_url(rpc: str | None, what: str) -> str:
    from mcpz.config import Settings

    url = rpc or Settings.load().chain_rpc
    if not url:
        raise UsageError(
            f"no chain RPC URL to {what}",
            hint="pass --rpc URL, set MCPZ_CHAIN_RPC, or `mcpz config set chain_rpc URL`",
        )
    return url


def _my_payouts(registry: str | None, token: str | None) -> tuple[Payouts, Balance]:
    from mcpz.client import billing

    async def ask(client: RegistryClient) -> tuple[Payouts, Balance]:
        try:
            found = await billing.payouts(client)
        except NotFoundError:
            raise UsageError(
                "this registry pays nothing out on chain (settlement is not configured)",
                hint="its operator sets it up (docs/settlement.md)",
            ) from None
        return found, await billing.balance(client)

    return _billing(registry, token, ask)


def _leaf(p: Payout) -> Leaf:
    from mcpz.client.chain import Leaf

    return Leaf(p.batch_id, p.index, p.address, p.amount, tuple(p.proof))


@billing_app.command("payouts")
def payouts_command(
    proof: Annotated[bool, typer.Option("--proof", help="Show each payout's Merkle proof.")] = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Your payouts: each batch you are in, the amount, its state, and (with --proof) the Merkle proof
    that claims it and that `mcpz billing verify-payout` checks against the chain."""
    found, bal = _my_payouts(registry, token)

    def render(console: Any) -> None:
        from rich.table import Table

        if not found.payouts:
            console.print(
                "no payouts yet: earnings are paid out in batches once they are available", markup=False
            )
            return
        table = Table("batch", "amount", "state", "to", "transaction", box=None)
        for p in found.payouts:
            table.add_row(
                str(p.batch_id),
                _money(p.amount, bal.decimals, bal.currency),
                p.state,
                p.address,
                p.tx_hash or "-",
            )
        console.print(table)
        if proof:
            for p in found.payouts:
                console.print(f"batch {p.batch_id} leaf {p.index} root {p.root}", markup=False)
                for sibling in p.proof:
                    console.print(f"  {sibling}", markup=False)

    data = found.to_dict()
    if not proof:
        data = {**data, "payouts": [{k: v for k, v in p.items() if k != "proof"} for p in data["payouts"]]}
    out().data(data, render)


@billing_app.command("claim")
def claim_command(
    batch: Annotated[
        int | None, typer.Argument(metavar="[BATCH]", help="One batch (default: every claimable one).")
    ] = None,
    rpc: RpcOpt = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Claim your payouts on chain: your wallet signs one transaction (claim, or claimMany for several
    batches) and the tokens go to the payout address."""
    from mcpz.cli.prompts import unlock_wallet
    from mcpz.client.chain import claim, is_claimed

    url = _rpc_url(rpc, "send the claim through")
    found, bal = _my_payouts(registry, token)
    chosen = [p for p in found.payouts if batch is None or p.batch_id == batch]
    if batch is not None and not chosen:
        raise UsageError(f"you have no payout in batch {batch}", hint="see `mcpz billing payouts`")
    waiting = [p for p in chosen if not p.claimable]
    ready = [p for p in chosen if p.claimable]
    paid = is_claimed(url, found.contract, [_leaf(p) for p in ready]) if ready else []
    todo = [p for p, done in zip(ready, paid, strict=True) if not done]
    if not todo:
        if waiting:
            raise UsageError(
                f"batch {waiting[0].batch_id} is {waiting[0].state}: not claimable until it is confirmed",
                hint="try again after its confirmations",
            )
        out().data({"claimed": [], "tx_hash": None}, lambda c: c.print("nothing to claim", markup=False))
        return
    key = unlock_wallet()
    tx_hash, block = claim(
        url,
        found.chain_id,
        found.contract,
        key,
        [_leaf(p) for p in todo],
        on_sent=lambda h: out().info(f"sent {h}"),
    )
    total = sum(p.amount for p in todo)
    batches = ", ".join(str(p.batch_id) for p in todo)
    said = f"claimed {_money(total, bal.decimals, bal.currency)} from batch {batches}"
    out().data(
        {"claimed": [p.batch_id for p in todo], "amount": total, "tx_hash": tx_hash, "block": block},
        lambda c: c.print(f"{said}: {tx_hash}", markup=False),
    )


@billing_app.command("verify-payout")
def verify_payout_command(
    batch: Annotated[int, typer.Argument(metavar="BATCH", help="The batch to check.")],
    rpc: RpcOpt = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Check your payout in BATCH against the root committed on chain, reading the chain directly: the
    registry gives the leaf and its proof, the chain alone decides whether they hold."""
    from mcpz.client.chain import PayoutMismatch, verify_payout

    url = _rpc_url(rpc, "read the chain through")
    found, bal = _my_payouts(registry, token)
    mine = [p for p in found.payouts if p.batch_id == batch]
    if not mine:
        raise UsageError(f"you have no payout in batch {batch}", hint="see `mcpz billing payouts`")
    p = mine[0]
    check = verify_payout(url, found.contract, _leaf(p))
    payload = {
        "batch_id": batch,
        "index": p.index,
        "address": p.address,
        "amount": p.amount,
        "root_on_chain": check.root,
        "committed": check.committed,
        "proof_ok": check.proof_ok,
        "claimed": check.claimed,
        "ok": check.ok,
    }
    amount = _money(p.amount, bal.decimals, bal.currency)
    if not check.committed:
        said = f"batch {batch} is not committed on chain {found.chain_id} (contract {found.contract})"
    elif not check.proof_ok:
        said = f"the proof of {amount} to {p.address} does NOT lead to batch {batch}'s root {check.root}"
    else:
        state = "claimed" if check.claimed else "not claimed yet"
        said = f"verified on chain: {amount} to {p.address} is in batch {batch} (root {check.root}); {state}"
    if not check.ok:
        if out().json:
            out().data(payload, lambda c: None)
        raise PayoutMismatch(
            said, hint="the registry's record and the chain disagree: keep this and ask its operator"
        )
    out().data(payload, lambda c: c.print(said, markup=False))


# --- withdraw on chain ---------------------------------------------------------------------------


@billing_app.command("withdraw")
def withdraw_command(
    amount: Annotated[
        str | None,
        typer.Argument(metavar="AMOUNT", help="Tokens to take back, e.g. 5 or 0.25 (not base units)."),
    ] = None,
    voucher: Annotated[
        int | None,
        typer.Option(
            "--voucher", metavar="ID", min=1, help="Send a voucher issued before (its transaction failed)."
        ),
    ] = None,
    rpc: RpcOpt = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Take unspent balance back to your wallet: the registry signs a voucher, your wallet sends it.

    The voucher pays the wallet you signed in with (`mcpz login --wallet`) and is usable once, until
    it expires; its amount is held off your balance meanwhile, and comes back if it expires unused.
    """
    from mcpz.cli.prompts import unlock_wallet
    from mcpz.client import billing
    from mcpz.config import Settings
    from mcpz.money import format_amount, parse_amount

    if (amount is None) == (voucher is None):
        raise UsageError("give AMOUNT, or --voucher ID to send a voucher issued before", hint="see --help")
    if amount is not None and parse_amount(amount) <= 0:  # a bad amount is refused before any request
        raise UsageError("the amount to withdraw must be more than 0")
    url = rpc or Settings.load().chain_rpc
    if not url:
        raise UsageError(
            "no chain RPC URL to send the withdrawal through",
            hint="pass --rpc URL, set MCPZ_CHAIN_RPC, or `mcpz config set chain_rpc URL`",
        )
    key = unlock_wallet()

    async def go(client: RegistryClient) -> billing.Withdrawn:
        units = None
        if amount is not None:
            units = parse_amount(amount, decimals=(await billing.settlement(client)).decimals)
        return await billing.withdraw(
            client, url, key, units, voucher_id=voucher, on_sent=lambda h: out().info(f"sent {h}")
        )

    done = _billing(registry, token, go)

    def money(n: int) -> str:
        return format_amount(n, decimals=done.decimals, currency=done.currency)

    out().lines(
        done.to_json(),
        lambda: [
            f"withdrew {money(done.voucher.amount)} to {done.voucher.address} in block {done.block}: "
            f"{done.tx_hash}",
            f"available {money(done.available)}",
        ],
    )


@billing_app.command("withdrawals")
def withdrawals_command(registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Your withdrawal vouchers, newest first: amount, state (issued, withdrawn, expired), expiry."""
    from mcpz.client import billing

    async def go(client: RegistryClient) -> tuple[list[billing.Withdrawal], Balance]:
        return await billing.withdrawals(client), await billing.balance(client)

    found, money = _billing(registry, token, go)

    def line(v: billing.Withdrawal) -> str:
        amount = _money(v.amount, money.decimals, money.currency)
        if v.state == "issued":
            return f"{v.id}  {amount}  issued, usable until {_when(v.expiry * 1_000_000)}"
        return f"{v.id}  {amount}  {v.state}" + (f"  {v.tx_hash}" if v.tx_hash else "")

    out().lines([v.to_dict() for v in found], lambda: [line(v) for v in found] or ["no withdrawals"])
