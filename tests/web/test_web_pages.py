"""The market's pages over real HTTP against a live registry with a small published market
(tests/webutil.py): what a person reads on each page, the review rules as the pages enforce them,
hostile README markup rendered inert, and bad input answered with an HTML page, not a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import httpx2
import pytest
from conftest import LiveRegistry, start_registry
from test_web_session import csrf_of, sign_in
from webutil import MarketWorld, seed

from mcpz.keys.ethkeys import Account

CAROL = Account.from_key("0x" + "c3" * 32)  # calls acme/weather, then reviews it
DAVE = Account.from_key("0x" + "d4" * 32)  # never calls anything


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketWorld]:
    from conftest import isolate

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, home)
        reg: LiveRegistry = start_registry(home / "registry")
        try:
            yield seed(reg, home / "work")
        finally:
            reg.stop()


def get(world: MarketWorld, path: str) -> httpx2.Response:
    return httpx2.get(world.reg.url + path, timeout=30)


def text_of(html: str) -> str:
    """The page's visible text, roughly: tags dropped, entities decoded, spaces squeezed."""
    body = re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", html)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split())


def test_the_home_page_shows_the_search_box_popular_new_and_tags(world: MarketWorld) -> None:
    world.calls("acme/translate", world.account_for_wallet(DAVE.address), 3)
    page = get(world, "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = text_of(page.text)
    assert 'role="search"' in page.text and 'action="/search"' in page.text
    popular = text[text.index("Popular") : text.index("New ")]
    assert popular.index("acme/translate") < popular.index("acme/weather")  # the one with calls first
    assert "globex/pdf-tools" in text[text.index("New ") :]
    for tag in ("weather", "forecast", "pdf", "text (2)"):
        assert tag in text


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("q=forecast", "acme/weather"),
        ("q=extract_text", "globex/pdf-tools"),  # a tool's name finds its agent
        ("q=wether", "acme/weather"),  # a typo is corrected
        ("tag=pdf", "globex/pdf-tools"),
        ("q=text&kind=agent&price=free&sort=new", "acme/translate"),
    ],
)
def test_search_finds_agents_by_words_tools_typos_and_filters(
    world: MarketWorld, query: str, found: str
) -> None:
    page = get(world, f"/search?{query}")
    assert page.status_code == 200
    assert f'href="/agents/{found}"' in page.text


def test_search_says_what_it_corrected_and_suggests_names_when_nothing_matches(world: MarketWorld) -> None:
    assert "showing results for “weather”" in text_of(get(world, "/search?q=wether").text)
    nothing = text_of(get(world, "/search?q=zzzzqqq").text)
    assert "No agent matches." in nothing
    filtered = get(world, "/search?q=weather&min_rating=4")  # no reviews yet: nothing passes
    assert "No agent matches." in text_of(filtered.text)


@pytest.mark.parametrize(
    "query",
    [
        "sort=loudest",
        "kind=robot",
        "min_rating=9",
        "min_rating=abc",
        "price=cheap",
        "page=0",
        "page=x",
        "q=" + "a" * 201,
    ],
)
def test_bad_search_filters_answer_400_with_the_page(world: MarketWorld, query: str) -> None:
    page = get(world, f"/search?{query}")
    assert page.status_code == 400
    assert 'role="alert"' in page.text and "Traceback" not in page.text


def test_the_agent_page_shows_readme_tools_versions_changelog_usage_and_snippets(world: MarketWorld) -> None:
    world.calls("acme/weather", world.account_for_wallet(DAVE.address), 5)
    page = get(world, "/agents/acme/weather")
    assert page.status_code == 200
    html, text = page.text, text_of(page.text)
    assert "<h1>acme/weather</h1>" in html
    assert "Weather forecasts and alerts for any city" in text
    assert "<h1>Weather for agents</h1>" in html or "Weather for agents</h" in html  # the README
    # Tools of the latest version, each with its schemas.
    assert "<code>alerts</code>" in html and "<code>forecast</code>" in html
    assert ("Output schema" in text and "&#34;region&#34;" in html) or '"region"' in unescape(html)
    # Versions newest first, each with its pinned tools.
    assert text.index("0.2.0") < text.rindex("0.1.0")
    assert "2 (signed)" in text and "1 (signed)" in text
    # The changelog between the two: alerts added, forecast got an input.
    assert "0.1.0 → 0.2.0" in text and "added alerts" in text and "new inputs days" in text
    # Usage: the figures and an SVG chart with an accessible name.
    assert re.search(r"Calls\s*5\b", text)
    assert '<svg class="chart"' in html and 'role="img"' in html and "5 calls from" in html
    # Snippets: a shell command and two MCP client configurations that are valid JSON.
    assert "mcpz call acme/weather alerts region=..." in unescape(html)
    configs = re.findall(r"<pre[^>]*><code>(\{.*?)</code></pre>", html, re.S)
    parsed = [json.loads(unescape(c)) for c in configs if "servers" in c.lower()]
    gateway = f"{world.reg.url}/mcp/acme/weather"
    assert parsed[0]["servers"]["acme-weather"]["url"] == gateway
    assert gateway in parsed[1]["mcpServers"]["acme-weather"]["args"]
    # The publisher, and no review form for someone not signed in.
    assert 'href="/creators/acme"' in html
    assert "Sign in</a> to review" in html


def test_hostile_readme_markup_is_inert_on_the_page(world: MarketWorld) -> None:
    html = get(world, "/agents/acme/weather").text
    readme = html[html.index('<div class="readme">') : html.index('<h2 id="tools">')]
    assert "pwned" in readme  # shown as text...
    assert not re.search(
        r"<(script|iframe)|<img[^>]*onerror|href=\"javascript:", readme
    )  # ...never as markup
    scripts = re.findall(r"<script[^>]*>", html)
    assert len(scripts) == 1 and re.fullmatch(
        r'<script src="/static/copy\.[0-9a-f]{12}\.js" defer>', scripts[0]
    )


def test_the_creator_page_shows_the_namespace_its_wallet_and_agents(world: MarketWorld) -> None:
    page = get(world, "/creators/acme")
    text = text_of(page.text)
    assert page.status_code == 200
    assert "acme/weather" in text and "acme/translate" in text and "globex" not in text
    assert "none: the owner has not signed in with a wallet" in text
    missing = get(world, "/creators/nobody-here")
    assert missing.status_code == 404 and "no namespace" in missing.text


def test_unknown_or_malformed_agents_answer_html_errors(world: MarketWorld) -> None:
    missing = get(world, "/agents/acme/nothing")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert get(world, "/agents/ACME/Bad_Name!").status_code == 400


def test_a_review_is_refused_without_a_metered_call_and_accepted_after_one(world: MarketWorld) -> None:
    with httpx2.Client(base_url=world.reg.url, timeout=30) as carol:
        sign_in(carol, CAROL)
        page = carol.get("/agents/acme/weather")
        assert "Only accounts that called acme/weather may review it" in text_of(page.text)
        # Posting anyway is refused by the market's rule.
        token = csrf_of(page.text)
        refused = carol.post("/agents/acme/weather/reviews", data={"csrf": token, "stars": "5", "text": "x"})
        assert refused.status_code == 403
        assert "only an account that has called acme/weather may review it" in text_of(refused.text)
        world.calls("acme/weather", world.account_for_wallet(CAROL.address), 2)
        page = carol.get("/agents/acme/weather")
        assert 'action="/agents/acme/weather/reviews"' in page.text
        assert (
            carol.post("/agents/acme/weather/reviews", data={"csrf": "nope", "stars": "4"}).status_code == 403
        )
        bad = carol.post("/agents/acme/weather/reviews", data={"csrf": token, "stars": "9"})
        assert bad.status_code == 400
        posted = carol.post(
            "/agents/acme/weather/reviews",
            data={"csrf": token, "stars": "4", "text": "<b>Good</b> forecasts"},
            follow_redirects=False,
        )
        assert posted.status_code == 303
        assert posted.headers["location"] == "/agents/acme/weather?reviewed=1#reviews"
        shown = carol.get(posted.headers["location"])
        text = text_of(shown.text)
        assert "Your review is posted." in text
        assert f"by {CAROL.address.lower()} · 2 calls" in text
        assert "&lt;b&gt;Good&lt;/b&gt; forecasts" in shown.text  # the text as written, escaped
        assert "Replace my review" in shown.text
    # Seen by everyone, with the rating on the page and in search.
    assert "4.0 out of 5 (1 review)" in text_of(get(world, "/agents/acme/weather").text)
    assert 'href="/agents/acme/weather"' in get(world, "/search?q=weather&min_rating=4").text


@pytest.mark.slow
def test_a_publishers_dashboard_shows_its_agents_and_it_may_not_review_them(
    world: MarketWorld, tmp_path: Path
) -> None:
    from webutil import FORECAST, publish

    namespace = DAVE.address.lower()  # a wallet's first sign-in owns the namespace 0x...
    world.account_for_wallet(DAVE.address)
    world.tokens[namespace] = world.reg.account(namespace)
    name = f"{namespace}/tiny"
    publish(world, tmp_path, name, [("1.0.0", [FORECAST])], description="Tiny", keywords=[])
    world.calls(name, world.account_for_wallet(CAROL.address), 4)
    world.calls(name, world.account_for_wallet(CAROL.address), 1, outcome="tool-error")
    with httpx2.Client(base_url=world.reg.url, timeout=30) as dave:
        sign_in(dave, DAVE)
        board = text_of(dave.get("/dashboard").text)
        assert f"{name} 1.0.0 5 1 20.0% 1" in board
        page = dave.get(f"/agents/{name}")
        assert "You publish this agent, so you cannot review it" in text_of(page.text)
        assert f'action="/agents/{name}/reviews"' not in page.text
    with httpx2.Client(base_url=world.reg.url, timeout=30) as carol:
        sign_in(carol, CAROL)
        assert name not in carol.get("/dashboard").text  # only one's own agents
