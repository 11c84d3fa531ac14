"""The marketplace's tables: one listing per published agent, its search document, the search
vocabulary (for typo correction), reviews with their history, owner replies and reports.

Schema changes go through Alembic (migration 0009). The search indexes themselves are
backend-specific and live only in the migration: on SQLite an FTS5 table over `market_search.body`
and an FTS5 trigram table over `market_terms.term`, kept in step by triggers; on PostgreSQL a
generated `tsvector` column on `market_search` with a GIN index, and pg_trgm GIN indexes on the
terms and on listing names.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry_server.orm import Base, UTCDateTime

FREE = "free"
"""The only pricing until billing lands; billing adds its plans beside it."""


class Listing(Base):
    """An agent's marketplace listing, rebuilt from its releases whenever `Agent.serial` moves."""

    __tablename__ = "market_listings"
    __table_args__ = (
        Index("ix_market_listed_quality", "listed", "quality", "agent_id"),
        Index("ix_market_listed_calls", "listed", "calls_30d", "agent_id"),
        Index("ix_market_listed_rating", "listed", "rating_key", "agent_id"),
        Index("ix_market_listed_created", "listed", "created_us", "agent_id"),
        Index("ix_market_listed_updated", "listed", "updated_us", "agent_id"),
        Index("ix_market_rank", "agent_id", "listed", "quality"),
    )

    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(129), unique=True)
    namespace: Mapped[str] = mapped_column(String(64), index=True)
    # The owner may unlist: the listing stays, search and the registry API skip it.
    listed: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(16), default="agent")
    license: Mapped[str] = mapped_column(String(128), default="")
    # JSON list of the latest release's manifest keywords (also rows of market_tags, for filters).
    tags: Mapped[str] = mapped_column(Text, default="[]")
    latest_version: Mapped[str] = mapped_column(String(64), default="")
    latest_release_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Large columns are deferred: loaded only when read (search results never read them).
    readme_source: Mapped[str] = mapped_column(Text, default="", deferred=True)
    readme_html: Mapped[str] = mapped_column(Text, default="", deferred=True)
    # JSON list of the latest release's tool names (definitions are in release_tools).
    tools: Mapped[str] = mapped_column(Text, default="[]")
    # Normalised search terms per field, space-separated (registry_server.market.terms): the
    # ranking's text score is computed from these, the same way on every backend.
    terms_name: Mapped[str] = mapped_column(Text, default="", deferred=True)
    terms_tags: Mapped[str] = mapped_column(Text, default="", deferred=True)
    terms_tools: Mapped[str] = mapped_column(Text, default="", deferred=True)
    terms_description: Mapped[str] = mapped_column(Text, default="", deferred=True)
    # Each tool name's terms joined by "_" (ranking.FieldTerms.tool_names), space-separated.
    terms_tool_names: Mapped[str] = mapped_column(Text, default="", deferred=True)
    pricing: Mapped[str] = mapped_column(String(32), default=FREE)
    # Visible reviews only (hidden and removed ones do not count).
    rating_sum: Mapped[int] = mapped_column(Integer, default=0)
    rating_count: Mapped[int] = mapped_column(Integer, default=0)
    # The Bayesian-averaged rating x 1e6, and the ranking prior x 1e6 (ranking.quality_key):
    # integers, so that ordering is exact and the same on SQLite and PostgreSQL.
    rating_key: Mapped[int] = mapped_column(BigInteger, default=0)
    quality: Mapped[int] = mapped_column(BigInteger, default=0)
    # Usage in the last 30 days (refreshed from usage_events; `usage_at_us`: when they last changed).
    calls_30d: Mapped[int] = mapped_column(BigInteger, default=0)
    callers_30d: Mapped[int] = mapped_column(Integer, default=0)
    usage_at_us: Mapped[int] = mapped_column(BigInteger, default=0)
    # First publish and latest change, in Unix microseconds (sorting by "new", `updated_since`).
    created_us: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_us: Mapped[int] = mapped_column(BigInteger, default=0)
    # The Agent.serial this listing was built from; a different serial means rebuild.
    indexed_serial: Mapped[int] = mapped_column(Integer, default=-1)


class ListingTag(Base):
    __tablename__ = "market_tags"

    agent_id: Mapped[int] = mapped_column(ForeignKey("market_listings.agent_id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_market_tags_tag", "tag", "agent_id"),)


class SearchDocument(Base):
    """The full text a listing is found by (name, tags, tools, description, README), as terms."""

    __tablename__ = "market_search"

    agent_id: Mapped[int] = mapped_column(ForeignKey("market_listings.agent_id"), primary_key=True)
    body: Mapped[str] = mapped_column(Text, default="")


class SearchTerm(Base):
    """Every term any listing was indexed with: the vocabulary a misspelt query is corrected to."""

    __tablename__ = "market_terms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    term: Mapped[str] = mapped_column(String(64), unique=True)


class Review(Base):
    """One account's review of one agent; editing replaces it and keeps the old text in history."""

    __tablename__ = "market_reviews"
    __table_args__ = (UniqueConstraint("agent_id", "account_id", name="uq_market_review"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    stars: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    edits: Mapped[int] = mapped_column(Integer, default=0)
    reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    reply_account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), nullable=True)
    replied_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reports: Mapped[int] = mapped_column(Integer, default=0)
    # "" (no decision), "kept" (an admin kept it: reports no longer hide it), "removed".
    moderation: Mapped[str] = mapped_column(String(16), default="")
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)


class ReviewEdit(Base):
    """A review as it was before an edit replaced it."""

    __tablename__ = "market_review_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("market_reviews.id"), index=True)
    stars: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text, default="")
    written_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReviewReport(Base):
    __tablename__ = "market_review_reports"
    __table_args__ = (UniqueConstraint("review_id", "account_id", name="uq_market_report"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("market_reviews.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
