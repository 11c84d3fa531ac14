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
    registry: RegistryOpt = None,
) -> None:
    """Log in to a registry and keep the token (OS keyring; a 0600 file where there is none)."""
    from mcpz.credentials import store_token
    from mcpz.registry_client import connect

    if token == wallet:
        raise UsageError(
            "say how to log in: --wallet or --token",
            hint="`mcpz login --wallet` signs in with your wallet; `--token` reads a token from stdin",
        )
    url = settings(registry).registry
    if wallet:
        _login_with_wallet(url)
        return
    secret = _read_secret()
    if not secret:
        raise UsageError("no token given", hint="pipe it in: `echo $TOKEN | mcpz login --token`")

    async def check() -> WhoAmI:
        async with connect(url, secret) as client:
            return await client.whoami()

    who = run(check)
    where = store_token(url, secret, warn=out().warn)
    out().data(
        {
            "registry": url,
            "account": who.account,
            "stored_in": "keyring" if where == "keyring" else "file",
        },
        lambda c: c.print(f"logged in to {url} as {who.account}", markup=False),
    )


def _login_with_wallet(url: str) -> None:
    from mcpz.cli.prompts import unlock_wallet
    from mcpz.credentials import store_token
    from mcpz.registry_client import connect
    from mcpz.signin import sign_in

    account = unlock_wallet()

    async def call() -> SessionToken:
        async with connect(url) as client:
            return await sign_in(client, account)

    answer = run(call)
    where = store_token(url, answer.token, warn=out().warn)
    shown = {k: v for k, v in answer.to_dict().items() if k != "token"}
    shown.update(registry=url, stored_in="keyring" if where == "keyring" else "file")
    out().data(
        shown,
        lambda c: c.print(f"logged in to {url} as {answer.account} ({answer.address})", markup=False),
    )


@app.command("logout")
def logout(registry: RegistryOpt = None) -> None:
    """Forget the stored token for a registry."""
    from mcpz.credentials import delete_token

    url = settings(registry).registry
    removed = delete_token(url)
    out().data(
        {"registry": url, "removed": removed},
        lambda c: c.print(f"logged out of {url}" if removed else f"no stored token for {url}", markup=False),
    )


@app.command("whoami")
def whoami(registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """The account, its namespaces, and this token's scopes and expiry."""
    data = with_client(registry, token, lambda c: c.whoami(), need_token=True)

    def render(console: Console) -> None:
        console.print(f"account:    {data.account}", markup=False)
        console.print(f"namespaces: {', '.join(data.namespaces) or '-'}", markup=False)
        console.print(f"scopes:     {', '.join(data.scopes)}", markup=False)
        console.print(f"expires:    {data.raw.get('expires_at') or 'never'}", markup=False)

    out().data(data.to_dict(), render)


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
    """Create an API key; its secret is printed once."""
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
