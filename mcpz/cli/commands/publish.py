"""`mcpz push | clone | pull | info | versions | yank | unyank`: agents in a registry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from mcpz.cli.common import RegistryOpt, TokenOpt, run, settings, token_for, with_client
from mcpz.cli.output import out
from mcpz.cli.transfer import transfer
from mcpz.errors import UsageError
from mcpz.names import split_spec

if TYPE_CHECKING:
    from mcpz.client.models import AgentInfo, Release
    from mcpz.client.registry import RegistryClient


def _name_and_version(spec: str) -> tuple[str, str | None]:
    return split_spec(spec)


# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()


@app.command("push")
def push(
    path: Annotated[Path, typer.Argument(help="Agent folder.")] = Path("."),
    registry: RegistryOpt = None,
    token: TokenOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the registry's branch.")] = False,
    no_sign: Annotated[
        bool, typer.Option("--no-sign", help="Publish without signing, even when a wallet exists.")
    ] = False,
    no_tools: Annotated[
        bool,
        typer.Option(
            "--no-tools",
            help="Do not start the agent to pin its tools/list in the signed release (for an agent "
            "that cannot start here); the first healthy replica's tools are then recorded as observed.",
        ),
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds the agent has to start and list its tools.")
    ] = None,
) -> None:
    """Push the current branch; publish the manifest's version if it is new, signed by your wallet.

    Signing starts the agent here (as `mcpz tools --local` does) and pins its tools/list to the
    release: nodes refuse replicas whose tools differ. --no-tools skips that.
    """
    from mcpz.cli.prompts import prompt_for
    from mcpz.client import publish
    from mcpz.keys.wallet import wallet_key

    url = settings(registry).registry
    secret = token_for(url, token)
    output = out()
    # The wallet is unlocked only when this push publishes a release, before any object is sent.
    signer = None if no_sign else wallet_key(prompt_for)
    with transfer("pushing") as shown:
        step = shown.step
        progress = (lambda _phase, done, total: step(done, total)) if step is not None else None
        result = publish.push(
            path,
            url,
            secret,
            force=force,
            progress=progress,
            sent=shown.moved,
            signer=signer,
            tools=not no_tools,
            tools_timeout=timeout,
        )
    for warning in result.warnings:
        output.warn(warning)
    if result.published and result.signer is None:
        why = "--no-sign" if no_sign else "no wallet (create one with `mcpz wallet create`)"
        output.warn(f"{result.name} {result.version} is not signed: {why}; nodes refuse unsigned releases")

    def render(console: Console) -> None:
        if result.published:
            console.print(f"published {result.name} {result.version} ({result.commit[:12]})", markup=False)
            if result.signer:
                output.info(f"signed by {result.signer}")
            if result.tools is not None:
                output.info(f"tools pinned: {', '.join(result.tools) or '(none)'}")
            elif result.signer:
                output.info("no tools pinned (--no-tools): the first healthy replica's are recorded")
        elif result.already_published:
            console.print(
                f"{result.name} {result.version} is already published; pushed {result.branch} "
                f"(bump the version to publish)",
                markup=False,
            )
        else:
            console.print(f"pushed {result.branch} ({result.commit[:12]})", markup=False)

    output.data(result.to_dict(), render)


@app.command("clone")
def clone(
    spec: Annotated[str, typer.Argument(metavar="NAME[@VERSION]", help="Agent, optionally at a release.")],
    directory: Annotated[
        Path | None, typer.Argument(help="Target folder (default: the agent's name).")
    ] = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Clone an agent from the registry."""
    from mcpz.client import publish

    name, version = _name_and_version(spec)
    url = settings(registry).registry
    target = directory or Path(name.split("/")[1])
    with transfer("cloning") as shown:
        commit = publish.clone(url, name, version, target, token_for(url, token), received=shown.moved)
    out().data(
        {"name": name, "version": version, "commit": commit, "path": str(target)},
        lambda c: c.print(f"cloned {spec} into {target} ({commit[:12]})", markup=False),
    )


@app.command("pull")
def pull(
    path: Annotated[Path, typer.Argument(help="Agent folder.")] = Path("."),
    token: TokenOpt = None,
) -> None:
    """Fast-forward the current branch from the registry it was cloned from."""
    from mcpz.client import publish

    old, new = publish.pull(path, token)
    message = "already up to date" if old == new else f"updated {old[:12]}..{new[:12]}"
    out().data({"old": old, "new": new}, lambda c: c.print(message))


def _fetch_agent(name: str, registry: str | None, token: str | None) -> AgentInfo:
    split_spec(name)
    return with_client(registry, token, lambda client: client.agent(name))


@app.command("info")
def info(
    spec: Annotated[str, typer.Argument(metavar="NAME[@VERSION]", help="Agent name, ns/name[@version].")],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Description, versions, yanked, dependencies, latest; with @VERSION, that release's tools."""
    name, version = _name_and_version(spec)
    if version is not None:
        _release_info(name, version, registry, token)
        return
    data = _fetch_agent(name, registry, token)

    def render(console: Console) -> None:
        console.print(f"[bold]{data.name}[/bold]  latest: {data.latest or '-'}")
        if data.description:
            console.print(data.description, markup=False)
        release = data.release()
        deps = release.dependencies if release is not None else {}
        if deps:
            console.print("dependencies: " + ", ".join(f"{k} {v}" for k, v in deps.items()), markup=False)
        listed = ", ".join(v.version + (" (yanked)" if v.yanked else "") for v in data.versions)
        console.print(f"versions: {listed or 'none'}", markup=False)

    out().data(data.to_dict(), render)


def _release_info(name: str, version: str, registry: str | None, token: str | None) -> None:
    from mcpz.client.publish import release_info

    url = settings(registry).registry
    secret = token_for(url, token)
    data = run(lambda: release_info(url, secret, name, version))

    def render(console: Console) -> None:
        release = data.release
        yanked = " (yanked)" if release.yanked else ""
        console.print(f"[bold]{name} {version}[/bold]{yanked}  commit {release.commit[:12]}")
        console.print(f"signed by: {release.signer or 'nobody'}", markup=False)
        tools = data.tools
        if tools is None:
            console.print("tools: none recorded yet", markup=False)
            return
        how = "observed from a replica, not signed" if tools.observed else "signed at publish"
        names = [str(t.get("name")) for t in tools.tools]
        console.print(f"tools ({how}, {tools.digest[:19]}): {', '.join(names) or '(none)'}", markup=False)

    out().data(data.to_dict(), render)


@app.command("versions")
def versions(
    name: Annotated[str, typer.Argument(help="Agent name, ns/name.")],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Every published version, oldest first."""
    data = _fetch_agent(name, registry, token)

    def render(console: Console) -> None:
        table = Table("version", "commit", "published", "yanked", box=None)
        for v in data.versions:
            table.add_row(
                v.version,
                v.commit[:12],
                str(v.raw.get("published_at", ""))[:19],
                v.yank_reason or ("yes" if v.yanked else ""),
            )
        console.print(table)

    out().data([v.to_dict() for v in data.versions], render)


def _set_yank(spec: str, registry: str | None, token: str | None, yanked: bool, reason: str) -> None:
    name, version = _name_and_version(spec)
    if version is None:
        raise UsageError(f'give the version: "{name}@VERSION"')

    asked = version

    async def call(client: RegistryClient) -> Release:
        exact = await client.resolve_version(name, asked)
        if yanked:
            return await client.yank(name, exact, reason)
        return await client.unyank(name, exact)

    data = with_client(registry, token, call)
    word = "yanked" if yanked else "unyanked"
    out().data(data.to_dict(), lambda c: c.print(f"{word} {name} {data.version}", markup=False))


@app.command("yank")
def yank(
    spec: Annotated[str, typer.Argument(metavar="NAME@VERSION")],
    reason: Annotated[str, typer.Option("--reason", help="Shown to people who look.")] = "",
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Skip a version in new resolutions (exact locks still install it)."""
    _set_yank(spec, registry, token, True, reason)


@app.command("unyank")
def unyank(
    spec: Annotated[str, typer.Argument(metavar="NAME@VERSION")],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Undo a yank."""
    _set_yank(spec, registry, token, False, "")
