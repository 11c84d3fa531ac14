"""The pages' pure helpers (registry_server.web.views, .assets): the chart, the snippets, the
hashed static names."""

from __future__ import annotations

import json
import re
import shlex
from datetime import date

from registry_server.web import assets, views


def test_the_chart_has_one_bar_per_day_scaled_to_the_busiest_and_an_accessible_name() -> None:
    series = views.fill_days({date(2026, 3, 3): 10, date(2026, 3, 1): 5}, until=date(2026, 3, 3), days=3)
    assert [d.calls for d in series] == [5, 0, 10]
    svg = str(views.calls_chart(series, title='Calls to <b>"x"</b>'))
    heights = [float(h) for h in re.findall(r'<rect class="bar"[^>]* height="([\d.]+)"', svg)]
    assert len(heights) == 3 and heights[1] == 0 and heights[2] == 2 * heights[0]
    assert "<title>2026-03-03: 10 calls</title>" in svg and "<title>2026-03-02: 0 calls</title>" in svg
    assert 'role="img"' in svg and "15 calls from 2026-03-01 to 2026-03-03" in svg
    assert "<b>" not in svg and "&lt;b&gt;" in svg  # the title is escaped
    empty = str(views.calls_chart([], title="t"))
    assert "<rect" not in empty


def test_the_call_snippet_names_the_required_arguments_and_is_shell_safe() -> None:
    tool = {
        "name": "forecast",
        "inputSchema": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "default": 3},
                "unit": {"enum": ["metric", "imperial"]},
                "extra": {"type": "string"},
            },
            "required": ["city", "days", "unit"],
        },
    }
    assert (
        views.call_snippet("acme/weather", tool)
        == "mcpz call acme/weather forecast city=... days=3 unit=metric"
    )
    hostile = {
        "name": "x; rm -rf ~",
        "inputSchema": {"properties": {"a": {"default": "$(id)"}}, "required": ["a"]},
    }
    words = shlex.split(views.call_snippet("acme/x", hostile))
    assert words == ["mcpz", "call", "acme/x", "x; rm -rf ~", "a=$(id)"]
    assert views.call_snippet("acme/x", None) == "mcpz call acme/x TOOL key=value"


def test_client_configurations_are_json_with_the_gateway_url_and_no_secret() -> None:
    url = "https://reg.example/mcp/acme/weather"
    vscode = json.loads(views.vscode_config("acme/weather", url))
    server = vscode["servers"]["acme-weather"]
    assert server == {"type": "http", "url": url, "headers": {"Authorization": "Bearer ${input:mcpz-key}"}}
    assert vscode["inputs"][0]["password"] is True
    claude = json.loads(views.claude_desktop_config("acme/weather", url))
    assert url in claude["mcpServers"]["acme-weather"]["args"]
    assert views.server_key("0xab/a.b") == "0xab-a-b"


def test_numbers_and_times_read_as_people_write_them() -> None:
    assert views.count(1234) == "1,234" and views.count(2_500_000) == "2.5M" and views.count(None) == "-"
    assert views.milliseconds(2.345) == "2.3 ms" and views.milliseconds(123.4) == "123 ms"
    assert views.percent(0.9876) == "98.8%" and views.percent(None) == "-"
    assert views.stars(4.4) == "★★★★☆" and views.stars(None) == ""


def test_static_files_have_content_hashed_names() -> None:
    url = assets.url("app.css")
    assert re.fullmatch(r"/static/app\.[0-9a-f]{12}\.css", url)
    hashed = url.removeprefix("/static/")
    found = assets.lookup(hashed)
    assert found is not None and found[1] == assets.IMMUTABLE
    plain = assets.lookup("app.css")
    assert plain is not None and plain[1] == assets.REVALIDATE and plain[0].etag == found[0].etag
    assert assets.lookup("../routes.py") is None and assets.lookup("nothing.css") is None


def test_the_page_cache_forgets_after_its_ttl_and_keeps_at_most_its_size() -> None:
    from registry_server.web.cache import TtlCache

    cache: TtlCache[str, int] = TtlCache(ttl=60, size=2)
    cache.put("a", 1, now=100.0)
    assert cache.get("a", now=159.9) == 1
    assert cache.get("a", now=160.0) is None  # expired, and dropped
    assert len(cache) == 0
    cache.put("a", 1, now=200.0)
    cache.put("b", 2, now=200.0)
    assert cache.get("a", now=201.0) == 1  # "a" is now the most recently used
    cache.put("c", 3, now=202.0)
    assert cache.get("b", now=202.0) is None and cache.get("a", now=202.0) == 1 and len(cache) == 2
    assert cache.get("c", now=150.0) is None  # a clock that went back never serves a stale entry
