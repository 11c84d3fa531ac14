"""Relaying the gateway's calls to agent processes: the node's side of `call`, `cancel`, `notify`.

The hub sends one `call` frame per JSON-RPC request a client made through the gateway, naming the
replica and epoch it routed to. The relay hands the request to that replica's `StdioChannel`
(which rewrites JSON-RPC ids and progress tokens so that many sessions share the one agent
process) and answers with exactly one `result` frame, unless the hub cancelled the call first:

- **No such replica** (not running, or running at another epoch): an error result at once, with
  `data.reason` "agent-exited", so the hub fails the call instead of waiting.
- **`initialize`** is answered from the handshake the node's health check already made with the
  agent (`StdioChannel.initialize_result`): the agent is initialized once per process, however
  many client sessions come and go.
- **`cancel`** cancels the relaying task; the channel tells the agent (`notifications/cancelled`)
  and no result is sent.
- **Progress** the agent reports for a call goes back as `notify` frames carrying the call's id;
  list-changed notifications and resource updates go back without one: the gateway sends a list
  change to every session on the replica, and an update only to the sessions that subscribed to
  its URI (it keeps each session's subscriptions). Other messages the agent sends unprompted (log
  messages) are not relayed: over stdio they cannot be tied to the session they belong to, and
  sending them to every session would leak one client's data to another.
- **Bounded**: at most `max_calls` calls in flight per connection; past that a call is answered
  with an error at once rather than queued.
- **Isolated sessions** (a replica with a `SessionPool`, mcpz.node.sessions): a session's
  `initialize` takes a process of its own and is relayed to it as the client sent it; every later
  call, notification and answer of the client (to a sampling, elicitation or roots request) goes
  to that process alone, and `end_session` ends it. Whatever that process sends unprompted (log
  messages, list changes, resource updates, its requests to the client) goes back as `notify`
  for that session, with the call's id when exactly one call of the session is in flight (it
  then travels on that call's stream). A full pool answers `initialize` with an error at once
  (`data.reason` "sessions-exhausted"); a call for a session with no process, "session-gone".

One relay serves the node's life; `serve()` runs while a connection is up, and when it ends
(the connection dropped) every call still running is cancelled: the hub has failed them already.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup

from mcpz import jsonlimits, tracing
from mcpz.mesh import (
    MAX_FRAME_SIZE,
    SESSION_GONE,
    SESSIONS_EXHAUSTED,
    Call,
    Cancel,
    EndSession,
    Frame,
    Notify,
    ProtocolError,
    Result,
)
from mcpz.node.channel import AGENT_GONE, AGENT_GONE_REASON, JSON, StdioChannel, agent_gone, error_response
from mcpz.node.sessions import PoolExhausted, SessionGone, SessionPool, SessionProcess

logger = logging.getLogger(__name__)

MAX_CALLS = 1024
INVALID_REQUEST = -32600
BUSY = -32000
PAYLOAD_MARGIN = 1024  # room for the frame's own fields around a payload
LIST_CHANGED = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
    }
)
# What goes to the gateway without a call id: it knows which sessions each concerns.
FOR_SESSIONS = LIST_CHANGED | {"notifications/resources/updated"}

ChannelLookup = Callable[[str, int], StdioChannel | None]
PoolLookup = Callable[[str, int], SessionPool | None]
Send = Callable[[Frame], Awaitable[None]]


def dumps(message: JSON) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class CallRelay:
    def __init__(
        self, channel_for: ChannelLookup, *, pool_for: PoolLookup | None = None, max_calls: int = MAX_CALLS
    ) -> None:
        self.channel_for = channel_for
        self.pool_for = pool_for
        self.max_calls = max_calls
        self._tg: TaskGroup | None = None
        self._send: Send | None = None
        self._next_id: Callable[[], int] = lambda: 0
        self._calls: dict[int, anyio.CancelScope] = {}
        self.relayed = 0

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def serve(self, send: Send, next_id: Callable[[], int]) -> None:
        """Relay calls for one connection until cancelled; then cancel the calls still running."""
        async with anyio.create_task_group() as tg:
            self._tg, self._send, self._next_id = tg, send, next_id
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = self._send = None
                tg.cancel_scope.cancel()
        self._calls.clear()

    # -- frames from the hub (synchronous: the work runs in the relay's tasks) ------------------

    def call(self, frame: Call) -> None:
        tg = self._tg
        if tg is None:
            return  # not connected: the hub fails calls on a closed connection itself
        try:
            message: Any = jsonlimits.loads(frame.payload)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("method"), str) or "id" not in message:
            self._answer(
                frame.call_id, error_response(None, INVALID_REQUEST, "a call must be a JSON-RPC request")
            )
            return
        pool = self.pool_for(frame.replica_id, frame.epoch) if self.pool_for is not None else None
        channel = self.channel_for(frame.replica_id, frame.epoch) if pool is None else None
        if pool is None and channel is None:
            self._answer(
                frame.call_id,
                agent_gone(message["id"], f"replica {frame.replica_id} is not running on this node"),
            )
            return
        if len(self._calls) >= self.max_calls:
            self._answer(
                frame.call_id,
                error_response(
                    message["id"], BUSY, f"the node has {self.max_calls} calls in flight: try again"
                ),
            )
            return
        trace = tracing.of_message(message)
        if trace is not None:
            # A trace the caller sampled is logged at each hop; others only with -v.
            params = message.get("params")
            tool = params.get("name") if isinstance(params, dict) else None
            logger.log(
                logging.INFO if trace.flags & tracing.SAMPLED else logging.DEBUG,
                "call %s %s on replica %s, trace %s",
                message["method"], tool or "", frame.replica_id, trace.trace_id,
                extra={"trace_id": trace.trace_id, "replica": frame.replica_id},
            )  # fmt: skip
        scope = anyio.CancelScope()
        self._calls[frame.call_id] = scope
        if pool is not None:
            self._watch_pool(pool, frame.replica_id, frame.epoch)
            tg.start_soon(self._relay_session, frame, pool, message, scope)
            return
        assert channel is not None
        self._watch(channel, frame.replica_id, frame.epoch)
        tg.start_soon(self._relay, frame, channel, message, scope)

    def cancel(self, frame: Cancel) -> None:
        scope = self._calls.pop(frame.call_id, None)
        if scope is not None:
            scope.cancel()

    def end_session(self, frame: EndSession) -> None:
        """The client's session ended: so does its process, if the replica runs one for it."""
        pool = self.pool_for(frame.replica_id, frame.epoch) if self.pool_for is not None else None
        if pool is not None:
            pool.end(frame.session_id, "the client's session ended")

    def notify(self, frame: Notify) -> None:
        """A client's notification for the agent (the gateway sends only the ones it should get);
        for an isolated session, also its answers to the agent's requests."""
        pool = self.pool_for(frame.replica_id, frame.epoch) if self.pool_for is not None else None
        if pool is not None:
            self._notify_session(pool, frame)
            return
        channel = self.channel_for(frame.replica_id, frame.epoch)
        tg = self._tg
        if channel is None or tg is None:
            return
        try:
            message = jsonlimits.loads(frame.payload)
        except ValueError:
            return
        if isinstance(message, dict) and isinstance(message.get("method"), str) and "id" not in message:
            tg.start_soon(self._notify_agent, channel, message)

    def _notify_session(self, pool: SessionPool, frame: Notify) -> None:
        sp = pool.get(frame.session_id) if frame.session_id else None
        tg = self._tg
        if sp is None or sp.channel is None or tg is None:
            return  # the session's process is gone: its next call says so
        try:
            message = jsonlimits.loads(frame.payload)
        except ValueError:
            return
        is_notification = isinstance(message, dict) and isinstance(message.get("method"), str)
        is_answer = isinstance(message, dict) and "method" not in message and "id" in message
        if (is_notification and "id" not in message) or is_answer:
            tg.start_soon(self._send_session, sp.channel, message)

    async def _send_session(self, channel: StdioChannel, message: JSON) -> None:
        try:
            await channel.send_message(message)
        except OSError:
            pass  # the process is gone; its calls are answered by the channel

    # -- the work -------------------------------------------------------------------------------

    async def _relay_session(
        self, frame: Call, pool: SessionPool, message: JSON, scope: anyio.CancelScope
    ) -> None:
        """One call of an isolated session, on that session's own process."""
        try:
            with scope:
                response = await self._session_response(frame, pool, message)
            if scope.cancel_called:
                return
            await self._result(frame, message, response)
        finally:
            if self._calls.get(frame.call_id) is scope:
                del self._calls[frame.call_id]

    async def _session_response(self, frame: Call, pool: SessionPool, message: JSON) -> JSON:
        session_id = frame.session_id
        request_id = message["id"]
        if not session_id:
            text = "this replica serves calls of a session only"
            return error_response(request_id, AGENT_GONE, text, SESSION_GONE)
        if message["method"] == "initialize":
            try:
                channel = await pool.open(session_id)
            except PoolExhausted as e:
                return error_response(request_id, BUSY, f"{e}: try again later", SESSIONS_EXHAUSTED)
            except SessionGone as e:
                return agent_gone(request_id, str(e))
            except anyio.get_cancelled_exc_class():
                pool.end(session_id, "its initialize was cancelled")
                raise
            sp = pool.sessions.get(session_id)
            try:
                response = await self._on_process(frame, sp, channel, message)
            except anyio.get_cancelled_exc_class():
                pool.end(session_id, "its initialize was cancelled")  # no session came of it
                raise
            if "result" not in response:
                pool.end(session_id, "its initialize failed")
            return response
        sp = pool.get(session_id)
        if sp is None or sp.channel is None:
            return error_response(
                request_id,
                AGENT_GONE,
                "this session's agent process has ended (unused too long, or it exited)",
                SESSION_GONE,
            )
        response = await self._on_process(frame, sp, sp.channel, message)
        error = response.get("error")
        if isinstance(error, dict) and isinstance(error.get("data"), dict):
            if error["data"].get("reason") == AGENT_GONE_REASON:  # this session's process, not the replica
                error["data"]["reason"] = SESSION_GONE
        return response

    async def _on_process(
        self, frame: Call, sp: SessionProcess | None, channel: StdioChannel, message: JSON
    ) -> JSON:
        if sp is not None:
            sp.calls.add(frame.call_id)
        try:
            return await channel.request(message, on_progress=partial(self._progress, frame))
        finally:
            if sp is not None:
                sp.calls.discard(frame.call_id)

    def _watch_pool(self, pool: SessionPool, replica_id: str, epoch: int) -> None:
        """Send what a session's process says unprompted to the gateway, for that session alone."""
        if pool.on_message is not None:
            return

        def on_message(session_id: str, message: JSON) -> None:
            tg = self._tg
            if tg is None:
                return
            sp = pool.sessions.get(session_id)
            calls = [c for c in sp.calls if c in self._calls] if sp is not None else []
            notify = Notify(
                id=self._next_id(),
                session_id=session_id,
                replica_id=replica_id,
                epoch=epoch,
                payload=dumps(message),
                call_id=calls[0] if len(calls) == 1 else None,  # the one call it can belong to
            )
            tg.start_soon(self._emit, notify)

        pool.on_message = on_message

    async def _relay(
        self, frame: Call, channel: StdioChannel, message: JSON, scope: anyio.CancelScope
    ) -> None:
        try:
            with scope:
                if message["method"] == "initialize" and channel.initialize_result is not None:
                    response = {"jsonrpc": "2.0", "id": message["id"], "result": channel.initialize_result}
                else:
                    response = await channel.request(message, on_progress=partial(self._progress, frame))
            if scope.cancel_called:
                return  # cancelled by the hub (or the connection ended): no result
            await self._result(frame, message, response)
        finally:
            if self._calls.get(frame.call_id) is scope:
                del self._calls[frame.call_id]

    async def _result(self, frame: Call, message: JSON, response: JSON) -> None:
        payload = dumps(response)
        if len(payload) > MAX_FRAME_SIZE - PAYLOAD_MARGIN:
            payload = dumps(
                error_response(
                    message["id"],
                    AGENT_GONE,
                    f"the agent's answer is {len(payload)} bytes, over the mesh's frame limit",
                )
            )
        self.relayed += 1
        await self._emit(Result(id=self._next_id(), call_id=frame.call_id, payload=payload))

    def _progress(self, frame: Call, message: JSON) -> None:
        tg = self._tg
        if tg is not None and frame.call_id in self._calls:
            notify = Notify(
                id=self._next_id(),
                session_id=frame.session_id,
                replica_id=frame.replica_id,
                epoch=frame.epoch,
                payload=dumps(message),
                call_id=frame.call_id,
            )
            tg.start_soon(self._emit, notify)

    def _watch(self, channel: StdioChannel, replica_id: str, epoch: int) -> None:
        """Forward the agent's list changes and resource updates once a replica is called through the
        gateway."""
        if channel.on_message is not None:
            return

        def on_message(message: JSON) -> None:
            tg = self._tg
            if tg is None or message.get("method") not in FOR_SESSIONS:
                return
            notify = Notify(id=self._next_id(), replica_id=replica_id, epoch=epoch, payload=dumps(message))
            tg.start_soon(self._emit, notify)

        channel.on_message = on_message

    async def _notify_agent(self, channel: StdioChannel, message: JSON) -> None:
        try:
            await channel.notify(message["method"], message.get("params"))
        except OSError:
            pass  # the agent is gone; its calls are answered by the channel

    def _answer(self, call_id: int, response: JSON) -> None:
        tg = self._tg
        if tg is not None:
            tg.start_soon(self._emit, Result(id=self._next_id(), call_id=call_id, payload=dumps(response)))

    async def _emit(self, frame: Frame) -> None:
        send = self._send
        if send is None:
            return
        try:
            await send(frame)
        except ProtocolError as e:  # a frame of ours that breaks the protocol: a bug, logged
            logger.error("cannot send a %s frame: %s", frame.TYPE, e.message)
        except Exception as e:  # the connection is closing: the hub fails the call on its side
            logger.debug("could not send a %s frame: %s", frame.TYPE, e)
