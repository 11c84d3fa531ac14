"""The authorization server's page for people: an MCP client sends its user here to grant it access.

    GET  /oauth/authorize     the request checked, the wallet sign-in if needed, then the consent page
    POST /oauth/authorize     allow or deny (signed in, CSRF) -> 303 to the client's redirect URI

Sign-in is the marketplace's (EIP-4361 with the wallet in the browser, /sign-in), which comes back
here through `next`. A request with an unknown client or redirect URI is answered with an error
page, never redirected (RFC 6749 4.1.2.1); other errors go to the redirect URI as `error=...`, with
`state` and `iss` (RFC 9207), like the code.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from mcpz.errors import McpzError, UsageError
from registry_server.http import state_of
from registry_server.oauth import rules, service
from registry_server.oauth.documents import ClientDocuments
from registry_server.oauth.http import client_documents
from registry_server.oauth.rules import AuthorizationRequest, NoRedirect, OAuthError
from registry_server.orm import utcnow
from registry_server.settings import public_url
from registry_server.state import RegistryState
from registry_server.web.http import (
    SECURITY_HEADERS,
    current_user,
    error_page,
    in_thread,
    posted_form,
    render,
)
from registry_server.web.service import WebUser

router = APIRouter(include_in_schema=False)

FIELDS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
    "resource",
)


def _check(
    state: RegistryState, documents: ClientDocuments, params: dict[str, str]
) -> tuple[AuthorizationRequest, service.Client]:
    try:
        with state.db.session() as session:
            client = service.find_client(session, params.get("client_id"), documents)
    except OAuthError as e:  # a metadata document that cannot be used: its redirect URIs neither
        raise NoRedirect(e.error, e.description) from None
    checked = rules.authorization_request(
        params, client.redirect_uris if client else None, public_url(state.settings)
    )
    assert client is not None  # authorization_request refuses an unknown one
    return checked, client


def _refused(request: Request, e: OAuthError) -> Response:
    """400, shown to the person: the client cannot be trusted with the answer."""
    return error_page(
        request,
        None,
        UsageError(
            f"this authorization request cannot go on: {e.description}", hint="tell the client's maker"
        ),
    )


def _redirect_error(state: RegistryState, params: dict[str, str], e: OAuthError) -> Response:
    target = rules.redirect_to(
        params["redirect_uri"],
        {
            "error": e.error,
            "error_description": e.description,
            "state": params.get("state"),
            "iss": public_url(state.settings),
        },
    )
    return RedirectResponse(target, status_code=303)


@router.get(rules.AUTHORIZE_PATH)
def authorize_page(request: Request) -> Response:
    state = state_of(request)
    params = {k: v for k, v in request.query_params.items() if k in FIELDS}
    try:
        checked, client = _check(state, client_documents(request), params)
    except NoRedirect as e:
        return _refused(request, e)
    except OAuthError as e:
        return _redirect_error(state, params, e)
    user = current_user(request)
    if user is None:
        target = request.url.path + "?" + request.url.query
        return RedirectResponse(f"/sign-in?next={quote(target, safe='')}", status_code=303)
    return _consent(request, user, checked, client)


def _consent(
    request: Request, user: WebUser, checked: AuthorizationRequest, client: service.Client
) -> Response:
    response = render(
        request,
        "authorize.html",
        user=user,
        title="Allow access",
        client=client,
        redirect_host=rules.origin_of(checked.redirect_uri),
        resource=checked.resource,
        scopes=checked.scopes,
        fields=checked.fields(),
    )
    # The form's answer is a redirect to the client: the page's form-action must allow its origin,
    # or the browser blocks the redirect (CSP 3 checks form-action along redirects).
    policy = SECURITY_HEADERS["Content-Security-Policy"].replace(
        "form-action 'self'", f"form-action 'self' {rules.origin_of(checked.redirect_uri)}"
    )
    response.headers["Content-Security-Policy"] = policy
    return response


@router.post(rules.AUTHORIZE_PATH)
async def authorize(request: Request) -> Response:
    user = await in_thread(current_user, request)
    state = state_of(request)
    try:
        if user is None:
            raise UsageError("your sign-in ended", hint="go back to the MCP client and connect again")
        form = await posted_form(request, user)
    except McpzError as e:
        return error_page(request, user, e)
    params = {k: v for k, v in form.items() if k in FIELDS and isinstance(v, str)}
    try:
        checked, client = await in_thread(_check, state, client_documents(request), params)
    except NoRedirect as e:
        return _refused(request, e)
    except OAuthError as e:
        return _redirect_error(state, params, e)
    if form.get("decision") != "allow":
        return _redirect_error(state, params, OAuthError("access_denied", "the person denied access"))
    code = await in_thread(_issue, state, user, checked, client)
    target = rules.redirect_to(
        checked.redirect_uri, {"code": code, "state": checked.state, "iss": public_url(state.settings)}
    )
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


def _issue(state: RegistryState, user: WebUser, checked: AuthorizationRequest, client: service.Client) -> str:
    with state.db.session() as session:
        return service.issue_code(
            session,
            client,
            account_id=user.account_id,
            redirect_uri=checked.redirect_uri,
            challenge=checked.challenge,
            scopes=checked.scopes,
            resource=checked.resource,
            now=utcnow(),
        )
