"""`mcpz verify NAME@VERSION` (check a release's signature as a node would) and `mcpz sign NAME@VERSION`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mcpz.cli.common import RegistryOpt, TokenOpt, run, settings, token_for, with_client
from mcpz.cli.output import out
from mcpz.errors import UsageError
from mcpz.names import AgentName


def _spec(spec: str) -> tuple[str, str]:
    name, _, version = spec.partition("@")
    AgentName.parse(name)
    if not version:
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
        async with connect(url, token_for(url, token)) as client:
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
    release = with_client(
        registry, token, lambda client: namespaces.sign_published(client, name, version, path, account)
    )
    data = {"name": name, "version": version, "commit": release.commit, "signer": account.address}
    out().data(data, lambda c: c.print(f"signed {name} {version} as {account.address}", markup=False))
