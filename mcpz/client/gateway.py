"""Talking MCP to a deployed agent through the registry's gateway: `mcpz tools NAME`, `mcpz call NAME`.

The official `mcp` client over Streamable HTTP, at `{registry}/mcp/{namespace}/{name}[@{version}]`,
with the user's token. What the gateway answers becomes one mcpz error: 401/403 an AuthError
(exit 4), an unknown deployment a NotFoundError (5), no healthy replica or an overloaded gateway a
RemoteError, a refused request or a dead replica an AgentError (7), no registry a NetworkError (6).

    async with open_remote("acme/weather", registry="https://registry.example", token=token) as agent:
        result = await agent.call("forecast", {"city": "Oslo"})
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from mcpz._version import __version__
from mcpz.errors import AgentError, AuthError, McpzError, NetworkError, NotFoundError, RemoteError, UsageError
from mcpz.local.args import build_arguments, split_key_values
from mcpz.local.session import ToolInfo, ToolResult, ToolSession, single_leaf, tool_failed
from mcpz.names import name_problem

if TYPE_CHECKING:
    import httpx2
    from mcp import Client

GATEWAY_PATH = "/mcp"
_T = TypeVar("_T")


def gateway_url(registry: str, name: str) -> str:
    """The gateway endpoint of deployment `name` (`namespace/name` or `namespace/name@version`)."""
    agent, _, version = name.partition("@")
    problem = name_problem(agent)
    if problem:
        raise UsageError(f'"{agent}" {problem}', hint="name a deployment as namespace/name[@version]")
    return f"{registry.rstrip('/')}{GATEWAY_PATH}/{agent}" + (f"@{version}" if version else "")


class _LastStatus:
    """The HTTP status of the gateway's last answer: the MCP client reports only a message."""

    def __init__(self) -> None:
        self.status = 0

    async def __call__(self, response: httpx2.Response) -> None:
        self.status = response.status_code


class RemoteSession(ToolSession):
    """An MCP session with a deployed agent through the gateway; made by `open_remote`."""

    def __init__(self, name: str, url: str, client: Client, status: _LastStatus, timeout: float) -> None:
        super().__init__(client, timeout)
        self.name = name
        self.url = url
        self.list_command = f"mcpz tools {name}"
        self._status = status

    async def _request(
        self, what: str, send: Callable[[], Awaitable[_T]], *, timeout: float | None = None
    ) -> _T:
        from mcp import MCPError

        limit = self.timeout if timeout is None else timeout
        try:
            with anyio.fail_after(limit):
                return await send()
        except TimeoutError:
            raise AgentError(
                f"{self.name} did not answer {what} within {limit:g}s", hint="raise --timeout"
            ) from None
        except MCPError as e:
            raise _error(self.name, e.message, self._status.status, what) from e


def _error(name: str, message: str, status: int, what: str) -> McpzError:
    if status == 401:
        return AuthError(
            f"the gateway refused the token: {message}", hint="run `mcpz login` or set MCPZ_TOKEN"
        )
    if status == 403:
        return AuthError(f"the gateway refused the call: {message}")
    if status == 404 and message.startswith("no deployment"):
        return NotFoundError(message, hint="see `mcpz status` for what is deployed")
    if status in (502, 503):
        return RemoteError(f"{name}: {message}", status=status, hint="try again shortly")
    return AgentError(f"{name} refused {what}: {message}")


@asynccontextmanager
async def open_remote(
    name: str, *, registry: str, token: str | None, timeout: float
) -> AsyncIterator[RemoteSession]:
    import httpx2
    from mcp import Client, Implementation, MCPError
    from mcp.client.streamable_http import streamable_http_client

    if token is None:
        raise AuthError(f"no token for {registry}", hint="run `mcpz login` or set MCPZ_TOKEN")
    url = gateway_url(registry, name)
    status = _LastStatus()
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx2.AsyncClient(
            headers=headers, timeout=timeout, event_hooks={"response": [status]}
        ) as http:
            client = Client(
                streamable_http_client(url, http_client=http),
                client_info=Implementation(name="mcpz", version=__version__),
                mode="legacy",
            )
            try:
                async with client:
                    yield RemoteSession(name, url, client, status, timeout)
            except MCPError as e:
                raise _error(name, e.message, status.status, "the MCP handshake") from e
    except httpx2.TransportError as e:
        raise NetworkError(f"cannot reach the gateway at {url}: {e}", hint="check --registry") from e
    except BaseExceptionGroup as group:
        leaf = single_leaf(group)
        if isinstance(leaf, httpx2.TransportError):
            raise NetworkError(
                f"cannot reach the gateway at {url}: {leaf}", hint="check --registry"
            ) from leaf
        if isinstance(leaf, MCPError):
            raise _error(name, leaf.message, status.status, "the MCP handshake") from leaf
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


async def list_remote_tools(name: str, *, registry: str, token: str | None, timeout: float) -> list[ToolInfo]:
    async with open_remote(name, registry=registry, token=token, timeout=timeout) as agent:
        return await agent.list_tools()


async def call_remote_tool(
    name: str,
    tool: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    key_values: Sequence[str] = (),
    registry: str,
    token: str | None,
    timeout: float,
    check: bool = True,
) -> ToolResult:
    """Call one tool of a deployed agent; like `mcpz.local.session.call_tool`, through the gateway."""
    split_key_values(key_values)
    async with open_remote(name, registry=registry, token=token, timeout=timeout) as agent:
        info = await agent.tool(tool)
        result = await agent.call(tool, build_arguments(arguments, key_values, info.input_schema))
    if check and result.is_error:
        raise tool_failed(name, tool, result)
    return result
