"""`mcpz registry gc`: every kind of garbage the registry keeps, collected safely while it serves.

- git objects no root reaches, in packs and loose files older than the grace period
  (registry_server.maintenance.repack);
- quarantines no push holds any more, and what killed gc runs left;
- repositories with no refs, older than the grace period, that no push is filling;
- sign-in nonces past their expiry; tokens (sessions are tokens) expired or revoked longer than
  the token retention ago;
- usage-journal segments (`usage/journal.N.flushing`, and each replica's under
  `usage/replicas/<name>/`) whose every event is already in the database.

Releases are never collected: every published release's commit is a root, yanked or not.
Deployment revisions have no retention: a rollback may go back to any of them, so all are kept.
`GcScheduler` runs the same collection every `gc_interval` seconds when that setting is above 0,
on the replica that holds the lease "gc" (any replica's run is safe, but one is enough); its row
deletions are fenced by that lease, and it checks the lease again before each repository, so a
replica paused past its lease stops at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio.to_thread
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from mcpz.errors import McpzError
from registry_server.accounts.models import AuthNonce, Token
from registry_server.git.pushlock import hold_push_lock
from registry_server.git.recovery import quarantine_in_use
from registry_server.leases import Held, LeaseLost, fence
from registry_server.maintenance import repack
from registry_server.maintenance.plan import GcReport
from registry_server.pause_points import pause_point
from registry_server.releases.models import Agent, Release
from registry_server.state import RegistryState
from registry_server.storage import RepoStore
from registry_server.tasks import cancel
from registry_server.usage.events import UsageEvent
from registry_server.usage.models import UsageEventRow

log = logging.getLogger(__name__)

_SEGMENT = re.compile(r"journal\.(\d+)\.flushing")


def collect_garbage(
    state: RegistryState,
    *,
    dry_run: bool = False,
    grace: float | None = None,
    now: float | None = None,
    before_swap: Callable[[], None] | None = None,
    lease: Held | None = None,
) -> GcReport:
    """Collect everything (see the module's docstring); on a dry run, only count it.

    `lease`: the scheduler's lease "gc", checked before each repository and in the rows' deletion
    (LeaseLost once another replica took it); None for a run a person started."""
    settings = state.settings
    moment = time.time() if now is None else now
    cutoff = moment - (settings.gc_grace if grace is None else grace)
    report = GcReport(dry_run=dry_run)
    _collect_repositories(state, report, cutoff, dry_run, before_swap, lease)
    _collect_rows(state, report, moment, settings.token_retention, dry_run, lease)
    _collect_usage_segments(state, report, dry_run)
    return report


def _release_commits(state: RegistryState) -> dict[str, list[str]]:
    with state.db.session() as session:
        rows = session.execute(select(Agent.name, Release.commit).join(Release, Release.agent_id == Agent.id))
        commits: dict[str, list[str]] = {}
        for name, commit in rows:
            commits.setdefault(name, []).append(commit)
        return commits


def repositories(repos: RepoStore) -> list[tuple[str, Path]]:
    """Every `namespace/name` repository under the store's root."""
    found: list[tuple[str, Path]] = []
    if not repos.root.is_dir():
        return found
    for namespace in sorted(p for p in repos.root.iterdir() if p.is_dir()):
        for path in sorted(namespace.glob("*.git")):
            name = f"{namespace.name}/{path.name[: -len('.git')]}"
            if path.is_dir() and not path.name.startswith("."):
                try:
                    repos.path_of(name)
                except ValueError:
                    continue  # no agent's repository
                found.append((name, path))
    return found


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _collect_repositories(
    state: RegistryState,
    report: GcReport,
    cutoff: float,
    dry_run: bool,
    before_swap: Callable[[], None] | None,
    lease: Held | None,
) -> None:
    releases = _release_commits(state)
    repos = state.repos
    objects_freed = report.freed("git objects")
    for name, path in repositories(repos):
        if lease is not None and lease.epoch:  # (epoch 0: the single-process registry's)
            with state.db.session() as session:
                fence(session, lease)  # files are not fenced by the database: stop between them
        report.repositories += 1
        if name not in releases and _collect_empty(state, name, path, cutoff, dry_run, report):
            continue  # (a repository with releases is never removed, even with its refs gone)
        with writer_lock(state, name):
            for quarantine in sorted((path / "objects").glob("incoming-*")):
                if quarantine.is_dir() and not quarantine_in_use(quarantine):
                    report.freed("quarantines").add(_folder_size(quarantine), f"{name}: {quarantine.name}")
                    if not dry_run:
                        shutil.rmtree(quarantine, ignore_errors=True)
        result = repack.collect(
            path,
            release_commits=releases.get(name, ()),
            cutoff=cutoff,
            writer_lock=lambda name=name: writer_lock(state, name),  # type: ignore[misc]
            dry_run=dry_run,
            before_swap=before_swap,
        )
        for leftover, size in result.leftovers:
            report.freed("quarantines").add(size, f"{name}: {leftover.name} (left by an interrupted gc)")
        if result.deferred:
            report.deferred.append(f"{name}: {result.deferred}")
        if result.dropped or result.freed_bytes:
            objects_freed.count += result.dropped
            objects_freed.bytes += result.freed_bytes
            objects_freed.detail.append(f"{name}: {result.dropped} objects")
        log.info(
            "repository collected",
            extra={"agent": name, "kept": result.kept, "dropped": result.dropped, "dry_run": dry_run},
        )


@contextlib.contextmanager
def writer_lock(state: RegistryState, name: str) -> Iterator[None]:
    """What a push holds while it moves packs and refs: this process's lock on the repository and,
    across replicas, the database's (registry_server.git.pushlock)."""
    with state.repos.lock(name), state.db.session() as session:
        hold_push_lock(session, name)
        yield


def _collect_empty(
    state: RegistryState, name: str, path: Path, cutoff: float, dry_run: bool, report: GcReport
) -> bool:
    """Remove the repository if it has no refs, is older than the cutoff and no push fills it."""
    repos = state.repos
    with writer_lock(state, name):
        refs = path / "refs"
        packed = path / "packed-refs"
        has_refs = (packed.exists() and packed.stat().st_size > 0) or any(
            p.is_file() for p in refs.rglob("*")
        )
        if has_refs or repos.held(name):
            return False
        if path.stat().st_mtime > cutoff or (path / "objects").stat().st_mtime > cutoff:
            return False  # a push may have just made it
        if any(quarantine_in_use(q) for q in (path / "objects").glob("incoming-*")):
            return False
        report.freed("empty repositories").add(_folder_size(path), name)
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
        return True


def _collect_rows(
    state: RegistryState,
    report: GcReport,
    moment: float,
    retention: float,
    dry_run: bool,
    lease: Held | None,
) -> None:
    now = datetime.fromtimestamp(moment, UTC)
    kept_until = now - timedelta(seconds=retention)
    nonce_gone = AuthNonce.expires_at <= now
    token_gone = or_(Token.expires_at <= kept_until, Token.revoked_at <= kept_until)
    with state.db.session() as session:
        nonces = session.scalar(select(func.count()).select_from(AuthNonce).where(nonce_gone)) or 0
        tokens = list(session.execute(select(Token.id, Token.prefix, Token.name).where(token_gone)))
        if not dry_run:
            if lease is not None:
                pause_point("gc-before-rows")
                fence(session, lease)
            session.execute(delete(AuthNonce).where(nonce_gone))
            session.execute(delete(Token).where(token_gone))
            session.commit()
    # Rows free no bytes a person can see on disk at once (the database reuses its pages).
    report.freed("nonces").count += nonces
    for _id, prefix, name in tokens:
        report.freed("tokens").add(0, f"{prefix}... {name}".strip())


def _collect_usage_segments(state: RegistryState, report: GcReport, dry_run: bool) -> None:
    """Remove journal segments the flusher already wrote to the database (with the same digest).

    The flusher deletes a segment right after its commit; one survives only when that delete
    failed or the process died in between. The running flusher removes segments with
    `missing_ok`, and writes events idempotently, so removing one under it is harmless.
    """
    for path in _usage_segments(state.settings.data_dir / "usage"):
        digests = _segment_digests(path)
        if digests is None:
            continue
        if digests and not _all_stored(state, digests):
            continue
        shown = path.relative_to(state.settings.data_dir / "usage")
        report.freed("usage segments").add(path.stat().st_size, str(shown))
        if not dry_run:
            path.unlink(missing_ok=True)


def _usage_segments(directory: Path) -> list[Path]:
    """The segments of the single-process journal and of each replica's (`replicas/<name>/`)."""
    folders = [directory]
    replicas = directory / "replicas"
    if replicas.is_dir():
        folders += sorted(p for p in replicas.iterdir() if p.is_dir())
    return [
        path
        for folder in folders
        if folder.is_dir()
        for path in sorted(folder.iterdir())
        if _SEGMENT.fullmatch(path.name) is not None
    ]


def _segment_digests(path: Path) -> dict[str, str] | None:
    """Each event's id and digest; None when a line does not read (a person should look at it)."""
    digests: dict[str, str] = {}
    try:
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                event = UsageEvent.from_dict(json.loads(line))
                digests[event.id] = event.digest()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return digests


def _all_stored(state: RegistryState, digests: dict[str, str]) -> bool:
    ids = list(digests)
    with state.db.session() as session:
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            rows = session.execute(
                select(UsageEventRow.id, UsageEventRow.digest).where(UsageEventRow.id.in_(part))
            )
            stored = {event_id: digest for event_id, digest in rows}
            if any(stored.get(i) != digests[i] for i in part):
                return False
    return True


LEASE = "gc"


class GcScheduler:
    """Runs `collect_garbage` every `gc_interval` seconds in a worker thread (0: never), on the
    replica holding the lease "gc" (always, in the single-process registry)."""

    def __init__(self, state: RegistryState) -> None:
        self.state = state
        self.interval = state.settings.gc_interval
        self._task: asyncio.Task[None] | None = None
        self.last: GcReport | None = None

    async def start(self) -> None:
        if self.interval > 0:
            self.state.leadership.want(LEASE)
            self._task = asyncio.create_task(self._run(), name="mcpz-gc")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    def _collect(self, lease: Held) -> GcReport:
        return collect_garbage(self.state, lease=lease)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            lease = self.state.leadership.held(LEASE)
            if lease is None:
                continue  # another replica collects
            try:
                # Not cancellable once started: a run stopped halfway would only waste its work.
                self.last = await anyio.to_thread.run_sync(self._collect, lease)
            except LeaseLost as e:
                log.warning("scheduled gc stopped: %s", e.message)
                continue
            except (McpzError, SQLAlchemyError, OSError, ValueError) as e:
                log.error("scheduled gc failed, tried again in %s s: %s", self.interval, e)
                continue
            log.info("scheduled gc", extra={"freed_bytes": self.last.total_bytes})
