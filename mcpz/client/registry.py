"""The registry's JSON API, from the client side (async, httpx2)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2

from mcpz._version import __version__
from mcpz.errors import (
    AuthError,
    InvalidRequest,
    McpzError,
    NetworkError,
    NotFoundError,
    RefusedError,
    RemoteError,
)


def error_from_response(response: httpx2.Response) -> McpzError:
    request_id = response.headers.get("x-request-id")
    message = f"registry answered HTTP {response.status_code}"
    hint = None
    try:
        body = response.json()
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") or message
        hint = error.get("hint")
        if error.get("code"):
            message = f"{message} [{error['code']}]"
    except ValueError:
        text = response.text.strip()
        if text:
            message = text.splitlines()[0][:300]
    if response.status_code in (401, 403):
        return AuthError(message, hint=hint or "check the token: `mcpz whoami`")
    if response.status_code == 404:
        return NotFoundError(message, hint=hint)
    if response.status_code in (400, 422):
        return InvalidRequest(message, status=response.status_code, request_id=request_id, hint=hint)
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
            raise error_from_response(response)
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

    async def resolve_version(self, name: str, version: str | None) -> str:
        """`version`, or for None and `latest` the newest release not yanked nor a pre-release."""
        from mcpz.names import version_or_latest

        exact = version_or_latest(version)
        if exact is not None:
            return exact
        latest = (await self.agent(name)).get("latest")
        if not latest:
            raise NotFoundError(f"{name} has no release yet", hint=f"see `mcpz versions {name}`")
        return str(latest)

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

    # --- wallet sign-in, namespaces, signatures (registry_server/accounts/routes.py) ---------------------

    async def auth_nonce(self, address: str | None = None) -> dict[str, Any]:
        body = {"address": address} if address else None
        return await self.json("POST", "/v1/auth/nonce", json=body)  # type: ignore[no-any-return]

    async def auth_login(self, message: str, signature: str) -> dict[str, Any]:
        body = {"message": message, "signature": signature}
        return await self.json("POST", "/v1/auth/login", json=body)  # type: ignore[no-any-return]

    async def namespace(self, name: str) -> dict[str, Any]:
        return await self.json("GET", f"/v1/namespaces/{name}")  # type: ignore[no-any-return]

    async def create_namespace(self, name: str) -> dict[str, Any]:
        return await self.json("POST", "/v1/namespaces", json={"name": name})  # type: ignore[no-any-return]

    async def set_member(self, namespace: str, account: str, role: str) -> dict[str, Any]:
        path = f"/v1/namespaces/{namespace}/members/{account}"
        return await self.json("PUT", path, json={"role": role})  # type: ignore[no-any-return]

    async def remove_member(self, namespace: str, account: str) -> dict[str, Any]:
        return await self.json("DELETE", f"/v1/namespaces/{namespace}/members/{account}")  # type: ignore[no-any-return]

    async def transfer_namespace(self, namespace: str, account: str, signature: str | None) -> dict[str, Any]:
        body = {"account": account, "signature": signature}
        return await self.json("POST", f"/v1/namespaces/{namespace}/transfer", json=body)  # type: ignore[no-any-return]

    async def namespace_keys(self, namespace: str) -> dict[str, Any]:
        return await self.json("GET", f"/v1/namespaces/{namespace}/keys")  # type: ignore[no-any-return]

    async def rotate_key(self, new_address: str, rotations: dict[str, tuple[str, str]]) -> dict[str, Any]:
        body = {"new_address": new_address, "rotations": {k: list(v) for k, v in rotations.items()}}
        return await self.json("POST", "/v1/account/rotate-key", json=body)  # type: ignore[no-any-return]

    async def revoked_keys(self) -> dict[str, Any]:
        return await self.json("GET", "/v1/revoked-keys")  # type: ignore[no-any-return]

    async def sign_release(
        self, name: str, version: str, signature: str, tools: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Hand the registry a signature over the release's statement; with `tools`, pin them (the
        statement signed must carry their digest)."""
        path = f"/v1/agents/{name}/{version}/signature"
        body: dict[str, Any] = {"signature": signature}
        if tools is not None:
            body["tools"] = tools
        return await self.json("POST", path, json=body)  # type: ignore[no-any-return]

    async def release_tools(self, name: str, version: str) -> dict[str, Any]:
        """The tool definitions pinned to a release: `{tools, digest, observed, ...}`; NotFoundError
        if it has none."""
        return await self.json("GET", f"/v1/agents/{name}/releases/{version}/tools")  # type: ignore[no-any-return]

    # --- deployments and the mesh (registry_server/deployments/routes.py) ---------------------------------

    async def deploy(
        self,
        agent: str,
        version: str | None = None,
        *,
        replicas: int | None = None,
        selector: Mapping[str, str] | None = None,
        limits: Mapping[str, int | None] | None = None,
        allow_tool_drift: bool | None = None,
        **signing: Any,
    ) -> dict[str, Any]:
        """Create or update the deployment of `agent` (a new version rolls out one replica at a
        time); None leaves a setting as it is (a new deployment: the newest release, 1 replica).

        `signing`: `prepare=True` (answer the statement to sign, change nothing), or `statement`
        and `signature` (see `mcpz.client.deploy`, which signs)."""
        body: dict[str, Any] = {"agent": agent, "version": version, "replicas": replicas, **signing}
        if selector is not None:
            body["selector"] = dict(selector)
        if limits is not None:
            body["limits"] = dict(limits)
        if allow_tool_drift is not None:
            body["allow_tool_drift"] = allow_tool_drift
        return await self.json("POST", "/v1/deployments", json=body)  # type: ignore[no-any-return]

    async def deployments(self) -> list[dict[str, Any]]:
        return await self.json("GET", "/v1/deployments")  # type: ignore[no-any-return]

    async def deployment(self, name: str) -> dict[str, Any]:
        return await self.json("GET", f"/v1/deployments/{name}")  # type: ignore[no-any-return]

    async def scale(self, name: str, replicas: int, **signing: Any) -> dict[str, Any]:
        body = {"replicas": replicas, **signing}
        return await self.json("POST", f"/v1/deployments/{name}/scale", json=body)  # type: ignore[no-any-return]

    async def rollback(self, name: str, revision: int | None = None, **signing: Any) -> dict[str, Any]:
        body = {"revision": revision, **signing}
        return await self.json("POST", f"/v1/deployments/{name}/rollback", json=body)  # type: ignore[no-any-return]

    async def restart_deployment(self, name: str) -> dict[str, Any]:
        """Try the failed replicas of `name` again now; the view says how many (`restarted`)."""
        return await self.json("POST", f"/v1/deployments/{name}/restart")  # type: ignore[no-any-return]

    async def remove_deployment(self, name: str) -> dict[str, Any]:
        return await self.json("DELETE", f"/v1/deployments/{name}")  # type: ignore[no-any-return]

    async def nodes(self) -> list[dict[str, Any]]:
        return await self.json("GET", "/v1/nodes")  # type: ignore[no-any-return]

    async def logs(self, name: str, tail: int = 100) -> list[dict[str, Any]]:
        body = await self.json("GET", f"/v1/deployments/{name}/logs", params={"tail": tail})
        return body["lines"]  # type: ignore[no-any-return]

    async def follow_logs(self, name: str, tail: int = 100) -> AsyncIterator[dict[str, Any]]:
        """The last `tail` lines, then new ones as they come, until the deployment is removed.

        The registry ends each follow response after a few seconds; this goes on from the last
        line seen, so no line is shown twice.
        """
        after, first = 0, True
        while True:
            params: dict[str, str | int] = {
                "follow": "true",
                "tail": tail if first else 10_000,
                "after": after,
            }
            try:
                async with self._http.stream(
                    "GET", f"/v1/deployments/{name}/logs", params=params
                ) as response:
                    if response.status_code == 404 and not first:
                        return
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from_response(response)
                    async for line in response.aiter_lines():
                        if line.strip():
                            item = json.loads(line)
                            after = max(after, int(item["seq"]))
                            yield item
            except httpx2.TransportError as e:
                raise NetworkError(f"lost the log stream from {self.url}: {e}") from e
            first = False

    async def wait_deployment(
        self,
        name: str,
        *,
        timeout: float = 300.0,
        interval: float = 0.25,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        on_reason: Callable[[str], None] | None = None,
        blocked_for: float = 5.0,
    ) -> dict[str, Any]:
        """Poll until the deployment is `ready` or `failed`; return its last view.

        `on_reason(reason)` hears, as soon as the registry knows it, each new reason why it is not
        ready (e.g. "no node matches region=mars: ..."). When nodes are up but none may take a
        replica (the view's `stuck`) for `blocked_for` seconds, the wait ends: a `progressing` view
        is returned, whose `reason` says why. Waiting for a node to connect at all goes on (one may
        be starting). Raises McpzError when `timeout` seconds pass first.
        """
        import anyio

        view: dict[str, Any] = {}
        reason = ""
        since = 0.0
        with anyio.move_on_after(timeout):
            while True:
                view = await self.deployment(name)
                if on_update is not None:
                    on_update(view)
                if view.get("state") in ("ready", "failed"):
                    return view
                now = anyio.current_time()
                latest = str(view.get("reason") or "")
                if latest != reason:
                    reason, since = latest, now
                    if reason and on_reason is not None:
                        on_reason(reason)
                if not view.get("stuck"):
                    since = now
                elif now - since >= blocked_for:
                    return view
                await anyio.sleep(interval)
        ready, wanted = view.get("ready", 0), view.get("replicas", "?")
        why = f": {reason}" if reason else ""
        raise McpzError(
            f"{name} is not ready after {timeout:g} s ({ready}/{wanted} replicas running){why}",
            hint=f"see `mcpz deploy status {name}` and `mcpz nodes`",
        )


@asynccontextmanager
async def connect(url: str, token: str | None = None) -> AsyncIterator[RegistryClient]:
    client = RegistryClient(url, token)
    try:
        yield client
    finally:
        await client.aclose()
