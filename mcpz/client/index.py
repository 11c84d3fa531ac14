"""Reading the registry's version index for the resolver: batched, concurrent, ETag-cached.

    async with IndexClient(url, token, cache_root=cache_dir()) as client:
        snapshot = await client.closure(["acme/geo", "acme/maps"])
    resolution = resolve(roots, snapshot.index)

**The closure.** The resolver may choose any version of an agent, so it needs every release of
every agent reachable from the roots through any version's dependencies.

**One request** (`server_closure=True`, the default): `GET /v1/index?name=...&closure=1` with
the roots, and the registry walks the closure itself and answers with all of it, with an ETag;
the answer is cached per set of roots (`closures/{key}.json`), so a warm run is one conditional
request answered 304, and a cold one is one request, whatever the depth of the graph. A registry
from before the option answers for the roots only (no `"closure": true` in the body), and a root
that does not exist is a 404: both fall back to the rounds below, which also say which root.

**Rounds** (the fallback, or `server_closure=False`). Names are asked for in
batches (the registry answers up to 1,000 per `GET /v1/index?name=...&name=...`, with an ETag),
the batches of a round concurrently, through one HTTP client.

The first round asks for the closure *as the cache predicts it*: the last answers
this user's cache holds, followed from the roots. A round's answers can reach names nobody asked
for yet (new dependencies, or everything on a cold cache); the next round asks for those, and so
on until nothing new is reached. So a cold cache costs one round per level of the dependency
graph, breadth-first, and a warm one, when nothing changed, costs a single round.

**The cache**, in the user cache folder, per registry (`{cache}/index/v1/{registry key}/`):

- `chunks/{key}.json`: the answer to one batch (names, ETag, entries, missing names), named by a
  hash of its sorted names. The closure is cut into batches by a stable hash of each name
  (`partition`), so the same closure gives the same batches, run after run.
- `roots/{key}.json`: which chunks made up the closure of one set of roots last time, so a warm
  run reads only those files to make its prediction.
- `closures/{key}.json`: the registry's `closure=1` answer for one set of roots (its `names`).

At the end of a run, the closure's own batches are in the cache (asked for once more when the
rounds happened to batch it differently, e.g. on a cold cache), so the next run with nothing
changed sends every batch with `If-None-Match` and gets only 304s. When one agent changes, only
the batch that holds it comes back with a body. Writes are atomic (temp file + rename); files
unused for 30 days are removed.

With `offline=True` nothing is sent: the closure answer for these roots, or else everything the
cache holds (chunks and closure answers), is the answer, and names the cache has never
seen are named in an `OfflineError`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from packaging.version import InvalidVersion, Version

from mcpz.atomic import write_atomic
from mcpz.client.registry import RegistryClient
from mcpz.errors import AuthError, McpzError, NetworkError, NotFoundError, UsageError
from mcpz.names import name_problem
from mcpz.resolve.index import Index, IndexDataError, Release, parse_spec

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
"""The most names the registry takes in one request."""
DEFAULT_BATCH = 250
DEFAULT_CONCURRENCY = 8
CACHE_FORMAT = "v1"
CACHE_MAX_AGE_DAYS = 30.0

VersionEntry = dict[str, Any]
"""One version as the registry serves it: {"version", "commit", "yanked", "dependencies"}."""
Entries = dict[str, list[VersionEntry]]


class OfflineError(NetworkError):
    """`--offline`, and the cache does not hold what is needed."""


@dataclass
class FetchStats:
    """What reading the index cost: for `-v`, `--json` and the benchmarks."""

    names: int = 0
    rounds: int = 0
    """Rounds of concurrent requests (1 when the cache predicted the closure right)."""
    requests: int = 0
    not_modified: int = 0
    """Requests answered 304 (the body came from the cache)."""
    downloaded: int = 0
    """Requests answered 200."""
    bytes: int = 0
    from_cache: int = 0
    """Cached batches read (to predict the closure, or offline)."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "rounds": self.rounds,
            "requests": self.requests,
            "not_modified": self.not_modified,
            "downloaded": self.downloaded,
            "bytes": self.bytes,
            "from_cache": self.from_cache,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class Snapshot:
    """The index of a closure: every release of every agent reached, and the names nobody has."""

    raw: Entries
    """The served entries by name, oldest version first."""
    missing: set[str] = field(default_factory=set)
    """Names the registry says do not exist."""
    stats: FetchStats = field(default_factory=FetchStats)

    @functools.cached_property
    def index(self) -> Index:
        """The entries as the resolver reads them, parsed on first use (a re-lock that finds the
        lock still valid never needs it)."""
        return _build_index(self.raw)


def registry_key(url: str) -> str:
    """A folder name for a registry URL: readable host and port, and a hash of the whole URL."""
    url = url.rstrip("/")
    host = url.split("://", 1)[-1].split("/", 1)[0]
    readable = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)[:40]
    return f"{readable}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def batch_key(names: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:32]


def partition(names: Iterable[str], batch_size: int = DEFAULT_BATCH) -> list[list[str]]:
    """Cut names into batches of at most `batch_size` (and never more than the registry's limit).

    The bucket of a name is a stable hash of the name modulo a power of two, so adding a name to a
    set changes only its own batch, unless the set grows past a power-of-two boundary.
    """
    ordered = sorted(set(names))
    size = max(1, min(batch_size, MAX_BATCH))
    buckets = 1
    while True:
        groups: list[list[str]] = [[] for _ in range(buckets)]
        for name in ordered:
            groups[zlib.crc32(name.encode()) % buckets].append(name)
        if all(len(g) <= size for g in groups):
            return [g for g in groups if g]
        buckets *= 2


def reach(roots: Iterable[str], entries: Mapping[str, Sequence[VersionEntry]]) -> set[str]:
    """Every name reachable from `roots` through the dependencies of any version in `entries`
    (a name without entries is reached but not followed)."""
    seen = set(roots)
    frontier = list(seen)
    while frontier:
        name = frontier.pop()
        for entry in entries.get(name, ()):
            deps = entry.get("dependencies") if isinstance(entry, dict) else None
            if not isinstance(deps, dict):
                continue
            for dep in deps:
                if dep not in seen:
                    if not isinstance(dep, str) or name_problem(dep):
                        raise IndexDataError(f'index: {name} depends on "{dep}", which is not an agent name')
                    seen.add(dep)
                    frontier.append(dep)
    return seen


def _atomic_write(path: Path, data: bytes) -> None:
    write_atomic(path, data)


@dataclass(frozen=True)
class Chunk:
    """One cached batch answer."""

    names: tuple[str, ...]
    etag: str | None
    agents: Entries
    missing: frozenset[str]


class IndexCache:
    """The on-disk cache of one registry's index answers (see the module's docstring)."""

    def __init__(self, root: Path, registry: str) -> None:
        self.registry = registry.rstrip("/")
        self.folder = root / "index" / CACHE_FORMAT / registry_key(self.registry)
        self.chunks = self.folder / "chunks"
        self.roots = self.folder / "roots"
        self.closures = self.folder / "closures"

    def chunk_path(self, key: str) -> Path:
        return self.chunks / f"{key}.json"

    def read_chunk(self, key: str) -> Chunk | None:
        """The cached answer stored under `key`, or None (missing, unreadable, another registry)."""
        return self._read(self.chunk_path(key), key)

    def _read(self, path: Path, key: str) -> Chunk | None:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("registry") != self.registry:
            return None
        names, agents, missing = data.get("names"), data.get("agents"), data.get("missing")
        if not isinstance(names, list) or not isinstance(agents, dict) or not isinstance(missing, list):
            return None
        if batch_key(names) != key:
            return None
        etag = data.get("etag")
        return Chunk(
            names=tuple(names),
            etag=etag if isinstance(etag, str) else None,
            agents={k: v for k, v in agents.items() if isinstance(v, list)},
            missing=frozenset(m for m in missing if isinstance(m, str)),
        )

    def write_chunk(self, chunk: Chunk) -> None:
        self._write(self.chunk_path(batch_key(chunk.names)), chunk)

    def _write(self, path: Path, chunk: Chunk) -> None:
        record = {
            "registry": self.registry,
            "names": sorted(chunk.names),
            "etag": chunk.etag,
            "fetched_at": int(time.time()),
            "agents": chunk.agents,
            "missing": sorted(chunk.missing),
        }
        try:
            _atomic_write(path, json.dumps(record, separators=(",", ":")).encode())
        except OSError as e:  # a cache that cannot be written only costs speed
            logger.warning("cannot write the index cache at %s: %s", self.folder, e)

    def touch(self, key: str) -> None:
        """Mark a chunk as used (its age is what `prune` goes by)."""
        with contextlib.suppress(OSError):
            os.utime(self.chunk_path(key))

    def closure_chunks(self, roots: Sequence[str]) -> list[str] | None:
        """The chunk keys of the closure of `roots` as last locked, if known."""
        try:
            data = json.loads((self.roots / f"{batch_key(roots)}.json").read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("roots") != sorted(roots):
            return None
        keys = data.get("chunks")
        return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else None

    def remember_closure(self, roots: Sequence[str], keys: Sequence[str]) -> None:
        record = {"registry": self.registry, "roots": sorted(roots), "chunks": list(keys)}
        with contextlib.suppress(OSError):
            _atomic_write(self.roots / f"{batch_key(roots)}.json", json.dumps(record).encode())

    def read_closure(self, roots: Sequence[str]) -> Chunk | None:
        """The registry's last `closure=1` answer for exactly `roots` (its `names` are the roots)."""
        key = batch_key(roots)
        chunk = self._read(self.closures / f"{key}.json", key)
        return chunk if chunk is not None and sorted(chunk.names) == sorted(roots) else None

    def write_closure(self, chunk: Chunk) -> None:
        self._write(self.closures / f"{batch_key(chunk.names)}.json", chunk)

    def touch_closure(self, roots: Sequence[str]) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.closures / f"{batch_key(roots)}.json")

    def all_closures(self) -> list[Chunk]:
        """Every readable closure answer, oldest first."""
        return [chunk for _key, chunk in self._read_all(self.closures)]

    def all_chunks(self) -> dict[str, Chunk]:
        """Every readable chunk, by key, oldest first (so newer answers win when merged)."""
        return dict(self._read_all(self.chunks))

    def _read_all(self, folder: Path) -> list[tuple[str, Chunk]]:
        try:
            paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return []
        out: list[tuple[str, Chunk]] = []
        for path in paths:
            chunk = self._read(path, path.stem)
            if chunk is not None:
                out.append((path.stem, chunk))
        return out

    def prune(self, max_age_days: float = CACHE_MAX_AGE_DAYS) -> int:
        """Remove files unused for `max_age_days` (e.g. batches of agents no longer depended on)."""
        cutoff = time.time() - max_age_days * 86400
        removed = 0
        for folder in (self.chunks, self.roots, self.closures):
            with contextlib.suppress(OSError):
                for path in folder.glob("*.json"):
                    with contextlib.suppress(OSError):
                        if path.stat().st_mtime < cutoff:
                            path.unlink()
                            removed += 1
        return removed


def _merge(chunks: Iterable[Chunk]) -> tuple[Entries, set[str]]:
    agents: Entries = {}
    missing: set[str] = set()
    for chunk in chunks:
        for name, versions in chunk.agents.items():
            agents[name] = versions
            missing.discard(name)
        for name in chunk.missing:
            missing.add(name)
            agents.pop(name, None)
    return agents, missing


def _check_body(body: Any, names: Sequence[str]) -> tuple[Entries, frozenset[str]]:
    if not isinstance(body, dict):
        raise IndexDataError("the registry's index answer is not a JSON object")
    agents, missing = body.get("agents"), body.get("missing", [])
    if not isinstance(agents, dict) or not isinstance(missing, list):
        raise IndexDataError('the registry\'s index answer needs "agents" (object) and "missing" (list)')
    wanted = set(names)
    out: Entries = {}
    for name, versions in agents.items():
        if name not in wanted:
            continue  # not asked for: ignore rather than trust
        if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
            raise IndexDataError(f"the registry's index entry for {name} is not a list of versions")
        out[name] = versions
    # A name the registry neither described nor called missing is treated as missing.
    return out, frozenset(wanted - set(out))


def _check_closure(body: dict[str, Any]) -> tuple[Entries, frozenset[str]]:
    """A `closure=1` answer: every name is one nobody asked for, so each is checked as a name."""
    agents, missing = body.get("agents"), body.get("missing", [])
    if not isinstance(agents, dict) or not isinstance(missing, list):
        raise IndexDataError('the registry\'s index answer needs "agents" (object) and "missing" (list)')
    for name, versions in agents.items():
        if not isinstance(name, str) or name_problem(name):
            raise IndexDataError(f'the registry\'s index answer holds "{name}", which is not an agent name')
        if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
            raise IndexDataError(f"the registry's index entry for {name} is not a list of versions")
    return agents, frozenset(m for m in missing if isinstance(m, str))


@dataclass(frozen=True)
class _Answer:
    chunk: Chunk
    downloaded: bool


class IndexClient:
    """One client for the whole closure: one HTTP connection pool, one cache, one set of figures."""

    def __init__(
        self,
        registry: str,
        token: str | None = None,
        *,
        cache_root: Path | None = None,
        offline: bool = False,
        batch_size: int = DEFAULT_BATCH,
        concurrency: int = DEFAULT_CONCURRENCY,
        client: RegistryClient | None = None,
        token_lookup: Callable[[], str | None] | None = None,
        server_closure: bool = True,
    ) -> None:
        """`token` goes with every request; without one, `token_lookup` (e.g. the OS keyring, which
        is slow to open) is asked only if the registry answers 401 or 403: public agents need none.
        `server_closure=False` never asks the registry to walk the closure (batches and rounds only)."""
        self.registry = registry.rstrip("/")
        self.cache = IndexCache(cache_root, self.registry) if cache_root is not None else None
        self.offline = offline
        self.batch_size = batch_size
        self.concurrency = max(1, concurrency)
        self.server_closure = server_closure
        self._token = token
        self._token_lookup = token_lookup if token is None and client is None else None
        self._client = client
        self._own_client = client is None
        if offline and self.cache is None:
            raise OfflineError("--offline needs the user cache folder, and none is configured")

    async def __aenter__(self) -> IndexClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
        self._client = None

    async def _with_stored_token(self) -> None:
        """Switch to the stored token (once): the registry wants one."""
        lookup, self._token_lookup = self._token_lookup, None
        token = lookup() if lookup is not None else None
        if token is None:
            raise AuthError(
                f"the registry at {self.registry} wants a token to read its index",
                hint="run `mcpz login`, or set MCPZ_TOKEN",
            )
        old, self._client, self._token = self._client, None, token
        if old is not None and self._own_client:
            await old.aclose()

    async def reach(self) -> None:
        """Ask the registry whether it is up (GET /healthz): a NetworkError when nobody answers.
        For a lock with nothing to fetch, which must still not name a registry it never reached."""
        if not self.offline:
            await self._http().request("GET", "/healthz")

    def _http(self) -> RegistryClient:
        if self._client is None:
            self._client = RegistryClient(self.registry, self._token)
        return self._client

    # -- the closure -----------------------------------------------------------------------------

    async def closure(self, roots: Iterable[str]) -> Snapshot:
        """Every release of every agent reachable from `roots` through any version's dependencies."""
        started = time.perf_counter()
        stats = FetchStats()
        root_names = sorted(set(roots))
        for name in root_names:
            problem = name_problem(name)
            if problem:
                raise UsageError(f'"{name}" is not an agent name ({problem})')
        walked = None
        if not self.offline and self.server_closure and root_names:
            walked = await self._walked(root_names, stats)
        if walked is not None:
            entries, gone = walked
        elif self.offline:
            entries, gone = self._offline(root_names, self._cached(root_names, stats))
        else:
            entries, gone = await self._online(root_names, self._cached(root_names, stats), stats)
        raw = {name: entries[name] for name in sorted(entries)}
        stats.names = len(raw)
        stats.seconds = time.perf_counter() - started
        logger.info(
            "index: %d agents, %d rounds, %d requests (%d not modified), %d bytes, %.3fs",
            stats.names,
            stats.rounds,
            stats.requests,
            stats.not_modified,
            stats.bytes,
            stats.seconds,
        )
        return Snapshot(raw=raw, missing=gone, stats=stats)

    async def _walked(self, roots: Sequence[str], stats: FetchStats) -> tuple[Entries, set[str]] | None:
        """The closure as the registry walks it (`closure=1`): one request, conditional on the
        cached answer for these roots. None when the registry cannot (an older one ignores the
        option) or a root does not exist: the rounds then find out, and say which."""
        cached = self.cache.read_closure(roots) if self.cache is not None else None
        if cached is not None:
            stats.from_cache += 1
        stats.rounds += 1
        try:
            answer = await self._request(list(roots), cached, stats, closure=True)
        except NotFoundError:
            return None
        if answer is None:
            return None
        chunk = answer.chunk
        if self.cache is not None:
            if answer.downloaded:
                self.cache.write_closure(chunk)
            else:
                self.cache.touch_closure(roots)
            self.cache.prune()
        closure = reach(roots, chunk.agents)  # checks every name, and drops what was not reached
        # A name the registry neither described nor called missing is treated as missing.
        return {n: chunk.agents[n] for n in closure if n in chunk.agents}, {
            n for n in closure if n not in chunk.agents
        }

    def _cached(self, roots: Sequence[str], stats: FetchStats) -> dict[str, Chunk]:
        """The cached chunks that predict the closure: those of the last closure of these roots,
        or, for roots never locked before, every chunk the cache holds (offline, with every
        closure answer after them)."""
        if self.cache is None:
            return {}
        if self.offline:
            walked = self.cache.read_closure(roots)
            if walked is not None:
                stats.from_cache = 1
                return {"closure": walked}
        keys = self.cache.closure_chunks(roots)
        chunks: dict[str, Chunk] = {}
        if keys is not None:
            for key in keys:
                chunk = self.cache.read_chunk(key)
                if chunk is None:
                    break
                chunks[key] = chunk
            else:
                stats.from_cache = len(chunks)
                return chunks
        chunks = self.cache.all_chunks()
        if self.offline:
            chunks.update((f"closure-{i}", c) for i, c in enumerate(self.cache.all_closures()))
        stats.from_cache = len(chunks)
        return chunks

    def _offline(self, roots: Sequence[str], cached: Mapping[str, Chunk]) -> tuple[Entries, set[str]]:
        agents, missing = _merge(cached.values())
        closure = reach(roots, agents)
        unknown = sorted(n for n in closure if n not in agents and n not in missing)
        if unknown:
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise OfflineError(
                f"--offline: the cache holds no index entry for {', '.join(unknown[:10])}{more}",
                hint="run the same command once without --offline to fill the cache",
            )
        return {n: agents[n] for n in closure if n in agents}, {n for n in closure if n in missing}

    async def _online(
        self, roots: Sequence[str], cached: dict[str, Chunk], stats: FetchStats
    ) -> tuple[Entries, set[str]]:
        predicted, _ = _merge(cached.values())
        fresh: Entries = {}
        gone: set[str] = set()
        answers: dict[str, _Answer] = {}
        wanted = sorted(reach(roots, predicted))
        while wanted:
            stats.rounds += 1
            for key, answer in (await self._fetch(partition(wanted, self.batch_size), cached, stats)).items():
                answers[key] = answer
                fresh.update(answer.chunk.agents)
                gone |= answer.chunk.missing
            closure = reach(roots, fresh)
            wanted = sorted(n for n in closure if n not in fresh and n not in gone)
        closure = reach(roots, fresh)
        if self.cache is not None:
            canonical = partition(closure, self.batch_size)
            keys = [batch_key(batch) for batch in canonical]
            todo = [batch for batch, key in zip(canonical, keys, strict=True) if key not in answers]
            if todo:
                # Ask once more in the closure's own batches, so that the next run is all 304s.
                stats.rounds += 1
                answers.update(await self._fetch(todo, cached, stats))
            for key in keys:
                answer = answers[key]
                if answer.downloaded:
                    self.cache.write_chunk(answer.chunk)
                else:
                    self.cache.touch(key)
            self.cache.remember_closure(roots, keys)
            self.cache.prune()
        return {n: fresh[n] for n in closure if n in fresh}, {n for n in closure if n in gone}

    async def _fetch(
        self, batches: list[list[str]], cached: Mapping[str, Chunk], stats: FetchStats
    ) -> dict[str, _Answer]:
        """Ask for every batch, concurrently; each with the ETag of its cached answer, if any."""
        out: dict[str, _Answer] = {}
        failed: list[McpzError] = []
        limiter = anyio.Semaphore(self.concurrency)

        async def one(batch: list[str]) -> None:
            key = batch_key(batch)
            known = cached.get(key)
            if known is None and self.cache is not None:
                known = self.cache.read_chunk(key)
            try:
                async with limiter:
                    out[key] = await self._ask(batch, known, stats)
            except McpzError as e:  # raised below, once, rather than as an exception group
                failed.append(e)
                group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            for batch in batches:
                group.start_soon(one, batch)
        if failed:
            raise failed[0]
        return out

    async def _ask(
        self, names: list[str], cached: Chunk | None, stats: FetchStats, *, closure: bool = False
    ) -> _Answer:
        answer = await self._request(names, cached, stats, closure=closure)
        assert answer is not None  # only a closure request can come back without an answer
        return answer

    async def _request(
        self, names: list[str], cached: Chunk | None, stats: FetchStats, *, closure: bool
    ) -> _Answer | None:
        etag = cached.etag if cached is not None else None
        headers = {"If-None-Match": etag} if etag else {}
        stats.requests += 1
        params = [("name", n) for n in names] + ([("closure", "1")] if closure else [])
        try:
            response = await self._http().request("GET", "/v1/index", params=params, headers=headers)
        except AuthError:
            if self._token_lookup is None:
                raise
            await self._with_stored_token()
            response = await self._http().request("GET", "/v1/index", params=params, headers=headers)
        if response.status_code == 304:
            if cached is None:
                raise IndexDataError("the registry answered 304 Not Modified to a request without an ETag")
            stats.not_modified += 1
            return _Answer(cached, downloaded=False)
        try:
            body = response.json()
        except ValueError as e:
            raise IndexDataError(f"the registry's index answer is not JSON: {e}") from e
        stats.downloaded += 1
        stats.bytes += len(response.content)
        if closure:
            if not isinstance(body, dict) or body.get("closure") is not True:
                return None  # a registry from before `closure=1`: it answered for the roots only
            agents, missing = _check_closure(body)
        else:
            agents, missing = _check_body(body, names)
        chunk = Chunk(tuple(sorted(names)), response.headers.get("etag"), agents, missing)
        return _Answer(chunk, downloaded=True)


_VERSIONS: dict[str, Version] = {}


def _version(name: str, text: Any) -> Version:
    found = _VERSIONS.get(text) if isinstance(text, str) else None
    if found is None:
        try:
            found = Version(text)
        except (InvalidVersion, TypeError):
            raise IndexDataError(
                f'index: {name} has a release "{text}" that is not a PEP 440 version'
            ) from None
        _VERSIONS[text] = found
    return found


def _build_index(raw: Mapping[str, list[VersionEntry]]) -> Index:
    """An `Index` of the served entries; versions and specifiers parsed once each (names were
    checked by `reach`)."""
    index = Index()
    for name in sorted(raw):
        for entry in raw[name]:
            version = _version(name, entry.get("version"))
            commit = entry.get("commit", "")
            yanked = entry.get("yanked", False)
            deps = entry.get("dependencies", {})
            if not isinstance(commit, str) or not isinstance(yanked, bool) or not isinstance(deps, dict):
                raise IndexDataError(f"index: {name} has a malformed version entry: {entry!r:.200}")
            specs = {}
            for dep, text in sorted(deps.items()):
                try:
                    specs[dep] = parse_spec(text)
                except (UsageError, TypeError, AttributeError):
                    raise IndexDataError(
                        f'index: {name} {version} depends on {dep} "{text}", which is not a version specifier'
                    ) from None
            index.add_release(
                Release(name=name, version=version, commit=commit, dependencies=specs, yanked=yanked)
            )
    return index


async def fetch_closure(
    registry: str,
    roots: Iterable[str],
    *,
    token: str | None = None,
    cache_root: Path | None = None,
    offline: bool = False,
) -> Snapshot:
    """`IndexClient(...).closure(roots)` in one call."""
    async with IndexClient(registry, token, cache_root=cache_root, offline=offline) as client:
        return await client.closure(roots)
