"""`mcpz connect`: run an agent here and reach it through the registry's gateway (a dev deployment)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from mcpz.cli.common import RegistryOpt, TokenOpt, run, settings, token_for
from mcpz.cli.output import attach_log, out
from mcpz.errors import AuthError, McpzError

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()


@app.command("connect")
def connect_command(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="The agent's folder.")] = Path("."),
    registry: RegistryOpt = None,
    token: TokenOpt = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Serve it as NAMESPACE/NAME (default: the manifest's name)."),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", help="PEM file of CAs to trust for wss://.")
    ] = None,
) -> None:
    """Run the agent in PATH on this machine and serve it through the gateway until interrupted.

    The agent is reachable at {registry}/mcp/NAMESPACE/NAME@dev (printed), by the namespace's owner
    and members, with any MCP client. The connection is outbound: no port is opened here. The token
    needs scope deploy in the namespace. Ctrl-C detaches and stops the agent.
    """
    import anyio

    from mcpz.node.connector import ConnectConfig, Connector, print_agent_line

    url = settings(registry).registry
    secret = token_for(url, token)
    if not secret:
        raise AuthError(f"no token for {url}", hint="run `mcpz login` or set MCPZ_TOKEN")
    connector = Connector(
        ConnectConfig(registry=url, token=secret, path=path, name=name or "", ca_file=ca_file),
        on_log=None if out().quiet else print_agent_line,
    )
    output = out()
    handler = attach_log(output, "mcpz.node.connector")

    async def main() -> None:
        import signal

        async def announce() -> None:
            await connector.attached.wait()
            output.info(f"{connector.agent} is attached; call it at {connector.url}")
            output.info(f"  mcpz tools {connector.agent}@dev        (Ctrl-C to detach)")

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for _ in received:
                    connector.shutdown()
                    return

        failure: McpzError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            tg.start_soon(on_signals)
            try:
                await connector.run()
            except McpzError as e:  # raised here, not wrapped in the task group's exception group
                failure = e
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    try:
        output.info(f"starting {connector.agent} from {path} ...")
        run(main, fast_loop=True)
    finally:
        if handler is not None:
            logging.getLogger("mcpz.node.connector").removeHandler(handler)
    output.info(f"{connector.agent} detached")
    output.data({"agent": connector.agent, "url": connector.url, "detached": True})
