"""Wallet passphrases from the user: the prompts and the unlocking that several commands share."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from mcpz.errors import UsageError

if TYPE_CHECKING:
    from mcpz.keys.ethkeys import LocalAccount
    from mcpz.keys.wallet import Wallet


def interactive() -> bool:
    return sys.stdin.isatty()


def new_passphrase() -> str:
    """MCPZ_WALLET_PASSPHRASE, else a hidden prompt typed twice (only on a terminal)."""
    from mcpz.keys.wallet import PASSPHRASE_ENV, NoPassphrase

    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if not interactive():
        raise NoPassphrase(
            "a new wallet needs a passphrase", hint=f"set {PASSPHRASE_ENV}, or run in a terminal to be asked"
        )
    import getpass

    first = getpass.getpass("passphrase for the new wallet: ")
    if not first:
        raise UsageError("the passphrase may not be empty")
    if getpass.getpass("the same passphrase again: ") != first:
        raise UsageError("the two passphrases differ", hint="run the command again")
    return first


def prompt_for(address: str) -> Callable[[], str] | None:
    """A hidden prompt for the passphrase of wallet `address`, or None off a terminal."""
    if not interactive():
        return None

    def ask() -> str:
        import getpass

        return getpass.getpass(f"passphrase of wallet {address}: ")

    return ask


def load_wallet() -> Wallet:
    from mcpz.keys.wallet import Wallet

    return Wallet.load()


def unlock_wallet(wallet: Wallet | None = None) -> LocalAccount:
    """The user's wallet, unlocked: passphrase from the environment, the keyring, or a prompt."""
    from mcpz.keys.wallet import get_passphrase

    wallet = wallet or load_wallet()
    return wallet.unlock(get_passphrase(wallet.address, prompt=prompt_for(wallet.address)))
