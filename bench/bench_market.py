"""Marketplace search over 100,000 generated listings, on SQLite and on PostgreSQL: mcpz's search
beside the official MCP Registry's method (a case-insensitive substring of the name).

The corpus is generated from a fixed seed: names `namespace/adjective-noun-N` from a vocabulary
of services and topics, a one-sentence description, two or three tags, and 1-20 tools each
(`verb_noun`, with a description). It is written in-process through the market's own bulk path
(`registry_server.market.service.index_new`, after the agents rows), into a fresh database
migrated by the registry's Alembic tree; the time of that write is the index build, from scratch.
READMEs are left empty (rendering 100,000 of them measures markdown-it, not search).

Then, in the same process and one session per query, as the API does:

- mcpz: `registry_server.market.search.search` (full text: FTS5 / tsvector; the relevance sort,
  which also scores candidates in Python; 20 results);
- substring: `SELECT ... WHERE listed AND name ILIKE '%q%' ORDER BY name LIMIT 20` on the same
  listings table (LIKE on SQLite, which is case-insensitive for ASCII), as the official registry's
  `search` parameter does.

Queries: single words and word pairs of the vocabulary, misspelt words, and tool names (exactly
as an agent's tools/list spells them, e.g. `list_invoices`). For a tool-name query, recall is the
share of the agents that have that tool which appear in the 20 results (of at most 20): for each
method, over every tool-name query.

Goals (issue 14): p99 under 20 ms on both databases for mcpz's search. PostgreSQL is
127.0.0.1:5432 (database `test`, trust) or MCPZ_TEST_POSTGRES_URL; a fresh database is made and
dropped. Without it its rows print as unmeasured.

    python bench/bench_market.py [--listings 100000] [--rounds 3] [--no-postgres] [--smoke]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _goals as g
import _registry as rb
from _postgres import postgres_base, scratch_database

GOAL_P99_MS = 20.0
LIMIT = 20

SERVICES = """
github gitlab jira notion slack discord gmail outlook calendar drive dropbox figma linear asana
trello stripe shopify paypal salesforce hubspot zendesk intercom twilio sendgrid mailchimp airtable
postgres mysql mongodb redis elastic snowflake bigquery kafka s3 azure gcp kubernetes docker
terraform vercel netlify cloudflare datadog sentry grafana pagerduty openai anthropic huggingface
youtube spotify twitter reddit linkedin wikipedia arxiv pubmed weather maps geocode flights hotels
translate pdf excel csv markdown latex image audio video speech ocr crypto wallet ethereum bitcoin
stocks news rss calendar todo notes contacts invoices payroll tax accounting crm inventory shipping
""".split()
TOPICS = """
search sync backup monitor alerts reports analytics dashboard automation assistant scraper crawler
converter summariser translator scheduler tracker manager explorer inspector validator formatter
generator indexer planner notifier uploader downloader reader writer editor viewer browser
""".split()
VERBS = """
get list create update delete search find fetch send read write upload download convert summarise
translate schedule cancel track query export import sync watch notify approve archive tag
""".split()
NOUNS = """
issues pulls commits files folders messages channels events invoices payments customers orders
products tickets contacts deals tasks projects pages records rows tables documents images videos
forecasts alerts prices quotes articles papers repos branches releases users teams comments
""".split()
ADJECTIVES = "fast tiny open smart simple secure cloud local super easy mega micro rapid".split()


@dataclass(frozen=True)
class Item:
    name: str
    description: str
    tags: list[str]
    tools: list[dict[str, str]]


def corpus(size: int, seed: int = 14) -> list[Item]:
    rng = random.Random(seed)
    namespaces = [f"{rng.choice(ADJECTIVES)}-{rng.choice(SERVICES)}-{i}" for i in range(max(10, size // 50))]
    items = []
    for i in range(size):
        service, topic = rng.choice(SERVICES), rng.choice(TOPICS)
        name = f"{rng.choice(namespaces)}/{service}-{topic}-{i}"
        tools = []
        seen: set[str] = set()
        for _ in range(rng.randint(1, 20)):
            verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
            tool = f"{verb}_{noun}"
            if tool in seen:
                continue
            seen.add(tool)
            tools.append({"name": tool, "description": f"{verb.capitalize()} {noun} in {service}"})
        description = (
            f"A {topic} for {service}: {rng.choice(VERBS)} {rng.choice(NOUNS)} and "
            f"{rng.choice(VERBS)} {rng.choice(NOUNS)} from your {rng.choice(SERVICES)} account"
        )
        tags = sorted({service, topic, rng.choice(SERVICES)})
        items.append(Item(name, description, tags, tools))
    return items


@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A scratch database, or None (said why) when no PostgreSQL is usable."""
    from sqlalchemy.engine import make_url

    base = postgres_base()
    if base is None:
        yield None
        return
    with ExitStack() as stack:
        url: str | None = None
        try:
            url = stack.enter_context(scratch_database(base, "market"))
        except Exception as e:
            print(f"PostgreSQL at {make_url(base).render_as_string(hide_password=True)} is not usable: {e}")
        yield url


def build(url: str, items: list[Item]) -> tuple[Any, float, float]:
    """A migrated database holding `items` as listings: (database, seconds for the agents rows,
    seconds for the index build)."""
    from sqlalchemy import insert, select

    from registry_server.accounts.models import Account, Namespace
    from registry_server.db import Database, migrate
    from registry_server.market.service import ListingSource, index_new
    from registry_server.releases.models import Agent

    db = Database(url)
    migrate(db.engine)
    now = datetime.now(UTC)
    started = time.perf_counter()
    with db.session() as session:
        owner = Account(name="bench", created_at=now)
        session.add(owner)
        session.flush()
        namespaces = sorted({item.name.split("/")[0] for item in items})
        session.execute(
            insert(Namespace), [{"name": n, "owner_id": owner.id, "created_at": now} for n in namespaces]
        )
        rows = [
            {
                "name": item.name,
                "namespace": item.name.split("/")[0],
                "description": "",
                "created_at": now,
                "serial": 1,
            }
            for item in items
        ]
        for start in range(0, len(rows), 1000):
            session.execute(insert(Agent), rows[start : start + 1000])
    with db.session() as session:
        ids = dict(session.execute(select(Agent.name, Agent.id)).all())
    agents_s = time.perf_counter() - started
    started = time.perf_counter()
    with db.session() as session:
        sources = [
            ListingSource(
                agent_id=ids[item.name],
                name=item.name,
                description=item.description,
                tags=item.tags,
                version="1.0.0",
                tools=item.tools,
                created_us=i,
                updated_us=i,
                serial=1,
            )
            for i, item in enumerate(items)
        ]
        index_new(session, sources)
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    else:
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    index_s = time.perf_counter() - started
    return db, agents_s, index_s


@dataclass(frozen=True)
class Query:
    text: str
    kind: str  # word, pair, typo, tool
    owners: frozenset[str] = frozenset()  # tool queries: the agents that have the tool


def queries(items: list[Item], count: int, seed: int = 5) -> list[Query]:
    rng = random.Random(seed)
    out: list[Query] = []
    words = SERVICES + TOPICS + NOUNS
    for _ in range(count):
        out.append(Query(rng.choice(words), "word"))
        out.append(Query(f"{rng.choice(SERVICES)} {rng.choice(TOPICS)}", "pair"))
        word = rng.choice([w for w in SERVICES + TOPICS if len(w) >= 6])
        cut = rng.randrange(1, len(word) - 1)
        out.append(Query(word[:cut] + word[cut + 1 :], "typo"))
    by_tool: dict[str, set[str]] = {}
    for item in items:
        for tool in item.tools:
            by_tool.setdefault(tool["name"], set()).add(item.name)
    tools = sorted(by_tool)
    for _ in range(count):
        picked = rng.choice(tools)
        out.append(Query(picked, "tool", frozenset(by_tool[picked])))
    return out


def ours(db: Any) -> Callable[[str], list[str]]:
    from registry_server.market.search import SearchQuery, search

    def run(text: str) -> list[str]:
        with db.session() as session:
            return [x.name for x in search(session, SearchQuery(text=text, limit=LIMIT)).listings]

    return run


def substring(db: Any) -> Callable[[str], list[str]]:
    from sqlalchemy import select

    from registry_server.market.models import Listing

    def run(text: str) -> list[str]:
        escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = (
            select(Listing.name)
            .where(Listing.listed.is_(True), Listing.name.ilike(f"%{escaped}%", escape="\\"))
            .order_by(Listing.name)
            .limit(LIMIT)
        )
        with db.session() as session:
            return list(session.scalars(statement))

    return run


def measure(method: Callable[[str], list[str]], qs: list[Query], rounds: int) -> dict[str, Any]:
    for q in qs[: min(10, len(qs))]:  # warm-up: caches, prepared statements
        method(q.text)
    times: list[float] = []
    by_kind: dict[str, list[float]] = {}
    recalls: list[float] = []
    empty = 0
    for r in range(rounds):
        for q in qs:
            t = time.perf_counter()
            found = method(q.text)
            times.append(time.perf_counter() - t)
            by_kind.setdefault(q.kind, []).append((time.perf_counter() - t) * 1000)
            if r == 0:
                empty += not found
                if q.kind == "tool":
                    recalls.append(len(set(found) & q.owners) / min(len(q.owners), LIMIT))
    ms = [x * 1000 for x in times]
    return {
        "p50_ms": round(rb.percentile(ms, 50), 2),
        "p99_ms": round(rb.percentile(ms, 99), 2),
        "mean_ms": round(sum(ms) / len(ms), 2),
        "queries": len(qs),
        "samples": len(ms),
        "no_result": empty,
        "tool_recall": round(sum(recalls) / len(recalls), 3) if recalls else None,
        "p99_ms_by_kind": {k: round(rb.percentile(v, 99), 2) for k, v in sorted(by_kind.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=25, help="of each kind (word, pair, typo, tool)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.listings, args.queries, args.rounds = 300, 4, 1
    info = rb.print_machine(f"market: search over {args.listings:,} listings, mcpz vs name substring")
    load_before = g.load()
    items = corpus(args.listings)
    qs = queries(items, args.queries)
    print(
        f"corpus: {len(items):,} listings, {sum(len(i.tools) for i in items):,} tools; "
        f"{len(qs)} queries ({args.queries} each: word, pair, typo, tool name) x {args.rounds} rounds"
    )
    results: dict[str, dict[str, Any]] = {}
    builds: dict[str, dict[str, float]] = {}
    with rb.Workdir("bench-market", keep=args.keep) as work:
        backends: list[tuple[str, Any]] = [("sqlite", f"sqlite:///{work.path / 'registry.db'}")]
        with postgres_database() as pg:
            if pg is not None and not args.no_postgres:
                backends.append(("postgres", pg))
            for backend, url in backends:
                db, agents_s, index_s = build(url, items)
                builds[backend] = {"agents_s": round(agents_s, 2), "index_s": round(index_s, 2)}
                print(f"{backend}: agents rows {agents_s:.1f} s, index build {index_s:.1f} s")
                try:
                    results[f"{backend}/mcpz"] = measure(ours(db), qs, args.rounds)
                    results[f"{backend}/substring"] = measure(substring(db), qs, args.rounds)
                finally:
                    db.dispose()
    rows = []
    for key, r in results.items():
        backend, method = key.split("/")
        rows.append(
            [
                backend,
                method,
                r["p50_ms"],
                r["p99_ms"],
                r["mean_ms"],
                f"{r['no_result']}/{r['queries']}",
                f"{r['tool_recall']:.0%}" if r["tool_recall"] is not None else "-",
                builds[backend]["index_s"],
            ]
        )
    print()
    print(
        rb.table(["db", "method", "p50 ms", "p99 ms", "mean ms", "no result", "tool recall", "index s"], rows)
    )
    for key, r in results.items():
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in r["p99_ms_by_kind"].items())
        print(f"{key} p99 ms by query kind: {kinds}")
    goals = []
    for backend in ("sqlite", "postgres"):
        mine = results.get(f"{backend}/mcpz")
        goals.append(
            g.below(
                f"{backend}: mcpz search p99 < {GOAL_P99_MS:.0f} ms over {args.listings:,} listings",
                mine["p99_ms"] if mine else None,
                GOAL_P99_MS,
                f"{mine['p99_ms']:.2f} ms" if mine else "",
                missing="PostgreSQL not reachable (or --no-postgres)",
            )
        )
        if mine is not None:
            sub = results[f"{backend}/substring"]
            goals.append(
                g.holds(
                    f"{backend}: a tool name finds its agents (recall of mcpz >= substring)",
                    mine["tool_recall"] is not None and mine["tool_recall"] >= (sub["tool_recall"] or 0),
                    f"mcpz {mine['tool_recall']:.0%}, substring {sub['tool_recall']:.0%}",
                )
            )
    g.finish(
        "market",
        info,
        load_before,
        goals,
        {"listings": args.listings, "rounds": args.rounds, "builds": builds, "results": results},
        smoke=args.smoke,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
