"""Whether a replica's agent is healthy: it answers MCP `initialize` and `tools/list`.

`check_health` runs the official `mcp` client over the replica's shared stdio channel (see
`mcpz.node.channel`): the same handshake any MCP host does (initialize, then the `initialized`
notification), then `tools/list` with its pagination. An agent that passes it is `running`. The
client is closed afterwards, but the agent stays initialized: the channel keeps its
`InitializeResult` for the sessions that come later.

`ping` is the cheap liveness probe for an agent already running: one MCP `ping` request;
`list_tools` is the probe for one whose tools are pinned: `tools/list`, whose answer is compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from mcpz._version import __version__
from mcpz.errors import AgentError
from mcpz.node.channel import StdioChannel
from mcpz.tooldefs import definition_of

MAX_TOOL_PAGES = 1000


class HealthError(AgentError):
    """The agent did not pass its health check."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    server_name: str
    server_version: str
    protocol_version: str
    tools: tuple[str, ...]
    seconds: float
    # Each tool's whole tools/list entry (mcpz.tooldefs.definition_of), to compare with a pinned set.
    definitions: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)


async def check_health(channel: StdioChannel, *, timeout: float = 30.0) -> HealthReport:
    """Initialize the agent and list its tools within `timeout` seconds; HealthError if it cannot."""
    from mcp import Client, Implementation, MCPError

    started = anyio.current_time()
    tools: list[str] = []
    definitions: list[dict[str, Any]] = []
    client: Client | None = None
    try:
        with anyio.move_on_after(timeout) as scope:
            client = Client(
                channel.transport(),
                mode="legacy",
                cache=None,
                client_info=Implementation(name="mcpz-node", version=__version__),
            )
            async with client:
                cursor: str | None = None
                for _ in range(MAX_TOOL_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(tool.name for tool in page.tools)
                    definitions.extend(definition_of(tool) for tool in page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                info = client.server_info
                protocol = client.protocol_version
    except MCPError as e:
        raise HealthError(f"health check failed: {_mcp_error(e, channel)}") from e
    except BaseExceptionGroup as group:
        leaf = _leaf(group)
        if isinstance(leaf, MCPError):
            raise HealthError(f"health check failed: {_mcp_error(leaf, channel)}") from leaf
        raise HealthError(f"health check failed: {leaf or group}") from group
    except (RuntimeError, ValueError) as e:  # a result that breaks the protocol
        raise HealthError(f"health check failed: the agent answered with an invalid message: {e}") from e
    if scope.cancelled_caught:
        raise HealthError(f"health check failed: no answer to initialize and tools/list within {timeout:g}s")
    return HealthReport(
        server_name=info.name if info is not None else "",
        server_version=info.version if info is not None else "",
        protocol_version=protocol,
        tools=tuple(tools),
        seconds=anyio.current_time() - started,
        definitions=tuple(definitions),
    )


async def list_tools(channel: StdioChannel, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The agent's tools/list (every page), each entry as `check_health` reads it; HealthError if
    it does not answer within `timeout` seconds, or answers something that is not a tool list."""
    from mcp.types import ListToolsResult
    from pydantic import ValidationError

    definitions: list[dict[str, Any]] = []
    cursor: str | None = None
    with anyio.move_on_after(timeout) as scope:
        for _ in range(MAX_TOOL_PAGES):
            params = {"cursor": cursor} if cursor is not None else {}
            response = await channel.request(
                {"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": params}
            )
            if "error" in response:
                error = response["error"]
                message = error.get("message", error) if isinstance(error, dict) else error
                raise HealthError(f"tools/list failed: {message}")
            try:
                page = ListToolsResult.model_validate(response.get("result"))
            except ValidationError as e:
                raise HealthError(f"tools/list answered an invalid result: {e.error_count()} errors") from e
            definitions.extend(definition_of(tool) for tool in page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
    if scope.cancelled_caught:
        raise HealthError(f"liveness check failed: no answer to tools/list within {timeout:g}s")
    return definitions


async def ping(channel: StdioChannel, *, timeout: float = 10.0) -> None:
    """One MCP `ping`; HealthError if the agent does not answer it within `timeout` seconds."""
    try:
        response = await channel.request({"jsonrpc": "2.0", "id": 0, "method": "ping"}, timeout=timeout)
    except TimeoutError:
        raise HealthError(f"liveness check failed: no answer to ping within {timeout:g}s") from None
    if "error" in response:
        error = response["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise HealthError(f"liveness check failed: {message}")


def _mcp_error(error: BaseException, channel: StdioChannel) -> str:
    from mcp import MCPError
    from mcp.types import CONNECTION_CLOSED

    if channel.closed.is_set() or (isinstance(error, MCPError) and error.code == CONNECTION_CLOSED):
        return "the agent exited before it answered"
    return error.message if isinstance(error, MCPError) else str(error)


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first exception in a (nested) group that is not a cancellation."""
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = list(error.exceptions)
        elif not isinstance(error, anyio.get_cancelled_exc_class()):
            return error
    return None
