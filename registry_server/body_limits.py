"""Request bodies, bounded before a route sees them (plain ASGI, inside the request log).

Each kind of route has its own limit: git's fetch negotiation `max_request_bytes`, a push
`max_push_bytes` plus room for its ref commands, everything else (the JSON API) `max_json_bytes`.
A `Content-Length` over the limit is a 413 before a byte is read. JSON API bodies are small, so
they are read here whole, counting as they come (a chunked body gets its 413 at the limit, not at
its end), checked for nesting depth (`mcpz.jsonlimits`, a 400) and handed to the route from
memory. Git bodies stream on to their routes, which count what they inflate (`git.routes`).
The gateway (`/mcp/...`) never comes through here: it bounds its own bodies.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcpz.jsonlimits import JSONError, check_depth
from registry_server.logs import request_id
from registry_server.settings import RegistrySettings

PUSH_COMMANDS_ROOM = 1024 * 1024  # ref commands before a push's pack


class BodyTooLarge(Exception):
    """The body went past `limit` bytes while it was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over the limit of {limit} bytes")
        self.limit = limit


def body_limit(path: str, settings: RegistrySettings) -> int:
    """The largest body a request to `path` may send."""
    if path.startswith("/git/"):
        if path.endswith("/git-receive-pack"):
            return settings.max_push_bytes + PUSH_COMMANDS_ROOM
        return settings.max_request_bytes
    return settings.max_json_bytes


def content_length(scope: Scope) -> int | None:
    """The request's Content-Length; -1 when it is there but not a number."""
    for key, value in scope.get("headers") or ():
        if key == b"content-length":
            return int(value) if value.isdigit() and len(value) < 20 else -1
    return None


class BodyLimits:
    def __init__(self, app: ASGIApp, settings: RegistrySettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = body_limit(path, self.settings)
        length = content_length(scope)
        git = path.startswith("/git/")
        if length == -1:
            await _refuse(send, 400, "Content-Length is not a number", git=git)
            return
        if length is not None and length > limit:
            await _refuse(send, 413, f"the request body is over the limit of {limit} bytes", git=git)
            return
        headers = dict(scope.get("headers") or ())
        if git or (length is None and b"transfer-encoding" not in headers):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, limit)
        except BodyTooLarge as e:
            await _refuse(send, 413, str(e), git=False)
            return
        if body is None:
            return  # the client went away
        content_type = headers.get(b"content-type", b"").lower()
        if not content_type or b"json" in content_type:
            try:
                check_depth(body)
            except JSONError as e:
                await _refuse(send, 400, f"invalid request: {e}", git=False)
                return
        await self.app(scope, _replay(body, receive), send)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None if the client disconnected; BodyTooLarge as soon as it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` that hands out `body` once, then waits on the client (for its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _refuse(send: Send, status: int, message: str, *, git: bool) -> None:
    if git:  # git prints a text body as it is
        body, content_type = f"{message}\n".encode(), b"text/plain; charset=utf-8"
    else:
        error = {"error": {"message": message, "hint": None, "request_id": request_id.get()}}
        body, content_type = json.dumps(error).encode(), b"application/json"
    # The body was not read: the connection cannot be reused for another request.
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
