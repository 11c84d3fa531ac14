"""The registry's JSON API, from the client side (async, httpx2)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2

from mcpz._version import __version__
from mcpz.errors import AuthError, McpzError, NetworkError, NotFoundError, RefusedError, RemoteError


def _error_from(response: httpx2.Response) -> McpzError:
    request_id = response.headers.get("x-request-id")
    message = f"registry answered HTTP {response.status_code}"
    hint = None
    try:
        body = response.json()
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") or message
        hint = error.get("hint")
    except ValueError:
        text = response.text.strip()
        if text:
            message = text.splitlines()[0][:300]
    if response.status_code in (401, 403):
        return AuthError(message, hint=hint or "check the token: `mcpz whoami`")
    if response.status_code == 404:
        return NotFoundError(message, hint=hint)
    if response.status_code == 409:
        return RefusedError(message, status=409, request_id=request_id, hint=hint)
    return RemoteError(message, status=response.status_code, request_id=request_id, hint=hint)


class RegistryClient:
    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": f"mcpz/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx2.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> httpx2.Response:
        try:
            response = await self._http.request(method, path, **kw)
        except httpx2.TransportError as e:
            raise NetworkError(
                f"cannot reach the registry at {self.url}: {e}",
                hint="check --registry / MCPZ_REGISTRY, or start one with `mcpz registry serve`",
            ) from e
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        return (await self.request(method, path, **kw)).json()

    async def agent(self, name: str) -> dict[str, Any]:
        return await self.json("GET", f"/v1/agents/{name}")  # type: ignore[no-any-return]

    async def release(self, name: str, version: str) -> dict[str, Any]:
        return await self.json("GET", f"/v1/agents/{name}/{version}")  # type: ignore[no-any-return]

    async def index(
        self, names: list[str], etag: str | None = None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The batch index; (None, etag) when `etag` still matches."""
        headers = {"If-None-Match": etag} if etag else {}
        response = await self.request(
            "GET", "/v1/index", params=[("name", n) for n in names], headers=headers
        )
        if response.status_code == 304:
            return None, etag
        return response.json(), response.headers.get("etag")

    async def yank(self, name: str, version: str, reason: str) -> dict[str, Any]:
        return await self.json("POST", f"/v1/agents/{name}/{version}/yank", json={"reason": reason})  # type: ignore[no-any-return]

    async def unyank(self, name: str, version: str) -> dict[str, Any]:
        return await self.json("DELETE", f"/v1/agents/{name}/{version}/yank")  # type: ignore[no-any-return]

    async def whoami(self) -> dict[str, Any]:
        return await self.json("GET", "/v1/whoami")  # type: ignore[no-any-return]

    async def create_key(
        self, scopes: list[str], name: str = "", expires_in_days: int | None = None
    ) -> dict[str, Any]:
        body: Mapping[str, Any] = {"scopes": scopes, "name": name, "expires_in_days": expires_in_days}
        return await self.json("POST", "/v1/keys", json=body)  # type: ignore[no-any-return]

    async def list_keys(self) -> list[dict[str, Any]]:
        return await self.json("GET", "/v1/keys")  # type: ignore[no-any-return]

    async def revoke_key(self, key_id: int) -> dict[str, Any]:
        return await self.json("DELETE", f"/v1/keys/{key_id}")  # type: ignore[no-any-return]


@asynccontextmanager
async def connect(url: str, token: str | None = None) -> AsyncIterator[RegistryClient]:
    client = RegistryClient(url, token)
    try:
        yield client
    finally:
        await client.aclose()
