"""The node's object cache: releases fetched by commit id over git, verified, shared by all replicas.

One bare repository, `DATA/objects.git`, holds the objects of every release the node has run.
A fetch advertises what the cache already holds of that agent (the commits it verified
before), so the registry sends only the missing objects: a second version differing by one file
costs that file, its trees and the commit. After a fetch, `verify` walks the commit's whole tree,
recomputing every object's hash from its bytes and checking every object is present and of the
kind its parent says; only then is the commit recorded under `refs/agents/{name}/{commit}`,
which marks it verified (and keeps it reachable). A verified commit is never fetched again.

Blocking (dulwich is synchronous): the node calls these methods in a worker thread. One lock
serialises fetches and ref writes; reading objects for a checkout needs none.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcpz.manifest import MANIFEST_FILE, parse_manifest
from mcpz.node.errors import FetchError
from mcpz.repo.checkout import CheckoutStats, Nested, ReleaseError, checkout

logger = logging.getLogger(__name__)

_SPOOL = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one fetch did: `objects` and `bytes` are what crossed the wire (0 when cached)."""

    commit: str
    cached: bool
    objects: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Verified:
    """A commit whose every object was present and hashed to its id."""

    commit: str
    objects: int
    bytes: int


class ObjectCache:
    """A bare repository of verified releases. Open with `ObjectCache.open(path)`."""

    def __init__(self, repo: Any, path: Path) -> None:
        self.repo = repo
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> ObjectCache:
        """Open the cache at `path`, creating an empty bare repository on first use."""
        from dulwich.repo import Repo

        if (path / "objects").is_dir():
            return cls(Repo(str(path), bare=True), path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(Repo.init_bare(str(path)), path)

    def close(self) -> None:
        self.repo.close()

    def __enter__(self) -> ObjectCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> Any:
        return self.repo.object_store

    def verified(self, agent: str, commit: str) -> bool:
        """Whether `commit` was fetched and verified before as a release of `agent`."""
        return f"refs/agents/{agent}/{commit}".encode() in self.repo.refs

    def cached_commits(self, agent: str) -> list[str]:
        """The verified commits of `agent`, the ones a fetch offers the registry as `have`."""
        prefix = f"refs/agents/{agent}/".encode()
        return sorted(ref.decode() for ref in self.repo.refs.keys(prefix))

    def fetch(
        self,
        url: str,
        commit: str,
        *,
        agent: str,
        version: str | None = None,
        token: str | None = None,
        ca_file: str | None = None,
        timeout: float = 120.0,
    ) -> FetchResult:
        """Have `commit` of `agent` in the cache, verified, fetching from `url` what is missing.

        `url` is the agent's git repository (smart HTTP). With `version`, the release tag
        `refs/tags/v{version}` is asked for and must point at `commit`; otherwise any ref that
        names the commit, or the commit id itself. `token` goes to the registry as the password
        of HTTP basic auth. Raises FetchError when the registry cannot serve it and ReleaseError
        when what it served does not verify.
        """
        with self._lock:
            if self.verified(agent, commit):
                return FetchResult(commit, cached=True)
            counted = self._fetch_missing(url, commit, agent, version, token, ca_file, timeout)
            self.verify(commit, agent=agent, version=version)
            self.repo.refs[f"refs/agents/{agent}/{commit}".encode()] = commit.encode()
            return counted

    def checkout(self, commit: str, dest: Path, *, nested: Sequence[Nested] = ()) -> CheckoutStats:
        """Write verified `commit` (and `nested` commits inside it) into `dest`; see `checkout`."""
        return checkout(self.store, commit, dest, nested=nested)

    # -----------------------------------------------------------------------------------------

    def _fetch_missing(
        self,
        url: str,
        commit: str,
        agent: str,
        version: str | None,
        token: str | None,
        ca_file: str | None,
        timeout: float,
    ) -> FetchResult:
        from dulwich.client import HttpGitClient
        from dulwich.config import ConfigDict

        store = self.store
        if commit.encode() in store:
            return FetchResult(commit, cached=False)
        tag_ref = f"refs/tags/v{version}".encode() if version else None
        config = ConfigDict()
        if ca_file:
            config.set((b"http",), b"sslCAInfo", ca_file.encode())
        client = HttpGitClient(
            url,
            config=config,
            username="mcpz" if token else None,
            password=token,
            timeout=timeout,
            quiet=True,
        )
        want = commit.encode()
        tag_target: list[bytes] = []

        def determine_wants(refs: Mapping[bytes, bytes], depth: int | None = None) -> list[bytes]:
            if tag_ref is not None and tag_ref in refs:
                tag_target.append(refs[tag_ref])
                return [refs[tag_ref]]
            named = [sha for ref, sha in refs.items() if sha == want and not ref.endswith(b"^{}")]
            return named[:1] or [want]

        heads = [c.encode() for c in self.cached_commits(agent) if c.encode() in store]
        walker = self.repo.get_graph_walker(heads=heads)
        received = _CountingSpool()
        started = time.perf_counter()
        try:
            client.fetch_pack(urllib.parse.urlsplit(url).path, determine_wants, walker, received.write)
            if received.size:
                received.file.seek(0)
                store.add_thin_pack(received.file.read, None)
        except Exception as e:  # dulwich raises many kinds; all become one FetchError here
            raise _fetch_error(e, url, agent, commit) from e
        finally:
            received.file.close()
        if tag_target:
            peeled = _peel(store, tag_target[0])
            if peeled != want:
                shown = peeled.decode() if peeled is not None else tag_target[0].decode()
                raise ReleaseError(
                    f"the registry's tag v{version} of {agent} points at {shown}, not at {commit}",
                    hint="a published release never moves: the registry or the deployment is wrong",
                )
        if want not in store:
            raise ReleaseError(f"the registry did not send commit {commit} of {agent}")
        seconds = max(time.perf_counter() - started, 1e-6)
        logger.info(
            "fetched %s %s: %d objects, %d bytes in %.2f s (%.1f MB/s)",
            agent, commit[:12], received.objects, received.size, seconds, received.size / seconds / 1e6,
        )  # fmt: skip
        return FetchResult(commit, cached=False, objects=received.objects, bytes=received.size)

    def verify(self, commit: str, *, agent: str | None = None, version: str | None = None) -> Verified:
        """Check that every object of `commit` is present and hashes to its id; with `agent` and
        `version`, that its manifest declares them. Raises ReleaseError naming the first problem."""
        store = self.store
        digest = hashlib.sha256 if len(commit) == 64 else hashlib.sha1
        seen: set[str] = set()
        count = total = 0
        pending: list[tuple[str, bytes, str]] = [(commit, b"commit", "the commit")]
        while pending:
            sha, kind, where = pending.pop()
            if sha in seen:
                continue
            seen.add(sha)
            try:
                obj = store[sha.encode()]
            except KeyError:
                raise ReleaseError(f"{where} ({sha}) is missing after the fetch") from None
            if obj.type_name != kind:
                raise ReleaseError(f"{where} ({sha}) is a {obj.type_name.decode()}, not a {kind.decode()}")
            raw = obj.as_raw_string()
            actual = digest(b"%s %d\0" % (kind, len(raw)) + raw).hexdigest()
            if actual != sha:
                raise ReleaseError(f"{where} does not hash to its id: {sha} holds {actual}")
            count += 1
            total += len(raw)
            if kind == b"commit":
                pending.append((obj.tree.decode(), b"tree", "the commit's tree"))
            elif kind == b"tree":
                for name, mode, child in obj.iteritems():
                    if mode == 0o160000:
                        continue  # a submodule: refused by the checkout, not fetched
                    shown = name.decode("utf-8", "backslashreplace")
                    child_kind = b"tree" if mode == 0o040000 else b"blob"
                    pending.append((child.decode(), child_kind, f'"{shown}"'))
        if agent is not None:
            self._check_manifest(commit, agent, version)
        return Verified(commit, count, total)

    def manifest_bytes(self, commit: str) -> bytes:
        """The exact bytes of `commit`'s mcpz.toml (ReleaseError if it has none)."""
        store = self.store
        try:
            tree = store[store[commit.encode()].tree]
            _mode, blob = tree[MANIFEST_FILE.encode()]
            return store[blob].as_raw_string()  # type: ignore[no-any-return]
        except KeyError:
            raise ReleaseError(f"commit {commit} has no {MANIFEST_FILE}: it is not an mcpz release") from None

    def _check_manifest(self, commit: str, agent: str, version: str | None) -> None:
        from mcpz.errors import ManifestError

        store = self.store
        tree = store[store[commit.encode()].tree]
        try:
            _mode, blob = tree[MANIFEST_FILE.encode()]
            text = store[blob].as_raw_string().decode("utf-8")
            manifest = parse_manifest(text, f"{MANIFEST_FILE} of {commit[:12]}")
        except KeyError:
            raise ReleaseError(f"commit {commit} has no {MANIFEST_FILE}: it is not an mcpz release") from None
        except (UnicodeDecodeError, ManifestError) as e:
            raise ReleaseError(f"commit {commit} has an unreadable {MANIFEST_FILE}: {e}") from e
        if manifest.name != agent or (version is not None and manifest.version != version):
            raise ReleaseError(
                f"commit {commit} is {manifest.name} {manifest.version}, not {agent} {version or ''}".rstrip()
            )


def _peel(store: Any, sha: bytes) -> bytes | None:
    """The commit a tag (or a chain of tags) names; None if it names no commit of the store."""
    try:
        obj = store[sha]
        for _ in range(16):
            if obj.type_name != b"tag":
                break
            obj = store[obj.object[1]]
    except KeyError:
        return None
    return obj.id if obj.type_name == b"commit" else None  # type: ignore[no-any-return]


class _CountingSpool:
    """Where the pack lands: a spooled file, with the bytes and the pack's object count noted."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=_SPOOL)
        self.size = 0
        self._header = b""

    def write(self, data: bytes) -> int:
        if len(self._header) < 12:
            self._header += data[: 12 - len(self._header)]
        self.size += len(data)
        return self.file.write(data)

    @property
    def objects(self) -> int:
        """The object count from the pack header (`PACK`, version, count)."""
        return int.from_bytes(self._header[8:12], "big") if len(self._header) == 12 else 0


def _fetch_error(e: Exception, url: str, agent: str, commit: str) -> FetchError:
    from dulwich.client import HTTPUnauthorized

    if isinstance(e, HTTPUnauthorized):
        reason = "the registry refused the node's token (HTTP 401)"
    else:
        reason = str(e) or type(e).__name__
    return FetchError(
        f"cannot fetch {agent} {commit[:12]} from {url}: {reason}",
        hint="check that the registry is reachable and the node's token is valid",
    )
