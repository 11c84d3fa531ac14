"""`mcpz run | tools | call`: an agent started from its folder on this machine.

With `--local` the target is a folder (default "."); without it, the target is a deployed
agent's NAME (`namespace/name[@version]`), reached through the registry's gateway.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mcpz.cli.common import RegistryOpt, TokenOpt, settings, token_for
from mcpz.cli.output import out
from mcpz.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from mcpz.tools import ToolInfo, ToolResult

LocalOpt = Annotated[
    bool,
    typer.Option("--local", help="Start the agent from its folder: the target is a PATH (default .)."),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Wait this long for the agent to start and for each answer (default: call_timeout).",
        show_default=False,
    ),
]


@contextmanager
def _quiet_sdk() -> Iterator[None]:
    """Without -v, keep the `mcp` SDK's own log lines (tracebacks for an agent's bad output)
    off the terminal: the one error line says what went wrong."""
    if out().verbose:
        yield
        return
    sdk, handler = logging.getLogger("mcp"), logging.NullHandler()
    sdk.addHandler(handler)
    try:
        yield
    finally:
        sdk.removeHandler(handler)


def _remote(registry: str | None, token: str | None, timeout: float | None) -> dict[str, Any]:
    """The registry, token and timeout for a call through the gateway."""
    config = settings(registry)
    limit = config.call_timeout if timeout is None else timeout
    if not limit > 0:
        raise UsageError(f"timeout must be a positive number of seconds, not {limit:g}")
    return {"registry": config.registry, "token": token_for(config.registry, token), "timeout": limit}


# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()


@app.command("run")
def run_command(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="The agent's folder.")] = Path("."),
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ARGS", help="Extra arguments for the agent's command, after --.", show_default=False
        ),
    ] = None,
) -> None:
    """Run an agent in the foreground: MCP on stdin/stdout, its exit code passed through."""
    from mcpz.local.process import run_agent

    raise typer.Exit(run_agent(path, args or ()))


@app.command("tools")
def tools_command(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME|PATH",
            help="A deployed agent (namespace/name[@version]); with --local, a folder (default .).",
            show_default=False,
        ),
    ] = None,
    local: LocalOpt = False,
    timeout: TimeoutOpt = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """List an agent's tools: name, arguments and description (input schemas with --json)."""
    import anyio

    with _quiet_sdk():
        if local:
            from mcpz.local.session import list_tools

            tools = anyio.run(partial(list_tools, target or ".", timeout=timeout))
        else:
            from mcpz.client.gateway import list_remote_tools

            if target is None:
                raise UsageError("missing the NAME of a deployed agent", hint="mcpz tools NAMESPACE/NAME")
            tools = anyio.run(partial(list_remote_tools, target, **_remote(registry, token, timeout)))
    out().data({"tools": [tool.to_dict() for tool in tools]}, partial(_render_tools, tools))


def _render_tools(tools: list[ToolInfo], console: Console) -> None:
    from rich.table import Table

    from mcpz.local.args import signature

    if not tools:
        out().info("this agent offers no tools")
        return
    table = Table("tool", "arguments", "description", box=None)
    for tool in tools:
        summary = tool.description.strip().split("\n\n")[0]
        table.add_row(tool.name, signature(tool.input_schema) or "-", " ".join(summary.split()))
    console.print(table)


@app.command("call")
def call_command(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME|PATH",
            help="A deployed agent (namespace/name[@version]); with --local, a folder (default .).",
            show_default=False,
        ),
    ] = None,
    tool: Annotated[
        str | None, typer.Argument(metavar="TOOL", help="The tool to call.", show_default=False)
    ] = None,
    words: Annotated[
        list[str] | None,
        typer.Argument(metavar="KEY=VALUE", help="The tool's arguments.", show_default=False),
    ] = None,
    local: LocalOpt = False,
    args_json: Annotated[
        str | None,
        typer.Option("--args-json", metavar="JSON", help="Arguments as a JSON object; KEY=VALUE words win."),
    ] = None,
    timeout: TimeoutOpt = None,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
    pay: Annotated[
        bool,
        typer.Option("--pay", help="Pay with x402 from the wallet when the agent asks (no account needed)."),
    ] = False,
    max_price: Annotated[
        str | None,
        typer.Option(
            "--max-price",
            metavar="UNITS",
            help="With --pay: never sign more than this, in the token's base units (50000 = 0.05 USDC).",
        ),
    ] = None,
) -> None:
    """Call one tool and print its result (text; the whole result with --json).

    Values are JSON when they parse (a=2, ok=true, tags='["x"]'), else text.

    The tool's input schema decides between the two: a "string" argument keeps "42" as text.

    With --pay, a call the agent asks payment for is paid with x402: the wallet is unlocked and
    signs an authorization of exactly the price, within --max-price and the x402_max_per_day and
    x402_max_per_agent_per_day settings (all in the token's base units); a free call never unlocks
    it. With no token, the call is made with no account.
    """
    import anyio

    from mcpz.local.args import parse_args_json

    arguments = parse_args_json(args_json) if args_json is not None else None
    with _quiet_sdk():
        if local:
            from mcpz.local.session import call_tool

            # Click fills the positionals in order; which word is the PATH is decided here.
            given = [word for word in (target, tool) if word is not None] + (words or [])
            path, name, key_values = _split_local_call(given)
            result = anyio.run(
                partial(call_tool, path, name, arguments, key_values=key_values, timeout=timeout)
            )
        else:
            from mcpz.client.gateway import call_remote_tool

            usage = "mcpz call NAMESPACE/NAME TOOL [KEY=VALUE]..."
            if target is None or tool is None:
                raise UsageError("missing the agent NAME or the TOOL to call", hint=usage)
            if "=" in tool:
                raise UsageError(f'missing the TOOL to call ("{tool}" is an argument)', hint=usage)
            if max_price is not None and not pay:
                raise UsageError(
                    "--max-price goes with --pay", hint="add --pay to pay for the call with x402"
                )
            remote = _remote(registry, token, timeout)
            if pay:
                from mcpz.cli.prompts import unlock_wallet
                from mcpz.client.x402 import user_payer

                remote["payer"] = user_payer(unlock_wallet, max_price)
            result = anyio.run(
                partial(call_remote_tool, target, tool, arguments, key_values=words or [], **remote)
            )
    out().lines(result.to_dict(), partial(_result_lines, result))


def _split_local_call(words: list[str]) -> tuple[str, str, list[str]]:
    """`[PATH] TOOL [KEY=VALUE]...`: the first word is the PATH when the second is a TOOL."""
    usage = "mcpz call --local [PATH] TOOL [KEY=VALUE]..."
    if len(words) >= 2 and "=" not in words[1]:
        path, tool, rest = words[0], words[1], words[2:]
    elif words:
        path, tool, rest = ".", words[0], words[1:]
    else:
        raise UsageError("missing the TOOL to call", hint=usage)
    if "=" in tool or tool in (".", "..") or os.sep in tool or "/" in tool:
        raise UsageError(f'missing the TOOL to call ("{tool}" is not a tool name)', hint=usage)
    return path, tool, rest


def _result_lines(result: ToolResult) -> Iterator[str]:
    """The result as plain lines: text blocks as they are, others named, else the structured
    content. Plain writes, not rich: importing rich's console would cost a call a fifth of its time."""
    printed = False
    for block in result.content:
        if block.get("type") == "text":
            yield from str(block["text"]).splitlines() or [""]
        else:
            what = block.get("mimeType") or block.get("uri") or ""
            yield f"[{block.get('type')} {what}]".replace(" ]", "]")
        printed = True
    if not printed and result.structured_content is not None:
        yield from json.dumps(result.structured_content, indent=2).splitlines()
