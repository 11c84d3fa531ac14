"""`mcpz.client.index` against a live registry: batching, breadth-first closure, ETag cache, offline.

Releases are inserted into the live registry's database through the registry's own functions
(`releases.record_releases`), as `bench/bench_index.py` does: this module tests how the index is
read, and pushing over git (tested in test_deps_cli.py) would only make it slower.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from conftest import LiveRegistry

from mcpz.client.index import (
    MAX_BATCH,
    IndexCache,
    IndexClient,
    OfflineError,
    Snapshot,
    batch_key,
    partition,
    registry_key,
)
from mcpz.client.registry import RegistryClient
from mcpz.errors import NetworkError, NotFoundError

# --- pure ---------------------------------------------------------------------------------------


def test_partition_is_bounded_complete_and_stable() -> None:
    names = [f"eco/p{i:04d}" for i in range(1000)]
    batches = partition(names, 100)
    assert all(0 < len(b) <= 100 for b in batches)
    assert sorted(n for b in batches for n in b) == names
    assert partition(list(reversed(names)), 100) == batches
    # One more name lands in one batch; every other batch keeps its names (and its cache key).
    grown = partition([*names, "eco/new"], 100)
    assert len(grown) == len(batches)
    assert sum(1 for b in grown if batch_key(b) not in {batch_key(x) for x in batches}) == 1
    # Never more than the registry takes, whatever is asked.
    assert all(len(b) <= MAX_BATCH for b in partition([f"a/n{i}" for i in range(2500)], 5000))
    assert partition(["a/b"], 100) == [["a/b"]]
    assert partition([], 100) == []


def test_registry_key_is_readable_and_distinct() -> None:
    key = registry_key("http://127.0.0.1:8080/")
    assert key.startswith("127.0.0.1_8080-")
    assert key == registry_key("http://127.0.0.1:8080")
    assert key != registry_key("https://127.0.0.1:8080")


# --- a registry filled in-process ---------------------------------------------------------------


def insert(
    reg: LiveRegistry,
    name: str,
    versions: Sequence[tuple[str, Mapping[str, str]]],
    *,
    yanked: Sequence[str] = (),
) -> dict[str, str]:
    """Publish releases of `name` straight into the registry's database; return version -> commit."""
    from sqlalchemy import select

    from mcpz.manifest import parse_manifest
    from registry_server.accounts import service as accounts
    from registry_server.db import Database
    from registry_server.orm import utcnow
    from registry_server.releases.models import Agent
    from registry_server.releases.service import PlannedRelease, record_releases, set_yanked

    namespace = name.split("/")[0]
    commits: dict[str, str] = {}
    db = Database(reg.database_url)
    try:
        with db.session() as session:
            try:
                account = accounts.account_by_name(session, namespace)
            except NotFoundError:
                account = accounts.create_account(session, namespace)
            agent = session.scalar(select(Agent).where(Agent.name == name))
            if agent is None:
                agent = Agent(name=name, namespace=namespace, description="", created_at=utcnow(), serial=0)
                session.add(agent)
                session.flush()
            planned = []
            for version, deps in versions:
                lines = "".join(f'"{k}" = "{v}"\n' for k, v in sorted(deps.items()))
                text = f'[agent]\nname = "{name}"\nversion = "{version}"\nkind = "plugin"\n'
                text += f"\n[dependencies]\n{lines}" if deps else ""
                commits[version] = secrets.token_hex(20)
                planned.append(PlannedRelease(version, commits[version], parse_manifest(text), text))
            record_releases(session, agent, account.id, planned)
        with db.session() as session:
            for version in yanked:
                set_yanked(session, name, version, True, "test")
    finally:
        db.dispose()
    return commits


@pytest.fixture
def reg(sqlite_registry: LiveRegistry) -> Iterator[LiveRegistry]:
    #   t/a -> t/b -> t/c (each version may depend on other names), t/d -> t/a, t/solo alone
    insert(sqlite_registry, "t/c", [("1.0.0", {}), ("2.0.0b1", {})])
    insert(sqlite_registry, "t/b", [("1.0.0", {"t/c": ">=1"}), ("1.1.0", {"t/c": ">=1", "t/e": "*"})])
    insert(sqlite_registry, "t/e", [("0.1.0", {})], yanked=["0.1.0"])
    insert(sqlite_registry, "t/a", [("1.0.0", {"t/b": "^1.0"})])
    insert(sqlite_registry, "t/d", [("3.0.0", {"t/a": "*"})])
    insert(sqlite_registry, "t/solo", [("1.0.0", {})])
    yield sqlite_registry


def closure(reg: LiveRegistry, cache: Path | None, roots: Sequence[str], **kw: Any) -> Snapshot:
    """The closure as a client that asks only in batches and rounds (`server_closure=False`)."""
    kw.setdefault("server_closure", False)

    async def go() -> Snapshot:
        async with IndexClient(reg.url, cache_root=cache, **kw) as client:
            return await client.closure(roots)

    return anyio.run(go)


def test_closure_is_breadth_first_and_complete(reg: LiveRegistry, tmp_path: Path) -> None:
    snapshot = closure(reg, tmp_path / "cache", ["t/d"])
    index = snapshot.index
    assert index.names() == ["t/a", "t/b", "t/c", "t/d", "t/e"]
    # A cold cache: one round per level, {d} -> {a} -> {b} -> {c, e}, every version's dependencies
    # followed; then the closure once more in its own batches (one here), for the next run's 304s.
    assert snapshot.stats.rounds == 5
    assert snapshot.stats.requests == snapshot.stats.downloaded == 5
    assert snapshot.missing == set()
    release = index.get("t/b", "1.1.0")
    assert release is not None and release.dependency_texts == {"t/c": ">=1", "t/e": "*"}
    yanked = index.get("t/e", "0.1.0")
    assert yanked is not None and yanked.yanked
    assert [str(r.version) for r in index.releases("t/c")] == ["2.0.0b1", "1.0.0"]
    assert len(index.get("t/a", "1.0.0").commit) == 40  # type: ignore[union-attr]
    # Without a cache there is nothing to ask for twice.
    uncached = closure(reg, None, ["t/d"])
    assert (uncached.stats.rounds, uncached.stats.requests) == (4, 4)
    assert uncached.index.to_dict() == index.to_dict()


def test_a_warm_closure_is_one_round_of_304s(reg: LiveRegistry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = closure(reg, cache, ["t/d", "t/solo"])
    warm = closure(reg, cache, ["t/d", "t/solo"])
    assert warm.stats.rounds == 1
    assert warm.stats.requests == warm.stats.not_modified == 1
    assert warm.stats.downloaded == 0 and warm.stats.bytes == 0
    assert warm.index.to_dict() == cold.index.to_dict()
    chunks = list(IndexCache(cache, reg.url).chunks.glob("*.json"))
    assert len(chunks) == 1
    record = json.loads(chunks[0].read_text())
    assert record["registry"] == reg.url and record["etag"]
    assert record["names"] == ["t/a", "t/b", "t/c", "t/d", "t/e", "t/solo"]

    # One agent changes: only the batch that holds it comes back with a body (one name per batch).
    closure(reg, cache, ["t/d", "t/solo"], batch_size=1)
    insert(reg, "t/solo", [("1.1.0", {})])
    after = closure(reg, cache, ["t/d", "t/solo"], batch_size=1)
    assert (after.stats.rounds, after.stats.downloaded, after.stats.not_modified) == (1, 1, 5)
    assert [str(r.version) for r in after.index.releases("t/solo")] == ["1.1.0", "1.0.0"]

    # A new dependency: the first round (the prediction) reaches it, a second asks for it, a third
    # re-batches the closure; the run after is one round of 304s again.
    insert(reg, "t/solo", [("1.2.0", {"t/new": "*"})])
    insert(reg, "t/new", [("0.1.0", {})])
    grown = closure(reg, cache, ["t/d", "t/solo"])
    assert "t/new" in grown.index
    assert grown.stats.rounds == 3
    again = closure(reg, cache, ["t/d", "t/solo"])
    assert (again.stats.rounds, again.stats.requests, again.stats.not_modified) == (1, 1, 1)


def test_other_roots_are_predicted_from_what_the_cache_holds(reg: LiveRegistry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    closure(reg, cache, ["t/d"])
    # Never locked with these roots, but every name is in the cache: one round, not four.
    subset = closure(reg, cache, ["t/b", "t/solo"])
    assert subset.index.names() == ["t/b", "t/c", "t/e", "t/solo"]
    assert subset.stats.rounds == 1


def test_the_batches_of_a_round_are_sent_concurrently(reg: LiveRegistry, tmp_path: Path) -> None:
    names = [f"t/w{i:02d}" for i in range(24)]
    for name in names:
        insert(reg, name, [("1.0.0", {})])
    in_flight = {"now": 0, "most": 0}

    async def on_request(_request: Any) -> None:
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])

    async def on_response(_response: Any) -> None:
        in_flight["now"] -= 1

    async def go() -> Snapshot:
        http = RegistryClient(reg.url)
        http._http.event_hooks = {"request": [on_request], "response": [on_response]}
        try:
            client = IndexClient(
                reg.url, cache_root=tmp_path / "cache", batch_size=1, client=http, server_closure=False
            )
            return await client.closure(names)
        finally:
            await http.aclose()

    snapshot = anyio.run(go)
    assert (snapshot.stats.rounds, snapshot.stats.requests) == (1, 24)
    assert sorted(snapshot.index.names()) == names
    assert in_flight["most"] > 1


def test_missing_names_are_reported_and_remembered(reg: LiveRegistry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    snapshot = closure(reg, cache, ["t/a", "t/nope"])
    assert snapshot.missing == {"t/nope"}
    assert "t/nope" not in snapshot.index
    offline = closure(reg, cache, ["t/a", "t/nope"], offline=True)
    assert offline.missing == {"t/nope"}


def test_offline_reads_only_the_cache_and_names_what_it_lacks(reg: LiveRegistry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    online = closure(reg, cache, ["t/d", "t/solo"])
    reg.stop()
    with pytest.raises(NetworkError, match="cannot reach the registry"):
        closure(reg, cache, ["t/d"])
    offline = closure(reg, cache, ["t/d", "t/solo"], offline=True)
    assert offline.stats.requests == 0 and offline.stats.from_cache > 0
    assert offline.index.to_dict() == online.index.to_dict()
    # Other roots make other batches; every name is still found in what the cache holds.
    subset = closure(reg, cache, ["t/b"], offline=True)
    assert subset.index.names() == ["t/b", "t/c", "t/e"]
    with pytest.raises(OfflineError) as missing:
        closure(reg, cache, ["t/b", "t/x", "t/y"], offline=True)
    assert missing.value.message == "--offline: the cache holds no index entry for t/x, t/y"
    assert missing.value.exit_code == 6
    with pytest.raises(OfflineError):
        closure(reg, None, ["t/b"], offline=True)


def test_an_unreadable_cache_entry_is_fetched_again(reg: LiveRegistry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    closure(reg, cache, ["t/a"])
    folder = IndexCache(cache, reg.url).chunks
    for path in folder.glob("*.json"):
        path.write_text("{not json")
    again = closure(reg, cache, ["t/a"])
    assert again.stats.downloaded == again.stats.requests == 4  # {a}, {b}, {c, e}, then the closure
    # Another registry's entry under the same key is not trusted either.
    for path in folder.glob("*.json"):
        data = json.loads(path.read_text())
        data["registry"] = "http://elsewhere"
        path.write_text(json.dumps(data))
    assert closure(reg, cache, ["t/a"]).stats.downloaded == 4
    assert closure(reg, cache, ["t/a"]).stats.not_modified == 1


# --- closure=1: the registry walks the closure ----------------------------------------------------


def index(reg: LiveRegistry, *names: str, etag: str | None = None, closure: bool = True) -> httpx2.Response:
    params: list[tuple[str, str | int | float | bool | None]] = [("name", n) for n in names]
    params += [("closure", "1")] if closure else []
    headers = {"If-None-Match": etag} if etag else {}
    return httpx2.get(f"{reg.url}/v1/index", params=params, headers=headers, timeout=10)


def test_the_registry_answers_with_exactly_the_closure(reg: LiveRegistry) -> None:
    insert(reg, "t/f", [("1.0.0", {"t/solo": "*"}), ("2.0.0", {"t/ghost": "*"})])
    response = index(reg, "t/d", "t/f")
    assert response.status_code == 200
    body = response.json()
    assert body["closure"] is True
    # Every version's dependencies are followed (t/b 1.1.0 reaches t/e, t/f 1.0.0 reaches t/solo).
    assert sorted(body["agents"]) == ["t/a", "t/b", "t/c", "t/d", "t/e", "t/f", "t/solo"]
    assert body["missing"] == ["t/ghost"]
    assert [v["version"] for v in body["agents"]["t/c"]] == ["1.0.0", "2.0.0b1"]
    assert body["agents"]["t/b"][1]["dependencies"] == {"t/c": ">=1", "t/e": "*"}
    assert body["agents"]["t/e"][0]["yanked"] is True
    # Exactly what the batches would have said for the same names.
    batch = index(reg, *body["agents"], "t/ghost", closure=False).json()
    assert batch["agents"] == body["agents"] and batch["missing"] == ["t/ghost"]

    etag = response.headers["etag"]
    assert index(reg, "t/d", "t/f", etag=etag).status_code == 304
    # A change anywhere in the closure changes its ETag; one outside it does not.
    insert(reg, "t/unrelated", [("1.0.0", {})])
    assert index(reg, "t/d", "t/f", etag=etag).status_code == 304
    insert(reg, "t/c", [("3.0.0", {})])
    changed = index(reg, "t/d", "t/f", etag=etag)
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert [v["version"] for v in changed.json()["agents"]["t/c"]][-1] == "3.0.0"


def test_an_index_request_without_the_option_is_answered_as_before(reg: LiveRegistry) -> None:
    response = index(reg, "t/d", "t/nope", closure=False)
    assert response.status_code == 200
    assert response.json() == {
        "agents": {"t/d": response.json()["agents"]["t/d"]},
        "missing": ["t/nope"],
    }
    # The ETag of a batch is not the ETag of the closure of the same names.
    assert index(reg, "t/d").headers["etag"] != response.headers["etag"]
    assert index(reg, "t/d", closure=False).headers["etag"] != index(reg, "t/d").headers["etag"]


def test_an_agent_without_releases_is_listed_with_none(reg: LiveRegistry) -> None:
    insert(reg, "t/empty", [])
    for closure in (True, False):  # a cold entry, then a cached one
        body = index(reg, "t/empty", closure=closure).json()
        assert (body["agents"], body["missing"]) == ({"t/empty": []}, [])


def test_an_unknown_root_is_a_404_and_a_bad_name_a_400(reg: LiveRegistry) -> None:
    missing = index(reg, "t/d", "t/nope", "t/nada")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "no agent named t/nada, t/nope"
    bad = index(reg, "t/d", "not a name")
    assert bad.status_code == 400 and "not a name" in bad.json()["error"]["message"]
    assert index(reg, "t/d").status_code == 200  # and it keeps serving


def walked(reg: LiveRegistry, cache: Path | None, roots: Sequence[str], **kw: Any) -> Snapshot:
    return closure(reg, cache, roots, server_closure=True, **kw)


def test_a_cold_closure_is_one_request_and_a_warm_one_a_304(reg: LiveRegistry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = walked(reg, cache, ["t/d", "t/solo"])
    assert (cold.stats.rounds, cold.stats.requests, cold.stats.downloaded) == (1, 1, 1)
    assert cold.index.to_dict() == closure(reg, None, ["t/d", "t/solo"]).index.to_dict()
    assert cold.missing == set()
    warm = walked(reg, cache, ["t/d", "t/solo"])
    assert (warm.stats.requests, warm.stats.not_modified, warm.stats.bytes) == (1, 1, 0)
    assert warm.index.to_dict() == cold.index.to_dict()
    # A new dependency anywhere comes back in the one answer.
    insert(reg, "t/c", [("3.0.0", {"t/new": "*"})])
    insert(reg, "t/new", [("0.1.0", {})])
    grown = walked(reg, cache, ["t/d", "t/solo"])
    assert (grown.stats.requests, grown.stats.downloaded) == (1, 1)
    assert "t/new" in grown.index
    # Offline reads the closure answer back, for these roots and for others within it.
    reg.stop()
    offline = walked(reg, cache, ["t/d", "t/solo"], offline=True)
    assert offline.index.to_dict() == grown.index.to_dict() and offline.stats.requests == 0
    assert walked(reg, cache, ["t/b"], offline=True).index.names() == ["t/b", "t/c", "t/e", "t/new"]


def test_a_dependency_nobody_publishes_is_missing_in_one_request(reg: LiveRegistry, tmp_path: Path) -> None:
    insert(reg, "t/g", [("1.0.0", {"t/ghost": "*", "t/c": "*"})])
    snapshot = walked(reg, tmp_path / "cache", ["t/g"])
    assert (snapshot.stats.requests, snapshot.missing) == (1, {"t/ghost"})
    assert snapshot.index.names() == ["t/c", "t/g"]


def test_an_unknown_root_falls_back_to_the_rounds_which_name_it(reg: LiveRegistry, tmp_path: Path) -> None:
    snapshot = walked(reg, tmp_path / "cache", ["t/a", "t/nope"])
    assert snapshot.missing == {"t/nope"}
    assert snapshot.index.names() == ["t/a", "t/b", "t/c", "t/e"]
    assert snapshot.stats.requests > 1


class _OldRegistry(http.server.ThreadingHTTPServer):
    """A registry from before `closure=1`, on loopback: it answers for the names asked, and
    ignores every other parameter."""

    def __init__(self, agents: Mapping[str, list[dict[str, Any]]]) -> None:
        self.agents = agents
        self.queries: list[dict[str, list[str]]] = []
        super().__init__(("127.0.0.1", 0), _OldHandler)


class _OldHandler(http.server.BaseHTTPRequestHandler):
    server: _OldRegistry

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        self.server.queries.append(query)
        names = sorted(set(query.get("name", [])))
        body = json.dumps(
            {
                "agents": {n: self.server.agents[n] for n in names if n in self.server.agents},
                "missing": [n for n in names if n not in self.server.agents],
            }
        ).encode()
        self.send_response(200 if url.path == "/v1/index" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_registry_without_the_option_is_read_in_rounds(reg: LiveRegistry, tmp_path: Path) -> None:
    served = closure(reg, None, ["t/d"])
    old = _OldRegistry(served.raw)
    thread = threading.Thread(target=old.serve_forever, daemon=True)
    thread.start()
    try:

        async def go() -> Snapshot:
            async with IndexClient(
                f"http://127.0.0.1:{old.server_address[1]}", cache_root=tmp_path
            ) as client:
                return await client.closure(["t/d"])

        snapshot = anyio.run(go)
    finally:
        old.shutdown()
        old.server_close()
    assert snapshot.index.to_dict() == served.index.to_dict()
    assert old.queries[0] == {"name": ["t/d"], "closure": ["1"]}
    assert all("closure" not in q for q in old.queries[1:]) and len(old.queries) > 2
