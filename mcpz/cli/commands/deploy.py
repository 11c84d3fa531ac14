"""`mcpz deploy NAME@VERSION`, `mcpz deploy status|scale|rollback|rm`, `mcpz deployments`,
`mcpz nodes`, `mcpz logs`: deployments on the registry's mesh.

`deploy` is a group whose first word is either a subcommand or the NAME@VERSION to deploy: the
group sends anything that is not a subcommand to `deploy apply`. Deploy, scale and rollback are
signed by the user's wallet when one exists (`mcpz.client.deploy`); `--no-sign` makes them unsigned.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from typer import _click
from typer.core import TyperGroup

from mcpz.cli.common import RegistryOpt, TokenOpt, with_client
from mcpz.cli.output import out
from mcpz.names import AgentName, version_or_latest

if TYPE_CHECKING:
    from mcpz.client.models import Deployment, LogLine, Removal
    from mcpz.client.registry import RegistryClient
    from mcpz.keys.ethkeys import LocalAccount

STATUSES = ("pending", "pulling", "starting", "running", "failed", "stopped")


class DeployGroup(TyperGroup):
    """`mcpz deploy NAME@VERSION ...` runs `deploy apply`; `mcpz deploy status ...` its subcommand."""

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["apply", *args]
        return super().parse_args(ctx, args)


# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
deploy_app = typer.Typer(
    cls=DeployGroup,
    help="Deploy NAME@VERSION to the mesh, or manage a deployment.\n\n"
    "mcpz deploy NAME@VERSION [--replicas N] [--selector k=v] [--wait] is `mcpz deploy apply`.",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")

WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait until every replica runs (or one fails).")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits at most.")]
NoSignOpt = Annotated[
    bool,
    typer.Option(
        "--no-sign",
        help="Do not sign the change with your wallet (nodes that require signatures refuse to run it).",
    ),
]


def _name(text: str) -> str:
    return str(AgentName.parse(text))


def _signed_call(
    registry: str | None,
    token: str | None,
    no_sign: bool,
    change: Callable[[RegistryClient, LocalAccount | None], Awaitable[Deployment]],
) -> Deployment:
    """`change(client, account)` (one of `mcpz.client.deploy`'s), signed by the wallet unless --no-sign
    (or there is none)."""
    from mcpz.cli.prompts import prompt_for
    from mcpz.keys.wallet import wallet_key

    # Unlocked before anything changes: a missing passphrase stops here.
    account = None if no_sign else wallet_key(prompt_for)()
    view = with_client(registry, token, lambda client: change(client, account))
    output = out()
    if account is not None:
        output.info(f"revision {view.revision} signed by {account.address}")
    else:
        why = "--no-sign" if no_sign else "no wallet (create one with `mcpz wallet create`)"
        output.warn(
            f"{view.name} revision {view.revision} is not signed: {why}; "
            "nodes that require signatures (the default) refuse it"
        )
    return view


def _wait(name: str, registry: str | None, token: str | None, timeout: float) -> Deployment:
    """Poll until ready or failed, with a live display of replicas by status on a terminal."""
    output = out()

    async def wait(client: RegistryClient) -> Deployment:
        if not output.interactive:
            return await client.wait_deployment(
                name, timeout=timeout, on_reason=lambda why: output.info(f"{name}: {why}")
            )
        from rich.live import Live

        with Live(console=output.stderr, transient=True, refresh_per_second=8) as live:
            return await client.wait_deployment(
                name,
                timeout=timeout,
                on_update=lambda view: live.update(_progress(view)),
                on_reason=lambda why: live.console.print(f"{name}: {why}", markup=False),
            )

    return with_client(registry, token, wait)


def _progress(view: Deployment) -> Group:
    counts = view.by_status
    head = Text(
        f"{view.name} {view.version} (revision {view.revision}): "
        f"{view.ready}/{view.replicas} ready, {view.state}" + (f" ({view.reason})" if view.reason else "")
    )
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column("status")
    table.add_column("n", justify="right")
    table.add_column("bar")
    table.add_column("replicas")
    total = max(1, view.replicas, sum(counts.values()))
    rows = [(s, counts.get(s, 0)) for s in STATUSES] + [("stopping", view.stopping)]
    for status, n in rows:
        ids = [
            r.id
            for r in view.instances
            if (r.stopping if status == "stopping" else r.status == status and not r.stopping)
        ]
        shown = ", ".join(ids[:3]) + (f" +{len(ids) - 3}" if len(ids) > 3 else "")
        table.add_row(status, str(n), "█" * round(20 * n / total), shown)
    return Group(head, table)


def _settle(
    name: str, view: Deployment, wait: bool, timeout: float, registry: str | None, token: str | None
) -> None:
    """With --wait, follow the deployment until it settles; then print it."""
    if wait:
        view = _wait(name, registry, token, timeout)
    _finish(view, wait)


def _finish(view: Deployment, waited: bool) -> None:
    """Print the deployment; after --wait, one that is not ready is an error: a failed replica
    exits 7, a deployment no node can take 1 (`mcpz.client.deploy.not_ready`)."""
    from mcpz.client.deploy import not_ready

    out().data(view.to_dict(), lambda console: _render_status(console, view))
    if waited and view.state != "ready":
        error = not_ready(view)
        # Not raised to the top-level printer: with --json it would add a second JSON document
        # after the deployment already on stdout.
        sys.stderr.write(f"error: {error.message} ({error.hint})\n")
        raise typer.Exit(error.exit_code)


@deploy_app.command("apply")
def apply(
    spec: Annotated[str, typer.Argument(metavar="NAME[@VERSION]", help="Agent and release to run.")],
    replicas: Annotated[
        int | None, typer.Option("--replicas", "-r", min=0, help="Replicas (default: unchanged, or 1).")
    ] = None,
    selector: Annotated[
        list[str] | None,
        typer.Option("--selector", "-s", help="k=v: run only on nodes with this label (repeatable)."),
    ] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", help="Memory limit per replica, e.g. 512M.")
    ] = None,
    open_files: Annotated[int | None, typer.Option("--open-files", min=1, help="Open files limit.")] = None,
    allow_tool_drift: Annotated[
        bool | None,
        typer.Option(
            "--allow-tool-drift/--forbid-tool-drift",
            help="Let replicas run whose tools/list differs from the tools signed with the release "
            "(signed with the deployment; default: unchanged, or forbidden).",
        ),
    ] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    no_sign: NoSignOpt = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Deploy NAME@VERSION (also `mcpz deploy NAME@VERSION`): desired state, rolled out by the mesh.

    Without @VERSION an existing deployment keeps its version and a new one takes the newest
    release. A new version replaces replicas one at a time, each new one running before an old stops.
    """
    from mcpz.client import deploy
    from mcpz.names import split_spec

    name, version = split_spec(spec)
    name = _name(name)
    limits = None
    if memory is not None or open_files is not None:
        limits = {"memory_bytes": deploy.parse_size(memory) if memory else None, "open_files": open_files}
    nodes = deploy.parse_selector(selector) if selector is not None else None
    view = _signed_call(
        registry,
        token,
        no_sign,
        lambda client, account: deploy.deploy(
            client,
            name,
            version_or_latest(version),
            replicas=replicas,
            selector=nodes,
            limits=limits,
            allow_tool_drift=allow_tool_drift,
            account=account,
        ),
    )
    out().info(f"deploying {name} {view.version} (revision {view.revision}), {view.replicas} replica(s)")
    _settle(name, view, wait, timeout, registry, token)


@deploy_app.command("status")
def status(
    name: Annotated[str, typer.Argument(help="Deployment (agent name).")],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """A deployment: replicas by status, their nodes, and its revisions."""
    name = _name(name)
    view = with_client(registry, token, lambda client: client.deployment(name))
    out().data(view.to_dict(), lambda console: _render_status(console, view))


@deploy_app.command("scale")
def scale(
    name: Annotated[str, typer.Argument(help="Deployment (agent name).")],
    replicas: Annotated[int, typer.Argument(min=0, help="Replicas wanted.")],
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    no_sign: NoSignOpt = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Change how many replicas run (a new revision; no replica is replaced)."""
    from mcpz.client import deploy

    name = _name(name)
    view = _signed_call(
        registry,
        token,
        no_sign,
        lambda client, account: deploy.scale(client, name, replicas, account=account),
    )
    _settle(name, view, wait, timeout, registry, token)


@deploy_app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="Deployment (agent name).")],
    to: Annotated[
        int | None, typer.Option("--to", min=1, help="Revision to return to (default: the previous one).")
    ] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    no_sign: NoSignOpt = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Return to the previous revision (a new revision with its release, rolled out as any other)."""
    from mcpz.client import deploy

    name = _name(name)
    view = _signed_call(
        registry, token, no_sign, lambda client, account: deploy.rollback(client, name, to, account=account)
    )
    out().info(f"rolling {name} back to {view.version} (revision {view.revision})")
    _settle(name, view, wait, timeout, registry, token)


@deploy_app.command("restart")
def restart(
    name: Annotated[str, typer.Argument(help="Deployment (agent name).")],
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Try its failed replicas again now, e.g. after fixing what failed them (same revision).

    Failed replicas are also retried on their own: with a backoff, and at once when the
    deployment is deployed again or a node joins.
    """
    name = _name(name)
    view = with_client(registry, token, lambda client: client.restart_deployment(name))
    n = view.restarted
    out().info(f"restarting {n} failed replica(s) of {name}" if n else f"no replica of {name} had failed")
    _settle(name, view, wait, timeout, registry, token)


@deploy_app.command("rm")
def remove(
    name: Annotated[str, typer.Argument(help="Deployment (agent name).")],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Stop every replica and remove the deployment."""
    name = _name(name)
    view = with_client(registry, token, lambda client: client.remove_deployment(name))
    message = f"removed {name}" if view.state == "deleted" else f"removing {name}: stopping its replicas"
    out().data(view.to_dict(), lambda console: console.print(message, markup=False))


@app.command("deployments")
def deployments(registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Deployments you can see, with replicas ready and their state."""
    views = with_client(registry, token, lambda client: client.deployments())

    def render(console: Console) -> None:
        if not views:
            console.print("no deployments")
            return
        table = Table("name", "version", "revision", "ready", "state", box=None)
        for v in views:
            table.add_row(v.name, v.version, str(v.revision), f"{v.ready}/{v.replicas}", v.state)
        console.print(table)

    out().data([v.to_dict() for v in views], render)


@app.command("nodes")
def nodes(registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Nodes that may run your deployments (yours, your namespaces' members', shared ones): owner,
    state, labels, replicas and capacity, load."""
    views = with_client(registry, token, lambda client: client.nodes())

    def render(console: Console) -> None:
        if not views:
            console.print("no nodes (start one with `mcpz node run`)")
            return
        table = Table("id", "name", "owner", "state", "replicas", "labels", "cpu", "memory", box=None)
        for n in views:
            state = n.state if n.connected or n.state == "lost" else f"{n.state} (disconnected)"
            labels = ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))
            memory = f"{n.memory_used / 2**30:.1f}/{n.memory_total / 2**30:.1f}G" if n.memory_total else ""
            table.add_row(
                n.id,
                n.name,
                n.owner + (" (shared)" if n.shared else ""),
                state,
                f"{n.replicas}/{n.capacity}",
                labels,
                f"{n.cpu_percent:.0f}%",
                memory,
            )
        console.print(table)

    out().data([n.to_dict() for n in views], render)


@app.command("logs")
def logs(
    name: Annotated[str, typer.Argument(help="Deployment (agent name).")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    tail: Annotated[int, typer.Option("--tail", "-n", min=0, help="Recent lines to show first.")] = 100,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="10m|2h|3d", help="Only lines written this long ago or later."),
    ] = None,
    replica: Annotated[
        str | None, typer.Option("--replica", "-r", help="Only this replica's lines (an id or its start).")
    ] = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Log lines of a deployment's replicas: history the registry keeps on disk, then with -f the
    live tail. Says "no log lines yet" (exit 0) when there are none.

    With --json: one JSON array, or with -f one JSON object per line.
    """
    import json
    import time

    from mcpz.errors import UsageError
    from mcpz.sizes import parse_duration

    name = _name(name)
    output = out()
    try:
        start = time.time() - parse_duration(since) if since is not None else None
    except ValueError:
        raise UsageError(f'--since "{since}" is no duration', hint="give one such as 10m, 2h or 3d") from None
    who = replica or ""
    none_yet = f"no log lines yet for {name}" + (f" from replica {who}" if who else "")

    def show(item: LogLine) -> None:
        if output.json:
            sys.stdout.write(json.dumps(item.to_dict()) + "\n")
            sys.stdout.flush()
        else:
            output.line(f"{item.replica} {item.line}")

    if not follow:
        lines = with_client(registry, token, lambda client: client.logs(name, tail, since=start, replica=who))
        if output.json:
            output.data([item.to_dict() for item in lines])
        elif not lines:
            output.info(none_yet)
        else:
            for item in lines:
                show(item)
        return

    async def stream(client: RegistryClient) -> None:
        # Said once the first answer came empty, not before: an empty history is not an error.
        history = await client.logs(name, tail, since=start, replica=who)
        if not history:
            output.info(none_yet + " (waiting for new ones)")
        async for item in client.follow_logs(name, tail, since=start, replica=who):
            show(item)

    # Ctrl-C ends the stream; the root handler exits 130, as everywhere (docs/errors.md).
    with_client(registry, token, stream)


def _render_status(console: Console, view: Deployment | Removal) -> None:
    from mcpz.client.models import Removal

    if isinstance(view, Removal) or "instances" not in view.raw:
        console.print(f"{view.name}: {view.state}", markup=False)
        return
    console.print(
        f"[bold]{view.name}[/bold] {view.version} (revision {view.revision}, "
        f"{view.commit[:12]}): {view.ready}/{view.replicas} ready, {view.state}",
        highlight=False,
    )
    if view.selector:
        console.print("selector: " + ",".join(f"{k}={v}" for k, v in view.selector.items()), markup=False)
    counts = ", ".join(f"{n} {s}" for s, n in view.by_status.items() if n)
    if view.stopping:
        counts += (", " if counts else "") + f"{view.stopping} stopping"
    console.print(f"replicas: {counts or 'none'}", markup=False)
    signers = view.signers
    console.print(
        f"signed by: {', '.join(signers)}" if signers else "signed by: nobody (unsigned)", markup=False
    )
    if view.instances:
        table = Table("replica", "version", "node", "status", "epoch", "detail", box=None)
        for r in view.instances:
            status = r.status + (" (stopping)" if r.stopping else "")
            table.add_row(
                r.id,
                r.version or "",
                r.node_name or "-",
                status,
                str(r.epoch or "-"),
                Text(r.detail or ""),
            )
        console.print(table)
    history = ", ".join(
        f"{r.revision}: {r.version}" + (" (current)" if r.current else "") for r in view.revisions
    )
    console.print(f"revisions: {history}", markup=False)
