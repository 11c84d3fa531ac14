"""The marketplace over HTTP on a live registry: a real `git push` makes a listing (README from
the release's tree, rendered inert), search and info, usage-verified reviews with replies, reports
and moderation, (un)listing, and the official MCP Registry API's shapes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry
from gitutil import api, commit, git, init_agent

from registry_server.accounts import service as accounts
from registry_server.db import Database
from registry_server.market import service
from registry_server.market.readme import render
from registry_server.market.routes import WRITE_LIMIT
from registry_server.usage.events import Outcome, UsageEvent
from registry_server.usage.service import UsageRecorder

pytestmark = pytest.mark.slow

NAME = "acme/weather"
DESCRIPTION = (
    "Forecasts and severe-weather alerts for any city on Earth, "
    "from several national services at once, merged"
)
MANIFEST = (
    """[agent]
name = "acme/weather"
version = "{version}"
"""
    + f'description = "{DESCRIPTION}"\n'
    + """license = "Apache-2.0"
keywords = ["weather", "Forecast"]

[run]
command = ["python", "server.py"]
"""
)
README = """# Weather

Ask for a **forecast**.

<script>alert('owned')</script>
<img src=x onerror="alert(1)">
[click](javascript:alert(1))
"""


@dataclass
class World:
    reg: LiveRegistry
    acme: str
    fan: str  # called the agent
    stranger: str  # never called it
    admin: str
    snitch: str  # another account that reports
    ids: dict[str, int]

    def get(self, path: str, token: str | None = None, **params: Any) -> Any:
        return api(self.reg, path, token, params=params)

    def send(self, method: str, path: str, token: str | None, body: dict[str, Any] | None = None) -> Any:
        return api(self.reg, path, token, method=method, json=body if body is not None else {})

    @property
    def recorder(self) -> UsageRecorder:
        app = self.reg._handle.server.config.app  # type: ignore[attr-defined]
        recorder: UsageRecorder = app.state.usage
        return recorder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("market")
    reg = start_registry(
        base / "registry",
        usage_flush_interval=3600.0,
        review_report_threshold=2,
        market_admins=("boss",),
    )
    try:
        tokens = {who: reg.account(who) for who in ("acme", "fan", "stranger", "boss", "snitch")}
        db = Database(reg.database_url)
        with db.session() as session:
            ids = {who: accounts.account_by_name(session, who).id for who in tokens}
        db.dispose()
        work = base / "work"
        files = {"mcpz.toml": MANIFEST.format(version="1.0.0"), "README.md": README}
        init_agent(work, NAME, "1.0.0", files=files)
        git("tag", "v1.0.0", cwd=work)
        git("push", reg.git_url(NAME, tokens["acme"]), "main", "v1.0.0", cwd=work)
        commit(work, {"mcpz.toml": MANIFEST.format(version="1.1.0")}, "1.1.0")
        git("tag", "v1.1.0", cwd=work)
        git("push", reg.git_url(NAME, tokens["acme"]), "main", "v1.1.0", cwd=work)
        t = tokens
        yield World(reg, t["acme"], t["fan"], t["stranger"], t["boss"], t["snitch"], ids)
    finally:
        reg.stop()


_serial = iter(range(1, 10**9))


def called(world: World, who: str, outcome: str = Outcome.OK) -> None:
    """A call of the agent by `who`, written through the usage service as the gateway's flush does."""
    event = UsageEvent(
        id=f"market-{next(_serial):09d}",
        account_id=world.ids[who],
        token_id=None,
        agent=NAME,
        version="1.1.0",
        tool="forecast",
        deployment=NAME,
        replica_id="r1",
        node_id="n1",
        started_us=time.time_ns() // 1000 - 1_000_000,
        duration_us=4000,
        outcome=outcome,
        bytes_in=10,
        bytes_out=20,
    )
    assert world.recorder.record_many([event]).inserted == 1


def test_a_push_makes_a_listing_found_by_search(world: World) -> None:
    answer = world.get("/v1/market/search", q="forecast")
    assert answer.status_code == 200
    body = answer.json()
    [hit] = body["results"]
    assert hit["name"] == NAME and hit["version"] == "1.1.0"
    assert hit["tags"] == ["weather", "forecast"] and hit["license"] == "Apache-2.0"
    assert hit["pricing"] == "free" and hit["rating"] is None and hit["reviews"] == 0
    typo = world.get("/v1/market/search", q="forcast").json()
    assert typo["corrected"] and typo["query"] == "forecast" and typo["results"][0]["name"] == NAME
    nothing = world.get("/v1/market/search", q="weathre-agnet zzz").json()
    assert nothing["results"] == [] and NAME in nothing["suggestions"]


def test_info_renders_the_readme_inert_and_lists_versions(world: World) -> None:
    info = world.get(f"/v1/market/agents/{NAME}").json()
    html = info["readme_html"]
    assert "<strong>forecast</strong>" in html
    # The README of the release's tree, through the renderer test_market_pure proves inert.
    assert html == render(README)
    assert "&lt;script&gt;" in html and 'href="javascript' not in html and "<img" not in html
    assert [v["version"] for v in info["versions"]] == ["1.0.0", "1.1.0"]
    assert info["figures"]["calls_30d"] == 0 and info["namespace"] == "acme"
    assert world.get("/v1/market/agents/acme/nope").status_code == 404


def test_a_review_needs_a_completed_call(world: World) -> None:
    path = f"/v1/market/agents/{NAME}/review"
    assert world.send("PUT", path, None, {"stars": 5}).status_code == 401
    refused = world.send("PUT", path, world.stranger, {"stars": 5, "text": "never used it"})
    assert refused.status_code == 403, refused.text
    assert "only an account that has called acme/weather may review it" in refused.json()["error"]["message"]
    called(world, "stranger", Outcome.TOOL_ERROR)  # a failed call does not count
    assert world.send("PUT", path, world.stranger, {"stars": 1}).status_code == 403
    assert world.send("PUT", path, world.acme, {"stars": 5}).status_code == 403  # the owner
    called(world, "fan")
    called(world, "fan")
    first = world.send("PUT", path, world.fan, {"stars": 3, "text": "ok"})
    assert first.status_code == 200, first.text
    assert first.json()["calls"] == 2 and first.json()["stars"] == 3
    edited = world.send("PUT", path, world.fan, {"stars": 5, "text": "great after 1.1"}).json()
    assert edited["id"] == first.json()["id"] and edited["edits"] == 1
    listing = world.get("/v1/market/search", q="weather").json()["results"][0]
    assert listing["rating"] == 5.0 and listing["reviews"] == 1
    assert world.send("PUT", path, world.fan, {"stars": 6}).status_code == 422


def test_live_figures_come_from_usage_events(world: World) -> None:
    figures = world.get(f"/v1/market/agents/{NAME}").json()["figures"]
    # fan: two completed calls; stranger: one that failed.
    assert (figures["calls_30d"], figures["callers_30d"], figures["ok_30d"]) == (3, 2, 2)
    assert figures["success_rate"] == round(2 / 3, 4) and figures["p50_ms"] == figures["p95_ms"] == 4.0
    db = Database(world.reg.database_url)
    try:
        with db.session() as session:
            assert service.refresh_usage(session) == 1
        with db.session() as session:
            assert service.refresh_usage(session) == 0  # nothing moved since
            per_day = service.calls_per_day(session, NAME, days=7)
    finally:
        db.dispose()
    assert len(per_day) == 7 and sum(n for _, n in per_day) == 3
    popular = world.get("/v1/market/search", sort="popular").json()["results"][0]
    assert (popular["name"], popular["calls_30d"], popular["callers_30d"]) == (NAME, 3, 2)


def test_the_owner_replies_once(world: World) -> None:
    [review] = world.get(f"/v1/market/agents/{NAME}/reviews").json()["reviews"]
    path = f"/v1/market/reviews/{review['id']}/reply"
    assert world.send("POST", path, world.fan, {"text": "me too"}).status_code == 403
    answer = world.send("POST", path, world.acme, {"text": "Thanks!"})
    assert answer.status_code == 200 and answer.json()["reply"] == "Thanks!"
    assert answer.json()["replied_by"] == "acme"
    assert world.send("POST", path, world.acme, {"text": "again"}).status_code == 409


def test_reports_hide_a_review_until_an_admin_decides(world: World) -> None:
    [review] = world.get(f"/v1/market/agents/{NAME}/reviews").json()["reviews"]
    path = f"/v1/market/reviews/{review['id']}/report"
    assert world.send("POST", path, world.fan, {"reason": "mine"}).status_code == 400
    assert world.send("POST", path, world.stranger, {"reason": "spam"}).status_code == 200
    assert world.send("POST", path, world.stranger, {"reason": "spam"}).status_code == 409
    assert world.get(f"/v1/market/agents/{NAME}/reviews").json()["reviews"]  # one report: still shown
    assert world.send("POST", path, world.snitch, {}).status_code == 200
    assert world.get(f"/v1/market/agents/{NAME}/reviews").json()["reviews"] == []
    assert world.get("/v1/market/search", q="weather").json()["results"][0]["reviews"] == 0
    # Only a market admin sees and decides.
    assert world.get(f"/v1/market/agents/{NAME}/reviews", world.acme, hidden="true").status_code == 403
    assert world.get("/v1/market/reported", world.acme).status_code == 403
    [waiting] = world.get("/v1/market/reported", world.admin).json()
    assert waiting["id"] == review["id"] and waiting["hidden"]
    decide = f"/v1/market/reviews/{review['id']}/moderate"
    assert world.send("POST", decide, world.acme, {"decision": "keep"}).status_code == 403
    assert world.send("POST", decide, world.admin, {"decision": "shrug"}).status_code == 400
    kept = world.send("POST", decide, world.admin, {"decision": "keep"}).json()
    assert kept["moderation"] == "kept" and not kept["hidden"]
    assert len(world.get(f"/v1/market/agents/{NAME}/reviews").json()["reviews"]) == 1


def test_the_official_registry_api_shape(world: World) -> None:
    answer = world.get("/v0.1/servers", search="WEATH")
    assert answer.status_code == 200
    body = answer.json()
    assert body["metadata"] == {"count": 1, "nextCursor": None}
    [entry] = body["servers"]
    server = entry["server"]
    assert server["name"] == NAME and server["version"] == "1.1.0"
    assert 1 <= len(server["description"]) <= 100 and server["description"].endswith("…")
    assert server["remotes"] == [{"type": "streamable-http", "url": f"{world.reg.url}/mcp/{NAME}"}]
    mcpz = server["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]["io.mcpz"]
    assert mcpz["pricing"] == "free" and mcpz["rating"] == 5.0 and mcpz["tags"] == ["weather", "forecast"]
    assert {"tools", "toolsDigest", "signatures", "commit", "calls30d"} <= set(mcpz)
    official = entry["_meta"]["io.modelcontextprotocol.registry/official"]
    assert official["status"] == "active" and official["isLatest"] is True
    assert world.get("/v0.1/servers", search="nothing-like-it").json()["servers"] == []
    versions = world.get(f"/v0.1/servers/{NAME.replace('/', '%2F')}/versions").json()
    assert [s["server"]["version"] for s in versions["servers"]] == ["1.1.0", "1.0.0"]
    latest = world.get(f"/v0.1/servers/{NAME}/versions/latest").json()
    assert latest["server"]["version"] == "1.1.0"
    assert world.get(f"/v0.1/servers/{NAME}/versions/1.0.0").json()["server"]["version"] == "1.0.0"
    assert world.get(f"/v0.1/servers/{NAME}/versions/9.9.9").status_code == 404
    future = world.get("/v0.1/servers", updated_since="2999-01-01T00:00:00Z").json()
    assert future["servers"] == []
    assert world.get("/v0.1/servers", updated_since="yesterday-ish").status_code == 400


def test_the_owner_unlists_and_lists(world: World) -> None:
    path = f"/v1/market/agents/{NAME}"
    assert world.send("POST", f"{path}/unlist", world.fan).status_code == 403
    assert world.send("POST", f"{path}/unlist", world.acme).json()["listed"] is False
    assert world.get("/v1/market/search", q="weather").json()["results"] == []
    assert world.get("/v0.1/servers").json()["servers"] == []
    assert world.get(path).status_code == 200  # its page stays reachable by name
    assert world.send("POST", f"{path}/list", world.acme).json()["listed"] is True
    assert world.get("/v1/market/search", q="weather").json()["results"][0]["name"] == NAME


def test_review_writes_are_rate_limited(world: World) -> None:
    path = f"/v1/market/agents/{NAME}/review"
    statuses = [
        world.send("PUT", path, world.fan, {"stars": 4, "text": f"take {i}"}).status_code
        for i in range(WRITE_LIMIT + 1)
    ]
    assert statuses[-1] == 429 and 200 in statuses


def test_cli_search_info_reviews_and_review(world: World, cli: Any) -> None:
    registry = ["--registry", world.reg.url]
    found = cli("--json", "market", "search", "forecast", *registry)
    assert found.exit_code == 0, found.stderr
    [item] = json.loads(found.stdout)
    assert {"name", "description", "version", "rating", "reviews", "calls_30d", "tools"} <= set(item)
    assert item["name"] == NAME and item["version"] == "1.1.0"
    table = cli("market", "search", "forcast", *registry)
    assert table.exit_code == 0 and NAME in table.stdout and 'results for "forecast"' in table.stderr
    none = cli("market", "search", "weathre-agnet", "zzz", *registry)
    assert none.exit_code == 0 and "no agent matches" in none.stdout and NAME in none.stderr
    info = cli("market", "info", NAME, *registry)
    assert info.exit_code == 0 and "1.1.0" in info.stdout and "tags: weather, forecast" in info.stdout
    shown = cli("--json", "market", "reviews", NAME, *registry)
    assert shown.exit_code == 0 and all("calls" in r for r in json.loads(shown.stdout))
    refused = cli("market", "review", NAME, "--stars", "4", *registry, "--token", world.stranger)
    assert refused.exit_code != 0 and "only an account that has called" in refused.stderr
    bad = cli("market", "review", NAME, "--stars", "9", *registry, "--token", world.stranger)
    assert bad.exit_code == 2 and "--stars must be 1 to 5" in bad.stderr
    missing = cli("market", "info", "acme/nothing-here", *registry)
    assert missing.exit_code != 0 and "no published agent acme/nothing-here" in missing.stderr
    assert cli("market", "search", "--sort", "cheap", *registry).exit_code == 2
