"""Marketplace search on SQLite (FTS5 + trigram) and PostgreSQL (tsvector + pg_trgm): a seeded
corpus ranks the same on both; typos, tool names, filters, sorts and suggestions."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from registry_server.accounts.models import Account, Namespace
from registry_server.db import Database, migrate
from registry_server.market import ranking, service
from registry_server.market.models import Listing
from registry_server.market.search import SearchQuery, search
from registry_server.releases.models import Agent, Release
from registry_server.releases.tools import record_tools
from registry_server.storage import RepoStore

WORDS = [
    "weather", "forecast", "calendar", "email", "github", "slack", "postgres", "search", "translate",
    "invoice", "crypto", "wallet", "maps", "geocode", "stock", "news", "pdf", "image", "speech", "notes",
]  # fmt: skip
VERBS = ["get", "list", "create", "delete", "search", "convert", "send", "fetch", "summarise", "watch"]


def corpus(seed: int = 7, size: int = 60) -> list[dict[str, Any]]:
    """Deterministic listings: names, descriptions, tags, tools, ratings and usage."""
    rnd = random.Random(seed)
    items = []
    for i in range(size):
        topic, other = rnd.sample(WORDS, 2)
        tools = [
            {"name": f"{rnd.choice(VERBS)}_{topic}_{j}", "description": f"{rnd.choice(VERBS)} {other} items"}
            for j in range(rnd.randint(1, 6))
        ]
        count = rnd.choice([0, 0, 1, 3, 10, 50])
        items.append(
            {
                "namespace": rnd.choice(["acme", "globex", "initech"]),
                "name": f"{topic}-{other}-{i}",
                "description": f"An agent for {topic} with a little {other}",
                "tags": [topic, rnd.choice(WORDS)],
                "tools": tools,
                "kind": "plugin" if i % 9 == 0 else "agent",
                "readme": f"# {topic}\n\nWorks well with {other}. Keyword zanzibar{i % 4}.",
                "rating": (min(5 * count, round(count * rnd.uniform(2.5, 5))), count),
                "calls": rnd.choice([0, 5, 100, 5000, 100000]),
                "created": i,
            }
        )
    items.append(
        {
            "namespace": "acme",
            "name": "tiny-weather",
            "description": "A new weather agent",
            "tags": ["weather"],
            "tools": [{"name": "get_forecast", "description": "weather forecast"}],
            "kind": "agent",
            "readme": "",
            "rating": (5, 1),
            "calls": 3,
            "created": 1000,
        }
    )
    items.append(
        {
            "namespace": "acme",
            "name": "big-weather",
            "description": "The weather agent everyone uses",
            "tags": ["weather"],
            "tools": [{"name": "get_forecast", "description": "weather forecast"}],
            "kind": "agent",
            "readme": "",
            "rating": (230, 50),
            "calls": 20_000,
            "created": 1001,
        }
    )
    return items


def seed(db: Database, items: list[dict[str, Any]]) -> None:
    now = datetime.now(UTC)
    with db.session() as session:
        owner = Account(name="owner", created_at=now)
        session.add(owner)
        session.flush()
        for ns in sorted({item["namespace"] for item in items}):
            session.add(Namespace(name=ns, owner_id=owner.id, created_at=now))
        session.flush()
        for item in items:
            full = f"{item['namespace']}/{item['name']}"
            agent = Agent(name=full, namespace=item["namespace"], created_at=now)
            session.add(agent)
            session.flush()
            listing = service.index_listing(
                session,
                service.ListingSource(
                    agent_id=agent.id,
                    name=full,
                    description=item["description"],
                    kind=item["kind"],
                    tags=service.clean_tags(item["tags"]),
                    version="1.0.0",
                    tools=item["tools"],
                    readme=item["readme"],
                    created_us=item["created"],
                    updated_us=item["created"],
                ),
            )
            stars, count = item["rating"]
            listing.rating_sum, listing.rating_count, listing.calls_30d = stars, count, item["calls"]
            listing.rating_key = ranking.rating_key(stars, count)
            listing.quality = ranking.quality_key(stars, count, item["calls"])


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('market') / 'registry.db'}")
    migrate(db.engine)
    seed(db, corpus())
    yield db
    db.dispose()


@pytest.fixture
def both(sqlite_db: Database, postgres_url: str) -> Iterator[tuple[Database, Database]]:
    pg = Database(postgres_url)
    migrate(pg.engine)
    seed(pg, corpus())
    yield sqlite_db, pg
    pg.dispose()


def names(db: Database, **query: Any) -> list[str]:
    with db.session() as session:
        return [item.name for item in search(session, SearchQuery(**query)).listings]


def result(db: Database, **query: Any) -> Any:
    with db.session() as session:
        return search(session, SearchQuery(**query))


QUERIES: list[dict[str, Any]] = [
    {"text": "weather"},
    {"text": "weather forecast"},
    {"text": "get"},
    {"text": "slack", "sort": "popular"},
    {"text": "email", "sort": "rating"},
    {"text": "maps", "sort": "new"},
    {"text": "zanzibar1"},
    {"text": "", "limit": 50},
    {"text": "", "sort": "popular", "limit": 50},
    {"text": "search", "kind": "plugin"},
    {"text": "", "tag": "weather"},
    {"text": "news", "min_rating": 4.0},
    {"text": "crypto", "free": True, "namespace": "acme"},
    {"text": "wether"},
    {"text": "forcast"},
    {"text": "pd"},
    {"text": "stock", "offset": 2, "limit": 3},
]


@pytest.mark.postgres
@pytest.mark.slow
def test_the_same_query_ranks_the_same_on_sqlite_and_postgres(both: tuple[Database, Database]) -> None:
    sqlite, pg = both
    compared = 0
    for query in QUERIES:
        a, b = result(sqlite, **query), result(pg, **query)
        assert [x.name for x in a.listings] == [x.name for x in b.listings], query
        assert (a.query, a.corrected, a.suggestions, a.more) == (b.query, b.corrected, b.suggestions, b.more)
        compared += len(a.listings)
    assert compared > 100  # the queries really return listings


def test_a_tool_name_finds_its_agent(sqlite_db: Database) -> None:
    with sqlite_db.session() as session:
        tool = session.scalar(select(Listing.tools).where(Listing.name == "acme/tiny-weather"))
    assert tool == '["get_forecast"]'
    found = names(sqlite_db, text="get_forecast")
    assert {"acme/tiny-weather", "acme/big-weather"} <= set(found)
    # A tool's description is searchable too, and so is the README.
    assert names(sqlite_db, text="zanzibar2")
    assert all(int(n.rsplit("-", 1)[1]) % 4 == 2 for n in names(sqlite_db, text="zanzibar2", limit=100))


def test_a_typo_is_corrected_and_finds_the_agent(sqlite_db: Database) -> None:
    answer = result(sqlite_db, text="wether forcast")
    assert answer.corrected and answer.query == "weather forecast"
    assert "acme/big-weather" in [x.name for x in answer.listings]


def test_no_hit_suggests_the_closest_names(sqlite_db: Database) -> None:
    answer = result(sqlite_db, text="tiny-wheatherx qqq")
    assert answer.listings == []
    assert "acme/tiny-weather" in answer.suggestions


def test_a_well_used_agent_outranks_a_newcomer_with_one_five_star_review(sqlite_db: Database) -> None:
    found = names(sqlite_db, text="weather agent")
    assert found.index("acme/big-weather") < found.index("acme/tiny-weather")


def test_filters_and_sorts(sqlite_db: Database) -> None:
    plugins = result(sqlite_db, kind="plugin", limit=100).listings
    assert plugins and all(x.kind == "plugin" for x in plugins)
    tagged = result(sqlite_db, tag="Weather", limit=100).listings
    assert tagged and all("weather" in x.tags for x in tagged)
    rated = result(sqlite_db, min_rating=4.5, limit=100).listings
    assert rated and all(x.rating is not None and x.rating >= 4.5 for x in rated)
    assert result(sqlite_db, free=False).listings == []  # everything is free until billing
    popular = result(sqlite_db, sort="popular", limit=100).listings
    assert [x.calls_30d for x in popular] == sorted((x.calls_30d for x in popular), reverse=True)
    newest = result(sqlite_db, sort="new", limit=5).listings
    assert [x.name for x in newest][:2] == ["acme/big-weather", "acme/tiny-weather"]
    by_rating = result(sqlite_db, sort="rating", limit=100).listings
    assert [x.rating_bayes for x in by_rating] == sorted((x.rating_bayes for x in by_rating), reverse=True)
    first, second = result(sqlite_db, limit=5), result(sqlite_db, limit=5, offset=5)
    assert first.more and not {x.name for x in first.listings} & {x.name for x in second.listings}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"sort": "cheapest"}, 'unknown sort "cheapest"'),
        ({"kind": "robot"}, 'unknown kind "robot"'),
        ({"min_rating": 9.0}, "the minimum rating is between 1 and 5"),
        ({"limit": 0}, "the limit is between 1 and 100"),
        ({"text": "x" * 300}, "the query is longer than 200 characters"),
    ],
)
def test_bad_queries_say_what_is_wrong(sqlite_db: Database, query: dict[str, Any], message: str) -> None:
    from mcpz.errors import UsageError

    with pytest.raises(UsageError, match=message):
        result(sqlite_db, **query)


def test_hostile_query_text_is_only_terms(sqlite_db: Database) -> None:
    for text in ['"weather', "weather*", "NEAR(a b)", "a OR b", "x' OR 1=1 --", "a:*|b", "(", "^"]:
        result(sqlite_db, text=text)  # no FTS5 / tsquery syntax error reaches the caller


def test_unlisted_agents_leave_search_and_come_back(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    migrate(db.engine)
    seed(db, corpus(size=5))
    repos = RepoStore(tmp_path / "repos")
    with db.session() as session:
        service.set_listed(session, repos, "acme/big-weather", False)
    assert "acme/big-weather" not in names(db, text="weather", limit=100)
    with db.session() as session:
        service.set_listed(session, repos, "acme/big-weather", True)
    assert "acme/big-weather" in names(db, text="weather", limit=100)
    db.dispose()


def test_listings_follow_releases_and_their_pinned_tools(tmp_path: Path) -> None:
    """A listing is built from the release rows (manifest keywords -> tags, the latest version's
    tools), and rebuilt when the agent's serial moves."""
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    migrate(db.engine)
    repos = RepoStore(tmp_path / "repos")
    now = datetime.now(UTC)
    manifest = (
        '[agent]\nname = "acme/calc"\nversion = "{v}"\ndescription = "Arithmetic"\n'
        'license = "MIT"\nkeywords = ["Math", "numbers"]\n\n[run]\ncommand = ["python", "server.py"]\n'
    )
    with db.session() as session:
        owner = Account(name="alice", created_at=now)
        session.add(owner)
        session.flush()
        session.add(Namespace(name="acme", owner_id=owner.id, created_at=now))
        agent = Agent(name="acme/calc", namespace="acme", created_at=now, serial=1)
        session.add(agent)
        session.flush()
        first = Release(
            agent_id=agent.id,
            version="1.0.0",
            commit="0" * 40,
            manifest=manifest.format(v="1.0.0"),
            publisher_id=owner.id,
            published_at=now,
        )
        session.add(first)
        session.flush()
        record_tools(session, first.id, [{"name": "add", "description": "Add two numbers"}], observed=False)
    with db.session() as session:
        assert service.stale_agents(session) == ["acme/calc"]
        assert service.refresh_stale(session, repos) == 1
        assert service.stale_agents(session) == []
    assert names(db, text="add") == ["acme/calc"]
    [calc] = result(db, text="numbers").listings
    assert (calc.tags, calc.license) == (["math", "numbers"], "MIT")
    assert (calc.version, calc.tools) == ("1.0.0", ["add"])
    with db.session() as session:
        again = session.scalar(select(Agent).where(Agent.name == "acme/calc"))
        assert again is not None
        agent = again
        second = Release(
            agent_id=agent.id,
            version="2.0.0",
            commit="1" * 40,
            manifest=manifest.format(v="2.0.0"),
            publisher_id=1,
            published_at=now,
        )
        session.add(second)
        session.flush()
        record_tools(
            session,
            second.id,
            [{"name": "add", "description": "Add numbers"}, {"name": "multiply"}],
            observed=False,
        )
        agent.serial += 1
    with db.session() as session:
        info = service.info(session, repos, "acme/calc")
    assert info.summary.version == "2.0.0" and info.summary.tools == ["add", "multiply"]
    assert [v.version for v in info.versions] == ["1.0.0", "2.0.0"]
    [log] = info.changelog
    assert (log.older, log.newer, log.added) == ("1.0.0", "2.0.0", ["multiply"])
    assert names(db, text="multiply") == ["acme/calc"]
    db.dispose()


def test_the_bulk_index_finds_and_ranks_as_one_by_one(sqlite_db: Database, tmp_path: Path) -> None:
    """`index_new` (a first index of many agents) stores what `index_listing` stores."""
    items = corpus()
    db = Database(f"sqlite:///{tmp_path / 'bulk.db'}")
    migrate(db.engine)
    now = datetime.now(UTC)
    with db.session() as session:
        owner = Account(name="owner", created_at=now)
        session.add(owner)
        session.flush()
        for ns in sorted({item["namespace"] for item in items}):
            session.add(Namespace(name=ns, owner_id=owner.id, created_at=now))
        agents = []
        for item in items:
            agent = Agent(
                name=f"{item['namespace']}/{item['name']}", namespace=item["namespace"], created_at=now
            )
            session.add(agent)
            agents.append(agent)
        session.flush()
        sources = [
            service.ListingSource(
                agent_id=agent.id,
                name=agent.name,
                description=item["description"],
                kind=item["kind"],
                tags=service.clean_tags(item["tags"]),
                version="1.0.0",
                tools=item["tools"],
                readme=item["readme"],
                created_us=item["created"],
                updated_us=item["created"],
            )
            for agent, item in zip(agents, items, strict=True)
        ]
        assert service.index_new(session, sources) == len(items)
        session.flush()
        for agent, item in zip(agents, items, strict=True):
            listing = session.get(Listing, agent.id)
            assert listing is not None
            stars, count = item["rating"]
            listing.rating_sum, listing.rating_count, listing.calls_30d = stars, count, item["calls"]
            listing.rating_key = ranking.rating_key(stars, count)
            listing.quality = ranking.quality_key(stars, count, item["calls"])
    for query in QUERIES:
        assert names(db, **query) == names(sqlite_db, **query), query
    db.dispose()


def test_the_registry_api_pages_by_name_with_a_cursor(tmp_path: Path) -> None:
    from registry_server.market import registry_api

    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    migrate(db.engine)
    repos = RepoStore(tmp_path / "repos")
    now = datetime.now(UTC)
    with db.session() as session:
        owner = Account(name="alice", created_at=now)
        session.add(owner)
        session.flush()
        session.add(Namespace(name="acme", owner_id=owner.id, created_at=now))
        for short in ("zeta", "alpha", "mid"):
            agent = Agent(name=f"acme/{short}", namespace="acme", created_at=now, serial=1)
            session.add(agent)
            session.flush()
            manifest = f'[agent]\nname = "acme/{short}"\nversion = "1.0.0"\n\n[run]\ncommand = ["x"]\n'
            session.add(
                Release(
                    agent_id=agent.id,
                    version="1.0.0",
                    commit="0" * 40,
                    manifest=manifest,
                    publisher_id=owner.id,
                    published_at=now,
                )
            )
        session.flush()
        assert service.refresh_stale(session, repos) == 3
    seen, cursor = [], None
    with db.session() as session:
        for _ in range(5):
            page, cursor = registry_api.servers(session, None, cursor, 2, None)
            seen += [entry.summary.name for entry in page]
            if cursor is None:
                break
        assert seen == ["acme/alpha", "acme/mid", "acme/zeta"]
        found, _ = registry_api.servers(session, "ZET", None, 10, None)
        assert [entry.summary.name for entry in found] == ["acme/zeta"]
        assert registry_api.servers(session, "%", None, 10, None)[0] == []  # a literal, not a wildcard
        entry = registry_api.server_response(found[0], "https://reg.example/")
    assert entry["server"]["remotes"][0]["url"] == "https://reg.example/mcp/acme/zeta"
    assert entry["server"]["description"] == "acme/zeta"  # no description: the name
    db.dispose()


def test_descriptions_are_cut_to_100_characters_on_a_word() -> None:
    from registry_server.market.registry_api import short_description

    long = "word " * 40
    cut = short_description(long, "a/b")
    assert len(cut) <= 100 and cut.endswith("…") and not cut.endswith(" …")
    assert short_description("  short\n text ", "a/b") == "short text"
