"""`mcpz chain dev`: a local settlement chain for development (anvil or the embedded EVM, the token, the
contract)."""

from __future__ import annotations

from typing import Annotated

import typer

from mcpz.cli.output import out

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
chain_app = typer.Typer(help="A local settlement chain for development.", no_args_is_help=True)
app.add_typer(chain_app, name="chain")


@chain_app.command("dev")
def dev(
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="The loopback port of its JSON-RPC endpoint.")
    ] = 8545,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="anvil, evm (the embedded EVM, from PyPI) or auto: anvil when it is installed, else evm.",
        ),
    ] = "auto",
) -> None:
    """Start a local chain with the test token and the settlement contract deployed, and run until Ctrl-C.

    The chain is anvil where it is installed, else mcpz's embedded EVM (eth-tester on py-evm, slower,
    nothing to install); --engine picks one. Prints the registry settings that watch it (the
    MCPZ_REGISTRY_SETTLEMENT_* lines to export; with --json one object: rpc_url, chain_id, contract,
    token, engine, funded test keys). Its keys are anvil's public development keys on either engine:
    never use them where tokens are worth anything.
    """
    import signal
    import threading
    from typing import cast

    from mcpz.local.chain import Engine, start_dev_chain

    output = out()
    chain = start_dev_chain(port, engine=cast(Engine, engine))  # start_dev_chain refuses other names
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    try:
        settings = chain.settings()
        output.lines(
            settings,
            lambda: [
                *(f"export {name}={value}" for name, value in chain.env().items()),
                "",
                *(
                    f"# test key {k.address}: {k.private_key} ({k.tokens // 10**6} test tokens)"
                    for k in chain.keys
                ),
            ],
        )
        output.info(f"local chain {chain.chain_id} ({chain.engine}) on {chain.rpc_url}; Ctrl-C stops it")
        while not stop.is_set():
            if not chain.running():
                from mcpz.errors import McpzError

                raise McpzError(
                    f"the local chain ({chain.engine}) stopped", hint="run `mcpz chain dev` again"
                )
            stop.wait(0.5)
    finally:
        chain.stop()
    output.info("local chain stopped")
