"""`mcpz install`: every agent of `mcpz.lock`, at its exact commit, in `.mcpz/deps/{ns}/{name}/`.

Installing never resolves. For each locked agent:

1. the commit comes from one object store shared by every project of the user, a bare git
   repository at `{cache}/git/v1/{registry key}.git`; a commit already there costs no request;
2. otherwise it is fetched from the registry over git (`/git/{ns}/{name}.git`, shallow, with the
   versions already in the store as haves), but only if the registry's tag `v{version}` names the
   locked commit: a registry that serves another commit for a locked version is refused;
3. the commit is verified: it is a commit (its id is the hash of its content, so the id alone
   pins the whole tree), and its `mcpz.toml` declares the locked name and version;
4. its tree is written (by the mesh node's checkout, which refuses any path that would leave the
   folder) to a temporary folder beside the target, with a marker file
   (`.mcpz-installed.json`: name, version, commit, registry), and renamed into place, so a folder
   under `.mcpz/deps/` is always one whole release or absent.

Folders under `.mcpz/deps/` that the lock no longer names are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from mcpz.client.index import OfflineError, registry_key
from mcpz.errors import ManifestError, McpzError, NotFoundError, RepositoryError
from mcpz.lockfile import Lock, LockedAgent
from mcpz.manifest import MANIFEST_FILE, parse_manifest

logger = logging.getLogger(__name__)

DEPS_DIR = Path(".mcpz") / "deps"
MARKER = ".mcpz-installed.json"
DEFAULT_CONCURRENCY = 4

ProgressFn = Callable[[str, str], None]
"""(agent name, what happened) after each agent."""


class IntegrityError(McpzError):
    """What the registry served is not what `mcpz.lock` pins: refused, nothing installed for it."""


@dataclass(frozen=True)
class InstalledAgent:
    name: str
    version: str
    commit: str
    path: str
    action: str
    """"installed", "updated" (another commit was there), or "unchanged"."""
    fetched: bool
    """Whether objects came over the network (False: from the shared object store)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "commit": self.commit,
            "path": self.path,
            "action": self.action,
            "fetched": self.fetched,
        }


@dataclass
class InstallResult:
    target: Path
    agents: list[InstalledAgent] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "agents": [a.to_dict() for a in self.agents],
            "removed": self.removed,
        }


def object_store_path(cache_root: Path, registry: str) -> Path:
    return cache_root / "git" / "v1" / f"{registry_key(registry)}.git"


class ObjectStore:
    """The shared bare repository of fetched releases: refs `refs/mcpz/{ns}/{name}/{version}`.

    Network transfers run in parallel; writing packs, the shallow list and refs is serialised
    (one lock per process), since dulwich's shallow-file update is a read-modify-write.
    """

    def __init__(
        self, path: Path, registry: str, token: str | None, received: Callable[[int], None] | None = None
    ) -> None:
        self.path = path
        self.registry = registry.rstrip("/")
        self.token = token
        self.received = received  # hears each n bytes of pack data fetched (from worker threads)
        self._write_lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        from dulwich.repo import Repo

        if (self.path / "objects").is_dir():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            Repo.init_bare(str(self.path)).close()
        except FileExistsError:  # made meanwhile by another process
            pass

    def _repo(self) -> Any:
        from dulwich.repo import Repo

        return Repo(str(self.path), bare=True)

    @staticmethod
    def _ref(agent: LockedAgent) -> bytes:
        return f"refs/mcpz/{agent.name}/{agent.version}".encode()

    def has(self, commit: str) -> bool:
        repo = self._repo()
        try:
            return _is_commit(repo, commit.encode())
        finally:
            repo.close()

    def fetch(self, agent: LockedAgent) -> None:
        """Fetch the locked commit of `agent` from the registry, refusing any other commit."""
        import io

        from dulwich.client import HttpGitClient
        from dulwich.file import FileLocked

        from mcpz.client.publish import repo_url, translate_transport

        tag = f"refs/tags/v{agent.version}".encode()
        url = repo_url(self.registry, agent.name)
        client = HttpGitClient(url, username="mcpz" if self.token else None, password=self.token)
        advertised: dict[str, bytes] = {}

        def determine_wants(refs: Mapping[bytes, bytes], depth: int | None = None) -> list[bytes]:
            target = refs.get(tag)
            if target is None:
                raise NotFoundError(
                    f"the registry at {self.registry} has no release {agent.version} of {agent.name} "
                    f"(no tag v{agent.version})",
                    hint="releases are never deleted: check the lock's registry, or run `mcpz lock`",
                )
            advertised["target"] = target
            return [target]

        repo = self._repo()
        try:
            heads = [sha for sha in repo.refs.as_dict(f"refs/mcpz/{agent.name}".encode()).values()]
            heads = [sha for sha in heads if _is_commit(repo, sha)]
            walker = repo.get_graph_walker(heads=heads)
            spool = io.BytesIO()
            received = self.received

            def write(data: bytes) -> None:
                spool.write(data)
                if received is not None:
                    received(len(data))

            try:
                result = client.fetch_pack(
                    f"/git/{agent.name}.git".encode(), determine_wants, walker, write, depth=1
                )
            except McpzError:
                raise
            except Exception as e:  # dulwich raises many kinds; all are translated here
                raise translate_transport(e, self.registry, self.token) from e
            with self._write_lock:
                if spool.tell():
                    spool.seek(0)
                    repo.object_store.add_thin_pack(spool.read, None)
                target = advertised["target"]
                commit = _peel(repo, target)
                if commit is None or commit.decode() != agent.commit:
                    served = commit.decode()[:12] if commit is not None else target.decode()[:12]
                    raise IntegrityError(
                        f"the registry serves {agent.name} {agent.version} at commit {served}, "
                        f"but mcpz.lock pins {agent.commit[:12]}; refusing it",
                        hint="a published release never changes: the registry (or the lock) was "
                        "tampered with; report it to the registry's operator",
                    )
                repo.update_shallow(result.new_shallow, result.new_unshallow)
                try:
                    repo.refs[self._ref(agent)] = agent.commit.encode()
                except FileLocked:  # another `mcpz install` is writing it: the same value
                    logger.debug(
                        "ref of %s %s is being written by another process", agent.name, agent.version
                    )
        finally:
            repo.close()

    def verify(self, agent: LockedAgent) -> Any:
        """The commit object, once its manifest is checked to declare the locked name and version."""
        repo = self._repo()
        try:
            commit_id = agent.commit.encode()
            if not _is_commit(repo, commit_id):
                raise IntegrityError(f"{agent.name} {agent.version}: {agent.commit[:12]} is not a commit")
            commit = repo[commit_id]
            tree = repo[commit.tree]
            try:
                _mode, blob_id = tree[MANIFEST_FILE.encode()]
                text = repo[blob_id].as_raw_string().decode("utf-8")
                manifest = parse_manifest(text, f"{agent.name} {agent.version}: {MANIFEST_FILE}")
            except (KeyError, UnicodeDecodeError, ManifestError) as e:
                where = f"{agent.name} {agent.version} (commit {agent.commit[:12]})"
                raise IntegrityError(f"{where} has no valid {MANIFEST_FILE}: {e}") from e
            if (manifest.name, manifest.version) != (agent.name, agent.version):
                raise IntegrityError(
                    f"commit {agent.commit[:12]}, locked as {agent.name} {agent.version}, declares "
                    f"{manifest.name} {manifest.version} in its {MANIFEST_FILE}; refusing it",
                    hint="mcpz.lock was edited by hand, or the registry was tampered with: run `mcpz lock`",
                )
            return commit
        finally:
            repo.close()

    def checkout(self, agent: LockedAgent, folder: Path) -> None:
        """Write the commit's tree into `folder` (which must not exist), refusing any path that
        would leave it (the mesh node's checkout: `mcpz.repo.checkout`)."""
        from mcpz.repo.checkout import checkout

        repo = self._repo()
        try:
            checkout(repo.object_store, agent.commit, folder)
        finally:
            repo.close()


def _is_commit(repo: Any, sha: bytes) -> bool:
    from dulwich.objects import Commit

    try:
        return isinstance(repo[sha], Commit)
    except (KeyError, ValueError):
        return False


def _peel(repo: Any, sha: bytes) -> bytes | None:
    from dulwich.objects import Commit, Tag

    try:
        obj = repo[sha]
        for _ in range(10):
            if not isinstance(obj, Tag):
                break
            obj = repo[obj.object[1]]
    except KeyError:
        return None
    return obj.id if isinstance(obj, Commit) else None  # type: ignore[no-any-return]


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _place(tmp: Path, final: Path) -> None:
    """Move `tmp` to `final`, replacing what is there; the old copy is gone only once the new is in."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() or final.is_symlink():
        trash = final.parent / f".trash-{final.name}-{os.getpid()}-{threading.get_ident()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _install_one(
    store: ObjectStore,
    agent: LockedAgent,
    deps_root: Path,
    registry: str,
    *,
    offline: bool,
    reinstall: bool,
) -> InstalledAgent:
    final = deps_root / agent.name
    marker = read_marker(final)
    existed = final.exists()
    rel = str(DEPS_DIR / agent.name)
    if (
        not reinstall
        and marker is not None
        and marker.get("commit") == agent.commit
        and marker.get("name") == agent.name
    ):
        return InstalledAgent(agent.name, agent.version, agent.commit, rel, "unchanged", False)
    fetched = False
    if not store.has(agent.commit):
        if offline:
            raise OfflineError(
                f"--offline: {agent.name} {agent.version} ({agent.commit[:12]}) is not in the object cache",
                hint="run `mcpz install` once without --offline",
            )
        store.fetch(agent)
        fetched = True
    store.verify(agent)
    deps_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=deps_root, prefix=f".tmp-{agent.name.replace('/', '-')}-"))
    try:
        content = tmp / "tree"
        store.checkout(agent, content)
        record = {"name": agent.name, "version": agent.version, "commit": agent.commit, "registry": registry}
        (content / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _place(content, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    action = "updated" if existed else "installed"
    return InstalledAgent(agent.name, agent.version, agent.commit, rel, action, fetched)


def _remove_unlocked(deps_root: Path, locked: set[str]) -> list[str]:
    removed: list[str] = []
    if not deps_root.is_dir():
        return removed
    for entry in sorted(deps_root.iterdir()):
        if entry.name.startswith((".tmp-", ".trash-")):
            shutil.rmtree(entry, ignore_errors=True)
            continue
        if not entry.is_dir() or entry.is_symlink():
            continue
        for agent_dir in sorted(entry.iterdir()):
            name = f"{entry.name}/{agent_dir.name}"
            if agent_dir.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(agent_dir, ignore_errors=True)
            elif name not in locked:
                if agent_dir.is_dir() and not agent_dir.is_symlink():
                    shutil.rmtree(agent_dir)
                else:
                    agent_dir.unlink()
                removed.append(name)
        with contextlib.suppress(OSError):
            entry.rmdir()  # only when empty
    return removed


async def install_lock(
    project: Path,
    lock: Lock,
    *,
    registry: str,
    token: str | None,
    cache_root: Path,
    offline: bool = False,
    reinstall: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: ProgressFn | None = None,
    received: Callable[[int], None] | None = None,
) -> InstallResult:
    """Make `project/.mcpz/deps/` hold exactly the agents of `lock`, each verified; `received(n)`
    hears each n bytes fetched."""
    deps_root = project / DEPS_DIR
    result = InstallResult(target=deps_root)
    result.removed = _remove_unlocked(deps_root, {agent.name for agent in lock.agents})
    if not lock.agents:
        return result
    try:
        store = await anyio.to_thread.run_sync(
            ObjectStore, object_store_path(cache_root, registry), registry, token, received
        )
    except OSError as e:
        raise RepositoryError(f"cannot open the object cache under {cache_root}: {e}") from e
    limiter = anyio.CapacityLimiter(max(1, concurrency))
    done: dict[str, InstalledAgent] = {}
    failed: dict[str, McpzError] = {}

    async def one(agent: LockedAgent) -> None:
        try:
            installed = await anyio.to_thread.run_sync(
                lambda: _install_one(store, agent, deps_root, registry, offline=offline, reinstall=reinstall),
                limiter=limiter,
            )
        except McpzError as e:  # every agent gets its chance; the first failure (in lock order) is raised
            failed[agent.name] = e
            return
        done[agent.name] = installed
        if progress is not None:
            progress(agent.name, installed.action)

    async with anyio.create_task_group() as group:
        for agent in lock.agents:
            group.start_soon(one, agent)
    for agent in lock.agents:
        if agent.name in failed:
            error = failed[agent.name]
            others = len(failed) - 1
            if others:
                error.message += f" (and {others} more agent{'s' if others > 1 else ''} failed)"
            raise error
    result.agents = [done[agent.name] for agent in lock.agents]
    return result
