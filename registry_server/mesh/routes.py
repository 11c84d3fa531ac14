"""The mesh's WebSocket endpoints: nodes at `/v1/mesh`, the cloud connector at
`/v1/connect/{namespace}/{name}`.

Only the HTTP part lives here: the upgrade's token is checked (401/403 before the upgrade, with the
API's error body; 503 when tokens cannot be checked), the socket is accepted and handed to the hub
(`registry_server.mesh.hub`) behind its `Socket` protocol, which turns the framework's disconnect
into the `ConnectionError` the hub expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from mcpz.errors import McpzError, UsageError
from registry_server.accounts.auth import Forbidden, Unauthenticated
from registry_server.http import agent_name, error_response
from registry_server.mesh.connector import ConnectorConnection
from registry_server.mesh.hub import ConnectionFactory, MeshHub

router = APIRouter()


@router.websocket("/v1/mesh")
async def mesh_endpoint(websocket: WebSocket) -> None:
    await serve(websocket)


@router.websocket("/v1/connect/{namespace}/{name}")
async def connect_endpoint(websocket: WebSocket, namespace: str, name: str) -> None:
    try:
        agent = agent_name(namespace, name)
    except UsageError:
        await websocket.close(1008, "not an agent name")
        return
    await serve(
        websocket, partial(ConnectorConnection, agent=agent), scope="deploy", namespace=namespace, agent=agent
    )


async def serve(
    websocket: WebSocket,
    connection: ConnectionFactory | None = None,
    *,
    scope: str = "node",
    namespace: str | None = None,
    agent: str | None = None,
) -> None:
    """Authenticate the upgrade (`scope`, in `namespace`), then run the connection until it ends:
    here, or on the replica leading the mesh when this one does not (`registry_server.mesh.cluster`)."""
    hub: MeshHub = websocket.app.state.mesh
    try:
        principal = await hub.authenticate(websocket.headers, scope, namespace)
    except (Unauthenticated, Forbidden) as e:
        await refuse(websocket, 403 if isinstance(e, Forbidden) else 401, e)
        return
    except McpzError as e:
        await refuse(websocket, 503, e)
        return
    await websocket.accept()
    cluster = getattr(websocket.app.state, "cluster", None)
    if cluster is not None and not cluster.leading:
        await cluster.relay_socket(AcceptedSocket(websocket), principal.account_id, url_of(websocket), agent)
        return
    await hub.attach(AcceptedSocket(websocket), principal.account_id, url_of(websocket), connection)


class AcceptedSocket:
    """A Starlette WebSocket as the hub's `Socket`."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def receive(self) -> Mapping[str, Any]:
        return await self.websocket.receive()

    async def send_bytes(self, data: bytes) -> None:
        try:
            await self.websocket.send({"type": "websocket.send", "bytes": data})
        except WebSocketDisconnect as e:
            raise ConnectionResetError(f"the peer closed the WebSocket ({e.code})") from e

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.websocket.close(code, reason)
        except WebSocketDisconnect as e:
            raise ConnectionResetError(f"the peer closed the WebSocket ({e.code})") from e


async def refuse(websocket: WebSocket, status: int, error: McpzError) -> None:
    """Answer the upgrade with an HTTP error (the node exits on 401/403 instead of retrying)."""
    try:
        await websocket.send_denial_response(error_response(status, error.message, error.hint))
    except RuntimeError:  # a server without the denial-response extension: a plain 403
        await websocket.close()


def url_of(websocket: WebSocket) -> str:
    """The registry's URL as this socket reached it."""
    url = websocket.url
    scheme = "https" if url.scheme == "wss" else "http"
    return f"{scheme}://{url.netloc}"
