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
from mcpz.mesh import MAX_FRAME_SIZE, Call, Cancel, Frame, Notify, ProtocolError, Result
from mcpz.node.channel import AGENT_GONE, JSON, StdioChannel, agent_gone, error_response

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
Send = Callable[[Frame], Awaitable[None]]


def dumps(message: JSON) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class CallRelay:
    def __init__(self, channel_for: ChannelLookup, *, max_calls: int = MAX_CALLS) -> None:
        self.channel_for = channel_for
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
        channel = self.channel_for(frame.replica_id, frame.epoch)
        if channel is None:
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
        self._watch(channel, frame.replica_id, frame.epoch)
        scope = anyio.CancelScope()
        self._calls[frame.call_id] = scope
        tg.start_soon(self._relay, frame, channel, message, scope)

    def cancel(self, frame: Cancel) -> None:
        scope = self._calls.pop(frame.call_id, None)
        if scope is not None:
            scope.cancel()

    def notify(self, frame: Notify) -> None:
        """A client's notification for the agent (the gateway sends only the ones it should get)."""
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

    # -- the work -------------------------------------------------------------------------------

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
        finally:
            if self._calls.get(frame.call_id) is scope:
                del self._calls[frame.call_id]

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
