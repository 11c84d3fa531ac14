"""`mcpz verify NAME@VERSION` (check a release's signature as a node would) and `mcpz sign NAME@VERSION`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mcpz.cli.common import RegistryOpt, TokenOpt, run, settings, token_for, with_client
from mcpz.cli.output import out
from mcpz.errors import UsageError
from mcpz.names import split_spec

if TYPE_CHECKING:
    from mcpz.client.models import Release
    from mcpz.client.registry import RegistryClient


def _spec(spec: str) -> tuple[str, str]:
    name, version = split_spec(spec)
    if version is None:
        raise UsageError(f'give the version: "{name}@VERSION"')
    return name, version


# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()


@app.command("verify")
def verify(
    spec: Annotated[str, typer.Argument(metavar="NAME@VERSION")],
    forget: Annotated[
        bool,
        typer.Option(
            "--forget",
            help="Forget the namespace's pinned key first (after checking a key change out of band).",
        ),
    ] = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Check that the namespace's owner key signed this release (the key is pinned on first use)."""
    from mcpz.client import namespaces
    from mcpz.client.registry import connect
    from mcpz.keys import trust

    name, version = _spec(spec)
    url = settings(registry).registry
    verifier = trust.Verifier(url, namespaces.trust_store())
    if forget and verifier.forget(name.split("/")[0]):
        out().info(f"forgot the pinned key of {name.split('/')[0]}")

    async def call() -> trust.VerifiedRelease:
        nonlocal version
        async with connect(url, token_for(url, token)) as client:
            version = await client.resolve_version(name, version)
            return await namespaces.verify_published(client, verifier, name, version)

    result = run(call)
    data = {
        "name": name,
        "version": version,
        "commit": result.commit,
        "signer": result.signer,
        "verified": True,
    }
    out().data(
        data,
        lambda c: c.print(
            f"verified {name} {version} ({result.commit[:12]}): signed by {result.signer}", markup=False
        ),
    )


@app.command("sign")
def sign(
    spec: Annotated[str, typer.Argument(metavar="NAME@VERSION")],
    path: Annotated[Path, typer.Argument(help="A local repository holding the release's commit.")] = Path(
        "."
    ),
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Sign a published release with your wallet (push does this for the releases it publishes)."""
    from mcpz.cli.prompts import unlock_wallet
    from mcpz.client import namespaces

    name, version = _spec(spec)
    account = unlock_wallet()
    asked = version

    async def call(client: RegistryClient) -> Release:
        exact = await client.resolve_version(name, asked)
        return await namespaces.sign_published(client, name, exact, path, account)

    release = with_client(registry, token, call)
    version = release.version
    data = {"name": name, "version": version, "commit": release.commit, "signer": account.address}
    out().data(data, lambda c: c.print(f"signed {name} {version} as {account.address}", markup=False))
