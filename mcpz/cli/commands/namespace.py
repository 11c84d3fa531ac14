"""`mcpz namespace create | show | add-member | remove-member | transfer | rotate-key`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from mcpz.cli.common import RegistryOpt, TokenOpt, run, settings, token_for, with_client
from mcpz.cli.output import out
from mcpz.client.models import NamespaceInfo
from mcpz.client.registry import RegistryClient
from mcpz.errors import AuthError, UsageError

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
namespace_app = typer.Typer(help="Namespaces: claim them, share them, hand them over.", no_args_is_help=True)
app.add_typer(namespace_app, name="namespace")

ROLES = ("owner", "publisher")
T = TypeVar("T")


def _with_client(registry: str | None, token: str | None, fn: Callable[[RegistryClient], Awaitable[T]]) -> T:
    from mcpz.client.registry import connect

    url = settings(registry).registry
    secret = token_for(url, token)
    if secret is None:
        raise AuthError(f"no token for {url}", hint="run `mcpz login --wallet` first")

    async def call() -> T:
        async with connect(url, secret) as client:
            return await fn(client)

    return run(call)


def _render_namespace(data: NamespaceInfo) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        console.print(f"namespace: {data.name}", markup=False)
        console.print(f"owner:     {data.owner} ({data.owner_address or 'no wallet'})", markup=False)
        for member in data.members[1:]:
            console.print(f"  {member.role:<10} {member.account}", markup=False)
        console.print(f"key rotations: {data.key_sequence}", markup=False)

    return render


@namespace_app.command("create")
def create(name: str, registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Claim a namespace for your account."""
    data = _with_client(registry, token, lambda c: c.create_namespace(name))
    out().data(data.to_dict(), lambda c: c.print(f"created namespace {name}", markup=False))


@namespace_app.command("show")
def show(name: str, registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Owner, members and key history of a namespace."""
    data = with_client(registry, token, lambda c: c.namespace(name))
    out().data(data.to_dict(), _render_namespace(data))


@namespace_app.command("add-member")
def add_member(
    namespace: str,
    account: Annotated[str, typer.Argument(help="Account name or wallet address.")],
    role: Annotated[str, typer.Option("--role", help="owner or publisher.")] = "publisher",
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Add a member (or change its role): publishers publish; owners also manage members."""
    if role not in ROLES:
        raise UsageError(f'unknown role "{role}"', hint="use --role owner or --role publisher")
    data = _with_client(registry, token, lambda c: c.set_member(namespace, account, role))
    out().data(data.to_dict(), lambda c: c.print(f"{account} is now {role} of {namespace}", markup=False))


@namespace_app.command("remove-member")
def remove_member(
    namespace: str,
    account: Annotated[str, typer.Argument(help="Account name or wallet address.")],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Remove a member."""
    data = _with_client(registry, token, lambda c: c.remove_member(namespace, account))
    out().data(data.to_dict(), lambda c: c.print(f"removed {account} from {namespace}", markup=False))


@namespace_app.command("transfer")
def transfer(
    namespace: str,
    account: Annotated[str, typer.Argument(help="The new owner's wallet address.")],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Hand the namespace to another account; your wallet signs the key rotation nodes will check."""
    from mcpz.cli.prompts import prompt_for
    from mcpz.client import namespaces
    from mcpz.keys.wallet import wallet_key

    signer = wallet_key(prompt_for)()
    data = _with_client(registry, token, lambda c: namespaces.transfer(c, namespace, account, signer))
    out().data(data.to_dict(), lambda c: c.print(f"{namespace} now belongs to {data.owner}", markup=False))


@namespace_app.command("rotate-key")
def rotate_key(registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Move your account to a new wallet key; the old key signs the move of every namespace you own.

    The new key is kept under the same passphrase; the old keystore is kept as
    `retired-<address>.json` beside it. Nodes follow the signed rotation; the old key is listed
    as revoked.
    """
    from mcpz.cli.prompts import prompt_for
    from mcpz.client import namespaces
    from mcpz.keys import wallet

    current = wallet.Wallet.load()
    passphrase = wallet.get_passphrase(current.address, prompt=prompt_for(current.address))
    done = _with_client(registry, token, lambda c: namespaces.rotate_wallet_key(c, current, passphrase))
    out().data(
        done.to_dict(),
        lambda c: c.print(
            f"rotated {done.old_address} -> {done.new_address} for {len(done.result.rotations)} "
            f"namespace(s); old keystore kept at {done.retired_keystore}",
            markup=False,
        ),
    )
