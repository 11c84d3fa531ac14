"""How the marketplace ranks listings: one pure function of text score, rating and usage.

    score = 0.60 * text + 0.25 * rating + 0.15 * usage

- `text` in [0, 1]: for each query term, the weight of the best field it matches (name 10,
  tags 6, tool names and descriptions 5, description 3, README 1), an exact term counting fully
  and a prefix 0.6; summed over the terms and divided by 10 x the number of terms. A query whose
  terms spell one of the listing's tool names ("get_forecast", "get forecast") scores 1, as a
  name match does: the agent that has the tool comes before those that merely mention its words.
- `rating` in [0, 1]: the Bayesian average of the stars, (PRIOR_WEIGHT * PRIOR_MEAN + sum) /
  (PRIOR_WEIGHT + count), mapped from [1, 5] to [0, 1]. Every agent starts as if it had
  PRIOR_WEIGHT reviews of PRIOR_MEAN stars, so one 5-star review (3.33) stays below a well-used
  agent rated 4.6 by fifty reviewers (4.45).
- `usage` in [0, 1]: log10(1 + calls in the last 30 days) / 6, at most 1 (a million calls).

Ratings and usage without a query make `quality`: stored with each listing as an integer
(x 1e6), so the database orders candidates exactly, and alike on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

TEXT_WEIGHT = 0.60
RATING_WEIGHT = 0.25
USAGE_WEIGHT = 0.15
PRIOR_MEAN = 3.0
PRIOR_WEIGHT = 5
USAGE_SATURATION = 6.0
"""log10 of the monthly calls at which usage counts fully."""
PREFIX_FACTOR = 0.6
FIELD_WEIGHTS = {"name": 10.0, "tags": 6.0, "tools": 5.0, "description": 3.0}
README_WEIGHT = 1.0
SCALE = 1_000_000


@dataclass(frozen=True)
class FieldTerms:
    """A listing's terms per field, each field space-separated as stored (the README's are not
    kept: a match only there counts README_WEIGHT)."""

    name: str
    tags: str
    tools: str
    description: str
    tool_names: str = ""
    """Each tool name's terms joined by "_" ("getForecast" -> "getforecast", "get-forecast" ->
    "get_forecast"), space-separated."""


def bayesian_rating(stars_sum: int, count: int) -> float:
    """The stars' average pulled towards PRIOR_MEAN, strongly while there are few reviews."""
    return (PRIOR_WEIGHT * PRIOR_MEAN + stars_sum) / (PRIOR_WEIGHT + count)


def rating_score(stars_sum: int, count: int) -> float:
    return (bayesian_rating(stars_sum, count) - 1.0) / 4.0


def usage_score(calls_30d: int) -> float:
    return min(1.0, math.log10(1 + max(0, calls_30d)) / USAGE_SATURATION)


def term_weight(term: str, fields: FieldTerms) -> float:
    """The weight of the best field `term` matches (exactly, or as a prefix); README_WEIGHT if none."""
    best = 0.0
    exact, prefix = f" {term} ", f" {term}"
    for field, weight in FIELD_WEIGHTS.items():
        if weight <= best:
            continue
        words = f" {getattr(fields, field)} "
        if exact in words:
            best = weight
        elif prefix in words:
            best = max(best, weight * PREFIX_FACTOR)
    return best or README_WEIGHT


def text_score(query: Sequence[str], fields: FieldTerms) -> float:
    """In [0, 1]; the listing is known to match every term somewhere (the index said so)."""
    if not query:
        return 0.0
    if f" {'_'.join(query)} " in f" {fields.tool_names} ":
        return 1.0
    top = max(FIELD_WEIGHTS.values())
    return sum(term_weight(term, fields) for term in query) / (top * len(query))


def quality(stars_sum: int, count: int, calls_30d: int) -> float:
    """The part of the score that does not depend on the query."""
    return RATING_WEIGHT * rating_score(stars_sum, count) + USAGE_WEIGHT * usage_score(calls_30d)


def quality_key(stars_sum: int, count: int, calls_30d: int) -> int:
    """`quality` as the integer stored with a listing."""
    return round(quality(stars_sum, count, calls_30d) * SCALE)


def rating_key(stars_sum: int, count: int) -> int:
    """The Bayesian rating as a stored integer, for sorting by rating."""
    return round(bayesian_rating(stars_sum, count) * SCALE)


def score(text: float, quality_stored: int) -> float:
    """The relevance of a listing to a query: TEXT_WEIGHT * text plus its stored quality."""
    return TEXT_WEIGHT * text + quality_stored / SCALE
