"""Talking MCP to a deployed agent through the registry's gateway: `mcpz tools NAME`, `mcpz call NAME`.

A small MCP client over Streamable HTTP (JSON-RPC on `httpx2`), at
`{registry}/mcp/{namespace}/{name}[@{version}]`, with the user's token: importing the official
`mcp` SDK alone takes longer than a whole call through a local gateway, so it is kept for stdio
(`mcpz.local`). What the gateway answers becomes one mcpz error: 401/403 an AuthError
(exit 4), an unknown deployment a NotFoundError (5), no healthy replica or an overloaded gateway a
RemoteError, a refused request or a dead replica an AgentError (7), no registry a NetworkError (6).

    async with open_remote("acme/weather", registry="https://registry.example", token=token) as agent:
        result = await agent.call("forecast", {"city": "Oslo"})
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from mcpz._version import __version__
from mcpz.errors import (
    AgentError,
    AuthError,
    McpzError,
    NetworkError,
    NotFoundError,
    RefusedError,
    RemoteError,
    UsageError,
)
from mcpz.jsonlimits import loads as load_json
from mcpz.local.args import build_arguments, split_key_values
from mcpz.names import name_problem, version_or_latest
from mcpz.tools import ToolInfo, ToolResult, find_tool, tool_failed

if TYPE_CHECKING:
    import httpx2

    from mcpz.client.x402 import Payer

GATEWAY_PATH = "/mcp"


def gateway_url(registry: str, name: str) -> str:
    """The gateway endpoint of deployment `name` (`namespace/name` or `namespace/name@version`)."""
    agent, _, version = name.partition("@")
    problem = name_problem(agent)
    if problem:
        raise UsageError(f'"{agent}" {problem}', hint="name a deployment as namespace/name[@version]")
    version = version_or_latest(version) or ""  # @latest: the version the deployment runs
    return f"{registry.rstrip('/')}{GATEWAY_PATH}/{agent}" + (f"@{version}" if version else "")


PROTOCOL_VERSION = "2025-06-18"
"""The MCP revision this client speaks (handshake era; the gateway accepts 2024-11-05 to 2025-11-25)."""
MAX_RESPONSE = 64 * 1024 * 1024
"""The largest answer read from the gateway (bytes): the mesh bounds a call's answer well below it."""
_ACCEPT = "application/json, text/event-stream"


class RemoteSession:
    """An MCP session with a deployed agent through the gateway; made by `open_remote`.

    A small JSON-RPC client for MCP's Streamable HTTP transport on `httpx2`: the requests `mcpz
    call` and `mcpz tools` need (initialize, tools/list, tools/call), each answered as JSON or as
    an SSE stream. Importing the `mcp` SDK costs more than a whole call, so it stays out.
    """

    def __init__(self, name: str, url: str, http: httpx2.AsyncClient, timeout: float) -> None:
        self.name = name
        self.url = url
        self.timeout = timeout
        self.list_command = f"mcpz tools {name}"
        self.session_id: str | None = None
        self.protocol_version = PROTOCOL_VERSION
        self._http = http
        self._ids = 0
        self._tools: dict[str, ToolInfo] | None = None

    # -- the transport

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": _ACCEPT}
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    async def request(
        self, method: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one JSON-RPC request; its `result`, or the mcpz error its answer stands for."""
        self._ids += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._ids, "method": method}
        if params is not None:
            message["params"] = dict(params)
        what = f'tools/call "{params["name"]}"' if method == "tools/call" and params else method
        limit = self.timeout if timeout is None else timeout
        try:
            with anyio.fail_after(limit):
                status, answer = await self._post(message)
        except TimeoutError:
            raise AgentError(
                f"{self.name} did not answer {what} within {limit:g}s", hint="raise --timeout"
            ) from None
        error = answer.get("error")
        if status >= 400 or error is not None:
            text = error.get("message") if isinstance(error, dict) else None
            refused = _refusal(self.name, error, status, what)
            if refused is not None:
                raise refused
            raise _error(self.name, str(text or f"HTTP {status}"), status, what)
        result = answer.get("result")
        if not isinstance(result, dict):
            raise AgentError(f"{self.name} answered {what} with no result object")
        return result

    async def notify(self, method: str) -> None:
        """Send a notification (answered 202, with nothing)."""
        response = await self._http.post(
            self.url, headers=self._headers(), json={"jsonrpc": "2.0", "method": method}
        )
        if response.status_code >= 400:
            raise _error(self.name, _message_of(response.content), response.status_code, method)

    async def _post(self, message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        import httpx2

        body = json.dumps(message).encode()
        request = self._http.build_request("POST", self.url, headers=self._headers(), content=body)
        response = await self._http.send(request, stream=True)
        try:
            if response.status_code == 200 and message["method"] == "initialize":
                self.session_id = response.headers.get("mcp-session-id")
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind == "text/event-stream":
                return response.status_code, await _answer_in_stream(response, message["id"])
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_RESPONSE:
                    raise AgentError(f"{self.name} answered more than {MAX_RESPONSE} bytes")
            return response.status_code, _json_object(bytes(data), response.status_code)
        except httpx2.TransportError as e:
            raise NetworkError(f"the gateway at {self.url} broke off: {e}", hint="try again") from e
        finally:
            await response.aclose()

    # -- MCP

    async def initialize(self) -> None:
        result = await self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "mcpz", "version": __version__},
            },
        )
        if self.session_id is None:
            raise AgentError(f"the gateway opened no session for {self.name} (no Mcp-Session-Id)")
        offered = result.get("protocolVersion")
        self.protocol_version = offered if isinstance(offered, str) and offered else PROTOCOL_VERSION
        await self.notify("notifications/initialized")

    async def close(self) -> None:
        """End the session on the gateway (its calls end with it); a failure here changes nothing."""
        if self.session_id is None:
            return
        import httpx2

        with contextlib.suppress(httpx2.HTTPError), anyio.move_on_after(2):
            await self._http.delete(self.url, headers=self._headers())
        self.session_id = None

    async def list_tools(self) -> list[ToolInfo]:
        """All the agent's tools, following `tools/list` pagination."""
        tools: list[ToolInfo] = []
        cursor: str | None = None
        for _ in range(1000):
            page = await self.request("tools/list", {"cursor": cursor} if cursor else None)
            listed = page.get("tools")
            if not isinstance(listed, list):
                raise AgentError(f"{self.name} answered tools/list with no list of tools")
            tools.extend(_tool_info(self.name, tool) for tool in listed)
            next_cursor = page.get("nextCursor")
            cursor = next_cursor if isinstance(next_cursor, str) and next_cursor else None
            if cursor is None:
                break
        self._tools = {tool.name: tool for tool in tools}
        return tools

    async def tool(self, name: str) -> ToolInfo:
        """The tool called `name`; UsageError, naming the closest match, when there is none."""
        tools = self._tools if self._tools is not None else {t.name: t for t in await self.list_tools()}
        return find_tool(tools, name, self.name, self.list_command)

    async def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> ToolResult:
        """Call one tool. A tool error comes back as `is_error`, not as an exception."""
        params: dict[str, Any] = {"name": tool, "arguments": dict(arguments or {})}
        if meta:
            params["_meta"] = dict(meta)
        result = await self.request("tools/call", params, timeout=timeout)
        content = result.get("content", [])
        structured = result.get("structuredContent")
        if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
            raise AgentError(f'{self.name} answered tools/call "{tool}" with malformed content')
        return ToolResult(
            tool=tool,
            content=tuple(content),
            structured_content=structured if isinstance(structured, dict) else None,
            is_error=bool(result.get("isError")),
            result=result,
        )


def _tool_info(agent: str, tool: Any) -> ToolInfo:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise AgentError(f"{agent} listed a tool without a name")
    schema = tool.get("inputSchema")
    output = tool.get("outputSchema")
    title = tool.get("title")
    return ToolInfo(
        name=tool["name"],
        description=str(tool.get("description") or ""),
        input_schema=dict(schema) if isinstance(schema, dict) else {"type": "object"},
        output_schema=dict(output) if isinstance(output, dict) else None,
        title=title if isinstance(title, str) else None,
    )


def _json_object(data: bytes, status: int) -> dict[str, Any]:
    """A JSON-RPC message from an answer's body; a body that is none stands for an HTTP error."""
    try:
        value = load_json(data) if data else None
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    text = " ".join(data[:200].decode("utf-8", "replace").split())
    return {"error": {"message": text or f"HTTP {status}"}}


def _message_of(data: bytes) -> str:
    error = _json_object(data, 0).get("error")
    return str(error.get("message")) if isinstance(error, dict) else "no message"


async def _answer_in_stream(response: httpx2.Response, request_id: int) -> dict[str, Any]:
    """The answer to `request_id` among the events of an SSE stream (progress and other
    notifications before it are skipped)."""
    data: list[str] = []
    size = 0
    async for line in response.aiter_lines():
        size += len(line)
        if size > MAX_RESPONSE:
            raise AgentError(f"the gateway's event stream went past {MAX_RESPONSE} bytes")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            message = _json_object("\n".join(data).encode(), response.status_code)
            data = []
            if message.get("id") == request_id and ("result" in message or "error" in message):
                return message
    raise AgentError("the gateway's event stream ended without an answer")


class CallRefused(RefusedError):
    """The registry would not relay a call: its billing (no balance, no subscription, a spend cap) or
    the caller's tier (429: too many calls). The hint says what fixes it or when to try again."""


BILLING_REFUSED = -32020
TIER_REFUSED = -32029


def _refusal(name: str, error: object, status: int, what: str) -> CallRefused | None:
    if not isinstance(error, dict) or error.get("code") not in (BILLING_REFUSED, TIER_REFUSED):
        return None
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    assert isinstance(data, dict)
    message = str(error.get("message") or "refused")
    if error.get("code") == BILLING_REFUSED:
        reason = str(data.get("reason") or message)
        return CallRefused(
            f"{name} refused {what}: {reason}", status=status, hint=str(data.get("fix") or "") or None
        )
    retry = data.get("retry_after")
    hint = f"try again in {retry} s, or ask the operator for a higher tier" if retry is not None else None
    return CallRefused(f"{name} refused {what}: {message}", status=status, hint=hint)


def _error(name: str, message: str, status: int, what: str) -> McpzError:
    if status == 401:
        return AuthError(
            f"the gateway refused the token: {message}", hint="run `mcpz login` or set MCPZ_TOKEN"
        )
    if status == 403:
        return AuthError(f"the gateway refused the call: {message}")
    if status == 404:
        return NotFoundError(message, hint="see `mcpz deployments` for what is deployed")
    if status in (502, 503):
        return RemoteError(f"{name}: {message}", status=status, hint="try again shortly")
    return AgentError(f"{name} refused {what}: {message}")


@asynccontextmanager
async def open_remote(
    name: str, *, registry: str, token: str | None, timeout: float, anonymous: bool = False
) -> AsyncIterator[RemoteSession]:
    """A session with `name`; with no token and `anonymous`, one that only x402 payments open."""
    import httpx2

    if token is None and not anonymous:
        raise AuthError(f"no token for {registry}", hint="run `mcpz login` or set MCPZ_TOKEN")
    url = gateway_url(registry, name)
    headers = {"User-Agent": f"mcpz/{__version__}"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        # Plain HTTP has no certificate to check: loading the CA bundle for nothing costs ~50 ms,
        # a sixth of a call. (Redirects are not followed, so no request leaves this URL.)
        verify = not url.startswith("http://")
        async with httpx2.AsyncClient(headers=headers, timeout=timeout, verify=verify) as http:
            session = RemoteSession(name, url, http, timeout)
            try:
                await session.initialize()
                yield session
            finally:
                await session.close()
    except httpx2.TransportError as e:
        raise NetworkError(f"cannot reach the gateway at {url}: {e}", hint="check --registry") from e


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
    payer: Payer | None = None,
) -> ToolResult:
    """Call one tool of a deployed agent; like `mcpz.local.session.call_tool`, through the gateway.
    With a `payer`, a call the agent asks payment for is paid with x402 (mcpz.client.x402) and
    made again, once; without a token it is made with no account at all."""
    split_key_values(key_values)
    anonymous = payer is not None and token is None
    async with open_remote(
        name, registry=registry, token=token, timeout=timeout, anonymous=anonymous
    ) as agent:
        info = await agent.tool(tool)
        sent = build_arguments(arguments, key_values, info.input_schema)
        result = await agent.call(tool, sent)
        if payer is not None:
            # Imported only when paying: eth_account costs more than a whole unpaid call.
            from mcpz.client.x402 import PAYMENT_META, required_of

            required = required_of(result.result or {})
            if required is not None:
                # Signed off the event loop: the spend journal is a file. Refused (nothing signed) raises.
                payment = await anyio.to_thread.run_sync(payer.authorize, name, required)
                result = await agent.call(tool, sent, meta={PAYMENT_META: payment})
    if check and result.is_error:
        raise tool_failed(name, tool, result)
    return result
