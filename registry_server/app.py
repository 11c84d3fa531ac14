"""The registry's ASGI application."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcpz import __version__
from mcpz.errors import AuthError, McpzError, NotFoundError, RefusedError, UsageError
from registry_server.accounts import routes as api_auth
from registry_server.accounts.auth import Forbidden
from registry_server.billing import routes as api_billing
from registry_server.billing import service as billing_service
from registry_server.billing import tier_routes as api_tiers
from registry_server.billing.gate import BillingGate
from registry_server.billing.orphans import OrphanJournals
from registry_server.billing.quotas import Quotas
from registry_server.billing.receipt_key import ReceiptSigner
from registry_server.billing.worker import BillingWorker
from registry_server.body_limits import BodyLimits
from registry_server.bus import Bus, cluster_id
from registry_server.deployments import routes as api_deploy
from registry_server.deployments import store as deployment_store
from registry_server.gateway.asgi import GATEWAY_PREFIX, Gateway
from registry_server.git import routes as git_http
from registry_server.git.recovery import recover
from registry_server.http import error_response
from registry_server.leases import Leadership
from registry_server.logs import begin_request, end_request, note, request_id
from registry_server.maintenance.service import GcScheduler
from registry_server.market import routes as api_market
from registry_server.market.upkeep import MarketUpkeep
from registry_server.mesh import http as relay_http
from registry_server.mesh import hub as mesh_hub
from registry_server.mesh import routes as mesh_http
from registry_server.mesh.cluster import OWNED_HTTP, SESSION_MARK, Cluster, owner_of, relayed
from registry_server.oauth import routes as oauth
from registry_server.openapi import use_error_model
from registry_server.otlp import CallSpans
from registry_server.rate_limit import RateLimited, retry_after_header
from registry_server.releases import routes as api
from registry_server.releases.index import IndexCache
from registry_server.settings import RegistrySettings
from registry_server.settlement import payouts
from registry_server.settlement import routes as api_settlement
from registry_server.settlement.chain import chain_of
from registry_server.settlement.operator import load_operator
from registry_server.settlement.worker import SettlementWorker
from registry_server.settlement.x402_desk import X402Desk
from registry_server.state import RegistryState
from registry_server.usage import routes as api_usage
from registry_server.usage.service import UsageRecorder
from registry_server.web import routes as web
from registry_server.web.authorize import routes as web_authorize

log = logging.getLogger("registry_server.http")


def _status_for(error: McpzError) -> int:
    if isinstance(error, RateLimited):
        return 429
    if isinstance(error, Forbidden):
        return 403
    if isinstance(error, AuthError):
        return 401
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, RefusedError):
        return 409
    if isinstance(error, UsageError):
        return 400
    return 500


def _settlement_worker(state: RegistryState) -> SettlementWorker | None:
    """The deposit watcher and payout job, when settlement is configured. The chain is not asked here:
    a node down at start-up delays deposits, not serving."""
    config = state.settings
    if not config.settlement_on:
        return None
    return SettlementWorker(state, chain_of(config), load_operator(config))


def _register_gauges(app: FastAPI) -> None:
    """The gauges read at each scrape: what the mesh, deployments, usage, billing and settlement hold."""
    state: RegistryState = app.state.registry
    metrics = state.metrics

    def nodes() -> dict[tuple[str, ...], float]:
        with state.db.session() as session:
            by_state, _ = deployment_store.counts_for_metrics(session)
        out: dict[tuple[str, ...], float] = {(k,): v for k, v in by_state.items()}
        out[("connected",)] = len(app.state.mesh.connections)
        return out

    def replicas() -> dict[tuple[str, ...], float]:
        with state.db.session() as session:
            _, by_status = deployment_store.counts_for_metrics(session)
        return {(k,): v for k, v in by_status.items()}

    def usage() -> dict[tuple[str, ...], float]:
        stats = app.state.usage.stats
        return {
            ("pending",): stats.pending,
            ("recorded",): stats.recorded,
            ("journal_errors",): stats.journal_errors,
        }

    def rating() -> dict[tuple[str, ...], float]:
        with state.db.session() as session:
            count, age = billing_service.rating_lag(session)
        return {("events",): count, ("oldest_seconds",): age}

    def settlement() -> dict[tuple[str, ...], float]:
        worker = app.state.settlement
        if worker is None:
            return {}
        with state.db.session() as session:
            batches, deposits = payouts.counts_for_metrics(session, worker.chain.chain_id)
        out: dict[tuple[str, ...], float] = {("batch", k): v for k, v in batches.items()}
        out.update({("deposit", k): v for k, v in deposits.items()})
        return out

    metrics.gauge_family(
        "mcpz_mesh_nodes", "Nodes by state; `connected`: sockets on this registry.", ["state"], nodes
    )
    metrics.gauge_family(
        "mcpz_replicas", "Replicas by the status their nodes last reported.", ["status"], replicas
    )
    metrics.gauge_family(
        "mcpz_gateway_sessions",
        "Open MCP sessions on the gateway.",
        [],
        lambda: {(): len(app.state.gateway.sessions)},
    )
    metrics.gauge_family(
        "mcpz_gateway_in_flight", "Gateway calls in flight.", [], lambda: {(): app.state.gateway.in_flight}
    )

    def mesh_frames() -> dict[tuple[str, ...], float]:
        stats = app.state.mesh.stats
        return {
            (name,): getattr(stats, name)
            for name in ("welcomed", "protocol_errors", "deploys_sent", "deploys_acked", "stops_sent",
                         "stale_dropped", "overflows")
        }  # fmt: skip

    def mesh_queues() -> dict[tuple[str, ...], float]:
        queued = [c.queued_bytes for c in app.state.mesh.connections.values()]
        return {("bytes",): sum(queued), ("largest_bytes",): max(queued, default=0)}

    metrics.gauge_family(
        "mcpz_mesh_frames", "Mesh frames and events since the hub started, by kind.", ["kind"], mesh_frames
    )
    metrics.gauge_family(
        "mcpz_mesh_send_queue", "Frames waiting to be written to nodes.", ["what"], mesh_queues
    )
    metrics.gauge_family(
        "mcpz_usage_events",
        "The usage recorder: events pending a flush, recorded, lost to the journal.",
        ["kind"],
        usage,
    )
    metrics.gauge_family(
        "mcpz_billing_unrated", "Priced calls not rated yet, and the oldest one's age.", ["what"], rating
    )
    metrics.gauge_family(
        "mcpz_settlement", "Payout batches and deposits by state.", ["kind", "state"], settlement
    )


class RequestLogMiddleware:
    """Gives each request an id (X-Request-Id) and logs it as one JSON line when it ends.

    Plain ASGI rather than BaseHTTPMiddleware, which would re-buffer every streamed clone.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or secrets.token_hex(8)
        token = request_id.set(rid)
        fields = begin_request()
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            registry = getattr(getattr(scope.get("app"), "state", None), "registry", None)
            if registry is not None:
                # The route's template, never the path: paths hold names without bound.
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                registry.metrics.request(scope["method"], route, status, seconds)
            params = scope.get("path_params") or {}
            if "namespace" in params and "name" in params:  # the routing filled them in
                note(agent=f"{params['namespace']}/{params['name'].removesuffix('.git')}")
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round(seconds * 1000, 2),
                },
            )
            end_request(fields)
            request_id.reset(token)


class RegistryApp:
    """The ASGI application uvicorn runs: gateway calls (`/mcp/...`) go straight to the gateway,
    everything else to the FastAPI app (its routes, middleware, lifespan).

    The gateway is the hot path: each MCP request skips FastAPI's routing and middleware stack
    and the per-request log line (usage events record every call; the gateway logs its refusals).
    """

    def __init__(self, api: FastAPI) -> None:
        self.api = api
        self.cluster: Cluster | None = None  # a registry replica's: what it relays to the leader

    @property
    def state(self) -> Any:
        return self.api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.cluster is not None and scope["type"] == "http" and relayed(scope["path"]):
            if not self.cluster.leading:
                if scope.get("mcpz.relayed"):  # the lease moved while it travelled: no second hop
                    await relay_http.refuse(scope, receive, send)
                else:
                    await relay_http.forward(self.cluster, scope, receive, send)
                return
        if scope["type"] == "http" and scope["path"].startswith(GATEWAY_PREFIX):
            cluster = self.cluster
            owner = owner_of(scope["headers"]) if cluster is not None else ""
            if (
                cluster is not None
                and owner
                and cluster.owns_elsewhere(owner)
                and not scope.get("mcpz.relayed")
            ):
                # Another replica's session: its state is there (a gone replica's sessions are
                # unknown here, and answered 404 below: the client initializes again).
                await relay_http.forward(cluster, scope, receive, send, f"{OWNED_HTTP}.{owner}")
                return
            await self.api.state.gateway(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(
    settings: RegistrySettings, state: RegistryState | None = None, *, usage_lock: int | None = None
) -> RegistryApp:
    """`usage_lock`: the data folder's lock, when the caller took it already (`serve` does, to
    refuse a second registry before binding the port)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = state is None
        app.state.registry = RegistryState.open(settings) if own else state
        registry = app.state.registry
        if settings.replica:
            registry.leadership = Leadership(registry.db, settings.replica_name, ttl=settings.lease_ttl)
            await registry.leadership.start()
        # Before serving: undo what a killed registry left half done (docs/registry.md).
        recover(app.state.registry.repos, app.state.registry.db)
        app.state.index_cache = IndexCache()
        # The gateway signs paid calls' receipts with it; made (or read) once, before any call.
        app.state.receipts = ReceiptSigner(app.state.registry.settings)
        app.state.nonce_limiter = api_auth.nonce_limiter(settings)
        app.state.market_limiter = api_market.market_limiter(settings)
        # Usage recording starts before the mesh and stops after it, so calls in flight at
        # shutdown still record their events.
        app.state.usage = UsageRecorder(app.state.registry, held_lock=usage_lock)
        try:
            await app.state.usage.start()
            try:
                # Billing rates what the replayed journal holds and gives back a stopped
                # registry's holds before the gateway takes calls; it stops after the usage
                # recorder, so the last events are rated and every hold is given back.
                app.state.billing_gate = BillingGate(app.state.registry)
                app.state.billing = BillingWorker(app.state.registry, app.state.billing_gate)
                await app.state.billing.start()
                try:
                    # A replica's hub starts idle: it runs the mesh only while it holds the lease.
                    app.state.mesh = await mesh_hub.start_mesh(app.state.registry, lead=not settings.replica)
                    app.state.cluster = None
                    if settings.replica:
                        app.state.cluster = await _join_cluster(app, registry_app)
                    app.state.quotas = Quotas(app.state.registry)
                    app.state.gateway = Gateway(
                        app.state.registry,
                        app.state.mesh,
                        app.state.usage,
                        tiers=app.state.quotas,
                        billing=app.state.billing_gate,
                        receipts=app.state.receipts,
                        spans=CallSpans(settings.otlp_endpoint) if settings.otlp_endpoint else None,
                        x402=X402Desk.open(app.state.registry),  # None without settlement and its operator
                    )
                    if app.state.cluster is not None:
                        app.state.gateway.session_prefix = app.state.cluster.name + SESSION_MARK
                    await app.state.gateway.start()
                    # Listings follow publishes (a listener on the state) and a periodic sweep.
                    app.state.market = MarketUpkeep(app.state.registry)
                    await app.state.market.start()
                    app.state.gc = GcScheduler(app.state.registry)
                    await app.state.gc.start()
                    # With --replica: the journals of replicas that died, replayed by one survivor.
                    app.state.orphans = OrphanJournals(app.state.registry)
                    await app.state.orphans.start()
                    app.state.settlement = _settlement_worker(app.state.registry)
                    if app.state.settlement is not None:
                        await app.state.settlement.start()
                    _register_gauges(app)
                    metrics = app.state.registry.metrics
                    if settings.metrics_port:
                        bound = metrics.serve(settings.metrics_host, settings.metrics_port)
                        log.info("metrics", extra={"url": f"http://{settings.metrics_host}:{bound}/metrics"})
                    try:
                        yield
                    finally:
                        metrics.stop()
                        if app.state.gateway.spans is not None:
                            app.state.gateway.spans.close()  # sends what is batched
                        if app.state.settlement is not None:
                            await app.state.settlement.stop()
                        await app.state.orphans.stop()
                        await app.state.gc.stop()
                        await app.state.market.stop()
                        await app.state.gateway.stop()
                        if app.state.cluster is not None:
                            await app.state.cluster.stop()
                        await app.state.mesh.stop()
                        if app.state.cluster is not None:
                            await app.state.cluster.bus.close()
                finally:
                    await app.state.usage.stop()
                    await app.state.billing.stop()
            finally:
                await app.state.usage.stop()
        finally:
            await app.state.registry.leadership.stop()
            if own:
                app.state.registry.close()

    app = FastAPI(title="mcpz registry", version=__version__, lifespan=lifespan)
    app.include_router(api.router)
    app.include_router(api_auth.router)
    app.include_router(git_http.router)
    app.include_router(api_deploy.router)
    app.include_router(api_usage.router)
    app.include_router(mesh_http.router)
    app.include_router(api_market.router)
    app.include_router(api_billing.router)
    app.include_router(api_tiers.router)
    app.include_router(api_settlement.router)
    app.include_router(oauth.router)  # the authorization server and the gateway's resource metadata
    # The web pages last: their paths (/, /search, /agents/...) are apart from the API's.
    app.include_router(web_authorize.router)
    app.include_router(web.router)

    @app.exception_handler(McpzError)
    async def _mcpz_error(request: Request, exc: McpzError) -> Response:
        status = _status_for(exc)
        headers = (
            {"Retry-After": retry_after_header(exc.retry_after)} if isinstance(exc, RateLimited) else None
        )
        return error_response(status, exc.message, exc.hint, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's own answers (no such path, method not allowed) in the API's error body.
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path, headers.get("Allow", "")))
        plain = {404: "no such path", 405: f"{request.method} is not allowed here"}
        # Starlette's detail is then only the status phrase ("Not Found"); ours says more.
        message = str(exc.detail) if exc.detail != HTTPStatus(exc.status_code).phrase else None
        return error_response(
            exc.status_code, message or plain.get(exc.status_code, str(exc.detail)), headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = use_error_model(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # Added first, so it runs inside the request log: its refusals carry a request id and are logged.
    app.add_middleware(BodyLimits, settings=settings)
    app.add_middleware(RequestLogMiddleware)
    registry_app = RegistryApp(app)
    return registry_app


async def _join_cluster(app: FastAPI, entry: RegistryApp) -> Cluster:
    """A registry replica's part in the cluster (docs/scaling.md): NATS joined, competing for the
    lease to lead the mesh, relaying to the leader meanwhile."""
    state: RegistryState = app.state.registry
    settings = state.settings
    bus = await Bus.connect(settings.nats_url, settings.replica_name, cluster_id(settings.data_dir))
    cluster = Cluster(bus, state.leadership, app.state.mesh)
    cluster.serve_http = partial(relay_http.serve, cluster, entry)
    cluster.serve_owned = partial(relay_http.serve, cluster, entry, owned=True)
    await cluster.start()
    entry.cluster = cluster
    return cluster


def allowed_methods(app: FastAPI, path: str, starlette_allow: str) -> list[str]:
    """Every method the API serves at `path`. Starlette's 405 names only the methods of the first
    route matching the path, while FastAPI registers GET and POST of one path as two routes."""
    methods = {m.strip() for m in starlette_allow.split(",") if m.strip()}
    for regex, operations in _documented_paths(app):
        if regex.fullmatch(path):
            methods |= operations
    return sorted(methods)


def _documented_paths(app: FastAPI) -> list[tuple[re.Pattern[str], set[str]]]:
    cached: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "documented_paths", None)
    if cached is None:
        verbs = {"get", "put", "post", "delete", "patch", "head", "options"}
        cached = [
            (compile_path(template)[0], {m.upper() for m in operations if m in verbs})
            for template, operations in app.openapi()["paths"].items()
        ]
        app.state.documented_paths = cached
    return cached
