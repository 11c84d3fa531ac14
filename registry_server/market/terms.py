"""Search terms: how text becomes the terms a listing is indexed and found by. Pure.

Both backends index text this module has already normalised (lower case, accents folded, split on
anything that is not a letter or digit), so SQLite's FTS5 `unicode61` tokenizer and PostgreSQL's
'simple' text-search configuration see the same words and match the same listings. A query term
matches every indexed term it is a prefix of, on both.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

MAX_TERM = 64
"""Longer runs of letters are cut: nobody searches for them, and the vocabulary stays bounded."""
MAX_QUERY_TERMS = 8
"""Terms of a query beyond these are ignored (each is one more index lookup)."""
MIN_SIMILARITY = 0.3
"""The trigram similarity a vocabulary term needs to stand in for a misspelt query term."""

_WORD = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    """Lower case, compatibility-normalised, without combining marks ("Café" -> "cafe")."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def terms(text: str) -> list[str]:
    """The terms of `text`, in order, with repeats."""
    return [word[:MAX_TERM] for word in _WORD.findall(fold(text))]


def joined(texts: Iterable[str]) -> str:
    """The terms of all `texts`, space-separated: what a search column stores."""
    return " ".join(term for text in texts for term in terms(text))


def query_terms(query: str) -> list[str]:
    """A query's distinct terms in order, at most MAX_QUERY_TERMS."""
    seen: list[str] = []
    for term in terms(query):
        if term not in seen:
            seen.append(term)
    return seen[:MAX_QUERY_TERMS]


def fts5_query(words: list[str]) -> str:
    """An FTS5 MATCH expression: every term, each as a prefix. Terms are letters and digits only."""
    return " ".join(f'"{word}"*' for word in words)


def tsquery(words: list[str]) -> str:
    """The same for PostgreSQL's `to_tsquery('simple', ...)`."""
    return " & ".join(f"{word}:*" for word in words)


def trigrams(term: str) -> set[str]:
    """The three-letter substrings of `term` (a shorter term is its own only trigram)."""
    if len(term) < 3:
        return {term}
    return {term[i : i + 3] for i in range(len(term) - 2)}


def padded_trigrams(term: str) -> set[str]:
    """The trigrams of the term padded with two spaces before and one after (as pg_trgm does), so
    that the start and end of a word weigh more than its middle."""
    padded = f"  {term} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def similarity(a: str, b: str) -> float:
    """Trigram similarity in [0, 1]: shared padded trigrams over all padded trigrams of the two."""
    ta, tb = padded_trigrams(a), padded_trigrams(b)
    union = ta | tb
    return len(ta & tb) / len(union) if union else 0.0


def closest(term: str, candidates: Iterable[str], *, minimum: float = MIN_SIMILARITY) -> str | None:
    """The candidate most similar to `term` (ties: the shorter, then alphabetical), if similar enough."""
    best: tuple[float, int, str] | None = None
    for candidate in candidates:
        score = similarity(term, candidate)
        if score < minimum:
            continue
        key = (-score, len(candidate), candidate)
        if best is None or key < best:
            best = key
    return best[2] if best is not None else None


def ranked_by_similarity(term: str, candidates: Iterable[str], limit: int) -> list[str]:
    """The `limit` candidates most similar to `term`, most similar first (ties alphabetical)."""
    scored = sorted((-similarity(term, c), c) for c in set(candidates))
    return [c for score, c in scored if score < 0][:limit]
