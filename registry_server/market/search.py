"""Search over listings: full text on SQLite (FTS5) and PostgreSQL (tsvector), typo correction
through a trigram index on the search vocabulary, filters, four sorts, and suggestions.

The database finds the listings that match every query term (as a prefix, over name, tags, tool
names and descriptions, description and README) and that pass the filters. For the relevance
sort it returns up to CANDIDATES of them, best `quality` first (an integer stored per listing);
the text score and the final order are then computed here by `ranking`, from the terms stored
with each listing, so both backends rank the same listings the same way. The other sorts are
plain integer orders the database does itself.

A query with no hit is corrected term by term: a term that is not in the vocabulary is replaced
by the most similar vocabulary term (`terms.closest`, over trigram candidates from the index),
and the search runs again. If that finds nothing either, the closest listing names are offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, text
from sqlalchemy.orm import Session

from mcpz.errors import UsageError
from registry_server.market import ranking, terms
from registry_server.market.models import FREE, Listing, ListingTag, SearchTerm
from registry_server.market.service import ListingSummary, summary_of

SORTS = ("relevance", "popular", "rating", "new")
KINDS = ("agent", "plugin")
CANDIDATES = 200
"""Listings the relevance sort scores at most (the best by quality among all that match)."""
MAX_LIMIT = 100
MAX_OFFSET = 10_000
MAX_QUERY = 200
TRIGRAM_CANDIDATES = 2000
"""Vocabulary terms sharing a trigram with a misspelt term that are compared with it, at most."""
SUGGESTIONS = 5


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    kind: str | None = None
    tag: str | None = None
    free: bool | None = None
    """True: only free listings; False: only paid ones; None: both."""
    min_rating: float | None = None
    """Plain average of the stars, 1-5; listings without reviews are left out when given."""
    namespace: str | None = None
    sort: str = "relevance"
    limit: int = 20
    offset: int = 0

    def check(self) -> None:
        """UsageError naming the first bad field."""
        if len(self.text) > MAX_QUERY:
            raise UsageError(f"the query is longer than {MAX_QUERY} characters")
        if self.sort not in SORTS:
            raise UsageError(f'unknown sort "{self.sort}"', hint=f"use one of: {', '.join(SORTS)}")
        if self.kind is not None and self.kind not in KINDS:
            raise UsageError(f'unknown kind "{self.kind}"', hint=f"use one of: {', '.join(KINDS)}")
        if self.min_rating is not None and not 1 <= self.min_rating <= 5:
            raise UsageError("the minimum rating is between 1 and 5")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise UsageError(f"the limit is between 1 and {MAX_LIMIT}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise UsageError(f"the offset is between 0 and {MAX_OFFSET}")


@dataclass(frozen=True)
class SearchResult:
    listings: list[ListingSummary]
    more: bool
    """True when the next offset has more."""
    query: str
    """The terms searched for; differs from what was asked when a typo was corrected."""
    corrected: bool = False
    suggestions: list[str] = field(default_factory=list)
    """Names of the closest listings, when nothing matched."""


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _match(session: Session, words: Sequence[str]) -> ColumnElement[bool]:
    """Listings whose search document holds every term (each as a prefix)."""
    if _dialect(session) == "postgresql":
        return and_(
            text(
                "market_listings.agent_id IN (SELECT agent_id FROM market_search "
                "WHERE document @@ to_tsquery('simple', :market_q))"
            ).bindparams(market_q=terms.tsquery(list(words)))
        )
    return and_(
        text(
            "market_listings.agent_id IN (SELECT rowid FROM market_fts WHERE market_fts MATCH :market_q)"
        ).bindparams(market_q=terms.fts5_query(list(words)))
    )


def _filters(query: SearchQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [Listing.listed.is_(True)]
    if query.kind is not None:
        where.append(Listing.kind == query.kind)
    if query.tag is not None:
        tag = "-".join(terms.terms(query.tag))
        where.append(Listing.agent_id.in_(select(ListingTag.agent_id).where(ListingTag.tag == tag)))
    if query.free is True:
        where.append(Listing.pricing == FREE)
    elif query.free is False:
        where.append(Listing.pricing != FREE)
    if query.min_rating is not None:
        # Exact in integers: sum / count >= min  <=>  10 * sum >= round(10 * min) * count.
        tenths = round(query.min_rating * 10)
        where.append(Listing.rating_count > 0)
        where.append(Listing.rating_sum * 10 >= Listing.rating_count * tenths)
    if query.namespace is not None:
        where.append(Listing.namespace == query.namespace)
    return where


_ORDER: dict[str, Any] = {
    "relevance": Listing.quality,
    "popular": Listing.calls_30d,
    "rating": Listing.rating_key,
    "new": Listing.created_us,
}


def _ordered(statement: Any, sort: str) -> Any:
    return statement.order_by(_ORDER[sort].desc(), Listing.agent_id)


def _run(session: Session, query: SearchQuery, words: Sequence[str]) -> tuple[list[Listing], bool]:
    where = _filters(query)
    if words:
        where.append(_match(session, words))
    if not words or query.sort != "relevance":
        statement = select(Listing).where(*where)
        found = list(
            session.scalars(_ordered(statement, query.sort).offset(query.offset).limit(query.limit + 1))
        )
        return found[: query.limit], len(found) > query.limit
    # Two steps: the best CANDIDATES matches by quality (from a covering index on SQLite, whose
    # planner would otherwise read every matching row), then their term columns.
    best = select(Listing.agent_id).where(*where)
    if _dialect(session) == "sqlite":
        best = best.with_hint(Listing, "INDEXED BY ix_market_rank", "sqlite")
    ids = list(session.scalars(_ordered(best, "relevance").limit(CANDIDATES)))
    columns = select(
        Listing.agent_id,
        Listing.name,
        Listing.quality,
        Listing.terms_name,
        Listing.terms_tags,
        Listing.terms_tools,
        Listing.terms_description,
        Listing.terms_tool_names,
    ).where(Listing.agent_id.in_(ids))
    candidates = session.execute(columns).all()
    scored = sorted(
        candidates,
        key=lambda row: (
            -relevance(words, Candidate(row[2], row[3], row[4], row[5], row[6], row[7])),
            row[1],
        ),
    )
    page = scored[query.offset : query.offset + query.limit + 1]
    ids = [row.agent_id for row in page[: query.limit]]
    rows = {
        listing.agent_id: listing
        for listing in session.scalars(select(Listing).where(Listing.agent_id.in_(ids)))
    }
    return [rows[i] for i in ids], len(page) > query.limit


@dataclass(frozen=True)
class Candidate:
    """What the relevance sort reads of a matching listing."""

    quality: int
    terms_name: str
    terms_tags: str
    terms_tools: str
    terms_description: str
    terms_tool_names: str


def relevance(words: Sequence[str], listing: Listing | Candidate) -> float:
    """ranking.score of a listing that matched `words`."""
    fields = ranking.FieldTerms(
        name=listing.terms_name,
        tags=listing.terms_tags,
        tools=listing.terms_tools,
        description=listing.terms_description,
        tool_names=listing.terms_tool_names,
    )
    return ranking.score(ranking.text_score(words, fields), listing.quality)


def _trigram_candidates(session: Session, word: str) -> list[str]:
    grams = sorted(terms.trigrams(word))
    if len(word) < 3:
        return []
    if _dialect(session) == "postgresql":
        likes = [SearchTerm.term.like(f"%{gram}%") for gram in grams]
        return list(
            session.scalars(
                select(SearchTerm.term).where(or_(*likes)).order_by(SearchTerm.id).limit(TRIGRAM_CANDIDATES)
            )
        )
    expression = " OR ".join(f'"{gram}"' for gram in grams)
    return list(
        session.scalars(
            text(
                "SELECT term FROM market_terms_tri WHERE market_terms_tri MATCH :grams "
                "ORDER BY rowid LIMIT :n"
            ).bindparams(grams=expression, n=TRIGRAM_CANDIDATES)
        )
    )


def correct(session: Session, words: Sequence[str]) -> list[str]:
    """Each term not in the vocabulary replaced by its closest vocabulary term, if one is close."""
    known = set(session.scalars(select(SearchTerm.term).where(SearchTerm.term.in_(list(words)))))
    fixed = []
    for word in words:
        if word in known:
            fixed.append(word)
            continue
        fixed.append(terms.closest(word, _trigram_candidates(session, word)) or word)
    return fixed


def suggest(session: Session, text_query: str, limit: int = SUGGESTIONS) -> list[str]:
    """Names of the listed agents closest to `text_query` (by trigram similarity of the names)."""
    wanted = "-".join(terms.terms(text_query))
    if len(wanted) < 3:
        return []
    grams = sorted(terms.trigrams(wanted))
    likes = [Listing.name.like(f"%{gram}%") for gram in grams]
    names = session.scalars(
        select(Listing.name)
        .where(Listing.listed.is_(True), or_(*likes))
        .order_by(Listing.quality.desc(), Listing.agent_id)
        .limit(TRIGRAM_CANDIDATES)
    )
    # Similarity of the name part only: a namespace shared by many agents says nothing.
    by_short = {name: name.split("/")[-1] for name in names}
    ranked = terms.ranked_by_similarity(wanted, by_short.values(), len(by_short))
    order = {short: i for i, short in enumerate(ranked)}
    chosen = sorted((n for n, s in by_short.items() if s in order), key=lambda n: (order[by_short[n]], n))
    return chosen[:limit]


def search(session: Session, query: SearchQuery) -> SearchResult:
    """Listed agents matching `query`; see the module docstring for how they are found and ranked."""
    query.check()
    words = terms.query_terms(query.text)
    listings, more = _run(session, query, words)
    if listings or not words or query.offset:
        return SearchResult([summary_of(item) for item in listings], more, " ".join(words))
    fixed = correct(session, words)
    if fixed != list(words):
        listings, more = _run(session, query, fixed)
        if listings:
            return SearchResult(
                [summary_of(item) for item in listings], more, " ".join(fixed), corrected=True
            )
    return SearchResult([], False, " ".join(words), suggestions=suggest(session, query.text))
