"""Requests relayed between registry replicas: the web framework's part of
`registry_server.mesh.cluster`.

A replica that does not lead the mesh sends a request for the gateway, `/v1/deployments...` or
`/v1/nodes` whole to `mcpz.lead.http` (its head in a header, its body as the payload, in parts
of at most `bus.MAX_PAYLOAD`), with a reply inbox. The leader answers `ok` at once, runs the
request through its own ASGI app (marked `mcpz.relayed`, so it is never relayed twice) and
publishes to the inbox what the app writes: `start` (status, headers), `body` parts (`more`), and
a `tick` every `TICK` seconds while it runs. The relaying replica streams that to its client; its
client going away is published to `mcpz.http.in.<id>`, where the leader's app reads it as
`http.disconnect` (the gateway cancels the call). No leader (no answer within `ACCEPT_WAIT`, or
the server's no-responders status): 503 with Retry-After; a leader silent for `SILENT_LIMIT`
mid-request: 504, or the answer cut where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from nats.aio.msg import Msg
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcpz.mesh import MAX_FRAME_SIZE
from registry_server.bus import header, meta, no_responders
from registry_server.http import error_response
from registry_server.mesh.cluster import ACCEPT_WAIT, LEAD_HTTP, SILENT_LIMIT, TICK, Cluster, pieces

log = logging.getLogger("registry_server.cluster")

MAX_RELAYED_BODY = MAX_FRAME_SIZE
"""The largest request body relayed: what one call frame holds (the gateway's and the API's own
limits are below it)."""


async def forward(
    cluster: Cluster, scope: Scope, receive: Receive, send: Send, subject: str = LEAD_HTTP
) -> None:
    """Answer an HTTP request through the leader (this replica does not lead), or through the
    replica `subject` names (`mcpz.http.to.<replica>`: the one owning a gateway session)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if len(body) > MAX_RELAYED_BODY:  # read before the leader's own limits see it: bounded here
            response = error_response(413, f"the request is over {MAX_RELAYED_BODY} bytes")
            await response(scope, receive, send)
            return
        if not message.get("more_body"):
            break
    rid = secrets.token_hex(8)
    inbox = cluster.bus.new_inbox()
    answers: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_answer(msg: Msg) -> None:
        answers.put_nowait(msg)

    sub = await cluster.bus.subscribe(inbox, on_answer)
    parts = pieces(bytes(body))
    head = {
        "id": rid,
        "method": scope["method"],
        "scheme": scope.get("scheme", "http"),
        "path": scope["path"],
        "raw_path": (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
        "query": scope.get("query_string", b"").decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope.get("headers", [])],
        "client": list(scope["client"]) if scope.get("client") else None,
        "server": list(scope["server"]) if scope.get("server") else None,
        "http_version": scope.get("http_version", "1.1"),
        "parts": len(parts),
    }
    started = False
    done = False
    watcher: asyncio.Future[Message] = asyncio.ensure_future(receive())
    try:
        await cluster.bus.publish(subject, parts[0], reply=inbox, headers={"m": header(head)})
        wait = ACCEPT_WAIT
        while not done:
            getter = asyncio.ensure_future(answers.get())
            both: list[asyncio.Future[Any]] = [getter, watcher]
            finished, _ = await asyncio.wait(both, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if watcher in finished:  # the client went away: the leader cancels what runs
                getter.cancel()
                with contextlib.suppress(Exception):
                    await cluster.bus.publish(f"mcpz.http.in.{rid}", headers={"t": "cancel"})
                return
            if getter not in finished:
                getter.cancel()
                if not started:
                    accepted = wait != ACCEPT_WAIT
                    await _refuse(scope, receive, send, 503 if not accepted else 504, accepted)
                return
            msg = getter.result()
            kind = (msg.headers or {}).get("t", "")
            if no_responders(msg) or kind == "gone":
                await _refuse(scope, receive, send, 503, False)
                return
            if kind == "ok":
                wait = SILENT_LIMIT
                for part in parts[1:]:
                    await cluster.bus.publish(f"mcpz.http.in.{rid}", part, headers={"t": "body"})
            elif kind == "start":
                m = meta(msg)
                started = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": int(m["status"]),
                        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in m["headers"]],
                    }
                )
            elif kind == "body":
                done = msg.headers.get("more") != "1" if msg.headers else True
                await send({"type": "http.response.body", "body": msg.data, "more_body": not done})
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if started and not done:  # the leader went silent mid-answer: end what was sent
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """503 for a relayed request that reached a replica no longer leading."""
    await _refuse(scope, receive, send, 503, False)


async def serve(cluster: Cluster, app: ASGIApp, msg: Msg, *, owned: bool = False) -> None:
    """Run a relayed request: one for the leader (`owned`: one for a gateway session of this replica)."""
    reply = msg.reply
    if not owned and not cluster.leading:
        await cluster.bus.publish(reply, headers={"t": "gone"})
        return
    head = meta(msg)
    rid = str(head["id"])
    inbound: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_in(m: Msg) -> None:
        inbound.put_nowait(m)

    sub = await cluster.bus.subscribe(f"mcpz.http.in.{rid}", on_in)
    await cluster.bus.publish(reply, headers={"t": "ok"})
    parts_left = int(head.get("parts", 1)) - 1
    first: list[bytes] = [msg.data]
    state = {"started": False, "ended": False}

    async def receive() -> Message:
        nonlocal parts_left
        if first:
            return {"type": "http.request", "body": first.pop(), "more_body": parts_left > 0}
        while True:
            m = await inbound.get()
            if (m.headers or {}).get("t") == "cancel":
                return {"type": "http.disconnect"}
            if parts_left > 0:
                parts_left -= 1
                return {"type": "http.request", "body": m.data, "more_body": parts_left > 0}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            state["started"] = True
            headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])]
            m = header({"status": message["status"], "headers": headers})
            await cluster.bus.publish(reply, headers={"t": "start", "m": m})
        elif message["type"] == "http.response.body":
            more = bool(message.get("more_body"))
            chunks = pieces(bytes(message.get("body", b"")))
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1 and not more
                await cluster.bus.publish(reply, chunk, headers={"t": "body", "more": "0" if last else "1"})
            state["ended"] = not more

    async def tick() -> None:
        while True:
            await asyncio.sleep(TICK)
            await cluster.bus.publish(reply, headers={"t": "tick"})

    ticker = asyncio.create_task(tick())
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": head.get("http_version", "1.1"),
        "method": head["method"],
        "scheme": head.get("scheme", "http"),
        "path": head["path"],
        "raw_path": str(head.get("raw_path", head["path"])).encode("latin-1"),
        "query_string": str(head.get("query", "")).encode("latin-1"),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head.get("headers", [])],
        "client": tuple(head["client"]) if head.get("client") else None,
        "server": tuple(head["server"]) if head.get("server") else None,
        "mcpz.relayed": True,
    }
    try:
        await app(scope, receive, send)
    except Exception:
        log.exception("relayed request failed", extra={"path": head.get("path")})
        if not state["started"]:
            await send({"type": "http.response.start", "status": 500, "headers": []})
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        with contextlib.suppress(Exception):
            if not state["ended"]:
                await cluster.bus.publish(reply, headers={"t": "body", "more": "0"})
            await sub.unsubscribe()


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, accepted: bool) -> None:
    if accepted:
        message = "the registry replica leading the mesh stopped answering"
    else:
        message = "no registry replica leads the mesh right now"
    response = error_response(status, message, "try again in a few seconds", headers={"Retry-After": "1"})
    await response(scope, receive, send)
