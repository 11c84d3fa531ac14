"""`mcpz login | logout | whoami | keys ...`: credentials for a registry."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from mcpz.cli.common import RegistryOpt, TokenOpt, run, settings, with_client
from mcpz.cli.output import out
from mcpz.errors import UsageError

if TYPE_CHECKING:
    from mcpz.client.models import SessionToken, WhoAmI
    from mcpz.keys.wallet import Wallet

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
keys_app = typer.Typer(help="API keys of your account.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _read_secret() -> str:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("token: ").strip()
    return sys.stdin.readline().strip()


@app.command("login")
def login(
    token: Annotated[
        bool, typer.Option("--token", help="Read a token from the prompt or standard input.")
    ] = False,
    wallet: Annotated[
        bool, typer.Option("--wallet", help="Sign in with your wallet (Sign-In with Ethereum).")
    ] = False,
    create_wallet: Annotated[
        bool,
        typer.Option(
            "--create-wallet",
            help="With --wallet: make a wallet first if there is none (passphrase from "
            "MCPZ_WALLET_PASSPHRASE, else asked twice). On a terminal login offers this itself.",
        ),
    ] = False,
    registry: RegistryOpt = None,
) -> None:
    """Log in to a registry and keep the token (OS keyring; a 0600 file where there is none).

    Each registry keeps its own token, and the registry of the latest login becomes the default
    for later commands (when neither --registry nor MCPZ_REGISTRY names one); `mcpz whoami` lists
    every registry logged into. Example: `mcpz login --wallet --registry https://registry.example`.
    """
    from mcpz.client.registry import connect
    from mcpz.client.signin import finish_login

    if token == wallet:
        raise UsageError(
            "say how to log in: --wallet or --token",
            hint="`mcpz login --wallet` signs in with your wallet; `--token` reads a token from stdin",
        )
    if create_wallet and not wallet:
        raise UsageError("--create-wallet goes with --wallet", hint="mcpz login --wallet --create-wallet")
    url = settings(registry).registry
    if wallet:
        _login_with_wallet(url, create_wallet)
        return
    secret = _read_secret()
    if not secret:
        raise UsageError("no token given", hint="pipe it in: `echo $TOKEN | mcpz login --token`")

    async def check() -> WhoAmI:
        async with connect(url, secret) as client:
            return await client.whoami()

    who = run(check)
    where = finish_login(url, secret, who.account, warn=out().warn)
    out().data(
        {
            "registry": url,
            "account": who.account,
            "stored_in": "keyring" if where == "keyring" else "file",
            "default": True,
        },
        lambda c: c.print(f"logged in to {url} as {who.account}", markup=False),
    )


def _wallet_for_login(create: bool) -> tuple[Wallet, str | None]:
    """The user's wallet, made now if there is none and the user agrees (or passed --create-wallet);
    with the passphrase when it was just chosen, so that login does not ask for it again."""
    from mcpz.cli.prompts import interactive, new_passphrase
    from mcpz.keys.wallet import Wallet, keystore_path

    if Wallet.exists():
        return Wallet.load(), None
    path = keystore_path()
    if not create:
        if not interactive():
            raise UsageError(
                f"no wallet at {path}",
                hint="pass --create-wallet to make one now (passphrase from MCPZ_WALLET_PASSPHRASE), "
                "or run `mcpz wallet create`",
            )
        if not typer.confirm(f"no wallet at {path}; create one now?", default=True, err=True):
            raise UsageError("login needs a wallet", hint="create one with `mcpz wallet create`")
    passphrase = new_passphrase()
    made = Wallet.create(passphrase)
    out().info(f"created wallet {made.address} ({made.path}); back it up with `mcpz wallet export`")
    return made, passphrase


def _login_with_wallet(url: str, create: bool) -> None:
    from mcpz.cli.prompts import unlock_wallet
    from mcpz.client.registry import connect
    from mcpz.client.signin import finish_login, sign_in

    found, passphrase = _wallet_for_login(create)
    account = found.unlock(passphrase) if passphrase is not None else unlock_wallet(found)

    async def call() -> SessionToken:
        async with connect(url) as client:
            return await sign_in(client, account)

    answer = run(call)
    where = finish_login(url, answer.token, answer.account, warn=out().warn)
    shown = {k: v for k, v in answer.to_dict().items() if k != "token"}
    shown.update(registry=url, stored_in="keyring" if where == "keyring" else "file", default=True)
    out().data(
        shown,
        lambda c: c.print(f"logged in to {url} as {answer.account} ({answer.address})", markup=False),
    )


@app.command("logout")
def logout(
    registry: RegistryOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Log out of every registry.")] = False,
) -> None:
    """Forget the stored token for a registry (the default one unless --registry), or for all.

    Example: `mcpz logout --registry https://registry.example`.
    """
    from mcpz.client.signin import logout as forget
    from mcpz.credentials import logins

    urls = [login.registry for login in logins()] if all_ else [settings(registry).registry]
    removed = {url: forget(url) for url in urls}

    def render(console: Console) -> None:
        for url, gone in removed.items():
            console.print(f"logged out of {url}" if gone else f"no stored token for {url}", markup=False)
        if not removed:
            console.print("not logged in anywhere", markup=False)

    out().data([{"registry": url, "removed": gone} for url, gone in removed.items()], render)


@app.command("whoami")
def whoami(registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """The account, its namespaces, and this token's scopes and expiry; every registry logged into.

    Example: `mcpz whoami --registry https://registry.example`.
    """
    from mcpz.credentials import logins

    data = with_client(registry, token, lambda c: c.whoami(), need_token=True).to_dict()
    url = settings(registry).registry
    data["registry"] = url
    data["logins"] = [login.to_dict() for login in logins()]

    def render(console: Console) -> None:
        console.print(f"registry:   {url}", markup=False)
        console.print(f"account:    {data['account']}", markup=False)
        console.print(f"namespaces: {', '.join(data['namespaces']) or '-'}", markup=False)
        console.print(f"scopes:     {', '.join(data['scopes'])}", markup=False)
        console.print(f"expires:    {data['expires_at'] or 'never'}", markup=False)
        if data["logins"]:
            console.print("logged in to:", markup=False)
            for entry in data["logins"]:
                mark = " (default)" if entry["default"] else ""
                console.print(f"  {entry['registry']}  {entry['account']}{mark}", markup=False)

    out().data(data, render)


@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option("--scope", help="Comma-separated scopes, at most your own.")],
    name: Annotated[str, typer.Option("--name", help="A label to tell keys apart.")] = "",
    expires_days: Annotated[
        int | None, typer.Option("--expires-days", min=1, help="Lifetime in days.")
    ] = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create an API key; its secret is printed once.

    A key has at most your own scopes, except `node`: a wallet session may mint node keys, as a
    node runs only deployments of namespaces its account owns or is a member of. Example:
    `mcpz keys create --scope node --name laptop-node --expires-days 30`.
    """
    scopes = [s.strip() for s in scope.split(",") if s.strip()]
    data = with_client(registry, token, lambda c: c.create_key(scopes, name, expires_days), need_token=True)
    out().data(data.to_dict(), lambda c: c.print(data.token, markup=False))


@keys_app.command("list")
def keys_list(registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Your keys (never their secrets)."""
    data = with_client(registry, token, lambda c: c.list_keys(), need_token=True)

    def render(console: Console) -> None:
        table = Table("id", "name", "prefix", "scopes", "expires", "last used", "state", box=None)
        for k in data:
            table.add_row(
                str(k.id),
                k.name,
                k.prefix + "...",
                ",".join(k.scopes),
                (k.raw.get("expires_at") or "never")[:19],
                (k.raw.get("last_used_at") or "-")[:19],
                "revoked" if k.revoked else "active",
            )
        console.print(table)

    out().data([k.to_dict() for k in data], render)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="Key id from `mcpz keys list`.")],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Revoke a key: it stops working at once."""
    data = with_client(registry, token, lambda c: c.revoke_key(key_id), need_token=True)
    out().data(data.to_dict(), lambda c: c.print(f"revoked key {key_id}"))
