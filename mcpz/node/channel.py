"""One agent process's MCP stdio, shared by every client the node puts in front of it.

An agent speaks MCP over stdio: newline-delimited JSON-RPC on its stdin and stdout, one
conversation per process. The node needs several over that one pipe pair: its own health check
(the official `mcp` client), and, with the gateway, calls relayed from many MCP sessions at
once. `StdioChannel` is the one owner of the pipes and multiplexes them:

- **Requests get the channel's ids.** Each request going in gets a fresh integer id; the
  response coming out is routed back to whoever sent the request, with that sender's own id
  restored. Two clients that both use id 1 never see each other's answers, and a
  `notifications/cancelled` a client sends is rewritten to the id the agent saw.
- **Two ways in.** `transport()` is an `mcp` client transport (a pair of memory streams), so the
  official `mcp.Client` runs over the shared pipes exactly as over its own stdio transport;
  that is how `mcpz.node.health` checks an agent. `request()` takes one raw JSON-RPC request
  and returns its raw response: the shape of the mesh's `call`/`result` frames, which the gateway
  relay will use as is.
- **Messages from the agent that answer nothing** (notifications, and requests such as `ping`
  or `sampling/createMessage`) go to the attached transports and to `on_message`; a request
  with no client to answer it gets an answer from the channel (`ping`) or an error.
- **The handshake is remembered.** The result of the first `initialize` that passes through
  is kept in `initialize_result`, so later sessions can be told the agent's capabilities
  without initializing a live agent a second time.
- **The end is explicit.** When the agent's stdout ends (it exited), every request still
  waiting gets a JSON-RPC error (-32000) and every transport's stream ends, so no caller waits
  for an answer that cannot come.

A stdout line that is not JSON-RPC (a stray `print`) goes to `on_stray`, which the node turns
into a `stdout` log line.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mcpz import jsonlimits
from mcpz.mesh import MAX_FRAME_SIZE
from mcpz.node.process import ReplicaProcess, read_lines

if TYPE_CHECKING:
    from mcp.shared.message import SessionMessage

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
AGENT_GONE = -32000
METHOD_NOT_FOUND = -32601
_SESSION_BUFFER = 256


AGENT_GONE_REASON = "agent-exited"
"""`error.data.reason` of the error answering a request the agent can no longer answer, so the
gateway can tell "the replica died" from an error the agent itself returned with code -32000."""


def error_response(request_id: object, code: int, message: str, reason: str | None = None) -> JSON:
    error: JSON = {"code": code, "message": message}
    if reason is not None:
        error["data"] = {"reason": reason}
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def agent_gone(request_id: object, message: str) -> JSON:
    return error_response(request_id, AGENT_GONE, message, AGENT_GONE_REASON)


class _Waiter:
    """A caller of `request()` waiting for one response."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.response: JSON | None = None

    def deliver(self, message: JSON) -> None:
        self.response = message
        self.done.set()


@dataclass(eq=False)
class _Session:
    """One attached `mcp` client transport."""

    send: MemoryObjectSendStream[SessionMessage | Exception]
    ids: dict[object, int] = field(default_factory=dict)  # the client's request id -> the channel's

    def deliver(self, message: JSON) -> None:
        from mcp.shared.message import SessionMessage
        from mcp_types import jsonrpc_message_adapter
        from pydantic import ValidationError

        item: SessionMessage | Exception
        try:
            item = SessionMessage(jsonrpc_message_adapter.validate_python(message, by_name=False))
        except ValidationError as e:
            item = e
        try:
            self.send.send_nowait(item)
        except anyio.WouldBlock:
            logger.warning("an MCP client on the node fell behind; dropped a message from the agent")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


@dataclass(frozen=True, slots=True)
class _Pending:
    owner: _Waiter | _Session
    original_id: object
    method: str


class StdioChannel:
    """The JSON-RPC multiplexer over one agent process's stdin and stdout. Run `run()` in a task."""

    def __init__(
        self,
        process: ReplicaProcess,
        *,
        on_stray: Callable[[str], None] | None = None,
        on_message: Callable[[JSON], None] | None = None,
        on_request: Callable[[JSON], None] | None = None,
        max_message: int = MAX_FRAME_SIZE,
    ) -> None:
        self.process = process
        self.on_stray = on_stray
        self.on_message = on_message
        # A process of one client session (mcpz.node.sessions): the agent's requests go to that
        # client as they are, and its answers come back through `send_message`.
        self.on_request = on_request
        self.max_message = max_message
        self.initialize_result: JSON | None = None
        self.closed = anyio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._sessions: list[_Session] = []
        self._progress: dict[str, tuple[Callable[[JSON], None], object]] = {}  # ours -> (to, theirs)

    # -- reading ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the agent's stdout until it ends, routing every message; then close the channel."""
        try:
            async for line, cut in read_lines(self.process.stdout, self.max_message):
                if cut:
                    logger.warning(
                        "agent %d wrote a message over %d bytes on stdout: dropped",
                        self.process.pid,
                        self.max_message,
                    )
                    continue
                if line.strip():
                    await self._dispatch(line)
        finally:
            self._close()

    async def _dispatch(self, line: bytes) -> None:
        try:
            message = jsonlimits.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            if self.on_stray is not None:
                self.on_stray(line.decode("utf-8", "replace"))
            return
        if "method" in message:
            if "id" in message:
                await self._server_request(message)
            else:
                self._broadcast(message)
            return
        request_id = message.get("id")
        pending = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if pending is None:
            logger.debug(
                "agent %d answered a request nobody is waiting for: %r", self.process.pid, request_id
            )
            return
        if pending.method == "initialize" and isinstance(message.get("result"), dict):
            self.initialize_result = message["result"]
        if isinstance(pending.owner, _Session):
            pending.owner.ids.pop(pending.original_id, None)
        pending.owner.deliver({**message, "id": pending.original_id})

    async def _server_request(self, message: JSON) -> None:
        """A request from the agent to its client: to the session's client (`on_request`), else to the
        newest attached client, else answered here."""
        if self.on_request is not None:
            self.on_request(message)
        elif self._sessions and self.on_message is None:
            # Not while gateway calls are relayed here (`on_message` set): the node's health check
            # never causes a request from the agent, so one arriving while it is attached belongs
            # to some session's call, and must not be answered by the health check's client.
            self._sessions[-1].deliver(message)
        elif message.get("method") == "ping":
            await self._write({"jsonrpc": "2.0", "id": message["id"], "result": {}})
        else:
            # The gateway's sessions share this process, and a request over stdio says nothing of
            # the call that caused it: refused, never guessed onto one client (docs/gateway.md).
            method = message.get("method")
            text = (
                f"{method} cannot reach a client: this agent's process is shared by every gateway "
                "session, and over stdio a request from it cannot be tied to the call that caused it"
            )
            await self._write(error_response(message["id"], METHOD_NOT_FOUND, text))

    def _broadcast(self, message: JSON) -> None:
        if message.get("method") == "notifications/progress" and self._progress:
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            route = self._progress.get(token) if isinstance(token, str) else None
            if route is not None:
                assert isinstance(params, dict)
                route[0]({**message, "params": {**params, "progressToken": route[1]}})
                return
        for session in self._sessions:
            session.deliver(message)
        if self.on_message is not None:
            self.on_message(message)

    def _close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        pending, self._pending = self._pending, {}
        for item in pending.values():
            if isinstance(item.owner, _Waiter):
                item.owner.deliver(agent_gone(item.original_id, "the agent process exited"))
        for session in self._sessions:
            session.send.close()

    # -- writing ------------------------------------------------------------------------------

    async def _write(self, message: Mapping[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
        await self.process.stdin.write(data)

    async def send_message(self, message: Mapping[str, Any]) -> None:
        """Write one JSON-RPC message as it is: a client's notification, or its answer to a request
        the agent made (`on_request`), whose id is the agent's own."""
        await self._write(message)

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Send a notification to the agent."""
        message: JSON = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = dict(params)
        await self._write(message)

    async def request(
        self,
        message: Mapping[str, Any],
        *,
        timeout: float | None = None,
        on_progress: Callable[[JSON], None] | None = None,
    ) -> JSON:
        """Send one JSON-RPC request and return its response, with the request's own id.

        Never raises for the agent's sake: an agent that exits, or is gone already, yields a
        JSON-RPC error response (-32000, `data.reason` "agent-exited"). TimeoutError after
        `timeout` seconds; then, as on any cancellation, the agent is sent
        `notifications/cancelled` for the request.

        With `on_progress`, a `progressToken` in the request's `_meta` is replaced by one unique
        on this channel (two clients may both use token 1), and the agent's
        `notifications/progress` for it go to `on_progress`, with the caller's token restored.
        """
        original = message.get("id")
        if self.closed.is_set():
            return agent_gone(original, "the agent process is not running")
        channel_id = next(self._ids)
        waiter = _Waiter()
        self._pending[channel_id] = _Pending(waiter, original, str(message.get("method", "")))
        outgoing: JSON = {**message, "id": channel_id}
        token = f"mcpz-{channel_id}"
        if on_progress is not None:
            outgoing = self._track_progress(outgoing, token, on_progress)
        answered = False
        try:
            try:
                await self._write(outgoing)
            except OSError:
                answered = True  # nothing reached the agent: nothing to cancel
                return agent_gone(original, "the agent process exited")
            with anyio.fail_after(math.inf if timeout is None else timeout):
                await waiter.done.wait()
            answered = True
        finally:
            self._progress.pop(token, None)
            if self._pending.pop(channel_id, None) is not None and not answered:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await self._cancel(channel_id, "the caller gave up")
        assert waiter.response is not None
        return waiter.response

    def _track_progress(self, message: JSON, token: str, on_progress: Callable[[JSON], None]) -> JSON:
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if not isinstance(meta, dict) or meta.get("progressToken") is None:
            return message
        assert isinstance(params, dict)
        self._progress[token] = (on_progress, meta["progressToken"])
        return {**message, "params": {**params, "_meta": {**meta, "progressToken": token}}}

    async def _cancel(self, channel_id: int, reason: str) -> None:
        try:
            await self.notify("notifications/cancelled", {"requestId": channel_id, "reason": reason})
        except OSError:
            pass

    @asynccontextmanager
    async def transport(
        self,
    ) -> AsyncIterator[
        tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
    ]:
        """A client transport for `mcp.Client` over this channel: `Client(channel.transport())`."""
        from mcp.shared.message import SessionMessage

        to_client, client_reads = anyio.create_memory_object_stream[SessionMessage | Exception](
            _SESSION_BUFFER
        )
        client_writes, from_client = anyio.create_memory_object_stream[SessionMessage](0)
        session = _Session(to_client)
        if self.closed.is_set():
            to_client.close()
        else:
            self._sessions.append(session)

        async def pump() -> None:
            async with from_client:
                async for item in from_client:
                    data = item.message.model_dump(by_alias=True, exclude_unset=True, mode="json")
                    try:
                        await self._from_session(session, data)
                    except OSError:
                        to_client.close()  # the agent is gone: the client sees its stream end
                        return

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump)
                try:
                    yield client_reads, client_writes
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if session in self._sessions:
                self._sessions.remove(session)
            for channel_id in session.ids.values():
                self._pending.pop(channel_id, None)
            for stream in (to_client, client_reads, client_writes, from_client):
                stream.close()

    async def _from_session(self, session: _Session, data: JSON) -> None:
        if "method" in data and "id" in data:
            channel_id = next(self._ids)
            self._pending[channel_id] = _Pending(session, data["id"], str(data["method"]))
            session.ids[data["id"]] = channel_id
            data = {**data, "id": channel_id}
        elif data.get("method") == "notifications/cancelled":
            params = dict(data.get("params") or {})
            channel_id = session.ids.pop(params.get("requestId"), None)  # type: ignore[arg-type]
            if channel_id is None:
                return  # nothing of that client's is outstanding
            self._pending.pop(channel_id, None)
            data = {**data, "params": {**params, "requestId": channel_id}}
        await self._write(data)
