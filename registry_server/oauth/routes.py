"""The authorization server's endpoints for programs, and the gateway's protected resource metadata.

    GET  /.well-known/oauth-protected-resource             RFC 9728: the gateway as a whole
    GET  /.well-known/oauth-protected-resource/mcp/{ns}/{name}[@v]   one deployment on it
    GET  /.well-known/oauth-authorization-server           RFC 8414: this registry as the server
    POST /oauth/register                                   RFC 7591: a public client (JSON)
    POST /oauth/token                                      authorization_code (PKCE) or refresh_token

The browser's endpoint, GET/POST /oauth/authorize, is a web page (registry_server/web/authorize/routes.py):
it signs the person in with their wallet. None of these is in the OpenAPI document: RFCs define
them, and anyone may call them (a client registers before it has anything; the token endpoint
authenticates the code or refresh token, bound to its client, PKCE verifier and redirect URI).
Errors are RFC 6749's JSON: `{"error": "invalid_grant", "error_description": ...}`.
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from registry_server.http import State
from registry_server.oauth import rules, service
from registry_server.oauth.http import client_documents
from registry_server.oauth.rules import OAuthError
from registry_server.orm import utcnow
from registry_server.rate_limit import RateLimiter
from registry_server.settings import public_url

router = APIRouter(include_in_schema=False)

# Browser-based clients (the MCP Inspector's web UI) read the metadata and call these endpoints from
# another origin. No cookie or other ambient credential is involved, so any origin may.
CORS = {"Access-Control-Allow-Origin": "*"}
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", **CORS}
MAX_FORM = 16 * 1024


def _error(e: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if e.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="mcpz"'  # RFC 6749 5.2, for invalid_client
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


@router.get(rules.PROTECTED_RESOURCE_PATH)
def gateway_metadata(state: State) -> JSONResponse:
    public = public_url(state.settings)
    return JSONResponse(rules.protected_resource_metadata(public, public + rules.GATEWAY_PATH), headers=CORS)


@router.get(rules.PROTECTED_RESOURCE_PATH + rules.GATEWAY_PATH + "/{rest:path}")
def deployment_metadata(rest: str, state: State) -> JSONResponse:
    public = public_url(state.settings)
    try:
        resource = rules.resource_of(public, f"{public}{rules.GATEWAY_PATH}/{rest}")
    except OAuthError as e:
        return JSONResponse(e.body(), status_code=404, headers=CORS)
    return JSONResponse(rules.protected_resource_metadata(public, resource), headers=CORS)


@router.get(rules.AUTHORIZATION_SERVER_PATH)
def server_metadata(state: State) -> JSONResponse:
    return JSONResponse(rules.authorization_server_metadata(public_url(state.settings)), headers=CORS)


@router.options(rules.REGISTER_PATH)
@router.options(rules.TOKEN_PATH)
def preflight() -> Response:
    """CORS preflight of a browser-based client's registration or token request."""
    headers = {
        **CORS,
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type, MCP-Protocol-Version",
        "Access-Control-Max-Age": "600",
    }
    return Response(status_code=204, headers=headers)


def _limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter | None = getattr(request.app.state, "oauth_limiter", None)
    if limiter is None:
        settings = request.app.state.registry.settings
        limiter = request.app.state.oauth_limiter = RateLimiter(
            settings.nonce_rate_limit, settings.nonce_rate_window
        )
    return limiter


@router.post(rules.REGISTER_PATH)
async def register(request: Request, state: State) -> Response:
    """RFC 7591 3: every registration is a row, so they are rate-limited per client address."""
    wait = _limiter(request).hit(request.client.host if request.client else "", time.monotonic())
    if wait:
        return JSONResponse(
            {"error": "slow_down", "error_description": "too many registrations from this address"},
            status_code=429,
            headers={"Retry-After": str(max(1, round(wait))), **CORS},
        )
    if "application/json" not in request.headers.get("content-type", ""):
        return _error(OAuthError("invalid_client_metadata", "send the registration as application/json"))
    raw = await request.body()
    if len(raw) > MAX_FORM:
        return _error(OAuthError("invalid_client_metadata", f"the registration is over {MAX_FORM} bytes"))
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(OAuthError("invalid_client_metadata", "the registration is not JSON"))
    try:
        with state.db.session() as session:
            client = service.register_client(session, body, utcnow())
    except OAuthError as e:
        return _error(e)
    return JSONResponse(client.registration(), status_code=201, headers=NO_STORE)


async def _form(request: Request) -> dict[str, str]:
    """The token request's form (RFC 6749 3.2: urlencoded, each parameter at most once)."""
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        raise OAuthError("invalid_request", "send the token request as application/x-www-form-urlencoded")
    raw = await request.body()
    if len(raw) > MAX_FORM:
        raise OAuthError("invalid_request", f"the token request is over {MAX_FORM} bytes")
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the token request is not a urlencoded form") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise OAuthError("invalid_request", f"{key} is given more than once")
        form[key] = value
    return form


@router.post(rules.TOKEN_PATH)
async def token(request: Request, state: State) -> Response:
    try:
        form = await _form(request)
        if "client_secret" in form or request.headers.get("authorization"):
            raise OAuthError("invalid_client", "clients here are public: send client_id, no secret", 401)
        client_id = _required(form, "client_id")
        grant_type = form.get("grant_type")
        documents = client_documents(request)
        with state.db.session() as session:
            client = service.find_client(session, client_id, documents)
            if client is None:
                raise OAuthError("invalid_client", f"no client {client_id!r}: register first", 401)
            if grant_type == "authorization_code":
                grant = service.exchange_code(
                    session,
                    client,
                    code=_required(form, "code"),
                    redirect_uri=form.get("redirect_uri"),
                    verifier=form.get("code_verifier"),
                    resource=form.get("resource"),
                    now=utcnow(),
                )
            elif grant_type == "refresh_token":
                grant = service.refresh(
                    session,
                    client,
                    refresh_token=_required(form, "refresh_token"),
                    scope=form.get("scope"),
                    resource=form.get("resource"),
                    now=utcnow(),
                )
            else:
                raise OAuthError(
                    "unsupported_grant_type", "grant_type must be authorization_code or refresh_token"
                )
    except OAuthError as e:
        return _error(e)
    if isinstance(grant, OAuthError):  # a replay: its revocation is committed
        return _error(grant)
    return JSONResponse(grant.to_dict(), headers=NO_STORE)


def _required(form: dict[str, str], name: str) -> str:
    """A form field the request must carry, not empty."""
    value = form.get(name)
    if not value:
        raise OAuthError("invalid_request", f"{name} is required")
    return value
