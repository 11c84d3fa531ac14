"""`mcpz registry payouts ...` (mounted by cli/commands/registry.py): the operator's payout batches,
on the registry host (docs/settlement.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mcpz.cli.output import out

if TYPE_CHECKING:
    from registry_server.settings import RegistrySettings

payouts_app = typer.Typer(
    help="Creators' payouts in Merkle batches on the settlement chain (operator, on the registry host).",
    no_args_is_help=True,
)

DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Data folder (default: the user data folder's registry/).")
]


def _settings(data: Path | None) -> RegistrySettings:
    from registry_server.settings import RegistrySettings

    return RegistrySettings.load(data_dir=data)


def _money(units: int, settings: RegistrySettings) -> str:
    from mcpz.money import format_amount

    return format_amount(units, decimals=settings.currency_decimals, currency=settings.currency)


@payouts_app.command("run")
def run(
    wait: Annotated[
        float,
        typer.Option(
            "--wait", metavar="SECONDS", help="Keep driving the batch until it is final, at most this long."
        ),
    ] = 0.0,
    no_build: Annotated[
        bool, typer.Option("--no-build", help="Only drive the open batch; build no new one.")
    ] = False,
    data: DataOpt = None,
) -> None:
    """Build a payout batch of creators' available earnings and commit it on chain, or take the open
    batch a step further; prints where it stands."""
    from mcpz.errors import UsageError
    from registry_server.settlement import payouts
    from registry_server.settlement.chain import chain_of
    from registry_server.settlement.operator import load_operator
    from registry_server.state import RegistryState

    settings = _settings(data)
    chain = chain_of(settings)
    operator = load_operator(settings)
    if operator is None:
        raise UsageError(
            "no settlement operator key: payout batches are signed by it",
            hint="export MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY or set settlement_operator_keystore",
        )
    state = RegistryState.open(settings)
    try:
        chain.check()
        progress = payouts.run(state.db, chain, operator, settings, build_new=not no_build)
        deadline = time.monotonic() + wait
        while progress is not None and not progress.final and time.monotonic() < deadline:
            time.sleep(min(settings.settlement_poll_interval, max(deadline - time.monotonic(), 0.0)))
            progress = payouts.run(state.db, chain, operator, settings, build_new=False)
        with state.db.session() as session:
            batch = (
                None if progress is None else payouts.batch_row(session, chain.chain_id, progress.batch_id)
            )
            shown = _batch_dict(batch) if batch is not None else None
    finally:
        state.close()
    o = out()
    if progress is None or shown is None:
        minimum = _money(settings.settlement_payout_minimum, settings)
        o.data(
            {"batch": None}, lambda c: c.print(f"nothing to pay: no creator has {minimum} or more available")
        )
        return
    note = f" ({progress.note})" if progress.note else ""
    said = (
        f"batch {shown['batch_id']}: {shown['state']}, {shown['leaves']} creators, "
        f"{_money(shown['total'], settings)}{note}"
    )
    o.data(
        {"batch": shown, "note": progress.note, "steps": progress.steps},
        lambda c: c.print(said, markup=False),
    )


def _batch_dict(row: Any) -> dict[str, Any]:
    return {
        "batch_id": row.batch_id,
        "state": row.state,
        "root": row.root,
        "total": row.total,
        "leaves": row.leaves,
        "nonce": row.nonce,
        "tx_hash": row.receipt_tx,
        "block": row.receipt_block,
        "note": row.note,
        "created_us": row.created_us,
        "final_us": row.final_us,
    }


@payouts_app.command("list")
def list_batches(data: DataOpt = None) -> None:
    """The payout batches, newest first: state, creators, total, the committing transaction."""
    from registry_server.settlement import payouts
    from registry_server.settlement.chain import chain_of
    from registry_server.state import RegistryState

    settings = _settings(data)
    chain_id = chain_of(settings).chain_id
    state = RegistryState.open(settings)
    try:
        with state.db.session() as session:
            shown = [_batch_dict(b) for b in payouts.batches_of(session, chain_id)]
    finally:
        state.close()

    def render(c: Any) -> None:
        from rich.table import Table

        if not shown:
            c.print("no payout batches yet", markup=False)
            return
        table = Table("batch", "state", "creators", "total", "transaction", "note", box=None)
        for b in shown:
            table.add_row(
                str(b["batch_id"]), b["state"], str(b["leaves"]), _money(b["total"], settings),
                b["tx_hash"] or "-", b["note"] or "",
            )  # fmt: skip
        c.print(table)

    out().data({"batches": shown}, render)


@payouts_app.command("reconcile")
def reconcile(data: DataOpt = None) -> None:
    """Compare the ledger with the chain (deposits, committed payouts, withdrawals); exits 1 on any
    difference."""
    from mcpz.errors import McpzError
    from registry_server.settlement.chain import chain_of
    from registry_server.settlement.reconcile import reconcile as compare
    from registry_server.state import RegistryState

    settings = _settings(data)
    chain = chain_of(settings)
    state = RegistryState.open(settings)
    try:
        chain.check()
        report = compare(state.db, chain, settings.settlement_confirmations, settings.settlement_start_block)
    finally:
        state.close()
    payload = {
        "ok": report.ok,
        "chain_id": report.chain_id,
        "to_block": report.to_block,
        "rows": [
            {"what": r.what, "ledger": r.ledger, "chain": r.chain, "difference": r.difference}
            for r in report.rows
        ],
        "problems": report.problems,
        "in_flight": report.in_flight,
        "claimed": report.claimed,
    }

    def render(c: Any) -> None:
        from rich.table import Table

        table = Table("", "ledger", "chain", "difference", box=None)
        for r in report.rows:
            table.add_row(r.what, _money(r.ledger, settings), _money(r.chain, settings), str(r.difference))
        c.print(table)
        for problem in report.problems:
            c.print(f"problem: {problem}", markup=False)
        c.print(
            f"up to block {report.to_block}; in flight {_money(report.in_flight, settings)}; "
            f"claimed by creators {_money(report.claimed, settings)}",
            markup=False,
        )

    out().data(payload, render)
    if not report.ok:
        raise McpzError("the ledger and the chain differ", hint="see the rows and problems above")
