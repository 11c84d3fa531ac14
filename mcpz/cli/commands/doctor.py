"""`mcpz doctor`: check that this machine is ready to publish and deploy, one line per check."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from mcpz.cli.common import RegistryOpt, TokenOpt, run, settings, token_for
from mcpz.cli.output import out

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()

MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


@app.command("doctor")
def doctor(
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            help="The namespace to check (default: the agent's in the current folder, else your first).",
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            "--wait", min=0, max=300, help="Seconds to wait for the registry to answer (one just started)."
        ),
    ] = 0.0,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Check the registry, your token and scopes, wallet, namespace, signing and nodes.

    Each line is a check, ok, warn (not set up yet) or FAIL (broken), with what to do next. Exits
    with the code of docs/errors.md of the first failed check (0 when none failed).
    Example: `mcpz doctor --namespace acme`.
    """
    from pathlib import Path

    from mcpz.cli.prompts import prompt_for
    from mcpz.client.doctor import Check, diagnose, exit_code, wallet_facts
    from mcpz.client.registry import connect
    from mcpz.errors import McpzError
    from mcpz.manifest import MANIFEST_FILE, load_manifest

    url = settings(registry).registry
    secret = token_for(url, token)
    if namespace is None and (Path.cwd() / MANIFEST_FILE).is_file():
        try:
            namespace = load_manifest(Path.cwd()).namespace
        except McpzError:
            namespace = None  # a broken manifest is `mcpz status`'s to report, not the doctor's
    facts = wallet_facts(prompt_for)

    async def main() -> list[Check]:
        async with connect(url, secret) as client:
            return await diagnose(
                client, has_token=secret is not None, wallet=facts, namespace=namespace, wait=wait
            )

    checks = run(main)

    def render(console: Console) -> None:
        for check in checks:
            console.print(f"{MARKS[check.status]}  {check.name:<10} {check.message}", markup=False)
            if check.status != "ok" and check.hint:
                console.print(f"      {'':<10} -> {check.hint}", markup=False)

    out().data({"registry": url, "checks": [c.to_dict() for c in checks]}, render)
    code = exit_code(checks)
    if code:
        raise typer.Exit(code)
