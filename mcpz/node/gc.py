"""`mcpz node gc`: the node's object cache and checkouts, less what no replica runs.

What the node keeps (mcpz.node.state): the releases and dependencies of every assignment in
`node.json` stay, with their checkouts. What goes:

- verified-release refs (`refs/agents/{name}/{commit}`, mcpz.node.fetch) of commits no assignment
  names, then the objects no remaining ref reaches (dulwich's gc: new pack written before old
  packs go; objects younger than the grace period are kept, as git's `gc.pruneExpire`);
- checkouts (`replicas/{id}/e{epoch}`) of replicas the node does not hold.

While the node runs (it holds `node.lock`), it may be fetching or checking out a release it has
not yet recorded: refs and checkouts younger than the grace period are left alone, and the node
refetches anything it finds missing; the grace period is then at least `GRACE_WHILE_RUNNING`.
Stopped, everything that is not held goes at once when `grace` is 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcpz.node.state import LOCK_FILE, NodeState

GRACE_DEFAULT = 3600.0
"""Seconds a ref, an object or a checkout is kept after it was written, whoever holds it."""
GRACE_WHILE_RUNNING = 600.0
"""The least grace while the node runs: a pull in flight writes before it records."""


@dataclass
class NodeGcReport:
    """What `collect_node_garbage` removed (on a dry run: would remove)."""

    dry_run: bool
    node_running: bool
    releases: list[str] = field(default_factory=list)  # "name@commit" no assignment runs
    objects: int = 0
    object_bytes: int = 0
    checkouts: list[str] = field(default_factory=list)
    checkout_bytes: int = 0
    kept_releases: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return self.object_bytes + self.checkout_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "node_running": self.node_running,
            "freed_bytes": self.freed_bytes,
            "releases": list(self.releases),
            "kept_releases": list(self.kept_releases),
            "objects": self.objects,
            "object_bytes": self.object_bytes,
            "checkouts": list(self.checkouts),
            "checkout_bytes": self.checkout_bytes,
        }


def _node_running(data_dir: Path) -> bool:
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _held(state: NodeState) -> tuple[set[str], set[tuple[str, int]]]:
    """Commits (releases and their locked dependencies) and (replica, epoch) checkouts in use."""
    commits: set[str] = set()
    checkouts: set[tuple[str, int]] = set()
    for held in state.replicas.values():
        commits.add(held.commit)
        commits.update(d.commit for d in held.dependencies)
        checkouts.add((held.replica_id, held.epoch))
    return commits, checkouts


def collect_node_garbage(
    data_dir: Path, *, dry_run: bool = False, grace: float = GRACE_DEFAULT, now: float | None = None
) -> NodeGcReport:
    """Collect the node data folder `data_dir` (see the module's docstring)."""
    moment = time.time() if now is None else now
    running = _node_running(data_dir)
    # Whatever holds the node, the grace period protects what it wrote last; stopped, 0 means now.
    if running:
        grace = max(grace, GRACE_WHILE_RUNNING)
    cutoff = moment - grace
    report = NodeGcReport(dry_run=dry_run, node_running=running)
    state = NodeState.load(data_dir)
    commits, checkouts = _held(state)
    report.kept_releases = sorted(commits)
    _collect_checkouts(data_dir, checkouts, cutoff, dry_run, report)
    cache = data_dir / "objects.git"
    if (cache / "objects").is_dir():
        _collect_cache(cache, commits, cutoff, grace, dry_run, report)
    return report


def _collect_checkouts(
    data_dir: Path, held: set[tuple[str, int]], cutoff: float, dry_run: bool, report: NodeGcReport
) -> None:
    replicas = data_dir / "replicas"
    if not replicas.is_dir():
        return
    for replica in sorted(p for p in replicas.iterdir() if p.is_dir()):
        for epoch_dir in sorted(p for p in replica.iterdir() if p.is_dir()):
            epoch = epoch_dir.name[1:]
            if epoch_dir.name.startswith("e") and epoch.isdigit() and (replica.name, int(epoch)) in held:
                continue
            if epoch_dir.stat().st_mtime > cutoff:
                continue  # being checked out right now, perhaps
            report.checkouts.append(f"{replica.name}/{epoch_dir.name}")
            report.checkout_bytes += _size(epoch_dir)
            if not dry_run:
                shutil.rmtree(epoch_dir, ignore_errors=True)
        if not dry_run and not any(replica.iterdir()):
            with contextlib.suppress(OSError):
                replica.rmdir()


def _collect_cache(
    cache: Path, commits: set[str], cutoff: float, grace: float, dry_run: bool, report: NodeGcReport
) -> None:
    from dulwich.gc import garbage_collect
    from dulwich.repo import Repo

    repo = Repo(str(cache), bare=True)
    try:
        doomed: list[tuple[bytes, bytes]] = []
        for ref, sha in sorted(repo.refs.as_dict(b"refs/agents").items()):
            commit = sha.decode("ascii", "replace")
            if commit in commits:
                continue
            loose = cache / "refs" / "agents" / os.fsdecode(ref)
            if loose.exists() and loose.stat().st_mtime > cutoff:
                continue  # a fetch just verified it: its assignment may not be saved yet
            doomed.append((b"refs/agents/" + ref, sha))
            report.releases.append(f"{os.fsdecode(ref).rsplit('/', 1)[0]}@{commit}")
        if dry_run:
            # What would no longer be reachable once those refs are gone.
            kept = {sha for ref, sha in repo.refs.as_dict().items() if (ref, sha) not in doomed}
            reachable = _reachable(repo, kept)
            for oid in repo.object_store:
                if oid not in reachable and _older_than(repo, oid, cutoff):
                    report.objects += 1
                    with contextlib.suppress(KeyError):
                        report.object_bytes += len(repo.object_store[oid].as_raw_string())
            return
        for ref, sha in doomed:
            repo.refs.remove_if_equals(ref, sha)
        before = _size(cache / "objects")
        stats = garbage_collect(repo, prune=True, grace_period=int(grace))
        report.objects = len(stats.pruned_objects)
        report.object_bytes = max(0, before - _size(cache / "objects"))
    finally:
        repo.close()


def _older_than(repo: Any, oid: bytes, cutoff: float) -> bool:
    try:
        return float(repo.object_store.get_object_mtime(oid)) <= cutoff
    except KeyError:
        return False


def _reachable(repo: Any, tips: set[bytes]) -> set[bytes]:
    from dulwich.gc import find_reachable_objects
    from dulwich.refs import DictRefsContainer

    refs = DictRefsContainer({b"refs/kept/%d" % i: sha for i, sha in enumerate(sorted(tips))})
    return set(find_reachable_objects(repo.object_store, refs, include_reflogs=False))
