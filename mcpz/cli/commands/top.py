"""`mcpz top`: your nodes, deployments and agents' traffic, live in the terminal (rich), refreshed
in place; `--json` prints one snapshot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mcpz.cli.common import RegistryOpt, TokenOpt, run
from mcpz.cli.output import out

if TYPE_CHECKING:
    from rich.console import RenderableType

    from mcpz.client.top import TopSnapshot

app = typer.Typer()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render(snap: TopSnapshot, registry: str) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    nodes = Table("node", "state", "replicas", "cpu", "memory", "load", title="Nodes", title_justify="left")
    for n in snap.nodes:
        state = n.state if n.connected or n.state != "ready" else "ready (disconnected)"
        memory = f"{_size(n.memory_used)} / {_size(n.memory_total)}" if n.memory_total else "-"
        nodes.add_row(
            n.name, state, f"{n.replicas}/{n.capacity}", f"{n.cpu_percent:.0f}%", memory, f"{n.load:.2f}"
        )
    deployments = Table("deployment", "version", "state", "ready", title="Deployments", title_justify="left")
    for d in snap.deployments:
        deployments.add_row(d.name, d.version, d.state, f"{d.ready}/{d.replicas}")
    agents = Table(
        "agent", "calls/s", "calls", "errors", "error rate", "mean latency",
        title=f"Calls, last {snap.window:.0f} s", title_justify="left",
    )  # fmt: skip
    for a in snap.agents:
        agents.add_row(
            a.agent, f"{a.calls_per_second:.2f}", str(a.calls), str(a.errors), f"{a.error_rate:.1%}",
            f"{a.mean_ms:.1f} ms" if a.mean_ms is not None else "-",
        )  # fmt: skip
    header = Text(f"mcpz top  {registry}  (Ctrl-C to quit)", style="bold")
    return Group(header, nodes, deployments, agents)


@app.command("top")
def top(
    interval: Annotated[float, typer.Option("--interval", min=0.5, help="Seconds between refreshes.")] = 2.0,
    window: Annotated[
        float, typer.Option("--window", min=1, help="Seconds of calls the rates and latency cover.")
    ] = 60.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit (for scripts).")] = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Your nodes, deployments and each agent's calls per second, errors and latency, refreshed in
    place until Ctrl-C; with --json, one snapshot."""
    import anyio

    from mcpz.cli.common import settings, token_for
    from mcpz.client.registry import connect
    from mcpz.client.top import snapshot
    from mcpz.errors import AuthError

    url = settings(registry).registry
    secret = token_for(url, token)
    if not secret:
        raise AuthError("mcpz top needs a token", hint="run `mcpz login`, or pass --token / MCPZ_TOKEN")
    output = out()

    async def take() -> TopSnapshot:
        async with connect(url, secret) as client:
            return await snapshot(client, window)

    if output.json or once:
        snap = run(take)
        output.data(snap.to_json(), lambda console: console.print(render(snap, url)))
        return

    async def live() -> None:
        from rich.live import Live

        async with connect(url, secret) as client:
            first = await snapshot(client, window)
            with Live(render(first, url), console=output.stdout, refresh_per_second=4, screen=False) as view:
                while True:
                    await anyio.sleep(interval)
                    view.update(render(await snapshot(client, window), url))

    run(live)
