"""The web pages' HTTP plumbing: who is signed in (the session cookie), rendering a template with
the security headers, the HTML error page, and reading what a form or the sign-in script posted,
with its origin and CSRF token checked."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from mcpz import __version__
from mcpz.errors import AuthError, McpzError, NotFoundError, UsageError
from registry_server.http import state_of
from registry_server.rate_limit import RateLimited
from registry_server.settings import public_url
from registry_server.web import service
from registry_server.web.service import CsrfRefused, WebUser
from registry_server.web.templating import environment

COOKIE = "mcpz_session"
SECURE_COOKIE = "__Host-mcpz_session"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

T = TypeVar("T")


class SignInNeeded(AuthError):
    """A page that needs a session, asked for without one: a redirect to the sign-in page."""


def is_secure(request: Request) -> bool:
    return public_url(state_of(request).settings).startswith("https://") or request.url.scheme == "https"


def cookie_name(request: Request) -> str:
    return SECURE_COOKIE if is_secure(request) else COOKIE


def session_secret(request: Request) -> str | None:
    return request.cookies.get(cookie_name(request))


def current_user(request: Request) -> WebUser | None:
    state = state_of(request)
    with state.db.session() as session:
        return service.current_user(session, session_secret(request))


def signed_in(request: Request) -> WebUser:
    user = current_user(request)
    if user is None:
        raise SignInNeeded("sign in to see this page")
    return user


def render(
    request: Request, template: str, *, user: WebUser | None, status: int = 200, **context: Any
) -> HTMLResponse:
    context.setdefault("flash", None)
    context.setdefault("active", "")
    context.setdefault("query", "")
    body = environment().get_template(template).render(user=user, version=__version__, **context)
    response = HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)
    if user is not None:
        # A signed-in page holds the account's data and its CSRF token: no shared cache keeps it.
        response.headers["Cache-Control"] = "private, no-store"
    return response


def error_page(request: Request, user: WebUser | None, error: McpzError) -> Response:
    if isinstance(error, SignInNeeded):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/sign-in?next={quote(target, safe='')}", status_code=303)
    status, title = 500, "Something went wrong"
    if isinstance(error, CsrfRefused):
        status, title = 403, "Form expired"
    elif isinstance(error, RateLimited):
        status, title = 429, "Slow down"
    elif isinstance(error, AuthError):
        status, title = 403, "Not allowed"
    elif isinstance(error, NotFoundError):
        status, title = 404, "Not found"
    elif isinstance(error, UsageError):
        status, title = 400, "That did not work"
    return render(
        request, "error.html", user=user, status=status, title=title, message=error.message, hint=error.hint
    )


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await run_in_threadpool(partial(function, *args, **kwargs))


def same_origin(request: Request) -> bool:
    """A POST from this registry's own pages: no Origin header (old browsers, curl) or our own."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    ours = {urlsplit(public_url(state_of(request).settings))[:2], (request.url.scheme, request.url.netloc)}
    return urlsplit(origin)[:2] in ours


async def posted_form(request: Request, user: WebUser) -> FormData:
    """The posted form of a signed-in page, once its origin and CSRF token are checked."""
    if not same_origin(request):
        raise CsrfRefused("this form was posted from another site", hint="use the registry's own pages")
    form = await request.form(max_files=0, max_fields=50)
    token = form.get("csrf")
    user.check_csrf(token if isinstance(token, str) else None)
    return form


def local_path(target: str | None, default: str) -> str:
    """A redirect target only within this site: a path, never `//host` or `https://...`."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def form_text(form: FormData, key: str, limit: int) -> str:
    value = form.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UsageError(f"{key} must be text")
    if len(value) > limit:
        raise UsageError(f"{key} is longer than {limit} characters")
    return value.strip()


async def json_body(request: Request) -> dict[str, Any]:
    if not same_origin(request):
        raise CsrfRefused("sign-in was posted from another site", hint="sign in on the registry's own page")
    if "application/json" not in request.headers.get("content-type", ""):
        raise UsageError("send the sign-in as JSON (Content-Type: application/json)")
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise UsageError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object")
    return body


def json_field(body: dict[str, Any], key: str, limit: int) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise UsageError(f"{key} must be a non-empty string of at most {limit} characters")
    return value
