"""`mcpz wallet create | import | address | export`: the key that signs in and signs releases."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mcpz.cli.output import out
from mcpz.cli.prompts import interactive, load_wallet, new_passphrase, unlock_wallet
from mcpz.errors import UsageError

if TYPE_CHECKING:
    from mcpz.keys.wallet import Wallet

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
wallet_app = typer.Typer(
    help="Your Ethereum wallet: the key that signs in (`mcpz login --wallet`) and signs releases.",
    no_args_is_help=True,
)
app.add_typer(wallet_app, name="wallet")

RememberOpt = Annotated[
    bool, typer.Option("--remember", help="Keep the passphrase in the OS keyring (service mcpz-wallet).")
]


def _keep(wallet: Wallet, passphrase: str, remember: bool) -> bool:
    from mcpz.keys.wallet import remember_passphrase

    if not remember:
        return False
    kept = remember_passphrase(wallet.address, passphrase)
    if not kept:
        out().warn("no OS keyring is available: the passphrase was not kept")
    return kept


def _report(wallet: Wallet, verb: str, kept: bool) -> None:
    out().data(
        {"address": wallet.address, "path": str(wallet.path), "passphrase_in_keyring": kept},
        lambda c: c.print(f"{verb} wallet {wallet.address} ({wallet.path})", markup=False),
    )


@wallet_app.command("create")
def create(remember: RememberOpt = False) -> None:
    """Make a new key, encrypted with a passphrase (asked twice, or MCPZ_WALLET_PASSPHRASE)."""
    from mcpz.keys.wallet import Wallet, WalletExists, keystore_path

    if Wallet.exists():
        raise WalletExists(f"a wallet exists already at {keystore_path()}", hint="see `mcpz wallet address`")
    passphrase = new_passphrase()
    wallet = Wallet.create(passphrase)
    _report(wallet, "created", _keep(wallet, passphrase, remember))


def _read_private_key() -> str:
    if interactive():
        import getpass

        return getpass.getpass("private key (hex): ").strip()
    return sys.stdin.readline().strip()


@wallet_app.command("import")
def import_(
    keystore: Annotated[
        Path | None,
        typer.Option("--keystore", help="A JSON keystore file (kept as it is; its passphrase is asked for)."),
    ] = None,
    remember: RememberOpt = False,
) -> None:
    """Import a key: a JSON keystore file, or a private key read from the prompt or standard input."""
    from mcpz.keys.wallet import PASSPHRASE_ENV, NoPassphrase, Wallet

    if keystore is not None:
        try:
            text = keystore.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read {keystore}: {e.strerror}") from None
        passphrase = os.environ.get(PASSPHRASE_ENV, "")
        if not passphrase:
            if not interactive():
                raise NoPassphrase("the keystore needs its passphrase", hint=f"set {PASSPHRASE_ENV}")
            import getpass

            passphrase = getpass.getpass("passphrase of the keystore: ")
        wallet = Wallet.import_keystore(text, passphrase)
    else:
        if Wallet.exists():
            wallet = Wallet.load()
            raise UsageError(f"a wallet exists already ({wallet.address})", hint="see `mcpz wallet address`")
        key = _read_private_key()
        if not key:
            raise UsageError("no private key given", hint="pipe it in, or run in a terminal to be asked")
        passphrase = new_passphrase()
        wallet = Wallet.import_key(key, passphrase)
    _report(wallet, "imported", _keep(wallet, passphrase, remember))


@wallet_app.command("address")
def address() -> None:
    """The wallet's address (no passphrase needed)."""
    wallet = load_wallet()
    out().data(
        {"address": wallet.address, "path": str(wallet.path)},
        lambda c: c.print(wallet.address, markup=False),
    )


@wallet_app.command("export")
def export(
    private_key: Annotated[
        bool, typer.Option("--private-key", help="Print the raw private key instead of the keystore.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before printing a private key.")] = False,
) -> None:
    """Print the encrypted keystore JSON (safe to back up), or with --private-key the raw key."""
    wallet = load_wallet()
    if not private_key:
        sys.stdout.write(wallet.to_json() + "\n")
        return
    if not yes:
        if not interactive():
            raise UsageError("printing a private key needs confirmation", hint="pass --yes")
        if not typer.confirm(
            f"print the private key of {wallet.address}? Anyone who sees it controls the wallet",
            default=False,
            err=True,
        ):
            raise typer.Exit(1)
    account = unlock_wallet(wallet)
    key = "0x" + bytes(account.key).hex()
    out().data({"address": wallet.address, "private_key": key}, lambda c: c.print(key, markup=False))
