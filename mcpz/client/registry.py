"""The registry's JSON API, from the client side (async, httpx2).

Every method answers a typed value of `mcpz.client.models` (frozen dataclasses), never a bare
dictionary; errors are `McpzError`s that keep the registry's message, hint and request id.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2

from mcpz._version import __version__
from mcpz.client.models import (
    AgentInfo,
    ApiKey,
    Challenge,
    Deployment,
    LogLine,
    NamespaceInfo,
    NewApiKey,
    Node,
    Payload,
    PreparedChange,
    Release,
    ReleaseTools,
    Removal,
    RotationResult,
    SessionToken,
    Usage,
    WhoAmI,
    from_json,
)
from mcpz.errors import (
    AuthError,
    InvalidRequest,
    McpzError,
    NetworkError,
    NotFoundError,
    RefusedError,
    RemoteError,
)

P = TypeVar("P", bound=Payload)


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

    async def typed(self, cls: type[P], method: str, path: str, **kw: Any) -> P:
        """One request whose JSON answer is a `cls` (see `mcpz.client.models`)."""
        return from_json(cls, await self.json(method, path, **kw))

    async def typed_list(self, cls: type[P], method: str, path: str, **kw: Any) -> list[P]:
        """One request whose JSON answer is a list of `cls`."""
        body = await self.json(method, path, **kw)
        if not isinstance(body, list):
            return [from_json(cls, body)]  # raises: not a list of objects
        return [from_json(cls, item) for item in body]

    async def agent(self, name: str) -> AgentInfo:
        return await self.typed(AgentInfo, "GET", f"/v1/agents/{name}")

    async def release(self, name: str, version: str) -> Release:
        return await self.typed(Release, "GET", f"/v1/agents/{name}/{version}")

    async def index(
        self, names: list[str], etag: str | None = None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The batch index, parsed by `mcpz.client.index`; (None, etag) when `etag` still matches."""
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
        latest = (await self.agent(name)).latest
        if not latest:
            raise NotFoundError(f"{name} has no release yet", hint=f"see `mcpz versions {name}`")
        return latest

    async def yank(self, name: str, version: str, reason: str) -> Release:
        path = f"/v1/agents/{name}/{version}/yank"
        return await self.typed(Release, "POST", path, json={"reason": reason})

    async def unyank(self, name: str, version: str) -> Release:
        return await self.typed(Release, "DELETE", f"/v1/agents/{name}/{version}/yank")

    async def whoami(self) -> WhoAmI:
        return await self.typed(WhoAmI, "GET", "/v1/whoami")

    async def create_key(
        self, scopes: list[str], name: str = "", expires_in_days: int | None = None
    ) -> NewApiKey:
        body: Mapping[str, Any] = {"scopes": scopes, "name": name, "expires_in_days": expires_in_days}
        return await self.typed(NewApiKey, "POST", "/v1/keys", json=body)

    async def list_keys(self) -> list[ApiKey]:
        return await self.typed_list(ApiKey, "GET", "/v1/keys")

    async def revoke_key(self, key_id: int) -> ApiKey:
        return await self.typed(ApiKey, "DELETE", f"/v1/keys/{key_id}")

    async def usage(
        self,
        *,
        agent: str | None = None,
        since: str | None = None,
        until: str | None = None,
        events: int = 0,
    ) -> Usage:
        """Calls through the gateway, summed per agent and tool (`agent`: every caller of your
        agent, else your own calls); `since`/`until` ISO 8601 (`mcpz.instants.parse_since`)."""
        params: dict[str, Any] = {"events": events}
        for key, value in (("agent", agent), ("since", since), ("until", until)):
            if value is not None:
                params[key] = value
        return await self.typed(Usage, "GET", "/v1/usage", params=params)

    # --- wallet sign-in, namespaces, signatures (registry_server/accounts/routes.py) ---------------------

    async def auth_nonce(self, address: str | None = None) -> Challenge:
        body = {"address": address} if address else None
        return await self.typed(Challenge, "POST", "/v1/auth/nonce", json=body)

    async def auth_login(self, message: str, signature: str) -> SessionToken:
        body = {"message": message, "signature": signature}
        return await self.typed(SessionToken, "POST", "/v1/auth/login", json=body)

    async def namespace(self, name: str) -> NamespaceInfo:
        return await self.typed(NamespaceInfo, "GET", f"/v1/namespaces/{name}")

    async def create_namespace(self, name: str) -> NamespaceInfo:
        return await self.typed(NamespaceInfo, "POST", "/v1/namespaces", json={"name": name})

    async def set_member(self, namespace: str, account: str, role: str) -> NamespaceInfo:
        path = f"/v1/namespaces/{namespace}/members/{account}"
        return await self.typed(NamespaceInfo, "PUT", path, json={"role": role})

    async def remove_member(self, namespace: str, account: str) -> NamespaceInfo:
        path = f"/v1/namespaces/{namespace}/members/{account}"
        return await self.typed(NamespaceInfo, "DELETE", path)

    async def transfer_namespace(self, namespace: str, account: str, signature: str | None) -> NamespaceInfo:
        body = {"account": account, "signature": signature}
        return await self.typed(NamespaceInfo, "POST", f"/v1/namespaces/{namespace}/transfer", json=body)

    async def namespace_keys(self, namespace: str) -> Mapping[str, Any]:
        """The signed key history of `namespace`: checked and parsed by `mcpz.keys.trust.NamespaceKeys`,
        which skips nothing and trusts nothing the registry says about it."""
        return await self.json("GET", f"/v1/namespaces/{namespace}/keys")  # type: ignore[no-any-return]

    async def rotate_key(self, new_address: str, rotations: dict[str, tuple[str, str]]) -> RotationResult:
        body = {"new_address": new_address, "rotations": {k: list(v) for k, v in rotations.items()}}
        return await self.typed(RotationResult, "POST", "/v1/account/rotate-key", json=body)

    async def revoked_keys(self) -> Mapping[str, Any]:
        """The registry's revoked keys: signed statements for `mcpz.keys.trust.Verifier.learn_revocations`,
        which checks each one and skips the malformed or forged."""
        return await self.json("GET", "/v1/revoked-keys")  # type: ignore[no-any-return]

    async def sign_release(
        self, name: str, version: str, signature: str, tools: list[dict[str, Any]] | None = None
    ) -> Release:
        """Hand the registry a signature over the release's statement; with `tools`, pin them (the
        statement signed must carry their digest)."""
        path = f"/v1/agents/{name}/{version}/signature"
        body: dict[str, Any] = {"signature": signature}
        if tools is not None:
            body["tools"] = tools
        return await self.typed(Release, "POST", path, json=body)

    async def release_tools(self, name: str, version: str) -> ReleaseTools:
        """The tool definitions pinned to a release; NotFoundError if it has none."""
        return await self.typed(ReleaseTools, "GET", f"/v1/agents/{name}/releases/{version}/tools")

    # --- deployments and the mesh (registry_server/deployments/routes.py) ---------------------------------

    @staticmethod
    def _deploy_body(
        agent: str,
        version: str | None,
        replicas: int | None,
        selector: Mapping[str, str] | None,
        limits: Mapping[str, int | None] | None,
        allow_tool_drift: bool | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"agent": agent, "version": version, "replicas": replicas}
        if selector is not None:
            body["selector"] = dict(selector)
        if limits is not None:
            body["limits"] = dict(limits)
        if allow_tool_drift is not None:
            body["allow_tool_drift"] = allow_tool_drift
        return body

    async def deploy(
        self,
        agent: str,
        version: str | None = None,
        *,
        replicas: int | None = None,
        selector: Mapping[str, str] | None = None,
        limits: Mapping[str, int | None] | None = None,
        allow_tool_drift: bool | None = None,
        signed: SignedChange | None = None,
    ) -> Deployment:
        """Create or update the deployment of `agent` (a new version rolls out one replica at a
        time); None leaves a setting as it is (a new deployment: the newest release, 1 replica).

        `allow_tool_drift` lets replicas answer other tools than those signed with the release.
        `signed`: the statement `prepare_deploy` answered and its signature (`mcpz.client.deploy` signs)."""
        body = self._deploy_body(agent, version, replicas, selector, limits, allow_tool_drift)
        return await self.typed(Deployment, "POST", "/v1/deployments", json={**body, **_signed(signed)})

    async def prepare_deploy(
        self,
        agent: str,
        version: str | None = None,
        *,
        replicas: int | None = None,
        selector: Mapping[str, str] | None = None,
        limits: Mapping[str, int | None] | None = None,
        allow_tool_drift: bool | None = None,
    ) -> PreparedChange:
        """What `deploy` with these settings would make: the statement to sign; changes nothing."""
        body = self._deploy_body(agent, version, replicas, selector, limits, allow_tool_drift)
        return await self.typed(PreparedChange, "POST", "/v1/deployments", json={**body, "prepare": True})

    async def deployments(self) -> list[Deployment]:
        return await self.typed_list(Deployment, "GET", "/v1/deployments")

    async def deployment(self, name: str) -> Deployment:
        return await self.typed(Deployment, "GET", f"/v1/deployments/{name}")

    async def scale(self, name: str, replicas: int, *, signed: SignedChange | None = None) -> Deployment:
        body = {"replicas": replicas, **_signed(signed)}
        return await self.typed(Deployment, "POST", f"/v1/deployments/{name}/scale", json=body)

    async def prepare_scale(self, name: str, replicas: int) -> PreparedChange:
        body = {"replicas": replicas, "prepare": True}
        return await self.typed(PreparedChange, "POST", f"/v1/deployments/{name}/scale", json=body)

    async def restart_deployment(self, name: str) -> Deployment:
        """Try the failed replicas of `name` again now; the view says how many (`restarted`)."""
        return await self.typed(Deployment, "POST", f"/v1/deployments/{name}/restart")

    async def rollback(
        self, name: str, revision: int | None = None, *, signed: SignedChange | None = None
    ) -> Deployment:
        body = {"revision": revision, **_signed(signed)}
        return await self.typed(Deployment, "POST", f"/v1/deployments/{name}/rollback", json=body)

    async def prepare_rollback(self, name: str, revision: int | None = None) -> PreparedChange:
        body = {"revision": revision, "prepare": True}
        return await self.typed(PreparedChange, "POST", f"/v1/deployments/{name}/rollback", json=body)

    async def remove_deployment(self, name: str) -> Deployment | Removal:
        """Stop every replica: the deployment while they stop ("deleting"), or a `Removal` ("deleted")."""
        body = await self.json("DELETE", f"/v1/deployments/{name}")
        if isinstance(body, dict) and set(body) == {"name", "state"}:
            return from_json(Removal, body)
        return from_json(Deployment, body)

    async def nodes(self) -> list[Node]:
        return await self.typed_list(Node, "GET", "/v1/nodes")

    async def logs(
        self, name: str, tail: int = 100, *, since: float | None = None, replica: str = ""
    ) -> list[LogLine]:
        """The last `tail` lines (the registry's history on disk included), written at or after
        Unix time `since`, by replicas whose id starts with `replica`."""
        body = await self.json(
            "GET", f"/v1/deployments/{name}/logs", params=_log_params(tail, since, replica)
        )
        lines = body.get("lines") if isinstance(body, dict) else None
        if not isinstance(lines, list):
            return [from_json(LogLine, body)]  # raises: not a log answer
        return [from_json(LogLine, item) for item in lines]

    async def follow_logs(
        self, name: str, tail: int = 100, *, since: float | None = None, replica: str = ""
    ) -> AsyncIterator[LogLine]:
        """The last `tail` lines, then new ones as they come, until the deployment is removed.

        The registry ends each follow response after a few seconds; this goes on from the last
        line seen, so no line is shown twice.
        """
        after, first = 0, True
        while True:
            params = _log_params(tail if first else 10_000, since, replica)
            params.update({"follow": "true", "after": after})
            try:
                async with self._http.stream(
                    "GET", f"/v1/deployments/{name}/logs", params=params
                ) as response:
                    if response.status_code == 404 and not first:
                        return
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from_response(response)
                    async for text in response.aiter_lines():
                        if text.strip():
                            try:
                                item = from_json(LogLine, json.loads(text))
                            except ValueError as e:
                                raise RemoteError(f"the registry sent a malformed log line: {e}") from e
                            after = max(after, item.seq)
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
        on_update: Callable[[Deployment], None] | None = None,
        on_reason: Callable[[str], None] | None = None,
        blocked_for: float = 5.0,
    ) -> Deployment:
        """Poll until the deployment is `ready` or `failed`; return its last view.

        `on_reason(reason)` hears, as soon as the registry knows it, each new reason why it is not
        ready (e.g. "no node matches region=mars: ..."). When nodes are up but none may take a
        replica (the view's `stuck`) for `blocked_for` seconds, the wait ends: a `progressing` view
        is returned, whose `reason` says why. Waiting for a node to connect at all goes on (one may
        be starting). Raises McpzError when `timeout` seconds pass first.
        """
        import anyio

        view: Deployment | None = None
        reason = ""
        since = 0.0
        with anyio.move_on_after(timeout):
            while True:
                view = await self.deployment(name)
                if on_update is not None:
                    on_update(view)
                if view.settled:
                    return view
                now = anyio.current_time()
                if view.reason != reason:
                    reason, since = view.reason, now
                    if reason and on_reason is not None:
                        on_reason(reason)
                if not view.stuck:
                    since = now
                elif now - since >= blocked_for:
                    return view
                await anyio.sleep(interval)
        ready, wanted = (view.ready, view.replicas) if view is not None else (0, "?")
        why = f": {reason}" if reason else ""
        raise McpzError(
            f"{name} is not ready after {timeout:g} s ({ready}/{wanted} replicas running){why}",
            hint=f"see `mcpz deploy status {name}` and `mcpz nodes`",
        )


@dataclass(frozen=True, slots=True)
class SignedChange:
    """A deployment statement as the registry prepared it, and the wallet's signature over it."""

    statement: str
    signature: str


def _signed(signed: SignedChange | None) -> dict[str, str]:
    return {} if signed is None else {"statement": signed.statement, "signature": signed.signature}


@asynccontextmanager
async def connect(url: str, token: str | None = None) -> AsyncIterator[RegistryClient]:
    client = RegistryClient(url, token)
    try:
        yield client
    finally:
        await client.aclose()


def _log_params(tail: int, since: float | None, replica: str) -> dict[str, str | int | float]:
    params: dict[str, str | int | float] = {"tail": tail}
    if since is not None:
        params["since"] = since
    if replica:
        params["replica"] = replica
    return params
