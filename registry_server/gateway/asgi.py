"""The gateway: each deployment as an MCP Streamable HTTP endpoint, `/mcp/{namespace}/{name}`.

Any MCP client reaches a deployed agent here (`/mcp/{namespace}/{name}@{version}` pins a version
while a rollout runs two). The gateway terminates the client's session and relays each JSON-RPC
request over the mesh to one replica (`mesh.calls.CallRouter`), which runs it on its agent's
warm stdio process. It follows the specification's Streamable HTTP transport (handshake era,
2024-11-05 to 2025-11-25):

- **POST** one JSON-RPC message. `initialize` opens a session (`Mcp-Session-Id` in the answer);
  every other message must carry it (400 without, 404 for a session that is gone: the client
  starts again). A request is answered with JSON, or with an SSE stream when it asked for progress
  (a `progressToken`) and accepts `text/event-stream`; notifications and responses get 202.
- **GET** opens the session's stream for messages that answer nothing: the agent's list-changed
  notifications, and `notifications/resources/updated` for the URIs this session subscribed to.
  One per session (409 for a second, unless it resumes: see below). Resumable: each event has an
  id (per session); the last `REPLAY_EVENTS` are kept, also while no stream is open, and a GET
  with `Last-Event-ID` gets those after it first (and takes over a stream the gateway still
  thinks open). A client of 2025-11-25 or later gets a priming event (an id, `retry`, no data)
  when nothing is replayed. Streams of POST answers (progress) have no ids: they are not resumed.
- **Subscriptions** on a process that many sessions share: each session's URIs are kept here;
  `resources/subscribe` is relayed (it is idempotent at the agent), `resources/unsubscribe` only
  when no other session on that replica still subscribes to the URI (else answered here), and a
  session that ends or moves to another replica unsubscribes or re-subscribes for itself. An
  update goes only to the sessions that subscribed to its URI.
- **DELETE** ends the session: its calls are cancelled, its stream closes.
- **Auth**: a token with scope `call` on every request (401 without, 403 without the scope), and
  the session's own account: a session id alone authorizes nothing. Tokens are checked against the
  database at most every `TOKEN_TTL` seconds per token (a revoked token stops working within that).
  A token from the OAuth flow (registry_server/oauth/) is bound to a resource, and is refused (401)
  at any other URL. A 401 carries `WWW-Authenticate: Bearer resource_metadata="..."` with the
  `scope` it needs, and a 403 for a missing scope `error="insufficient_scope"`: an MCP client that
  knows only the URL finds the protected resource metadata (RFC 9728) and this registry as its
  authorization server from there (the MCP authorization spec).
- **Origin and Host**: a browser's `Origin` must be the registry's own or one of `allowed_origins`
  (403 otherwise), and the `Host` a request names must be the registry's own (its `public_url`'s),
  a loopback name, or one of `allowed_hosts` (421 otherwise): a web page must not drive a user's
  agents through DNS rebinding. A registry whose `public_url` is a wildcard address (0.0.0.0)
  cannot know its own name and checks no Host.
- **Protocol version**: `initialize` is answered with the version the client offered when the
  gateway speaks it (`HANDSHAKE_VERSIONS`), whatever the node's health check negotiated with the
  agent (the agent was initialized once, for every session); otherwise with the agent's own when
  the gateway speaks that, else the latest the gateway speaks.
- **Bounds**: at most `max_calls_in_flight` calls at once (then 503 with Retry-After), 256 per
  replica, `MAX_SESSIONS` sessions, `max_sessions_per_account` per account (past it, the account's
  least recently used idle session ends), bodies up to the mesh frame size (JSON nested at most
  `mcpz.jsonlimits.MAX_DEPTH` deep); a call waits at most
  `call_timeout` seconds, then the agent is told to cancel and the client gets an error.
- **Tiers**: the caller's platform tier (`billing.quotas`) bounds its `tools/call`s per second
  per key and per month, and its open sessions: past one, 429 with Retry-After, RateLimit fields
  and a JSON-RPC error (-32029) naming the limit; answers within it carry the RateLimit fields.
- **Session modes** (the manifest's `[run] sessions`; docs/gateway.md#session-modes): `shared`, the
  above, or `isolated`: each session gets its own agent process on its replica (`Target.isolated`),
  which the client's own `initialize` and `notifications/initialized` reach; the session never
  moves to another replica (its process is there: a lost replica ends it, 404); the client's
  answers to the agent's requests (sampling, elicitation, roots) are relayed to that process, and
  what the process sends for the session (log messages, its requests, resource updates) goes on
  the open call's SSE stream, else the session's GET stream, and to no other session. Requests
  are answered with SSE when the client accepts it, so that what a call causes travels with it.
  A full pool answers `initialize` with 503; a session whose process ended, with 404.
- **Failures are answers**: no healthy replica, a replica that dies mid-call, a timeout, each is a
  JSON-RPC error naming what happened. Nothing is retried on another replica: a `tools/call` may
  not be idempotent. The session moves to a surviving replica for its next request.
- **Metering**: every `tools/call` that reached a replica records one usage event when it ends,
  however it ends (`usage.events.Outcome`).
- **Billing**: a `tools/call` of a paid agent is priced and its price reserved before it is
  relayed (`billing.gate.BillingGate`); one that may not run (no balance, no subscription, a spend
  cap) is answered with a JSON-RPC error (`BILLING_REFUSED`) naming the reason and the command
  that fixes it, and never reaches the agent. The reservation is captured when the call succeeds
  (its usage event carries the price) and released when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Receive, Scope, Send

from mcpz import jsonlimits, tracing
from mcpz.errors import McpzError, UsageError
from mcpz.jsonlimits import JSONError
from mcpz.keys import receipts
from mcpz.mesh import MAX_FRAME_SIZE, SESSION_GONE, SESSIONS_EXHAUSTED
from mcpz.names import version_or_latest
from registry_server.accounts.auth import Forbidden, Unauthenticated, principal_from_headers, require
from registry_server.accounts.service import Principal
from registry_server.accounts.tokens import audience_covers
from registry_server.billing import quotas
from registry_server.billing.gate import Authorization
from registry_server.billing.gate import Refusal as BillingRefusal
from registry_server.billing.quotas import Grant, Quotas, QuotasUnavailable
from registry_server.billing.tiers import Refusal
from registry_server.http import agent_name
from registry_server.mesh.calls import DEV_VERSION, Busy, CallFailed, PendingCall, Target
from registry_server.oauth.rules import resource_metadata_url
from registry_server.otlp import CallSpans
from registry_server.settings import public_url
from registry_server.usage.events import Outcome, UsageEvent

if TYPE_CHECKING:
    from registry_server.billing.gate import BillingGate
    from registry_server.billing.receipt_key import ReceiptSigner
    from registry_server.mesh.hub import MeshHub
    from registry_server.state import RegistryState
    from registry_server.usage.service import UsageRecorder

log = logging.getLogger("registry_server.gateway")
# The client's `traceparent` header, for the calls its request makes (set per request task).
incoming_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar("incoming_trace", default=None)

GATEWAY_PREFIX = "/mcp/"
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MAX_BODY = MAX_FRAME_SIZE - 64 * 1024  # a request must fit in one call frame
MAX_SESSIONS = 10_000
SESSION_IDLE = 3600.0  # seconds without a request before a session is forgotten
STREAM_QUEUE = 256  # messages waiting for one SSE stream before the oldest are dropped
KEEPALIVE = 15.0  # seconds between comments on an idle SSE stream (proxies close silent ones)
REPLAY_EVENTS = 64  # a session's last GET-stream events kept for a client that reconnects
RETRY_MS = 1000  # the `retry` a priming event tells a client to wait before reconnecting
PRIMING_SINCE = "2025-11-25"  # clients of older revisions may not expect an event without data
TOKEN_TTL = 5.0
MAX_CACHED_TOKENS = 10_000

# JSON-RPC error codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
UNAVAILABLE = -32000  # no replica, replica lost, overloaded
TIMED_OUT = -32001
BILLING_REFUSED = -32020  # no balance, no subscription, a spend cap reached: `data` says the fix
CANCELLED = -32800

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
MISDIRECTED = 421  # RFC 9110 15.5.20: a request for a name this server does not answer for

RESOURCE_UPDATED = "notifications/resources/updated"

SESSION_HEADER = b"mcp-session-id"
VERSION_HEADER = b"mcp-protocol-version"


ANONYMOUS = Principal(account_id=0, account_name="", token_id=0, scopes=frozenset({"call"}), expires_at=None)
"""Who calls without a token: only listings that take x402 admit it, and only paid calls run."""


class PaymentDesk(Protocol):
    """x402 payments for paid calls (settlement/x402_desk.py; docs/x402.md). `before` runs where billing
    would reserve: None (billing decides), the answer to send (the agent is not called), or a paid
    call to relay and hand to `after`, which settles it and gives the answer to send; `release` when
    the call is stopped by shutdown before `after` (blocking: run it in a thread)."""

    async def accepts(self, deployment: str) -> bool: ...

    async def before(
        self,
        principal: Principal,
        agent: str,
        version: str,
        message: dict[str, Any],
        sign: Callable[[bytes, int, int], bytes],
    ) -> bytes | object | None: ...

    async def required(self, request_id: object, agent: str, tool: str, why: str) -> bytes | None: ...

    async def after(
        self, paid: Any, payload: bytes, outcome: str, sign: Callable[[bytes, int], bytes]
    ) -> bytes: ...

    def payer_of(self, paid: Any) -> str: ...

    def release(self, paid: Any) -> None: ...


class GatewayError(Exception):
    """An HTTP answer other than a relayed response: status, JSON-RPC code, message."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        request_id: object = None,
        retry_after: int | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        data: object = None,
        challenge: str | None = None,
    ) -> None:
        super().__init__(message)
        # A refused token: the WWW-Authenticate error ("" for none sent), None for other answers.
        self.challenge = challenge
        self.status, self.code, self.message = status, code, message
        self.request_id = request_id
        self.retry_after = retry_after
        self.headers = headers or []  # more HTTP header fields of the answer
        self.data = data  # the JSON-RPC error's `data`, when not None


def rpc_error(request_id: object, code: int, message: str, data: object = None) -> bytes:
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    body = {"jsonrpc": "2.0", "id": request_id, "error": error}
    return json.dumps(body, separators=(",", ":")).encode()


def quota_refused(refusal: Refusal, request_id: object) -> GatewayError:
    """429 for a call or session past the caller's tier: Retry-After, RateLimit fields, and the
    JSON-RPC error MCP clients see, naming the limit, the tier and when it resets."""
    return GatewayError(
        429,
        quotas.QUOTA_EXCEEDED,
        quotas.refusal_message(refusal),
        request_id=request_id,
        retry_after=refusal.retry_after,
        headers=quotas.refusal_headers(refusal),
        data=quotas.refusal_data(refusal),
    )


@dataclass(eq=False)
class Session:
    id: str
    account_id: int
    deployment: str
    version: str | None
    target: Target | None
    protocol_version: str
    last_used: float
    stream: asyncio.Queue[tuple[int, bytes] | None] | None = None
    calls: dict[str, PendingCall] = field(default_factory=dict)  # by the request's JSON id
    subscriptions: set[str] = field(default_factory=set)  # resource URIs (resources/subscribe)
    # Whose session cap it counts against: its account, or for an anonymous session that paid with
    # x402 its payer ("x402:<address>"): anonymous payers do not share one cap.
    owner: int | str = 0
    # The GET stream's last events, by id, for a client that reconnects with Last-Event-ID.
    sent: deque[tuple[int, bytes]] = field(default_factory=lambda: deque(maxlen=REPLAY_EVENTS))
    last_event: int = 0


class TokenCache:
    """Principals by token, each re-checked against the database after `ttl` seconds."""

    def __init__(self, state: RegistryState, ttl: float = TOKEN_TTL) -> None:
        self.state = state
        self.ttl = ttl
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        # One check per token at a time: when an entry expires under load, every request of that
        # token waits for the same check, not one worker thread (and one query) each.
        self._checking: dict[bytes, asyncio.Future[Principal | None]] = {}
        self.checks = 0  # database checks made

    async def principal(self, headers: Mapping[str, str]) -> Principal | None:
        value = headers.get("authorization")
        if not value:
            return None
        key = hashlib.sha256(value.encode("latin-1", "replace")).digest()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            principal = hit[0]
            if principal.expires_at is None or principal.expires_at.timestamp() > time.time():
                return principal
        checking = self._checking.get(key)
        if checking is None:
            checking = asyncio.ensure_future(self._check(key, headers))
            self._checking[key] = checking
            checking.add_done_callback(lambda done: self._forget(key, done))
        # Shielded: a request that goes away does not cancel the check the others wait for.
        return await asyncio.shield(checking)

    def _forget(self, key: bytes, done: asyncio.Future[Principal | None]) -> None:
        if self._checking.get(key) is done:
            del self._checking[key]

    async def _check(self, key: bytes, headers: Mapping[str, str]) -> Principal | None:
        self.checks += 1
        # Bound (OAuth) tokens too: the gateway checks their audience against the URL asked for.
        principal_or_none = await anyio.to_thread.run_sync(
            lambda: principal_from_headers(self.state.db, headers, bound_ok=True)
        )
        if principal_or_none is None:
            return None
        now = time.monotonic()
        if len(self._cache) >= MAX_CACHED_TOKENS:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            if len(self._cache) >= MAX_CACHED_TOKENS:
                self._cache.clear()
        self._cache[key] = (principal_or_none, now + self.ttl)
        return principal_or_none


def parse_path(path: str) -> tuple[str, str | None] | None:
    """`/{namespace}/{name}` or `/{namespace}/{name}@{version}` -> (deployment, version)."""
    parts = path.strip("/").split("/")
    if len(parts) != 2:
        return None
    name, _, version = parts[1].partition("@")
    try:
        deployment = agent_name(parts[0], name, what="deployment")
    except UsageError:
        return None
    if version and (len(version) > 64 or not all(c.isalnum() or c in ".-+_" for c in version)):
        return None
    return deployment, version_or_latest(version)


def host_name(host: str) -> str:
    """The name in a Host header, without its port or an IPv6 literal's brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() else host


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


class Gateway:
    def __init__(
        self,
        state: RegistryState,
        hub: MeshHub,
        usage: UsageRecorder | None,
        *,
        tiers: Quotas | None = None,
        billing: BillingGate | None = None,
        receipts: ReceiptSigner | None = None,
        spans: CallSpans | None = None,
        x402: PaymentDesk | None = None,
    ) -> None:
        self.state = state
        self.spans = spans  # OTLP export of sampled calls (registry_server/otlp.py); None: off
        self.quotas = tiers or Quotas(state)
        self.hub = hub
        self.router = hub.calls
        self.usage = usage
        self.billing = billing
        self.receipts = receipts
        self.x402 = x402  # None unless settlement and its operator key are configured
        settings = state.settings
        self.call_timeout = settings.call_timeout
        self.max_in_flight = settings.max_calls_in_flight
        self.trace_calls = settings.gateway_trace
        self.origins = {o.lower() for o in (_origin_of(settings.public_url), *settings.allowed_origins) if o}
        own = (urlsplit(settings.public_url).hostname or "").lower()
        self.hosts: frozenset[str] | None = (
            None  # listening on every address under no name of its own: no Host is checked
            if own in WILDCARD_HOSTS
            else frozenset({own, *LOOPBACK_HOSTS, *(host_name(h) for h in settings.allowed_hosts)})
        )
        self.tokens = TokenCache(state)
        self.public = public_url(settings)  # resources and their metadata are named under it
        self.sessions: dict[str, Session] = {}
        # A registry replica's sessions are its own: their ids name it, so that another replica
        # forwards their requests here (registry_server.mesh.cluster). "" in one process.
        self.session_prefix = ""
        self.max_sessions_per_account = settings.max_sessions_per_account
        self._accounts: dict[int | str, dict[str, Session]] = {}  # the same sessions, by owner
        self.in_flight = 0
        self.closing = False
        self.router.on_broadcast = self._broadcast
        self.router.on_session = self._to_session
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="gateway-sessions")

    async def stop(self) -> None:
        """Refuse new requests, fail the calls in flight (each records its usage), end streams."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.router.fail_all(_shutdown())  # first: the calls in flight end as "shutdown"
        for session in list(self.sessions.values()):
            self._end_session(session)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while self.in_flight:
                    await asyncio.sleep(0.01)

    # -- HTTP

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if scope["type"] != "http":
                raise GatewayError(404, INVALID_REQUEST, "not found")
            where = parse_path(scope["path"].removeprefix(GATEWAY_PREFIX))
            if where is None:
                raise GatewayError(
                    404, INVALID_REQUEST, "no such endpoint: use /mcp/{namespace}/{name}[@{version}]"
                )
            self._check_host(headers)
            self._check_origin(headers)
            if (
                self.x402 is not None
                and "authorization" not in headers
                and where[1] != DEV_VERSION
                and await self.x402.accepts(where[0])
            ):
                principal = ANONYMOUS  # x402 pays its calls (gateway/x402.py); nothing else is free
            else:
                principal = await self._authenticate(headers, scope["path"])
            if self.closing:
                raise GatewayError(503, UNAVAILABLE, "the registry is shutting down", retry_after=1)
            method = scope["method"]
            if method == "POST":
                await self._post(where, principal, headers, receive, send)
            elif method == "GET":
                await self._get(where, principal, headers, receive, send)
            elif method == "DELETE":
                session = self._session(where, principal, headers)
                self._end_session(session)
                await _respond(send, 200, b"", content_type=None)
            else:
                raise GatewayError(
                    405, INVALID_REQUEST, f"{method} is not supported here: use POST, GET or DELETE"
                )
        except GatewayError as e:
            extra: list[tuple[bytes, bytes]] = []
            if e.status in (401, 403) and e.challenge is not None:
                extra.append((b"www-authenticate", self._challenge(scope["path"], e.challenge, e.message)))
            if e.status == 405:
                extra.append((b"allow", b"GET, POST, DELETE"))
            if e.retry_after is not None:
                extra.append((b"retry-after", str(e.retry_after).encode()))
            extra.extend(e.headers)
            # Refusals are logged; 503s only at debug: under overload there are thousands a second.
            log.log(
                logging.DEBUG if e.status == 503 else logging.INFO,
                "gateway refused a request",
                extra={"status": e.status, "path": scope.get("path"), "error": e.message},
            )
            await _respond(send, e.status, rpc_error(e.request_id, e.code, e.message, e.data), extra)

    def _check_origin(self, headers: Mapping[str, str]) -> None:
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/").lower() not in self.origins:
            raise GatewayError(
                403, INVALID_REQUEST, f"origin {origin} may not call this gateway (see allowed_origins)"
            )

    def _check_host(self, headers: Mapping[str, str]) -> None:
        host = headers.get("host")
        if self.hosts is None or host is None:  # HTTP/1.0 sends none: nothing was re-pointed
            return
        if host_name(host) not in self.hosts:
            raise GatewayError(
                MISDIRECTED,
                INVALID_REQUEST,
                f"host {host} is not this registry's (see allowed_hosts)",
            )

    def _challenge(self, path: str, error: str, message: str) -> bytes:
        """RFC 6750 3 with RFC 9728 5.1: where the metadata is and the scope a token needs."""
        fields = [
            'realm="mcpz"',
            f'resource_metadata="{resource_metadata_url(self.public, path)}"',
            'scope="call"',
        ]
        if error:
            quoted = message.replace("\\", "").replace('"', "'")
            fields += [f'error="{error}"', f'error_description="{quoted}"']
        return ("Bearer " + ", ".join(fields)).encode("latin-1", "replace")

    async def _authenticate(self, headers: Mapping[str, str], path: str) -> Principal:
        try:
            principal = await self.tokens.principal(headers)
        except Unauthenticated as e:
            raise GatewayError(401, INVALID_REQUEST, e.message, challenge="invalid_token") from None
        except (McpzError, SQLAlchemyError) as e:
            log.error("cannot check a gateway token: %s", e)
            raise GatewayError(
                503, UNAVAILABLE, "the registry cannot check tokens right now", retry_after=1
            ) from None
        if principal is None:
            raise GatewayError(
                401,
                INVALID_REQUEST,
                "authentication required: send Authorization: Bearer <token>",
                challenge="",
            )
        if principal.resource is not None and not audience_covers(principal.resource, self.public + path):
            raise GatewayError(
                401, INVALID_REQUEST, f"this token is for {principal.resource}", challenge="invalid_token"
            )
        if not principal.has("call"):
            raise GatewayError(
                403, INVALID_REQUEST, 'this token lacks the "call" scope', challenge="insufficient_scope"
            )
        return principal

    def _session(
        self, where: tuple[str, str | None], principal: Principal, headers: Mapping[str, str]
    ) -> Session:
        session_id = headers.get("mcp-session-id")
        if not session_id:
            raise GatewayError(
                400, INVALID_REQUEST, "missing the Mcp-Session-Id header: send initialize first"
            )
        session = self.sessions.get(session_id)
        if (
            session is None
            or session.account_id != principal.account_id
            or (session.deployment, session.version) != where
        ):
            raise GatewayError(404, INVALID_REQUEST, "no such session: it ended or expired; initialize again")
        session.last_used = time.monotonic()
        return session

    async def _post(
        self,
        where: tuple[str, str | None],
        principal: Principal,
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
    ) -> None:
        if not headers.get("content-type", "").lower().startswith("application/json"):
            raise GatewayError(415, INVALID_REQUEST, "the body must be JSON (Content-Type: application/json)")
        accept = headers.get("accept", "*/*").lower()
        if not any(kind in accept for kind in ("application/json", "text/event-stream", "*/*")):
            raise GatewayError(
                406, INVALID_REQUEST, "Accept must include application/json or text/event-stream"
            )
        version = headers.get("mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_VERSIONS:
            raise GatewayError(400, INVALID_REQUEST, f"unsupported MCP-Protocol-Version {version}")
        body = await _read_body(receive, MAX_BODY, headers)
        try:
            message: Any = jsonlimits.loads(body)
        except JSONError as e:
            raise GatewayError(400, PARSE_ERROR, f"the body is {e}") from None
        if isinstance(message, list):
            raise GatewayError(400, INVALID_REQUEST, "JSON-RPC batches are not supported: send one message")
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise GatewayError(400, INVALID_REQUEST, "the body must be one JSON-RPC 2.0 message")
        incoming_trace.set(headers.get(tracing.HEADER))
        method = message.get("method")
        if method is None:  # a response to a request of the agent's: only an isolated session has any
            session = self._session(where, principal, headers)
            if _isolated(session) and "id" in message:
                assert session.target is not None
                self.router.notify_agent(session.target, body, session.id)
            await _respond(send, 202, b"", content_type=None)
            return
        if not isinstance(method, str):
            raise GatewayError(400, INVALID_REQUEST, "method must be a string")
        if "id" not in message:
            session = self._session(where, principal, headers)
            self._client_notification(session, message, body)
            await _respond(send, 202, b"", content_type=None)
            return
        if method == "initialize":
            await self._initialize(where, principal, message, body, accept, send)
            return
        grant = await self._check_call(principal, message)
        try:
            session = self._session(where, principal, headers)
            if method in ("resources/subscribe", "resources/unsubscribe") and not _isolated(session):
                await self._subscription(session, principal, message, body, receive, send)
            else:
                await self._request(session, principal, message, body, accept, receive, send, grant)
        except GatewayError:
            self.quotas.refund(grant)  # the month counts calls that reached an agent
            raise

    async def _initialize(
        self,
        where: tuple[str, str | None],
        principal: Principal,
        message: dict[str, Any],
        body: bytes,
        accept: str,
        send: Send,
    ) -> None:
        if len(self.sessions) >= MAX_SESSIONS:
            raise GatewayError(
                503, UNAVAILABLE, "too many open sessions", request_id=message["id"], retry_after=5
            )
        if where[1] == DEV_VERSION:
            await self._check_member(principal, where[0], message["id"])
        grant = await self._check_session(principal, message["id"])
        params = message.get("params")
        offered = params.get("protocolVersion", "") if isinstance(params, dict) else ""
        session = Session(
            id=self.session_prefix + secrets.token_urlsafe(24),
            account_id=principal.account_id,
            deployment=where[0],
            version=where[1],
            target=None,
            protocol_version=str(offered),
            last_used=time.monotonic(),
            owner=principal.account_id,
        )
        try:
            payload, _ = await self._relay(session, principal, message, body, None)
        finally:
            self.quotas.release(grant)
        if _reason_of(payload) == SESSIONS_EXHAUSTED:
            self.router.pin(None, session.target)
            error = _error_of(payload)
            raise GatewayError(
                503, UNAVAILABLE, str(error.get("message", "")), request_id=message["id"], retry_after=5
            )
        if _outcome_of(payload) == Outcome.OK:
            payload = self._negotiated(session, payload)
            self._add_session(session)
            await _respond(send, 200, payload, [(SESSION_HEADER, session.id.encode()), *grant.headers])
        else:
            self.router.pin(None, session.target)  # no session came of it
            await _respond(send, 200, payload)

    def _negotiated(self, session: Session, payload: bytes) -> bytes:
        """The agent's InitializeResult, answering the version this session's client offered."""
        found = _result_of(payload)
        if found is None:
            return payload
        response, result = found
        agents = result.get("protocolVersion")
        if _isolated(session):  # the agent negotiated with this very client: its answer stands
            session.protocol_version = str(agents)
            return payload
        if session.protocol_version in HANDSHAKE_VERSIONS:
            version = session.protocol_version
        elif agents in HANDSHAKE_VERSIONS:
            version = str(agents)
        else:
            version = HANDSHAKE_VERSIONS[-1]
        session.protocol_version = version
        if version == agents:
            return payload
        response["result"] = {**result, "protocolVersion": version}
        return json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode()

    async def _request(
        self,
        session: Session,
        principal: Principal,
        message: dict[str, Any],
        body: bytes,
        accept: str,
        receive: Receive,
        send: Send,
        grant: Grant | None = None,
    ) -> None:
        key = json.dumps(message["id"])
        if key in session.calls:
            raise GatewayError(
                400, INVALID_REQUEST, "a request with this id is in flight", request_id=message["id"]
            )
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        progress = isinstance(meta, dict) and meta.get("progressToken") is not None
        if (progress or _isolated(session)) and "text/event-stream" in accept:
            # An isolated session's call streams: what the agent sends while it runs (log
            # messages, sampling and elicitation requests) travels with it, as over a direct
            # connection.
            await self._request_streamed(session, principal, message, body, send, grant)
            return
        disconnect = asyncio.ensure_future(receive())
        try:
            payload, _ = await self._relay(session, principal, message, body, None, disconnect)
        finally:
            disconnect.cancel()
        if payload:  # nothing when the client went away
            await _respond(send, 200, payload, grant.headers if grant else None)

    async def _subscription(
        self,
        session: Session,
        principal: Principal,
        message: dict[str, Any],
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> None:
        """resources/subscribe and unsubscribe, kept per session on a process sessions share."""
        if json.dumps(message["id"]) in session.calls:
            raise GatewayError(
                400, INVALID_REQUEST, "a request with this id is in flight", request_id=message["id"]
            )
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, dict) else None
        subscribe = message["method"] == "resources/subscribe"
        if isinstance(uri, str) and not subscribe:
            session.subscriptions.discard(uri)
            if self._watched_by_another(session, uri):
                # The agent keeps the URI for another session on the same process.
                ok = {"jsonrpc": "2.0", "id": message["id"], "result": {}}
                await _respond(send, 200, json.dumps(ok, separators=(",", ":")).encode())
                return
        disconnect = asyncio.ensure_future(receive())
        try:
            payload, outcome = await self._relay(session, principal, message, body, None, disconnect)
        finally:
            disconnect.cancel()
        if subscribe and isinstance(uri, str) and outcome == Outcome.OK:
            session.subscriptions.add(uri)
        if payload:
            await _respond(send, 200, payload)

    def _watched_by_another(self, session: Session, uri: str) -> bool:
        target = session.target
        if target is None:
            return False
        return any(
            other is not session and other.target == target and uri in other.subscriptions
            for other in self.sessions.values()
        )

    def _resubscribe(self, session: Session, old: Target | None, new: Target | None) -> None:
        """A session moved (or ended: `new` None): its URIs follow it to the new replica's agent,
        and the old agent drops those no other session there still watches."""
        for uri in sorted(session.subscriptions):
            if old is not None and self.router.alive(old):
                if not any(
                    o is not session and o.target == old and uri in o.subscriptions
                    for o in self.sessions.values()
                ):
                    self._send_unanswered(old, "resources/unsubscribe", uri, session.id)
            if new is not None:
                self._send_unanswered(new, "resources/subscribe", uri, session.id)

    def _send_unanswered(self, target: Target, method: str, uri: str, session_id: str) -> None:
        """A request of the gateway's own, whose answer nobody waits for."""
        request = {
            "jsonrpc": "2.0",
            "id": f"mcpz-{secrets.token_hex(6)}",
            "method": method,
            "params": {"uri": uri},
        }
        try:
            call = self.router.start(target, json.dumps(request).encode(), session_id)
        except CallFailed:
            return  # the replica is busy or gone: nothing there to keep in step
        call.future.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _request_streamed(
        self,
        session: Session,
        principal: Principal,
        message: dict[str, Any],
        body: bytes,
        send: Send,
        grant: Grant | None = None,
    ) -> None:
        """Answer with an SSE stream: the call's progress notifications, then its response. For an
        isolated session the stream begins with its first event, so a call refused before anything
        was sent (its session gone: 404) is a plain HTTP answer the client acts on."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(STREAM_QUEUE)
        started = False

        def on_notify(payload: bytes) -> None:
            with contextlib.suppress(asyncio.QueueFull):  # progress is advisory: a slow reader loses some
                queue.put_nowait(payload)

        async def start() -> None:
            nonlocal started
            if started:
                return
            started = True
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                        (SESSION_HEADER, session.id.encode()),
                        *(grant.headers if grant else ()),
                    ],
                }
            )

        if not _isolated(session):
            await start()

        async def pump() -> None:
            while True:
                item = await queue.get()
                await start()
                await send({"type": "http.response.body", "body": _sse(item), "more_body": True})

        pumping = asyncio.ensure_future(pump())
        failed: GatewayError | None = None
        try:
            payload, _ = await self._relay(session, principal, message, body, on_notify)
        except GatewayError as e:
            failed = e
            payload = rpc_error(message["id"], e.code, e.message)
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pumping
        if failed is not None and not started and queue.empty():
            raise failed  # nothing streamed yet: an HTTP answer (the caller refunds the grant)
        if failed is not None:  # the stream has begun: the error is its last event
            self.quotas.refund(grant)
        await start()
        while not queue.empty():
            await send({"type": "http.response.body", "body": _sse(queue.get_nowait()), "more_body": True})
        await send({"type": "http.response.body", "body": _sse(payload), "more_body": False})

    async def _relay(
        self,
        session: Session,
        principal: Principal,
        message: dict[str, Any],
        body: bytes,
        on_notify: Any,
        disconnect: asyncio.Future[Any] | None = None,
    ) -> tuple[bytes, str]:
        """Run one request on a replica: (the response to send, its usage outcome)."""
        request_id = message["id"]
        if self.in_flight >= self.max_in_flight:
            raise GatewayError(
                503,
                UNAVAILABLE,
                "the gateway is at its limit of calls in flight",
                request_id=request_id,
                retry_after=1,
            )
        if session.target is not None and session.target.isolated and not self.router.alive(session.target):
            self._end_session(session)  # its agent process went with its replica
            message_text = "this session's replica is gone: initialize again"
            raise GatewayError(404, INVALID_REQUEST, message_text, request_id=request_id)
        target = self.router.pick(session.deployment, session.version, prefer=session.target)
        if target is None:
            await self.router.refresh()  # a replica's cached placements may predate the deploy
            target = self.router.pick(session.deployment, session.version, prefer=session.target)
        if target is None:
            raise self._no_replica(session, request_id)
        metered = message.get("method") == "tools/call"
        billing = self.billing if metered and session.version != DEV_VERSION else None
        auth: Authorization | None = None
        paid: object | None = None
        if billing is not None and self.x402 is not None:  # x402: before billing (gateway/x402.py)

            def sign_settled(answer: bytes, price: int, started: int) -> bytes:  # a retry settled by hash
                if self.receipts is None:
                    return answer
                return self._with_receipt(answer, message, target, secrets.token_hex(16), price, started)

            step = await self.x402.before(principal, target.agent, target.version, message, sign_settled)
            if isinstance(step, bytes):  # payment required, refused or replayed: the agent is not called
                return step, Outcome.TOOL_ERROR
            paid, billing = step, (None if step is not None else billing)
            if paid is not None and principal is ANONYMOUS:
                self._paid_by(session, self.x402.payer_of(paid))
        if billing is not None:  # refused: GatewayError, before the agent sees it; no usage is recorded
            try:
                auth = await self._admit(billing, principal, target, message)
            except GatewayError as e:
                tool = (
                    str(message.get("params", {}).get("name", ""))
                    if isinstance(message.get("params"), dict)
                    else ""
                )
                asked = (
                    await self.x402.required(request_id, target.agent, tool, e.message)
                    if e.code == BILLING_REFUSED and self.x402 is not None
                    else None
                )
                if asked is None:
                    raise
                return asked, Outcome.TOOL_ERROR
        received = len(body)  # usage counts the request as the client sent it, before _meta is added
        trace = span = None
        if metered and self.trace_calls:
            # One call, one trace: the client's traceparent continued (or a new trace) goes to the
            # agent in the request's _meta, and the node logs it too; exported as a span when the
            # caller sampled it and an OTLP endpoint is set.
            parent = tracing.parse(incoming_trace.get())
            if parent is not None and parent.flags & tracing.SAMPLED and self.spans is not None:
                span, trace = self.spans.start(parent, "tools/call", _span_attributes(target, message))
            else:
                trace = parent.child() if parent is not None else tracing.continue_or_start(None)
            tracing.into_message(message, trace)
            body = json.dumps(message, separators=(",", ":")).encode()
        try:
            call = self.router.start(target, body, session.id, on_notify)
        except (Busy, CallFailed) as e:
            if billing is not None and auth is not None:
                billing.finish(auth, Outcome.REPLICA_LOST)
            if paid is not None and self.x402 is not None:  # nothing ran: the authorization stays unused
                await self.x402.after(paid, b"", Outcome.REPLICA_LOST, lambda answer, _: answer)
            raise GatewayError(503, UNAVAILABLE, e.message, request_id=request_id, retry_after=1) from None
        if target != session.target:
            self.router.pin(target, session.target)
            if session.subscriptions:
                self._resubscribe(session, session.target, target)
            session.target = target
        key = json.dumps(request_id)
        session.calls[key] = call
        self.in_flight += 1
        started_us = time.time_ns() // 1000
        clock = time.perf_counter_ns()
        outcome = Outcome.OK
        payload = b""
        event_id = secrets.token_hex(16)
        charge = (0, "", "")
        try:
            payload, outcome = await self._await(call, request_id, disconnect)
            if target.isolated and _reason_of(payload) == SESSION_GONE:
                self._end_session(session)  # its process ended (idle, or exited): the client starts anew
                why = _error_message(payload)
                raise GatewayError(404, INVALID_REQUEST, f"{why}: initialize again", request_id=request_id)
            if outcome == Outcome.REPLICA_LOST and target.isolated:
                self._end_session(session)  # the replica (and the session's process) is gone
            elif outcome == Outcome.REPLICA_LOST:
                self.router.suspect(target)
                self.router.pin(None, session.target)
                session.target = None
            if billing is not None and auth is not None:
                charge, auth = billing.finish(auth, outcome), None
                if charge[0] and self.receipts is not None:
                    payload = self._with_receipt(payload, message, target, event_id, charge[0], started_us)
            if paid is not None and self.x402 is not None:  # settle on chain, or withhold the result

                def sign(answer: bytes, price: int) -> bytes:
                    if self.receipts is None:
                        return answer
                    return self._with_receipt(answer, message, target, event_id, price, started_us)

                payload = await self.x402.after(paid, payload, outcome, sign)
            return payload, outcome
        except asyncio.CancelledError:
            # The server is stopping this request (shutdown): the node is told, the event recorded.
            self._cancel(call, "the gateway stopped the request")
            outcome = Outcome.SHUTDOWN
            if paid is not None and self.x402 is not None:
                # Its settlement was never signed (else its record says so and stays): the payer's
                # retry is verified afresh, not answered "still settling" forever.
                desk, stopped = self.x402, paid
                with contextlib.suppress(Exception):
                    await asyncio.shield(anyio.to_thread.run_sync(lambda: desk.release(stopped)))
            raise
        finally:
            self.in_flight -= 1
            if session.calls.get(key) is call:
                del session.calls[key]
            if trace is not None:
                _log_call(trace, target, message, outcome, clock)
            if span is not None and self.spans is not None:
                self.spans.end(span, outcome)
            if metered and principal is not ANONYMOUS:
                if billing is not None and auth is not None:  # ended by an exception
                    charge = billing.finish(auth, outcome)
                price, plan, hold = charge
                self._record(
                    principal, target, message, started_us, clock, outcome, received, len(payload),
                    event_id=event_id, price=price, plan=plan, hold=hold,
                )  # fmt: skip

    def _with_receipt(
        self,
        payload: bytes,
        message: dict[str, Any],
        target: Target,
        event_id: str,
        price: int,
        started_us: int,
    ) -> bytes:
        """The response with a signed receipt in its result's `_meta` (docs/receipts.md)."""
        assert self.receipts is not None
        found = _result_of(payload)
        if found is None:
            return payload
        response, result = found
        params = message.get("params")
        receipt = self.receipts.sign(
            event=event_id,
            agent=target.agent,
            version=target.version,
            tool=str(params.get("name", "")) if isinstance(params, dict) else "",
            price=price,
            time=started_us,
            request=receipts.request_digest(params),
            response=receipts.response_digest(result),
        )
        response["result"] = receipts.attach(result, receipt)
        return json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode()

    async def _await(
        self, call: PendingCall, request_id: object, disconnect: asyncio.Future[Any] | None
    ) -> tuple[bytes, str]:
        waiting: set[asyncio.Future[Any]] = {call.future}
        if disconnect is not None:
            waiting.add(disconnect)
        done, _ = await asyncio.wait(waiting, timeout=self.call_timeout, return_when=asyncio.FIRST_COMPLETED)
        if call.future in done:
            if call.future.cancelled():  # by the client's notifications/cancelled, or its session's end
                return rpc_error(request_id, CANCELLED, "the request was cancelled"), Outcome.CANCELLED
            try:
                payload = call.future.result()
            except CallFailed as e:
                return rpc_error(
                    request_id, CANCELLED if e.reason == Outcome.CANCELLED else UNAVAILABLE, e.message
                ), (e.reason)
            return payload, _outcome_of(payload)
        if done:  # the client went away
            self._cancel(call, "the client disconnected")
            return b"", Outcome.CANCELLED
        self._cancel(call, f"no answer within {self.call_timeout:g} s")
        return rpc_error(request_id, TIMED_OUT, f"the agent did not answer within {self.call_timeout:g} s"), (
            Outcome.TIMEOUT
        )

    def _cancel(self, call: PendingCall, reason: str) -> None:
        """Tell the node to drop the call; whoever still waits for it sees it cancelled."""
        self.router.cancel(call, reason)
        call.future.cancel()

    def _client_notification(self, session: Session, message: dict[str, Any], body: bytes) -> None:
        method = message["method"]
        if method == "notifications/initialized" and not _isolated(session):
            return  # the node initialized its agent once, for every session
        if method == "notifications/cancelled":
            params = message.get("params")
            request_id = params.get("requestId") if isinstance(params, dict) else None
            call = session.calls.get(json.dumps(request_id))
            if call is not None:
                self._cancel(call, "the client cancelled the request")
            return
        if session.target is not None and self.router.alive(session.target):
            self.router.notify_agent(session.target, body, session.id)

    async def _get(
        self,
        where: tuple[str, str | None],
        principal: Principal,
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
    ) -> None:
        if "text/event-stream" not in headers.get("accept", "").lower():
            raise GatewayError(
                406, INVALID_REQUEST, "GET opens an SSE stream: Accept must include text/event-stream"
            )
        session = self._session(where, principal, headers)
        last = headers.get("last-event-id", "").strip()
        resumed = int(last) if last.isdigit() else None
        if session.stream is not None:
            if resumed is None:
                raise GatewayError(409, INVALID_REQUEST, "this session has a stream open already")
            # A client resuming: the stream it lost may not have been noticed gone yet.
            with contextlib.suppress(asyncio.QueueFull):
                session.stream.put_nowait(None)
        await _read_body(
            receive, 64 * 1024, headers
        )  # from here on, receive() says only when the client goes
        queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(STREAM_QUEUE)
        session.stream = queue
        # Taken with the queue in place: every later event goes to the queue, none twice.
        replay = [item for item in session.sent if resumed is not None and item[0] > resumed]
        disconnect = asyncio.ensure_future(receive())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                }
            )
            if replay:
                body = b"".join(_sse(payload, event_id) for event_id, payload in replay)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            elif session.protocol_version >= PRIMING_SINCE:
                priming = f"id: {session.last_event}\nretry: {RETRY_MS}\ndata: \n\n".encode()
                await send({"type": "http.response.body", "body": priming, "more_body": True})
            while not disconnect.done():
                getting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {getting, disconnect}, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED
                )
                if getting not in done:
                    getting.cancel()
                    if not done:
                        await send(
                            {"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True}
                        )
                    continue
                item = getting.result()
                if item is None:
                    break
                await send({"type": "http.response.body", "body": _sse(item[1], item[0]), "more_body": True})
            if not disconnect.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            disconnect.cancel()
            if session.stream is queue:
                session.stream = None

    def _broadcast(self, replica: Target | tuple[str, int], payload: bytes) -> None:
        """A notification for the sessions on a replica, to their streams: a list changed (all of
        them), a resource updated (those that subscribed to its URI)."""
        key = replica if isinstance(replica, tuple) else (replica.replica_id, replica.epoch)
        uri = _updated_uri(payload)
        for session in self.sessions.values():
            target = session.target
            if target is None or (target.replica_id, target.epoch) != key:
                continue
            if uri is not None and uri not in session.subscriptions:
                continue
            self._to_stream(session, payload)

    def _to_session(self, session_id: str, replica: tuple[str, int], payload: bytes) -> None:
        """A message of an isolated session's agent process, for that session's GET stream only."""
        session = self.sessions.get(session_id)
        target = session.target if session is not None else None
        if session is None or target is None or not target.isolated:
            return
        if (target.replica_id, target.epoch) == replica:
            self._to_stream(session, payload)

    @staticmethod
    def _to_stream(session: Session, payload: bytes) -> None:
        """An event for the session's GET stream: numbered, kept for a reconnect, sent if open."""
        session.last_event += 1
        item = (session.last_event, payload)
        session.sent.append(item)
        if session.stream is not None:
            with contextlib.suppress(asyncio.QueueFull):
                session.stream.put_nowait(item)

    def _add_session(self, session: Session) -> None:
        """Opens `session`; one owner past its cap loses its least recently used idle session
        (one without calls in flight), so one account (or one x402 payer) cannot fill the table."""
        self._make_room(session.owner, session)
        self.sessions[session.id] = session
        self._accounts[session.owner][session.id] = session

    def _make_room(self, owner: int | str, keep: Session) -> None:
        mine = self._accounts.setdefault(owner, {})
        while len(mine) >= self.max_sessions_per_account:
            others = [s for s in mine.values() if s is not keep]
            if not others:
                break
            idle = [s for s in others if not s.calls] or others
            oldest = min(idle, key=lambda s: s.last_used)
            log.info(
                "gateway ended an account's oldest idle session: it has too many",
                extra={"account_id": keep.account_id, "limit": self.max_sessions_per_account},
            )
            self._end_session(oldest)

    def _paid_by(self, session: Session, payer: str) -> None:
        """An anonymous session that paid with x402 counts against its payer's cap from now on, not
        against the cap every anonymous session shares before it pays."""
        owner = f"x402:{payer.lower()}"
        if session.owner == owner or session.id not in self.sessions:
            return
        before = self._accounts.get(session.owner)
        if before is not None and before.pop(session.id, None) is not None and not before:
            del self._accounts[session.owner]
        session.owner = owner
        self._make_room(owner, session)
        self._accounts[owner][session.id] = session

    def _end_session(self, session: Session) -> None:
        mine = self._accounts.get(session.owner)
        if mine is not None and mine.pop(session.id, None) is not None and not mine:
            del self._accounts[session.owner]
        if self.sessions.pop(session.id, None) is not None:
            self.router.pin(None, session.target)
            if _isolated(session):
                assert session.target is not None
                self.router.end_session(session.target, session.id)
            elif session.subscriptions and not self.closing:
                self._resubscribe(session, session.target, None)
        for call in list(session.calls.values()):
            self._cancel(call, "the session ended")
        if session.stream is not None:
            with contextlib.suppress(asyncio.QueueFull):
                session.stream.put_nowait(None)

    async def _check_call(self, principal: Principal, message: dict[str, Any]) -> Grant | None:
        """A `tools/call` within the caller's tier is counted; past it, 429. Other methods count not."""
        if message.get("method") != "tools/call" or principal is ANONYMOUS:  # x402 limits per payer
            return None
        try:
            verdict = await self.quotas.check_call(principal)
        except QuotasUnavailable as e:
            raise GatewayError(503, UNAVAILABLE, e.message, request_id=message["id"], retry_after=1) from None
        if isinstance(verdict, Refusal):
            raise quota_refused(verdict, message["id"])
        return verdict

    async def _check_session(self, principal: Principal, request_id: object) -> Grant:
        """A slot for one more session of the caller's account within its tier; past it, 429."""

        def idle_ends() -> list[float]:  # seconds until each of the account's sessions ends idle
            now = time.monotonic()
            mine = self._accounts.get(principal.account_id, {}).values()
            return [s.last_used + SESSION_IDLE - now for s in mine]

        if principal is ANONYMOUS:  # no tier: MAX_SESSIONS bounds them, x402 limits calls per payer
            return Grant(0)
        try:
            verdict = await self.quotas.check_session(principal, idle_ends)
        except QuotasUnavailable as e:
            raise GatewayError(503, UNAVAILABLE, e.message, request_id=request_id, retry_after=1) from None
        if isinstance(verdict, Refusal):
            raise quota_refused(verdict, request_id)
        return verdict

    async def _check_member(self, principal: Principal, agent: str, request_id: object) -> None:
        """A development agent (`mcpz connect`) answers its namespace's owner and members only."""
        namespace = agent.split("/")[0]
        try:
            await anyio.to_thread.run_sync(lambda: require(principal, "call", namespace, db=self.state.db))
        except Forbidden as e:
            raise GatewayError(403, INVALID_REQUEST, e.message, request_id=request_id) from None

    def _no_replica(self, session: Session, request_id: object) -> GatewayError:
        """404 when nothing by that name exists; 503 (try again) when its replicas are not up."""
        name = session.deployment + (f"@{session.version}" if session.version else "")
        if session.version == DEV_VERSION:
            message = f"nothing is connected as {name}: run `mcpz connect` in the agent's folder"
            return GatewayError(404, UNAVAILABLE, message, request_id=request_id)
        versions = self.router.versions_of(session.deployment)
        if versions is None:
            message = f"no deployment {session.deployment}: create it with `mcpz deploy NAME@VERSION`"
            return GatewayError(404, UNAVAILABLE, message, request_id=request_id)
        if session.version and session.version not in versions[1]:
            # A version this deployment never ran: not found (exit 5), not "try again shortly".
            message = (
                f"{session.deployment} has never run version {session.version} (it runs "
                f"{versions[0]}): see `mcpz deploy status {session.deployment}`"
            )
            return GatewayError(404, UNAVAILABLE, message, request_id=request_id)
        message = f"no healthy replica of {name} right now: see `mcpz deploy status {session.deployment}`"
        return GatewayError(503, UNAVAILABLE, message, request_id=request_id, retry_after=1)

    async def _admit(
        self, billing: BillingGate, principal: Principal, target: Target, message: dict[str, Any]
    ) -> Authorization | None:
        """Price a tools/call and reserve it (None: it is free); GatewayError when it may not run."""
        params = message.get("params")
        tool = str(params.get("name", "")) if isinstance(params, dict) else ""
        try:
            admitted = await billing.authorize(principal, target.agent, tool)
        except (McpzError, SQLAlchemyError) as e:
            log.error("cannot price a call of %s: %s", target.agent, e)
            raise GatewayError(
                503,
                UNAVAILABLE,
                "the registry cannot check billing right now",
                request_id=message["id"],
                retry_after=1,
            ) from None
        if isinstance(admitted, BillingRefusal):
            # An answer, not a transport failure (HTTP 200): MCP clients show the error's message.
            raise GatewayError(
                200,
                BILLING_REFUSED,
                admitted.message,
                request_id=message["id"],
                data={"reason": admitted.reason, "fix": admitted.fix, "agent": target.agent},
            )
        return admitted

    def _record(
        self,
        principal: Principal,
        target: Target,
        message: dict[str, Any],
        started_us: int,
        clock: int,
        outcome: str,
        bytes_in: int,
        bytes_out: int,
        *,
        event_id: str,
        price: int = 0,
        plan: str = "",
        hold: str = "",
    ) -> None:
        if self.usage is None:
            return
        params = message.get("params")
        tool = params.get("name") if isinstance(params, dict) else None
        event = UsageEvent(
            id=event_id,
            account_id=principal.account_id,
            token_id=principal.token_id,
            agent=target.agent,
            version=target.version,
            tool=str(tool)[:256] if tool is not None else "",
            deployment=target.deployment,
            replica_id=target.replica_id,
            node_id=target.node_id,
            started_us=started_us,
            duration_us=(time.perf_counter_ns() - clock) // 1000,
            outcome=outcome,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            price=price,
            plan=plan,
            hold=hold,
        )
        try:
            self.usage.record(event)
        except Exception:  # metering must never fail the call it meters; the loss is logged loudly
            log.exception("could not record usage event %s", event.id)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(60)
            cutoff = time.monotonic() - SESSION_IDLE
            for session in [s for s in self.sessions.values() if s.last_used < cutoff and not s.calls]:
                self._end_session(session)


def _shutdown() -> CallFailed:
    from registry_server.mesh.calls import Shutdown

    return Shutdown("the registry is shutting down")


def _result_of(payload: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the response, its `result` object) of a JSON-RPC response with a result; None otherwise."""
    try:
        response = jsonlimits.loads(payload)
    except JSONError:
        return None
    result = response.get("result") if isinstance(response, dict) else None
    return (response, result) if isinstance(result, dict) else None


def _isolated(session: Session) -> bool:
    """The session has an agent process of its own (isolated session mode)."""
    return session.target is not None and session.target.isolated


def _error_of(payload: bytes) -> dict[str, Any]:
    """The `error` object of a JSON-RPC error response ({} for anything else)."""
    if b'"error"' not in payload:
        return {}
    try:
        response = jsonlimits.loads(payload)
    except JSONError:
        return {}
    error = response.get("error") if isinstance(response, dict) else None
    return error if isinstance(error, dict) else {}


def _reason_of(payload: bytes) -> str | None:
    """`error.data.reason` of a JSON-RPC error response (the node's word for why a call failed)."""
    data = _error_of(payload).get("data")
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) else None


def _error_message(payload: bytes) -> str:
    return str(_error_of(payload).get("message", "the request failed"))


def _outcome_of(payload: bytes) -> str:
    try:
        response = jsonlimits.loads(payload)
    except JSONError:
        return Outcome.RPC_ERROR
    if not isinstance(response, dict):
        return Outcome.RPC_ERROR
    error = response.get("error")
    if isinstance(error, dict):
        data = error.get("data")
        if isinstance(data, dict) and data.get("reason") == "agent-exited":
            return Outcome.REPLICA_LOST
        return Outcome.RPC_ERROR
    result = response.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return Outcome.TOOL_ERROR
    return Outcome.OK


def _updated_uri(payload: bytes) -> str | None:
    """The URI of a `notifications/resources/updated` (None for any other message)."""
    if RESOURCE_UPDATED.encode() not in payload:
        return None
    try:
        message = jsonlimits.loads(payload)
    except JSONError:
        return None
    params = message.get("params") if isinstance(message, dict) else None
    if (
        not isinstance(message, dict)
        or message.get("method") != RESOURCE_UPDATED
        or not isinstance(params, dict)
    ):
        return None
    uri = params.get("uri")
    return uri if isinstance(uri, str) else ""  # "": an update of no URI reaches nobody


def _sse(payload: bytes, event_id: int | None = None) -> bytes:
    event = b"event: message\ndata: " + payload.replace(b"\n", b"") + b"\n\n"
    return event if event_id is None else b"id: %d\n" % event_id + event


async def _read_body(receive: Receive, limit: int, headers: Mapping[str, str]) -> bytes:
    length = headers.get("content-length")
    if length is not None and not length.isdigit():
        raise GatewayError(400, INVALID_REQUEST, "Content-Length is not a number")
    if length is not None and int(length) > limit:
        # Refused unread: a body of that size would be read only to be thrown away.
        raise GatewayError(413, INVALID_REQUEST, f"the request is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(400, INVALID_REQUEST, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, INVALID_REQUEST, f"the request is over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    content_type: bytes | None = b"application/json",
) -> None:
    all_headers = list(headers or [])
    if content_type is not None:
        all_headers.append((b"content-type", content_type))
    all_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


def _log_call(
    trace: tracing.TraceParent, target: Target, message: dict[str, Any], outcome: str, clock: int
) -> None:
    """One line per call of a trace the caller sampled (others only at debug level)."""
    level = logging.INFO if trace.flags & tracing.SAMPLED else logging.DEBUG
    if not log.isEnabledFor(level):
        return
    params = message.get("params")
    tool = params.get("name") if isinstance(params, dict) else None
    log.log(
        level,
        "gateway call",
        extra={
            "trace_id": trace.trace_id, "span_id": trace.span_id, "agent": target.agent,
            "tool": str(tool)[:256] if tool is not None else "", "replica": target.replica_id,
            "outcome": outcome, "ms": round((time.perf_counter_ns() - clock) / 1e6, 2),
        },
    )  # fmt: skip


def _span_attributes(target: Target, message: dict[str, Any]) -> dict[str, str]:
    params = message.get("params")
    tool = params.get("name") if isinstance(params, dict) else None
    return {
        "mcpz.agent": target.agent, "mcpz.version": target.version, "mcpz.replica": target.replica_id,
        "mcpz.node": target.node_id, "mcp.tool": str(tool)[:256] if tool is not None else "",
    }  # fmt: skip
