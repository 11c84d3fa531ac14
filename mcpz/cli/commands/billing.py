"""`mcpz billing verify-receipt`."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from mcpz.cli.common import run
from mcpz.cli.output import out
from mcpz.errors import NotFoundError, UsageError

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
billing_app = typer.Typer(
    help="Billing: what paid calls cost, and the signed receipts that prove it.",
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
