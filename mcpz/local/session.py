"""Talking MCP to an agent on this machine: start it from its folder, list its tools, call them.

Built on the official `mcp` client over stdio. `open_agent` starts an agent once and serves
many requests (the CLI, benchmarks and the mesh node use it); `list_tools` and `call_tool` are
one-shot helpers over it.

    async with open_agent("examples/weather") as agent:
        tools = await agent.list_tools()
        result = await agent.call("forecast", {"city": "Oslo"})

`timeout` bounds the start and each request (default: the `call_timeout` setting). Every
failure comes out as one `AgentError` (exit 7): the agent could not start, exited, did not
answer in time, or refused a request. The agent's stderr is captured instead of flooding the
terminal; its last line goes into the error when the agent dies, and all of it is logged at
INFO (`mcpz -v`) when the session ends.

The `mcp` SDK is imported on first use: importing it costs most of a second.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from mcpz._version import __version__
from mcpz.errors import AgentError, McpzError, UsageError
from mcpz.local.args import build_arguments, split_key_values
from mcpz.local.process import AgentProcess, agent_process
from mcpz.manifest import MANIFEST_FILE
from mcpz.tools import ToolInfo as ToolInfo  # re-exported: they were defined here
from mcpz.tools import ToolResult as ToolResult
from mcpz.tools import find_tool as find_tool
from mcpz.tools import tool_failed as tool_failed

if TYPE_CHECKING:
    from mcp import Client
    from mcp.client.session import IncomingMessage

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_STDERR_TAIL_BYTES = 64 * 1024
_START_HINT = f"check that [run].command in {MANIFEST_FILE} starts an MCP server on stdio"


class ToolSession:
    """Tools over a connected `mcp.Client`: listed, found by name, called. Subclasses say where
    the agent runs (`list_command`) and how its failures read (`_request`)."""

    name: str
    list_command: str

    def __init__(self, client: Client, timeout: float) -> None:
        self.timeout = timeout
        self._client = client
        self._tools: dict[str, ToolInfo] | None = None

    async def _request(
        self, what: str, send: Callable[[], Awaitable[_T]], *, timeout: float | None = None
    ) -> _T:
        raise NotImplementedError

    async def list_tools(self) -> list[ToolInfo]:
        """All the agent's tools, following `tools/list` pagination."""
        tools: list[ToolInfo] = []
        cursor: str | None = None
        for _ in range(1000):
            page = await self._request("tools/list", partial(self._client.list_tools, cursor=cursor))
            tools.extend(ToolInfo.from_mcp(tool) for tool in page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        self._tools = {tool.name: tool for tool in tools}
        return tools

    async def tool(self, name: str) -> ToolInfo:
        """The tool called `name`; UsageError, naming the closest match, when there is none."""
        tools = self._tools if self._tools is not None else {t.name: t for t in await self.list_tools()}
        return find_tool(tools, name, self.name, self.list_command)

    async def call(
        self, tool: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> ToolResult:
        """Call one tool. A tool error comes back as `is_error`, not as an exception."""
        send = partial(self._client.call_tool, tool, dict(arguments or {}))
        result = await self._request(f'tools/call "{tool}"', send, timeout=timeout)
        return ToolResult.from_mcp(tool, result)


class AgentSession(ToolSession):
    """A running agent and the MCP client connected to it; made by `open_agent`."""

    def __init__(
        self, folder: str, process: AgentProcess, client: Client, output: _AgentOutput, timeout: float
    ) -> None:
        super().__init__(client, timeout)
        self.folder = folder
        self.process = process
        self.list_command = f"mcpz tools --local {folder}"
        self._output = output

    @property
    def name(self) -> str:  # type: ignore[override]
        """The agent's name, from its manifest."""
        return self.process.name

    def stderr(self) -> str:
        """What the agent has written on stderr so far (its last 64 KiB)."""
        return self._output.tail()

    async def _request(
        self, what: str, send: Callable[[], Awaitable[_T]], *, timeout: float | None = None
    ) -> _T:
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED
        from pydantic import ValidationError

        limit = self.timeout if timeout is None else timeout
        try:
            with anyio.fail_after(limit):
                return await send()
        except TimeoutError:
            raise self._output.error(
                f"did not answer {what} within {limit:g}s", "raise --timeout if the tool is slow"
            ) from None
        except MCPError as e:
            if e.code == CONNECTION_CLOSED:
                raise self._output.exited(f"during {what}") from e
            raise AgentError(f"{self.name} refused {what}: {e.message}") from e
        except (ValidationError, RuntimeError) as e:
            # The SDK raises these for a result that breaks the protocol or the tool's
            # declared output schema: the agent's fault, reported as such.
            raise AgentError(f"{self.name} answered {what} with an invalid result: {e}") from e


@asynccontextmanager
async def open_agent(
    path: str | os.PathLike[str] = ".",
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[AgentSession]:
    """Start the agent in the folder `path` and connect the official MCP client to it.

    `env` is the environment to start from (default: `os.environ`), with the manifest's
    `[run] env` merged over it. The agent is stopped when the block ends.
    """
    from mcp import Client, Implementation, MCPError, StdioServerParameters
    from mcp.client.stdio import stdio_client

    limit = _timeout(timeout)
    process = agent_process(path, env=env)
    params = StdioServerParameters(
        command=process.argv[0], args=list(process.argv[1:]), env=dict(process.env), cwd=process.cwd
    )
    logger.info("starting %s: %s (in %s)", process.name, process.display, process.cwd)
    with _AgentOutput(process.name) as output:
        started = False
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + limit) as start:
                client = Client(
                    stdio_client(params, errlog=output.file),
                    client_info=Implementation(name="mcpz", version=__version__),
                    message_handler=output.on_message,
                )
                async with client:
                    started = True
                    start.deadline = math.inf
                    yield AgentSession(os.fspath(path), process, client, output, limit)
        except OSError as e:
            # Only the spawn raises bare: later errors come wrapped in the client's task groups.
            if isinstance(e, TimeoutError):
                raise
            raise AgentError(f"cannot start {process.name}: {e.strerror or e}", hint=_START_HINT) from e
        except MCPError as e:
            raise output.failed(e, "the MCP handshake") from e
        except BaseExceptionGroup as group:
            # The client's task groups wrap whatever ends the session, even our own errors
            # raised in the block: hand back the one error that matters.
            leaf = single_leaf(group)
            if isinstance(leaf, MCPError):
                raise output.failed(leaf, "a request" if started else "the MCP handshake") from leaf
            if leaf is None:
                raise
            raise leaf from leaf.__cause__
        if start.cancelled_caught:
            raise output.error(
                f"did not answer within {limit:g}s of starting",
                f"raise --timeout if it starts slowly, or {_START_HINT}",
            )


async def list_tools(
    path: str | os.PathLike[str] = ".",
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> list[ToolInfo]:
    """Start the agent in `path`, list its tools, stop it."""
    async with open_agent(path, timeout=timeout, env=env) as agent:
        return await agent.list_tools()


async def call_tool(
    path: str | os.PathLike[str],
    tool: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    key_values: Sequence[str] = (),
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> ToolResult:
    """Start the agent in `path`, call one tool, stop it.

    `key_values` are `key=value` words as typed on a command line, read with the tool's
    input schema (see `mcpz.local.args`) and merged over `arguments`. With `check` (the
    default) a tool error raises AgentError carrying the tool's message.
    """
    split_key_values(key_values)  # a typo is reported before the agent is started
    async with open_agent(path, timeout=timeout, env=env) as agent:
        info = await agent.tool(tool)
        result = await agent.call(tool, build_arguments(arguments, key_values, info.input_schema))
    if check and result.is_error:
        raise tool_failed(agent.name, tool, result)
    return result


def _timeout(timeout: float | None) -> float:
    if timeout is None:
        from mcpz.config import Settings

        timeout = Settings.load().call_timeout
    if not timeout > 0:
        raise UsageError(f"timeout must be a positive number of seconds, not {timeout:g}")
    return timeout


def single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception in a (nested) group, or the first mcpz error among several."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = list(error.exceptions)
        else:
            leaves.append(error)
    if len(leaves) == 1:
        return leaves[0]
    return next((leaf for leaf in leaves if isinstance(leaf, McpzError)), None)


class _AgentOutput:
    """What an agent says outside MCP, kept to explain its failures.

    Its stderr goes to a temporary file (readable while the agent runs); a line on its stdout
    that is not an MCP message (a stray `print`) is noted. The errors it makes name both.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.stray: str | None = None
        fd, path = tempfile.mkstemp(prefix="mcpz-agent-", suffix=".log")
        self.path = Path(path)
        self.file = os.fdopen(fd, "w", encoding="utf-8")

    async def on_message(self, message: IncomingMessage) -> None:
        """The client's message handler: transport faults arrive here as exceptions."""
        if isinstance(message, Exception) and self.stray is None:
            from pydantic import ValidationError

            errors = message.errors() if isinstance(message, ValidationError) else []
            line = errors[0].get("input") if errors else None
            self.stray = line[:80] if isinstance(line, str) else str(message)[:80]
            logger.warning("%s wrote a line that is not MCP on stdout: %r", self.name, self.stray)

    def tail(self, limit: int = _STDERR_TAIL_BYTES) -> str:
        # A reader of its own: seeking the shared descriptor would move the agent's writes.
        with self.path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")

    def last_line(self) -> str:
        lines = [line.strip() for line in self.tail(4096).splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def error(self, what: str, hint: str) -> AgentError:
        """`{name} {what}`, with the stray stdout line if there was one."""
        if self.stray is not None:
            what += f"; it printed {self.stray!r} on stdout"
            hint = "an MCP server on stdio must write only MCP messages on stdout: log to stderr"
        return AgentError(f"{self.name} {what}", hint=hint)

    def exited(self, when: str) -> AgentError:
        last = self.last_line()
        detail = f": {last}" if last else " (it wrote nothing on stderr)"
        hint = "rerun with -v to see its stderr"
        if when == "before it answered":
            hint += f"; {_START_HINT}"
        return self.error(f"exited {when}{detail}", hint)

    def failed(self, error: BaseException, what: str) -> AgentError:
        """An MCP error during `what`: the connection closed (the agent exited), or a refusal."""
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        if isinstance(error, MCPError) and error.code != CONNECTION_CLOSED:
            return self.error(f"refused {what}: {error.message}", _START_HINT)
        return self.exited("before it answered" if what == "the MCP handshake" else f"during {what}")

    def __enter__(self) -> _AgentOutput:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            text = self.tail()
            if text.strip():
                logger.info("%s stderr:\n%s", self.name, text.rstrip())
        finally:
            self.file.close()
            self.path.unlink(missing_ok=True)
