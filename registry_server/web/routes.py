"""The web pages: HTTP only. Each route reads the request, calls a service, renders a template.

    GET  /                               home: search box, popular, new, tags
    GET  /search                         results, with filters (kind, tag, free, rating) and sorts
    GET  /agents/{ns}/{name}             an agent's listing
    POST /agents/{ns}/{name}/reviews     write (or replace) one's review           signed in, CSRF
    GET  /creators/{ns}                  a namespace: its verified wallet and its agents
    GET  /sign-in                        the wallet sign-in page
    POST /sign-in/message                {address} -> the EIP-4361 message to sign  JSON
    POST /sign-in                        {message, signature, next} -> session cookie  JSON
    POST /sign-out                                                                  signed in, CSRF
    GET  /dashboard                      one's agents: calls, errors, latency      signed in
    GET  /keys   POST /keys              API keys: list, create                    signed in, CSRF
    POST /keys/{id}/revoke                                                          signed in, CSRF
    GET  /billing/invoices               one's invoices and credit notes           signed in
    GET  /billing/invoices/{n|draft}     one invoice, printable; others' are 404   signed in
    GET  /static/{file}                  hashed names: a year's cache; plain names: ETag

None of these is in the OpenAPI document: they answer HTML (the JSON of the market is /v1/market).
Every POST also checks that an Origin header, when sent, is this registry's.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from markupsafe import Markup

import mcpz.keys.siwe as siwe
from mcpz.errors import AuthError, McpzError, NotFoundError, UsageError
from mcpz.money import format_amount
from registry_server.accounts import namespaces, tokens
from registry_server.accounts import service as accounts
from registry_server.billing import invoices
from registry_server.gateway.asgi import GATEWAY_PREFIX
from registry_server.http import agent_name, error_response, state_of
from registry_server.market import reviews, search
from registry_server.rate_limit import RateLimited, RateLimiter
from registry_server.settings import public_url
from registry_server.state import RegistryState
from registry_server.web import assets, service, views
from registry_server.web.http import (
    SignInNeeded,
    cookie_name,
    current_user,
    error_page,
    form_text,
    in_thread,
    is_secure,
    json_body,
    json_field,
    local_path,
    posted_form,
    render,
    session_secret,
    signed_in,
)
from registry_server.web.service import WebUser

router = APIRouter(include_in_schema=False)

KEY_SCOPES = ("read", "publish", "deploy", "call", "admin")
"""The scopes a key made in the browser may have: a wallet session's own (so no `node`)."""
REVIEWS_PER_HOUR = 20
KEY_EXPIRIES = {"30d": 30, "90d": 90, "365d": 365, "never": 0}

# ---------------------------------------------------------------------------------- assets


@router.get("/static/{filename}")
def static_file(filename: str, request: Request) -> Response:
    found = assets.lookup(filename)
    if found is None:
        return error_response(404, f"no static file {filename!r}")
    asset, cache_control = found
    headers = {"Cache-Control": cache_control, "ETag": asset.etag, "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


# --------------------------------------------------------------------------------- sign-in


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None) -> Response:
    user = current_user(request)
    target = local_path(next, "/dashboard")
    if user is not None:
        return RedirectResponse(target, status_code=303)
    domain = urlsplit(public_url(state_of(request).settings)).netloc
    return render(
        request, "sign_in.html", user=None, title="Sign in", active="sign-in", domain=domain, next=target
    )


@router.post("/sign-in/message")
async def sign_in_message(request: Request) -> Response:
    """The EIP-4361 message for the wallet to sign: rate-limited per client, like /v1/auth/nonce."""
    try:
        body = await json_body(request)
        address = json_field(body, "address", 42)
        if not namespaces.is_address(address):
            raise UsageError(f"{address!r} is not an Ethereum address (0x followed by 40 hex digits)")
    except McpzError as e:
        return error_response(403 if isinstance(e, AuthError) else 400, e.message, e.hint)
    limiter = request.app.state.nonce_limiter

    wait = limiter.hit(request.client.host if request.client else "", time.monotonic())
    if wait:
        return error_response(
            429, "too many sign-in attempts from this address", f"try again in {wait:.0f} s"
        )
    state = state_of(request)
    text = await in_thread(_new_message, state, address)
    return JSONResponse({"message": text}, headers={"Cache-Control": "no-store"})


def _new_message(state: RegistryState, address: str) -> str:
    with state.db.session() as session:
        return service.sign_in_message(
            session, public_url(state.settings), state.settings.chain_id, namespaces.checksum(address)
        )


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    """A signed sign-in message -> a session cookie; the JSON names the page to go to next."""
    try:
        body = await json_body(request)
        message = json_field(body, "message", siwe.MAX_MESSAGE_CHARS)
        signature = json_field(body, "signature", 4096)
        target = local_path(body.get("next") if isinstance(body.get("next"), str) else None, "/dashboard")
    except McpzError as e:
        return error_response(403 if isinstance(e, AuthError) else 400, e.message, e.hint)
    state = state_of(request)
    try:
        secret, account = await in_thread(_verify_and_start, state, message, signature)
    except siwe.SiweError as e:
        return error_response(401, e.message, e.hint, code=e.code)
    response = JSONResponse({"account": account, "next": target}, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        cookie_name(request),
        secret,
        max_age=int(service.SESSION_LIFETIME.total_seconds()),
        path="/",
        secure=is_secure(request),
        httponly=True,
        samesite="lax",
    )
    return response


def _verify_and_start(state: RegistryState, message: str, signature: str) -> tuple[str, str]:
    with state.db.session() as session:
        account = service.verify_sign_in(
            session, public_url(state.settings), state.settings.chain_id, message, signature
        )
        address = account.address or ""
        return service.start_session(session, account, address), account.name


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    user = await in_thread(current_user, request)
    if user is None:
        return RedirectResponse("/", status_code=303)
    try:
        await posted_form(request, user)
    except McpzError as e:
        return error_page(request, user, e)
    state = state_of(request)
    await in_thread(_end, state, session_secret(request))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(
        cookie_name(request), path="/", secure=is_secure(request), httponly=True, samesite="lax"
    )
    return response


def _end(state: RegistryState, secret: str | None) -> None:
    with state.db.session() as session:
        service.end_session(session, secret)


# ---------------------------------------------------------------------------- API keys


@router.get("/keys")
def keys_page(request: Request) -> Response:
    user = current_user(request)
    try:
        user = signed_in(request) if user is None else user
    except McpzError as e:
        return error_page(request, None, e)
    return _keys(request, user)


def _keys(
    request: Request,
    user: WebUser,
    *,
    created: str | None = None,
    flash: str | None = None,
    status: int = 200,
) -> Response:
    state = state_of(request)
    with state.db.session() as session:
        keys = accounts.list_tokens(session, user.account_id)
    response = render(
        request,
        "keys.html",
        user=user,
        status=status,
        title="API keys",
        active="keys",
        keys=list(reversed(keys)),
        scopes=KEY_SCOPES,
        expiries=list(KEY_EXPIRIES),
        default_expiry=_default_expiry(state.settings.default_token_days),
        created=created,
        flash=flash,
    )
    return response


def _default_expiry(days: int) -> str:
    for label, value in KEY_EXPIRIES.items():
        if value == days:
            return label
    return "90d"


@router.post("/keys")
async def create_key(request: Request) -> Response:
    user = await in_thread(current_user, request)
    try:
        if user is None:
            raise SignInNeeded("sign in to manage API keys")
        form = await posted_form(request, user)
        name = form_text(form, "name", 128)
        chosen = [s for s in form.getlist("scope") if isinstance(s, str)]
        beyond = set(chosen) - set(KEY_SCOPES)
        if beyond:
            raise UsageError(f"a key made here cannot have the scope {', '.join(sorted(beyond))}")
        try:
            scopes = tokens.parse_scopes(chosen)
        except ValueError as e:
            raise UsageError(str(e), hint="tick at least one scope") from None
        expiry = form_text(form, "expires", 8) or "90d"
        if expiry not in KEY_EXPIRIES:
            raise UsageError(f"unknown expiry {expiry!r}", hint=f"one of {', '.join(KEY_EXPIRIES)}")
        secret = await in_thread(_create_key, state_of(request), user, name, scopes, KEY_EXPIRIES[expiry])
    except McpzError as e:
        return error_page(request, user, e)
    return await in_thread(_keys, request, user, created=secret)


def _create_key(state: RegistryState, user: WebUser, name: str, scopes: tuple[str, ...], days: int) -> str:
    with state.db.session() as session:
        account = accounts.account_by_name(session, user.account_name)
        _row, secret = accounts.create_token(
            session, account, scopes, expires_in=timedelta(days=days) if days else None, name=name
        )
        return secret


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: int, request: Request) -> Response:
    user = await in_thread(current_user, request)
    try:
        if user is None:
            raise SignInNeeded("sign in to manage API keys")
        await posted_form(request, user)
        prefix = await in_thread(_revoke, state_of(request), user, key_id)
    except McpzError as e:
        return error_page(request, user, e)
    return await in_thread(_keys, request, user, flash=f"Key {prefix}… is revoked.")


def _revoke(state: RegistryState, user: WebUser, key_id: int) -> str:
    with state.db.session() as session:
        return accounts.revoke_token(session, user.account_id, key_id).prefix


# ---------------------------------------------------------------------------- dashboard


@router.get("/dashboard")
def dashboard_page(request: Request) -> Response:
    user = current_user(request)
    if user is None:
        return error_page(request, None, SignInNeeded("sign in to see your dashboard"))
    state = state_of(request)
    settlement = getattr(request.app.state, "settlement", None)
    with state.db.session() as session:
        agents = service.dashboard(session, user.account_id, now_us=time.time_ns() // 1000)
        owned = namespaces.owned_namespaces(session, user.account_id)
        money = service.money_of(session, user.account_id)
        payouts = (
            service.payouts_of(session, settlement.chain.chain_id, user.account_id) if settlement else []
        )
    settings = state.settings
    return render(
        request,
        "dashboard.html",
        user=user,
        title="Dashboard",
        active="dashboard",
        agents=agents,
        namespaces=owned,
        money=money,
        payouts=payouts,
        chain=(
            {"id": hex(settlement.chain.chain_id), "contract": settlement.chain.address}
            if settlement
            else None
        ),
        amount=lambda units: format_amount(units, decimals=settings.currency_decimals),
        currency=settings.currency,
    )


# --------------------------------------------------------------------------- market pages


@router.get("/")
def home(request: Request) -> Response:
    user = current_user(request)
    with state_of(request).db.session() as session:
        page = service.home_page(session)
    return render(
        request,
        "home.html",
        user=user,
        title="Agents",
        popular=page.popular,
        newest=page.newest,
        tags=page.tags,
    )


def _number(value: str | None, what: str) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{what} must be a number, not {value[:20]!r}") from None


@router.get("/search")
def search_page(
    request: Request,
    q: str = "",
    kind: str = "",
    tag: str = "",
    price: str = "",
    min_rating: str = "",
    sort: str = "relevance",
    page: str = "1",
) -> Response:
    user = current_user(request)
    per_page = 20
    form: dict[str, Any] = {"kind": kind or None, "tag": tag or None, "price": price, "sort": sort}
    form["min_rating"] = None
    result = None
    error = None
    status = 200
    number = 1
    try:
        rating = _number(min_rating, "the minimum rating")
        form["min_rating"] = rating
        if price not in ("", "free", "paid"):
            raise UsageError(f"unknown price filter {price[:20]!r}", hint="free or paid")
        number = int(page) if page.isdigit() and len(page) < 6 else 0
        if not 1 <= number <= search.MAX_OFFSET // per_page:
            raise UsageError("no such page of results")
        query = search.SearchQuery(
            text=q,
            kind=kind or None,
            tag=tag.strip().lower() or None,
            free={"free": True, "paid": False}.get(price),
            min_rating=rating,
            sort=sort,
            limit=per_page,
            offset=(number - 1) * per_page,
        )
        with state_of(request).db.session() as session:
            result = search.search(session, query)
    except UsageError as e:
        error, status = e.message + (f" ({e.hint})" if e.hint else ""), 400

    def page_url(number: int) -> str:
        params = {"q": q, "kind": kind, "tag": tag, "price": price, "min_rating": min_rating, "sort": sort}
        kept = {k: v for k, v in params.items() if v and not (k == "sort" and v == "relevance")}
        return "/search?" + urlencode({**kept, **({"page": number} if number > 1 else {})})

    return render(
        request,
        "search.html",
        user=user,
        status=status,
        title=f"Search: {q}" if q else "Search",
        query=q,
        asked=q,
        form=form,
        kinds=search.KINDS,
        sorts=search.SORTS,
        result=result,
        error=error,
        prev_url=page_url(number - 1) if result is not None and number > 1 else None,
        next_url=page_url(number + 1) if result is not None and result.more else None,
    )


@router.get("/agents/{namespace}/{name}")
def agent_page(namespace: str, name: str, request: Request, reviewed: str = "") -> Response:
    user = current_user(request)
    state = state_of(request)
    try:
        full = agent_name(namespace, name)
        with state.db.session() as session:
            page = service.agent_page(
                session,
                state.repos,
                full,
                user.account_id if user else None,
                cache=_page_cache(request),
                decimals=state.settings.currency_decimals,
                currency=state.settings.currency,
            )
    except McpzError as e:
        return error_page(request, user, e)
    return _agent(request, user, page, flash="Your review is posted." if reviewed == "1" else None)


def _agent(
    request: Request,
    user: WebUser | None,
    page: service.AgentPage,
    *,
    flash: str | None = None,
    status: int = 200,
) -> Response:
    info = page.info
    name = info.summary.name
    base = public_url(state_of(request).settings)
    gateway = f"{base}{GATEWAY_PREFIX}{name}"
    tools_note = None
    latest = next((v for v in info.versions if v.version == info.summary.version), None)
    if latest is not None and latest.tools is not None and latest.tools_observed:
        tools_note = "These definitions were observed from a running replica, not signed by the publisher."
    return render(
        request,
        "agent.html",
        user=user,
        status=status,
        title=name,
        flash=flash,
        info=info,
        readme=Markup(info.readme_html),  # sanitised by market.readme when the listing was built
        reviews=page.reviews,
        pricing=page.pricing,
        pricing_pending=page.pricing_pending,
        mine=page.mine,
        review_blocked=page.review_blocked,
        chart=views.calls_chart(page.calls_per_day, title=f"Calls per day to {name}, last 30 days"),
        call_snippet=views.call_snippet(name, info.latest_tools[0] if info.latest_tools else None),
        gateway_url=gateway,
        vscode=views.vscode_config(name, gateway),
        claude=views.claude_desktop_config(name, gateway),
        tools_note=tools_note,
    )


@router.post("/agents/{namespace}/{name}/reviews")
async def post_review(namespace: str, name: str, request: Request) -> Response:
    user = await in_thread(current_user, request)
    try:
        full = agent_name(namespace, name)
        if user is None:
            raise SignInNeeded("sign in to review an agent")
        form = await posted_form(request, user)
        stars_text = form_text(form, "stars", 1)
        if stars_text not in ("1", "2", "3", "4", "5"):
            raise UsageError("choose 1 to 5 stars")
        text = form_text(form, "text", reviews.MAX_TEXT)
        limiter = _review_limiter(request)
        wait = limiter.hit(str(user.account_id), time.monotonic())
        if wait:
            raise RateLimited("too many reviews from this account", wait)
        await in_thread(_write_review, state_of(request), full, user, int(stars_text), text)
    except McpzError as e:
        return error_page(request, user, e)
    return RedirectResponse(f"/agents/{full}?reviewed=1#reviews", status_code=303)


def _page_cache(request: Request) -> service.PageCache:
    cache: service.PageCache | None = getattr(request.app.state, "web_page_cache", None)
    if cache is None:
        cache = request.app.state.web_page_cache = service.PageCache()
    return cache


def _review_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter | None = getattr(request.app.state, "web_review_limiter", None)
    if limiter is None:
        limiter = request.app.state.web_review_limiter = RateLimiter(REVIEWS_PER_HOUR, 3600.0)
    return limiter


def _write_review(state: RegistryState, name: str, user: WebUser, stars: int, text: str) -> None:
    with state.db.session() as session:
        reviews.write_review(session, name, user.account_id, stars, text)


@router.get("/creators/{namespace}")
def creator_page(namespace: str, request: Request) -> Response:
    user = current_user(request)
    try:
        with state_of(request).db.session() as session:
            page = service.creator_page(session, namespace)
    except McpzError as e:
        return error_page(request, user, e)
    return render(
        request,
        "creator.html",
        user=user,
        title=page.namespace,
        namespace=page.namespace,
        owner=page.owner,
        address=page.address,
        agents=page.agents,
    )


# ---------------------------------------------------------------------- invoices (printable)


@router.get("/billing/invoices")
def invoices_page(request: Request) -> Response:
    user = current_user(request)
    if user is None:
        return error_page(request, None, SignInNeeded("sign in to see your invoices"))
    state = state_of(request)
    with state.db.session() as session:
        found = invoices.invoices_of(session, user.account_id)
        draft = invoices.draft(session, user.account_id)
    return render(
        request,
        "invoices.html",
        user=user,
        title="Invoices",
        active="invoices",
        invoices=found,
        draft=draft,
        amount=_amount(state),
    )


@router.get("/billing/invoices/{number}")
def invoice_page(request: Request, number: str) -> Response:
    """One invoice, credit note or the draft, laid out to print; another account's is not found."""
    user = current_user(request)
    if user is None:
        return error_page(request, None, SignInNeeded("sign in to see your invoices"))
    state = state_of(request)
    try:
        with state.db.session() as session:
            if number == "draft":
                found = invoices.draft(session, user.account_id)
            elif number.isdigit() and len(number) <= 12:
                found = invoices.invoice_by_number(session, user.account_id, int(number))
            else:
                raise NotFoundError(f"no invoice {number[:40]}")
    except McpzError as e:
        return error_page(request, user, e)
    title = {"draft": "Draft invoice", "credit-note": "Credit note"}.get(found.kind, "Invoice")
    return render(
        request,
        "invoice.html",
        user=user,
        title=f"{title} {found.number}" if found.number is not None else title,
        active="invoices",
        invoice=found,
        heading=title,
        amount=_amount(state),
        registry=public_url(state.settings),
        issued=_day(found.finalized_us),
    )


def _amount(state: RegistryState) -> Any:
    settings = state.settings
    return lambda units: format_amount(units, decimals=settings.currency_decimals, currency=settings.currency)


def _day(us: int | None) -> str:
    from datetime import UTC, datetime

    return "" if us is None else datetime.fromtimestamp(us // 1_000_000, UTC).strftime("%Y-%m-%d")
