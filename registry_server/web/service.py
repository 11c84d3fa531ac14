"""Wallet sign-in for browsers and the sessions it opens.

Sign-in is EIP-4361, checked by `mcpz.keys.siwe.verify` exactly as `POST /v1/auth/login` checks the
CLI's: the registry writes the message (its own domain, the sign-in page's URI, the chain id, a
single-use nonce from the accounts' nonce table), the browser's wallet signs it, the registry
verifies it and opens a session. A session is a random secret in an HttpOnly cookie; the database
keeps only its sha256, the account, and the session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import case, delete, distinct, func, select
from sqlalchemy.orm import Session

import mcpz.keys.siwe as siwe
from mcpz.errors import AuthError
from registry_server.accounts import namespaces
from registry_server.accounts.models import Account, AuthNonce, Namespace, NamespaceMember
from registry_server.accounts.service import owns_namespace
from registry_server.billing import pricing
from registry_server.billing import service as billing
from registry_server.market import reviews, search
from registry_server.market import service as market
from registry_server.market.changelog import Changelog
from registry_server.market.models import Review
from registry_server.market.reviews import ReviewView
from registry_server.market.service import ListingInfo, ListingSummary
from registry_server.orm import utcnow
from registry_server.releases.models import Agent, Release
from registry_server.settlement import payouts
from registry_server.settlement.batches import BatchState
from registry_server.storage import RepoStore
from registry_server.usage.events import Outcome
from registry_server.usage.models import UsageEventRow
from registry_server.web import views
from registry_server.web.cache import TtlCache
from registry_server.web.models import WebSession

SESSION_LIFETIME = timedelta(days=7)
NONCE_LIFETIME = timedelta(minutes=5)
MESSAGE_MAX_AGE = timedelta(minutes=10)
SIGN_IN_PATH = "/sign-in"
STATEMENT = "Sign in to the mcpz registry in this browser."


class CsrfRefused(AuthError):
    """A form whose CSRF token does not match the session's: HTTP 403."""


@dataclass(frozen=True)
class WebUser:
    """The account a browser session belongs to."""

    account_id: int
    account_name: str
    address: str
    csrf: str
    expires_at: datetime

    def check_csrf(self, token: str | None) -> None:
        if not token or not hmac.compare_digest(token.encode(), self.csrf.encode()):
            raise CsrfRefused(
                "the form's security token does not match this session",
                hint="reload the page and submit the form again",
            )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def sign_in_uri(public_url: str) -> str:
    return public_url + SIGN_IN_PATH


def sign_in_message(session: Session, public_url: str, chain_id: int, address: str) -> str:
    """The EIP-4361 text the wallet at `address` signs to sign in; its nonce only that address may use."""
    address = namespaces.checksum(address)
    moment = utcnow()
    nonce = siwe.generate_nonce()
    session.execute(delete(AuthNonce).where(AuthNonce.expires_at <= moment))
    session.add(
        AuthNonce(nonce=nonce, address=address, created_at=moment, expires_at=moment + NONCE_LIFETIME)
    )
    parts = urlsplit(public_url)
    message = siwe.SiweMessage.create(
        scheme=parts.scheme,
        domain=parts.netloc,
        address=address,
        statement=STATEMENT,
        uri=sign_in_uri(public_url),
        chain_id=chain_id,
        nonce=nonce,
        issued_at=moment,
        expiration_time=moment + NONCE_LIFETIME,
    )
    return message.to_text()


def verify_sign_in(session: Session, public_url: str, chain_id: int, message: str, signature: str) -> Account:
    """The account of the wallet that signed `message`; a `siwe.SiweError` saying why not.

    The nonce is consumed only when every other check has passed (a bad signature burns nothing);
    the first sign-in of a wallet creates its account, as the CLI's does.
    """
    moment = utcnow()
    try:
        expected = session.get(AuthNonce, siwe.SiweMessage.parse(message).nonce)
    except siwe.SiweError:
        expected = None  # verify refuses it, with the reason

    def consume(nonce: str) -> bool:
        result = session.execute(
            delete(AuthNonce).where(AuthNonce.nonce == nonce, AuthNonce.expires_at > moment)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    address = siwe.verify(
        message,
        signature,
        expected_domain=public_url,
        expected_uri=sign_in_uri(public_url),
        expected_chain_id=chain_id,
        now=moment,
        nonce=consume,
        max_age=MESSAGE_MAX_AGE,
        expected_address=expected.address if expected is not None else None,
    )
    return namespaces.account_for_address(session, address)


def start_session(session: Session, account: Account, address: str) -> str:
    """A new browser session for `account`; returns the cookie's secret, never stored."""
    moment = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at <= moment))
    secret = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            id_hash=hash_secret(secret),
            account_id=account.id,
            address=address,
            csrf=secrets.token_urlsafe(32),
            created_at=moment,
            expires_at=moment + SESSION_LIFETIME,
        )
    )
    session.flush()
    return secret


def current_user(session: Session, secret: str | None) -> WebUser | None:
    """The signed-in account of a cookie's secret; None for no cookie, an unknown or an expired one."""
    if not secret or len(secret) > 128:
        return None
    row = session.get(WebSession, hash_secret(secret))
    if row is None or row.expires_at <= utcnow():
        return None
    account = session.get(Account, row.account_id)
    if account is None:
        return None
    return WebUser(
        account_id=account.id,
        account_name=account.name,
        address=row.address,
        csrf=row.csrf,
        expires_at=row.expires_at,
    )


def end_session(session: Session, secret: str | None) -> None:
    if secret and len(secret) <= 128:
        session.execute(delete(WebSession).where(WebSession.id_hash == hash_secret(secret)))


# ------------------------------------------------------------------------------- dashboard


@dataclass(frozen=True)
class AgentFigures:
    """One agent of the signed-in account, with its calls over the window (every caller's)."""

    name: str
    latest_version: str | None
    calls: int
    errors: int
    callers: int
    mean_ms: float | None
    max_ms: float | None
    earnings: int = 0  # base units: this account's part of the agent's charges, same period

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


def dashboard(session: Session, account_id: int, *, now_us: int, days: int = 30) -> list[AgentFigures]:
    """Every agent in the namespaces the account owns or is a member of, by name, with its figures."""
    mine = (
        select(Namespace.name)
        .where(Namespace.owner_id == account_id)
        .union(select(NamespaceMember.namespace).where(NamespaceMember.account_id == account_id))
    )
    agents = session.execute(
        select(Agent.id, Agent.name).where(Agent.namespace.in_(mine)).order_by(Agent.name)
    ).all()
    if not agents:
        return []
    names = [name for _id, name in agents]
    since = now_us - days * 86_400_000_000
    figures = {
        row.agent: row
        for row in session.execute(
            select(
                UsageEventRow.agent,
                func.count().label("calls"),
                func.sum(case((UsageEventRow.outcome == Outcome.OK, 0), else_=1)).label("errors"),
                func.count(distinct(UsageEventRow.account_id)).label("callers"),
                func.avg(UsageEventRow.duration_us).label("mean_us"),
                func.max(UsageEventRow.duration_us).label("max_us"),
            )
            .where(UsageEventRow.agent.in_(names), UsageEventRow.started_us >= since)
            .group_by(UsageEventRow.agent)
        )
    }
    latest: dict[int, str] = {}
    for agent_id, version in session.execute(
        select(Release.agent_id, Release.version)
        .where(Release.agent_id.in_([agent_id for agent_id, _ in agents]), Release.yanked.is_(False))
        .order_by(Release.id)
    ):
        latest[agent_id] = version  # the newest published, by order of publication
    earned = billing.earnings_by_agent(session, account_id, since)
    out = []
    for agent_id, name in agents:
        row = figures.get(name)
        out.append(
            AgentFigures(
                name=name,
                latest_version=latest.get(agent_id),
                calls=int(row.calls) if row else 0,
                errors=int(row.errors or 0) if row else 0,
                callers=int(row.callers) if row else 0,
                mean_ms=float(row.mean_us) / 1000 if row and row.mean_us is not None else None,
                max_ms=float(row.max_us) / 1000 if row and row.max_us is not None else None,
                earnings=earned.get(name, 0),
            )
        )
    return out


def money_of(session: Session, account_id: int) -> billing.Balance:
    """The balance and earnings the dashboard shows."""
    return billing.balance_of(session, account_id)


@dataclass(frozen=True)
class PayoutRow:
    """A payout on the dashboard; `calldata` (claimable ones only) is what the claim button sends."""

    batch_id: int
    amount: int
    state: str
    address: str
    tx_hash: str | None
    calldata: str | None


def payouts_of(session: Session, chain_id: int, account_id: int) -> list[PayoutRow]:
    out = []
    for p in payouts.payouts_of(session, chain_id, account_id, limit=20):
        claimable = p.state in (BatchState.CONFIRMED.value, BatchState.FINAL.value)
        calldata = payouts.claim_calldata(p) if claimable else None
        out.append(PayoutRow(p.batch_id, p.amount, p.state, p.address, p.tx_hash, calldata))
    return out


# ---------------------------------------------------------------------------- market pages


@dataclass(frozen=True)
class HomePage:
    popular: list[ListingSummary]
    newest: list[ListingSummary]
    tags: list[tuple[str, int]]


def home_page(session: Session, *, shown: int = 6) -> HomePage:
    return HomePage(
        popular=search.search(session, search.SearchQuery(sort="popular", limit=shown)).listings,
        newest=search.search(session, search.SearchQuery(sort="new", limit=shown)).listings,
        tags=market.popular_tags(session, 30),
    )


USAGE_TTL = 60.0
"""Seconds the agent page keeps an agent's 30-day figures and its reviewers' call counts: both come
from every usage event of the window, the page's one expensive read."""

_Versions = tuple[list[market.VersionEntry], list[Changelog]]


class PageCache:
    """One registry's cache of the agent pages' expensive parts (held by the app, not the module:
    two registries in one process must not share it)."""

    def __init__(self, ttl: float = USAGE_TTL, size: int = 1024) -> None:
        self.figures: TtlCache[str, tuple[market.Figures, list[views.DayCount]]] = TtlCache(ttl, size)
        self.reviews: TtlCache[tuple[str, tuple[Any, ...]], list[ReviewView]] = TtlCache(ttl, size)
        self.versions: TtlCache[tuple[str, int], tuple[list[market.VersionEntry], list[Changelog]]] = (
            TtlCache(ttl, size)
        )


@dataclass(frozen=True)
class AgentPage:
    info: ListingInfo
    reviews: list[ReviewView]
    calls_per_day: list[views.DayCount]
    mine: Review | None
    """The signed-in account's own review, to edit."""
    review_blocked: str | None
    """Why the signed-in account may not review (None: it may, or nobody is signed in)."""
    pricing: list[str] = field(default_factory=list)
    """The plans, a line each (billing.pricing.describe)."""
    pricing_pending: list[tuple[str, list[str]]] = field(default_factory=list)
    """Changes of price waiting for their notice: (the date they apply, their plans)."""


def agent_page(
    session: Session,
    repos: RepoStore,
    name: str,
    account_id: int | None,
    *,
    cache: PageCache,
    clock: float | None = None,
    decimals: int = 6,
    currency: str = "USDC",
) -> AgentPage:
    """Everything the agent's page shows; NotFoundError for no such published agent.

    What `market.info` gathers, with the usage figures and the reviews (with each reviewer's
    calls) reused for up to USAGE_TTL seconds: reviews only while none was written, replied to,
    reported or hidden meanwhile (a cheap fingerprint of the agent's reviews says so), versions and
    the tool changelog only while the agent's serial stays the same.
    """
    now = time.monotonic() if clock is None else clock
    listing = market.get_listing(session, repos, name)
    known = cache.versions.get((name, listing.indexed_serial), now)
    if known is None:
        # A publish or a yank moves the serial; a signature added later shows within the TTL.
        found = market.versions_of(session, listing.agent_id)
        known = (found, market.tool_changelog(found))
        cache.versions.put((name, listing.indexed_serial), known, now)
    versions, changes = known
    latest = next((v for v in versions if v.version == listing.latest_version), None)
    usage = cache.figures.get(name, now)
    if usage is None:
        days = [
            views.DayCount(date.fromisoformat(day), n) for day, n in market.calls_per_day(session, name, 30)
        ]
        usage = (market.figures(session, name), days)
        cache.figures.put(name, usage, now)
    info = ListingInfo(
        summary=market.summary_of(listing),
        namespace=listing.namespace,
        owner_address=namespaces.owner_address(session, listing.namespace),
        readme_html=listing.readme_html,
        versions=versions,
        changelog=changes,
        figures=usage[0],
        latest_tools=(latest.tools or []) if latest is not None else [],
    )
    fingerprint = tuple(
        session.execute(
            select(
                func.count(),
                func.max(Review.updated_at),
                func.max(Review.replied_at),
                func.sum(Review.reports),
                func.sum(case((Review.hidden, 1), else_=0)),
            ).where(Review.agent_id == listing.agent_id)
        ).one()
    )
    shown = cache.reviews.get((name, fingerprint), now)
    if shown is None:
        shown = reviews.list_reviews(session, name, limit=50)
        cache.reviews.put((name, fingerprint), shown, now)
    mine = None
    blocked = None
    if account_id is not None:
        mine = session.scalar(
            select(Review).where(Review.agent_id == listing.agent_id, Review.account_id == account_id)
        )
        if owns_namespace(session, account_id, info.namespace) or namespaces.may_publish(
            session, account_id, info.namespace
        ):
            blocked = "You publish this agent, so you cannot review it; reply to reviews instead."
        elif not reviews.completed_calls(session, name, [account_id]):
            blocked = (
                f"Only accounts that called {name} may review it. Call one of its tools first "
                f"(mcpz call {name} TOOL), then come back."
            )
    prices = billing.prices_of(session, name)
    return AgentPage(
        info=info,
        reviews=shown,
        calls_per_day=usage[1],
        mine=mine,
        review_blocked=blocked,
        pricing=pricing.describe(prices.current, decimals, currency),
        pricing_pending=[
            (
                datetime.fromtimestamp(at // 1_000_000, UTC).strftime("%Y-%m-%d"),
                pricing.describe(p, decimals, currency),
            )
            for at, p in prices.pending
        ],
    )


def _account_name(session: Session, account_id: int) -> str:
    account = session.get(Account, account_id)
    return account.name if account is not None else ""


@dataclass(frozen=True)
class CreatorPage:
    namespace: str
    owner: str
    address: str | None
    agents: list[ListingSummary]


def creator_page(session: Session, namespace: str) -> CreatorPage:
    """A namespace, its owner's verified wallet and its listed agents; NotFoundError if none."""
    ns = namespaces.get_namespace(session, namespace)
    found = search.search(
        session, search.SearchQuery(namespace=namespace, sort="popular", limit=search.MAX_LIMIT)
    )
    return CreatorPage(
        namespace=ns.name,
        owner=_account_name(session, ns.owner_id),
        address=namespaces.owner_address(session, namespace),
        agents=found.listings,
    )
