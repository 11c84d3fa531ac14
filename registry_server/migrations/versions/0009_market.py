"""The marketplace: listings, tags, search documents and vocabulary, reviews, history, reports.

The search indexes depend on the backend. SQLite: `market_fts` (FTS5 over market_search.body,
external content) and `market_terms_tri` (FTS5 with the trigram tokenizer over market_terms.term),
kept in step by triggers. PostgreSQL: a generated `document tsvector` column ('simple'
configuration: the terms are already normalised) with a GIN index, and pg_trgm GIN indexes on
market_terms.term and market_listings.name.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_SQLITE = [
    "CREATE VIRTUAL TABLE market_fts USING fts5(body, content='market_search', content_rowid='agent_id')",
    "CREATE TRIGGER market_search_ai AFTER INSERT ON market_search BEGIN "
    "INSERT INTO market_fts(rowid, body) VALUES (new.agent_id, new.body); END",
    "CREATE TRIGGER market_search_ad AFTER DELETE ON market_search BEGIN "
    "INSERT INTO market_fts(market_fts, rowid, body) VALUES ('delete', old.agent_id, old.body); END",
    "CREATE TRIGGER market_search_au AFTER UPDATE ON market_search BEGIN "
    "INSERT INTO market_fts(market_fts, rowid, body) VALUES ('delete', old.agent_id, old.body); "
    "INSERT INTO market_fts(rowid, body) VALUES (new.agent_id, new.body); END",
    "CREATE VIRTUAL TABLE market_terms_tri USING fts5(term, content='market_terms', content_rowid='id', "
    "tokenize='trigram')",
    "CREATE TRIGGER market_terms_ai AFTER INSERT ON market_terms BEGIN "
    "INSERT INTO market_terms_tri(rowid, term) VALUES (new.id, new.term); END",
    "CREATE TRIGGER market_terms_ad AFTER DELETE ON market_terms BEGIN "
    "INSERT INTO market_terms_tri(market_terms_tri, rowid, term) VALUES ('delete', old.id, old.term); END",
]
_POSTGRES = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "ALTER TABLE market_search ADD COLUMN document tsvector "
    "GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, body)) STORED",
    "CREATE INDEX ix_market_search_document ON market_search USING gin (document)",
    "CREATE INDEX ix_market_terms_trgm ON market_terms USING gin (term gin_trgm_ops)",
    "CREATE INDEX ix_market_listings_name_trgm ON market_listings USING gin (name gin_trgm_ops)",
]


def upgrade() -> None:
    op.create_table(
        "market_listings",
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id"), primary_key=True),
        sa.Column("name", sa.String(129), nullable=False, unique=True),
        sa.Column("namespace", sa.String(64), nullable=False, index=True),
        sa.Column("listed", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("kind", sa.String(16), nullable=False, server_default="agent"),
        sa.Column("license", sa.String(128), nullable=False, server_default=""),
        sa.Column("tags", sa.Text, nullable=False, server_default="[]"),
        sa.Column("latest_version", sa.String(64), nullable=False, server_default=""),
        sa.Column("latest_release_id", sa.Integer, nullable=True),
        sa.Column("readme_source", sa.Text, nullable=False, server_default=""),
        sa.Column("readme_html", sa.Text, nullable=False, server_default=""),
        sa.Column("tools", sa.Text, nullable=False, server_default="[]"),
        sa.Column("terms_name", sa.Text, nullable=False, server_default=""),
        sa.Column("terms_tags", sa.Text, nullable=False, server_default=""),
        sa.Column("terms_tools", sa.Text, nullable=False, server_default=""),
        sa.Column("terms_description", sa.Text, nullable=False, server_default=""),
        sa.Column("terms_tool_names", sa.Text, nullable=False, server_default=""),
        sa.Column("pricing", sa.String(32), nullable=False, server_default="free"),
        sa.Column("rating_sum", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rating_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rating_key", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("quality", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("calls_30d", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("callers_30d", sa.Integer, nullable=False, server_default="0"),
        sa.Column("usage_at_us", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_us", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_us", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("indexed_serial", sa.Integer, nullable=False, server_default="-1"),
    )
    for short, column in (
        ("quality", "quality"),
        ("calls", "calls_30d"),
        ("rating", "rating_key"),
        ("created", "created_us"),
        ("updated", "updated_us"),
    ):
        op.create_index(f"ix_market_listed_{short}", "market_listings", ["listed", column, "agent_id"])
    # Covering the relevance sort's candidate query: the listings a text query matched are ranked
    # by quality from this index alone, never from their (wide) rows.
    op.create_index("ix_market_rank", "market_listings", ["agent_id", "listed", "quality"])
    op.create_table(
        "market_tags",
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("market_listings.agent_id"), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_market_tags_tag", "market_tags", ["tag", "agent_id"])
    op.create_table(
        "market_search",
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("market_listings.agent_id"), primary_key=True),
        sa.Column("body", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "market_terms",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("term", sa.String(64), nullable=False, unique=True),
    )
    op.create_table(
        "market_reviews",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id"), nullable=False, index=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False, index=True),
        sa.Column("stars", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False, server_default=""),
        sa.Column("version", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("edits", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reply", sa.Text, nullable=True),
        sa.Column("reply_account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=True),
        sa.Column("replied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reports", sa.Integer, nullable=False, server_default="0"),
        sa.Column("moderation", sa.String(16), nullable=False, server_default=""),
        sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("agent_id", "account_id", name="uq_market_review"),
    )
    op.create_table(
        "market_review_history",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("review_id", sa.Integer, sa.ForeignKey("market_reviews.id"), nullable=False, index=True),
        sa.Column("stars", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False, server_default=""),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "market_review_reports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("review_id", sa.Integer, sa.ForeignKey("market_reviews.id"), nullable=False, index=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("review_id", "account_id", name="uq_market_report"),
    )
    statements = _POSTGRES if op.get_bind().dialect.name == "postgresql" else _SQLITE
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("market_search_ai", "market_search_ad", "market_search_au", "market_terms_ai"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TRIGGER IF EXISTS market_terms_ad")
        op.execute("DROP TABLE IF EXISTS market_fts")
        op.execute("DROP TABLE IF EXISTS market_terms_tri")
    for table in (
        "market_review_reports",
        "market_review_history",
        "market_reviews",
        "market_terms",
        "market_search",
        "market_tags",
        "market_listings",
    ):
        op.drop_table(table)
