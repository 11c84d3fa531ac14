"""The marketplace's pure parts: ranking, search terms, README rendering, tool changelog."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry_server.market import ranking, terms
from registry_server.market.changelog import changelog
from registry_server.market.readme import MAX_SOURCE, render


def test_one_five_star_review_does_not_outrank_a_well_used_four_point_six() -> None:
    newcomer = ranking.quality_key(5, 1, 3)
    established = ranking.quality_key(230, 50, 20_000)
    assert ranking.bayesian_rating(5, 1) < ranking.bayesian_rating(230, 50)
    assert newcomer < established
    # With the same text match, the established agent ranks first.
    assert ranking.score(0.8, established) > ranking.score(0.8, newcomer)
    # A much better text match still wins over popularity.
    assert ranking.score(1.0, newcomer) > ranking.score(0.3, established)


def test_text_score_weighs_fields_and_prefixes() -> None:
    fields = ranking.FieldTerms(name="acme weather", tags="forecast", tools="get alerts", description="rain")
    assert ranking.text_score(["weather"], fields) == 1.0
    assert ranking.text_score(["weath"], fields) == pytest.approx(0.6)
    assert ranking.text_score(["forecast"], fields) == pytest.approx(0.6)
    assert ranking.text_score(["alerts"], fields) == pytest.approx(0.5)
    assert ranking.text_score(["rain"], fields) == pytest.approx(0.3)
    # Matched only in the README (the index said so): the lowest weight.
    assert ranking.text_score(["umbrella"], fields) == pytest.approx(0.1)
    assert ranking.text_score([], fields) == 0.0


def test_usage_saturates_and_ratings_start_at_the_prior() -> None:
    assert ranking.usage_score(0) == 0.0
    assert ranking.usage_score(10**9) == 1.0
    assert ranking.bayesian_rating(0, 0) == ranking.PRIOR_MEAN


def test_terms_fold_case_accents_and_punctuation() -> None:
    assert terms.terms("Café-Weather_API v2.1!") == ["cafe", "weather", "api", "v2", "1"]
    assert terms.query_terms("weather WEATHER forecast") == ["weather", "forecast"]
    assert terms.fts5_query(["a", "b"]) == '"a"* "b"*'
    assert terms.tsquery(["a", "b"]) == "a:* & b:*"
    assert len(terms.query_terms(" ".join(f"w{i}" for i in range(50)))) == terms.MAX_QUERY_TERMS


@given(st.text(max_size=200))
def test_terms_are_only_letters_and_digits(text: str) -> None:
    for term in terms.terms(text):
        assert term and len(term) <= terms.MAX_TERM
        assert all(c.isalnum() for c in term)
        assert '"' not in terms.fts5_query([term]).strip('"*')


def test_closest_corrects_typos_and_refuses_strangers() -> None:
    vocabulary = ["weather", "whether", "feather", "geocode", "calculator"]
    assert terms.closest("wether", vocabulary) in {"weather", "whether"}
    assert terms.closest("weathr", vocabulary) == "weather"
    assert terms.closest("geocod", vocabulary) == "geocode"
    assert terms.closest("zzzzzz", vocabulary) is None
    assert terms.similarity("abc", "abc") == 1.0


HOSTILE = """# Title
<script>alert('x')</script>
<img src=x onerror="alert(1)">
<iframe src="https://evil.example"></iframe>
<a href="javascript:alert(1)">raw link</a>
[md link](javascript:alert(1)) [vb](vbscript:msgbox) [data](data:text/html;base64,PHNjcmlwdD4=)
![img](javascript:alert(1))
<div style="position:fixed" onclick="steal()">overlay</div>
[ok](https://example.com/docs) `code <b>` **bold**
"""


class _Elements(HTMLParser):
    """Every element the HTML really contains, with its attributes (text is not an element)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))


def test_hostile_readme_is_rendered_inert() -> None:
    html = render(HOSTILE)
    parser = _Elements()
    parser.feed(html)
    tags = {tag for tag, _ in parser.elements}
    assert not tags & {"script", "iframe", "div", "style", "object", "embed", "form"}
    for tag, attrs in parser.elements:
        assert not [a for a in attrs if a.startswith("on") or a == "style"], (tag, attrs)
        for url in (attrs.get("href"), attrs.get("src")):
            if url is not None:
                assert url.startswith(("https:", "http:", "mailto:")), (tag, url)
    links = [attrs for tag, attrs in parser.elements if tag == "a"]
    assert links == [{"href": "https://example.com/docs", "rel": "nofollow noopener noreferrer"}]
    assert "&lt;script&gt;" in html  # the source's tags are shown as text, not run
    assert "<strong>bold</strong>" in html and "<code>code &lt;b&gt;</code>" in html


def test_huge_readme_is_cut() -> None:
    html = render("word " * (MAX_SOURCE // 2))
    assert "README truncated" in html


def test_changelog_names_added_removed_and_breaking_changes() -> None:
    v1: list[dict[str, Any]] = [
        {"name": "add", "description": "Add", "inputSchema": {"properties": {"a": {}, "b": {}}}},
        {"name": "old", "description": "Old"},
        {"name": "same", "description": "Same"},
    ]
    v2: list[dict[str, Any]] = [
        {
            "name": "add",
            "description": "Add numbers",
            "inputSchema": {"properties": {"a": {}, "c": {}}, "required": ["c"]},
        },
        {"name": "new", "description": "New"},
        {"name": "same", "description": "Same"},
    ]
    log = changelog("1.0.0", v1, "2.0.0", v2)
    assert (log.added, log.removed) == (["new"], ["old"])
    [change] = log.changed
    assert change.tool == "add" and change.fields == ["description", "inputSchema"]
    assert (change.inputs_added, change.inputs_removed, change.required_added) == (["c"], ["b"], ["c"])
    assert change.breaking and log.breaking
    assert changelog("1", v1, "1.1", v1).empty


def test_a_query_spelling_a_tool_name_scores_as_a_name_match() -> None:
    fields = ranking.FieldTerms(
        name="acme calc", tags="", tools="get forecast", description="", tool_names="add get_forecast"
    )
    assert ranking.text_score(["get", "forecast"], fields) == 1.0
    assert ranking.text_score(["forecast", "get"], fields) < 1.0


def test_market_settings_come_from_the_environment(tmp_path: Path) -> None:
    from mcpz.errors import UsageError
    from registry_server.settings import RegistrySettings

    env = {"MCPZ_REGISTRY_MARKET_ADMINS": "boss, ops", "MCPZ_REGISTRY_REVIEW_REPORT_THRESHOLD": "5"}
    settings = RegistrySettings.load(data_dir=tmp_path, env=env)
    assert settings.market_admins == ("boss", "ops") and settings.review_report_threshold == 5
    assert RegistrySettings.load(data_dir=tmp_path, env={}).market_refresh_interval == 30.0
    with pytest.raises(UsageError, match="review_report_threshold"):
        RegistrySettings.load(data_dir=tmp_path, env={"MCPZ_REGISTRY_REVIEW_REPORT_THRESHOLD": "0"})
