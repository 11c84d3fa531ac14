"""Reviews: usage-verified, one per account per agent, with history, owner replies and reports.

- Only an account with at least one completed metered call to the agent (a usage event with
  outcome "ok") may review it; the agent's owner and its namespace's members may not.
- One review per account per agent: writing again replaces it, and the old stars and text go to
  the review's history.
- A person who may publish in the agent's namespace replies once per review.
- Any signed-in account reports a review once; at `threshold` reports it is hidden until an admin
  decides: "keep" (reports no longer hide it) or "remove" (hidden for good).
- A listing's rating counts visible reviews only, and is kept on the listing (`rating_sum`,
  `rating_count`, and the ranking keys computed from them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mcpz.errors import NotFoundError, RefusedError, UsageError
from registry_server.accounts.auth import Forbidden
from registry_server.accounts.namespaces import may_publish
from registry_server.accounts.service import owns_namespace
from registry_server.market import ranking
from registry_server.market.models import Listing, Review, ReviewEdit, ReviewReport
from registry_server.market.service import reviewer_names
from registry_server.orm import utcnow
from registry_server.releases.models import Agent
from registry_server.usage.events import Outcome
from registry_server.usage.models import UsageEventRow

MAX_TEXT = 4000
MAX_REASON = 500
REPORT_THRESHOLD = 3
"""Reports that hide a review until an admin decides (the registry setting can change it)."""
DECISIONS = ("keep", "remove")
MAX_PAGE = 100


@dataclass(frozen=True)
class ReviewView:
    id: int
    agent: str
    reviewer: str
    stars: int
    text: str
    version: str
    """The agent's latest version when the review was written."""
    calls: int
    """The reviewer's completed calls of the agent."""
    created_at: datetime
    updated_at: datetime
    edits: int
    reply: str | None
    replied_by: str | None
    replied_at: datetime | None
    hidden: bool
    reports: int
    moderation: str


def _agent(session: Session, name: str) -> Agent:
    agent = session.scalar(select(Agent).where(Agent.name == name))
    if agent is None:
        raise NotFoundError(f"no agent {name} in this registry")
    return agent


def _review(session: Session, review_id: int) -> tuple[Review, Agent]:
    review = session.get(Review, review_id)
    agent = session.get(Agent, review.agent_id) if review is not None else None
    if review is None or agent is None:
        raise NotFoundError(f"no review {review_id}", hint="see the ids: mcpz market reviews NAME")
    return review, agent


def completed_calls(session: Session, name: str, account_ids: list[int]) -> dict[int, int]:
    """Each account's calls of `name` that completed ("ok")."""
    if not account_ids:
        return {}
    row = UsageEventRow
    query = (
        select(row.account_id, func.count())
        .where(row.agent == name, row.outcome == Outcome.OK, row.account_id.in_(account_ids))
        .group_by(row.account_id)
    )
    return {account: int(n) for account, n in session.execute(query)}


def _is_publisher(session: Session, account_id: int, namespace: str) -> bool:
    return owns_namespace(session, account_id, namespace) or may_publish(session, account_id, namespace)


def _check_text(text: str, limit: int, what: str) -> str:
    text = text.strip()
    if len(text) > limit:
        raise UsageError(f"the {what} is longer than {limit} characters")
    return text


def update_rating(session: Session, agent_id: int) -> None:
    """Recount the listing's rating from its visible reviews and update its ranking keys."""
    total, count = session.execute(
        select(func.coalesce(func.sum(Review.stars), 0), func.count()).where(
            Review.agent_id == agent_id, Review.hidden.is_(False)
        )
    ).one()
    listing = session.get(Listing, agent_id)
    if listing is None:
        return
    listing.rating_sum, listing.rating_count = int(total), int(count)
    listing.rating_key = ranking.rating_key(listing.rating_sum, listing.rating_count)
    listing.quality = ranking.quality_key(listing.rating_sum, listing.rating_count, listing.calls_30d)


def _views(session: Session, agent: Agent, reviews: list[Review]) -> list[ReviewView]:
    names = reviewer_names(
        session, [r.account_id for r in reviews] + [r.reply_account_id for r in reviews if r.reply_account_id]
    )
    calls = completed_calls(session, agent.name, sorted({r.account_id for r in reviews}))
    return [
        ReviewView(
            id=r.id,
            agent=agent.name,
            reviewer=names.get(r.account_id, ""),
            stars=r.stars,
            text=r.text,
            version=r.version,
            calls=calls.get(r.account_id, 0),
            created_at=r.created_at,
            updated_at=r.updated_at,
            edits=r.edits,
            reply=r.reply,
            replied_by=names.get(r.reply_account_id) if r.reply_account_id else None,
            replied_at=r.replied_at,
            hidden=r.hidden,
            reports=r.reports,
            moderation=r.moderation,
        )
        for r in reviews
    ]


def write_review(session: Session, name: str, account_id: int, stars: int, text: str) -> ReviewView:
    """Create or replace the account's review of `name` (see the module docstring for who may)."""
    if not 1 <= stars <= 5:
        raise UsageError(f"stars must be 1 to 5, not {stars}")
    text = _check_text(text, MAX_TEXT, "review")
    agent = _agent(session, name)
    if _is_publisher(session, account_id, agent.namespace):
        raise Forbidden(f"publishers of {name} may not review it", hint="reply to reviews instead")
    if not completed_calls(session, name, [account_id]):
        raise Forbidden(
            f"only an account that has called {name} may review it",
            hint=f"call one of its tools first: mcpz call {name} TOOL",
        )
    listing = session.get(Listing, agent.id)
    version = listing.latest_version if listing is not None else ""
    now = utcnow()
    review = session.scalar(
        select(Review).where(Review.agent_id == agent.id, Review.account_id == account_id)
    )
    if review is None:
        review = Review(
            agent_id=agent.id,
            account_id=account_id,
            stars=stars,
            text=text,
            version=version,
            created_at=now,
            updated_at=now,
            edits=0,
            reports=0,
            moderation="",
            hidden=False,
        )
        session.add(review)
        try:
            session.flush()
        except IntegrityError as e:
            raise RefusedError("this review was written meanwhile by another request; try again") from e
    else:
        session.add(
            ReviewEdit(
                review_id=review.id, stars=review.stars, text=review.text, written_at=review.updated_at
            )
        )
        review.stars, review.text, review.version = stars, text, version
        review.updated_at = now
        review.edits += 1
    session.flush()
    update_rating(session, agent.id)
    return _views(session, agent, [review])[0]


def list_reviews(
    session: Session, name: str, *, include_hidden: bool = False, limit: int = 50, offset: int = 0
) -> list[ReviewView]:
    """The agent's reviews, newest first; hidden ones only with `include_hidden`."""
    agent = _agent(session, name)
    query = select(Review).where(Review.agent_id == agent.id)
    if not include_hidden:
        query = query.where(Review.hidden.is_(False))
    query = query.order_by(Review.updated_at.desc(), Review.id.desc())
    rows = list(session.scalars(query.offset(max(0, offset)).limit(max(1, min(limit, MAX_PAGE)))))
    return _views(session, agent, rows)


def history(session: Session, review_id: int) -> list[ReviewEdit]:
    """Earlier versions of a review, oldest first."""
    return list(
        session.scalars(select(ReviewEdit).where(ReviewEdit.review_id == review_id).order_by(ReviewEdit.id))
    )


def reply(session: Session, review_id: int, account_id: int, text: str) -> ReviewView:
    """The owner's one reply to a review."""
    text = _check_text(text, MAX_TEXT, "reply")
    if not text:
        raise UsageError("the reply is empty")
    review, agent = _review(session, review_id)
    if not _is_publisher(session, account_id, agent.namespace):
        raise Forbidden(f"only publishers of {agent.name} may reply to its reviews")
    if review.reply is not None:
        raise RefusedError(f"review {review_id} already has a reply; each review gets one")
    review.reply, review.reply_account_id, review.replied_at = text, account_id, utcnow()
    session.flush()
    return _views(session, agent, [review])[0]


def report(
    session: Session, review_id: int, account_id: int, reason: str, *, threshold: int = REPORT_THRESHOLD
) -> ReviewView:
    """Report a review (once per account); at `threshold` reports it is hidden until an admin decides."""
    reason = _check_text(reason, MAX_REASON, "reason")
    review, agent = _review(session, review_id)
    if review.account_id == account_id:
        raise UsageError("you cannot report your own review", hint="edit it instead: mcpz market review")
    if review.moderation == "removed":
        raise RefusedError(f"review {review_id} was already removed")
    try:
        with session.begin_nested():
            session.add(
                ReviewReport(review_id=review.id, account_id=account_id, reason=reason, created_at=utcnow())
            )
    except IntegrityError as e:
        raise RefusedError(f"you already reported review {review_id}") from e
    review.reports += 1
    if review.reports >= threshold and review.moderation != "kept" and not review.hidden:
        review.hidden = True
        update_rating(session, agent.id)
    session.flush()
    return _views(session, agent, [review])[0]


def moderate(session: Session, review_id: int, decision: str) -> ReviewView:
    """An admin's decision on a review: "keep" shows it for good, "remove" hides it for good."""
    if decision not in DECISIONS:
        raise UsageError(f'unknown decision "{decision}"', hint=f"use one of: {', '.join(DECISIONS)}")
    review, agent = _review(session, review_id)
    review.moderation = "kept" if decision == "keep" else "removed"
    review.hidden = decision == "remove"
    session.flush()
    update_rating(session, agent.id)
    return _views(session, agent, [review])[0]


def reported(session: Session, limit: int = 100) -> list[ReviewView]:
    """Reviews hidden by reports and waiting for an admin's decision, most reported first."""
    rows = list(
        session.scalars(
            select(Review)
            .where(Review.hidden.is_(True), Review.moderation == "")
            .order_by(Review.reports.desc(), Review.id)
            .limit(max(1, min(limit, MAX_PAGE)))
        )
    )
    views: list[ReviewView] = []
    for review in rows:
        agent = session.get(Agent, review.agent_id)
        if agent is not None:
            views.extend(_views(session, agent, [review]))
    return views
