"""`mcpz registry ...`: serve a registry, and the operator's commands on its host."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mcpz.cli.output import out
from mcpz.cli.registry_payouts import payouts_app

if TYPE_CHECKING:
    from registry_server.settings import RegistrySettings

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
registry_app = typer.Typer(help="Run a registry, and bootstrap it on its own host.", no_args_is_help=True)
account_app = typer.Typer(
    help="Accounts (operator commands, run on the registry host).", no_args_is_help=True
)
token_app = typer.Typer(help="Tokens (operator commands, run on the registry host).", no_args_is_help=True)
registry_app.add_typer(account_app, name="account")
registry_app.add_typer(token_app, name="token")
registry_app.add_typer(payouts_app, name="payouts")
app.add_typer(registry_app, name="registry")

DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Data folder (default: the user data folder's registry/).")
]


def _settings(data: Path | None, **flags: Any) -> RegistrySettings:
    from registry_server.settings import RegistrySettings

    return RegistrySettings.load(data_dir=data, **flags)


@registry_app.command("serve")
def serve(
    data: DataOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    replica: Annotated[
        bool,
        typer.Option(
            "--replica",
            help="Run as one of several replicas sharing a PostgreSQL database (MCPZ_DATABASE_URL), "
            "NATS (MCPZ_NATS_URL) and the data folder (docs/scaling.md).",
        ),
    ] = False,
) -> None:
    """Serve the registry (HTTP API, git smart HTTP) until interrupted."""
    import logging

    from registry_server.serve import serve as run_server
    from registry_server.state import RegistryState

    settings = _settings(data, host=host, port=port, replica=True if replica else None)
    RegistryState.open(settings).close()  # migrate and fail loudly before binding the port
    url = f"http://{settings.host}:{settings.port}"
    # A line of the registry's JSON log (registry_server.logs), as everything it says while serving.
    run_server(
        settings,
        on_ready=lambda: logging.getLogger("registry_server.serve").info(
            "registry on %s (data: %s)", url, settings.data_dir, extra={"url": url}
        ),
    )


@registry_app.command("migrate")
def migrate(data: DataOpt = None) -> None:
    """Apply database migrations (serve also does this at start)."""
    from registry_server.state import RegistryState

    settings = _settings(data)
    RegistryState.open(settings).close()
    out().data(
        {"migrated": True, "database": _redact(settings.database_url)},
        lambda c: c.print("database is up to date"),
    )


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@account_app.command("create")
def account_create(
    name: Annotated[str, typer.Argument(help="Account name; also its first namespace.")], data: DataOpt = None
) -> None:
    """Create an account and the namespace of the same name."""
    from registry_server.accounts import service as accounts
    from registry_server.state import RegistryState

    state = RegistryState.open(_settings(data))
    try:
        with state.db.session() as session:
            account = accounts.create_account(session, name)
            payload = {"account": account.name, "namespaces": [account.name]}
    finally:
        state.close()
    out().data(payload, lambda c: c.print(f"created account {name} (namespace {name})"))


@token_app.command("create")
def token_create(
    account: Annotated[
        str, typer.Option("--account", help="Account the token acts for: its name, or its wallet address.")
    ],
    scope: Annotated[
        str, typer.Option("--scope", help="Comma-separated: read,publish,deploy,call,node,admin.")
    ],
    expires: Annotated[
        str | None, typer.Option("--expires", help='Lifetime, e.g. "30d", "12h"; "never".')
    ] = None,
    name: Annotated[str, typer.Option("--name", help="A label to tell keys apart.")] = "",
    data: DataOpt = None,
) -> None:
    """Create a token and print it (shown once; only its hash is stored)."""
    from registry_server.accounts import service as accounts
    from registry_server.state import RegistryState

    settings = _settings(data)
    request = accounts.TokenRequest.parse(scope, expires, settings.default_token_days)
    state = RegistryState.open(settings)
    try:
        with state.db.session() as session:
            issued = accounts.issue_token(session, account, request, name=name)
    finally:
        state.close()
    # The secret is data the operator asked for: it goes to stdout, and nowhere else.
    out().data(issued.to_dict(), lambda c: c.print(issued.secret, markup=False))


@registry_app.command("tier")
def tier(
    account: Annotated[str, typer.Argument(help="The account: its name, or its wallet address.")],
    tier: Annotated[
        str | None, typer.Argument(help="The tier to give it (a [tiers.NAME] of the settings); none: show.")
    ] = None,
    data: DataOpt = None,
) -> None:
    """Show an account's platform tier and its limits, or set it (the gateway applies it within seconds)."""
    from registry_server.billing import service_tiers
    from registry_server.state import RegistryState

    settings = _settings(data)
    state = RegistryState.open(settings)
    try:
        with state.db.session() as session:
            if tier is None:
                view = service_tiers.show_tier(session, account, settings.tiers, settings.default_tier)
            else:
                view = service_tiers.set_tier(session, account, tier, settings.tiers, settings.default_tier)
    finally:
        state.close()
    limits = view.tier.to_dict()
    del limits["name"]
    payload = {"account": view.account, "tier": view.tier.name, "assigned": view.assigned, "limits": limits}

    def render(c: Any) -> None:
        shown = ", ".join(f"{k.replace('_', ' ')} {v or 'unlimited'}" for k, v in limits.items())
        verb = "now has" if tier is not None else "has"
        default = "" if view.assigned else " (the default)"
        c.print(f"{view.account} {verb} tier {view.tier.name}{default}: {shown}", markup=False)

    out().data(payload, render)


def _expiry_us(text: str, now: datetime) -> int:
    """`30d` (from now) or an ISO 8601 date/time -> Unix microseconds; it must lie in the future."""
    import re

    from mcpz.errors import UsageError
    from mcpz.instants import parse_instant

    age = re.fullmatch(r"(\d+)\s*([hdw])", text.strip().lower())
    if age:
        hours = int(age[1]) * {"h": 1, "d": 24, "w": 168}[age[2]]
        try:
            moment = now + timedelta(hours=hours)
        except OverflowError:
            raise UsageError(f'--expires "{text}" is too far away') from None
    else:
        moment = parse_instant(text, now)
    if moment <= now:
        raise UsageError(
            f'--expires "{text}" is in the past', hint="give a lifetime such as 30d, or a later date"
        )
    return round(moment.timestamp()) * 1_000_000


@registry_app.command("credit")
def credit(
    account: Annotated[
        str, typer.Argument(metavar="ACCOUNT", help="The account: its name or wallet address.")
    ],
    amount: Annotated[
        str, typer.Argument(metavar="AMOUNT", help="How much, in the token's units, e.g. 25 or 0.50.")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why: kept with the credit.")] = "",
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", metavar="30d|DATE", help="Promotional credit: what is unspent is taken back then."
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", metavar="KEY", help="Idempotency key: a second credit with it changes nothing."
        ),
    ] = None,
    data: DataOpt = None,
) -> None:
    """Credit an account's balance (operator, on the registry host); prints the new balance."""
    from mcpz.errors import UsageError
    from mcpz.money import format_amount, parse_amount
    from registry_server.accounts.namespaces import find_account
    from registry_server.billing import service
    from registry_server.billing.ledger import LedgerError
    from registry_server.state import RegistryState

    settings = _settings(data)
    units = parse_amount(amount, decimals=settings.currency_decimals)
    if units == 0:
        raise UsageError("a credit must be more than 0")
    expires_us = _expiry_us(expires, datetime.now(UTC)) if expires is not None else None
    state = RegistryState.open(settings)
    try:
        with state.db.session() as session:
            found = find_account(session, account)
            try:
                used_key, new = service.credit(
                    session, found.id, units, reason=reason, key=key, expires_us=expires_us
                )
            except LedgerError:
                raise UsageError(
                    f'--key "{key}" was already used for another credit or amount',
                    hint="give each credit a key of its own",
                ) from None
            now = service.balance_of(session, found.id)
            name = found.name
    finally:
        state.close()

    def money(units: int) -> str:
        return format_amount(units, decimals=settings.currency_decimals, currency=settings.currency)

    o = out()
    if not new:
        o.info(f"credit {used_key} was already made: nothing changed")
    payload = {
        "account": name,
        "credited": units if new else 0,
        "key": used_key,
        "expires_us": expires_us,
        "available": now.available,
        "currency": settings.currency,
        "decimals": settings.currency_decimals,
    }
    o.lines(
        payload,
        lambda: [f"credited {money(units if new else 0)} to {name}: available {money(now.available)}"],
    )


# -- billing: refunds and closing a month (operator commands; docs/invoices.md)


@registry_app.command("refund")
def refund(
    event: Annotated[
        str, typer.Argument(metavar="EVENT_ID", help="The charge's event id (`mcpz billing usage`).")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why, kept with the ledger transaction.")] = "",
    data: DataOpt = None,
) -> None:
    """Refund one charge while its earnings are pending (inside the refund window); a credit note
    is issued when its month was already invoiced. Refunding again changes nothing."""
    from mcpz.money import format_amount
    from registry_server.billing import refunds
    from registry_server.billing.service import DAY_US
    from registry_server.state import RegistryState

    settings = _settings(data)
    state = RegistryState.open(settings)
    try:
        with state.db.session() as session:
            done = refunds.refund(session, event, int(settings.refund_window_days * DAY_US), reason=reason)
    finally:
        state.close()
    amount = format_amount(done.amount, decimals=settings.currency_decimals, currency=settings.currency)
    note = f"; credit note {done.credit_note}" if done.credit_note is not None else ""
    said = f"refunded {event}: {amount}{note}" if done.new else f"{event} was refunded before{note}"
    out().data(done.to_dict(), lambda c: c.print(said, markup=False))


@registry_app.command("close-period")
def close_period(
    period: Annotated[
        str | None, typer.Argument(metavar="[YYYY-MM]", help="A past month (default: last month).")
    ] = None,
    data: DataOpt = None,
) -> None:
    """Finalize a past month's invoices now (the registry does it itself after the month ends)."""
    from registry_server.billing import invoices
    from registry_server.billing.service import now_us
    from registry_server.state import RegistryState

    month = period or invoices.previous_period(now_us())
    state = RegistryState.open(_settings(data))
    try:
        with state.db.session() as session:
            numbers = invoices.close_period(session, month)
    finally:
        state.close()
    said = (
        f"closed {month}: invoices {numbers[0]}-{numbers[-1]}" if numbers else f"{month} was closed already"
    )
    out().data({"period": month, "invoices": numbers}, lambda c: c.print(said, markup=False))


@registry_app.command("gc")
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")] = False,
    grace: Annotated[
        str | None,
        typer.Option(
            "--grace",
            metavar="2w|3d|now",
            help="Keep unreachable git objects younger than this (default: the gc_grace setting).",
        ),
    ] = None,
    data: DataOpt = None,
) -> None:
    """Collect garbage: unreachable git objects, quarantines, empty repositories, expired rows.

    Safe while the registry serves; every published release stays reachable, yanked or not.
    """
    from mcpz.errors import UsageError
    from mcpz.sizes import human_bytes, parse_duration
    from registry_server.maintenance.service import collect_garbage
    from registry_server.state import RegistryState

    try:
        seconds = parse_duration(grace) if grace is not None else None
    except ValueError:
        raise UsageError(
            f'--grace "{grace}" is no duration', hint="give one such as 2w, 3d, 12h or now"
        ) from None
    state = RegistryState.open(_settings(data))
    try:
        report = collect_garbage(state, dry_run=dry_run, grace=seconds)
    finally:
        state.close()

    def render(c: Any) -> None:
        verb = "would free" if dry_run else "freed"
        for kind in report.kinds.values():
            if kind.count or kind.bytes:
                size = f", {human_bytes(kind.bytes)}" if kind.bytes else ""
                c.print(f"{kind.kind}: {kind.count}{size}", markup=False)
        for note in report.deferred:
            c.print(f"put off: {note}", markup=False)
        c.print(
            f"{verb} {human_bytes(report.total_bytes)} in {report.repositories} repositories", markup=False
        )

    out().data(report.to_dict(), render)
