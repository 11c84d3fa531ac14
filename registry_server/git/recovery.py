"""Start-up recovery of the repositories: what a killed registry left half done is undone.

The rule (docs/registry.md, "Crash recovery"): a release exists once its database row is
committed, and a push commits that row last, after its packs and refs moved. So at start-up,
before serving, every repository is brought back to a state a push could have left:

- a `v*` tag with no release row is an interrupted push: the tag is removed (the version is
  absent and can be pushed again; its objects stay unreferenced, so nothing can fetch them);
- quarantines (`objects/incoming-*`) no running push holds, git lock files (`*.lock`) and packs
  whose move was cut short (no `.idx`) are removed: each repository is cleaned under its writer
  lock, which every push holds while it moves packs and refs;
- a repository with no refs (made by a push that was refused, abandoned or killed) is removed.

Replicas sharing the repositories run it at their start while others serve: each repository is
cleaned holding the push lock of the database (registry_server.git.pushlock), so a push in flight
on another replica finishes (or has not begun moving refs) before its tags are compared.

A release row whose tag is missing is left alone: the push that wrote it had moved its tag
first, so the tag was removed afterwards on purpose (the repository deleted by its operator) and
the row is what keeps the version from being published again at another commit.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry_server.db import Database
from registry_server.git.pushlock import hold_push_lock
from registry_server.releases.models import Agent, Release
from registry_server.storage import RepoStore

# The logger keeps its name from before the domain packages, so logging configs still match.
log = logging.getLogger("registry_server.git_recovery")

QUARANTINE_LOCK = "mcpz-push.lock"
"""A file in each quarantine, flock-ed by its push for as long as the push runs."""


@dataclass
class Recovery:
    """What start-up recovery removed, for the log and for tests."""

    orphan_tags: list[str] = field(default_factory=list)
    quarantines: list[str] = field(default_factory=list)
    lock_files: list[str] = field(default_factory=list)
    partial_packs: list[str] = field(default_factory=list)
    empty_repositories: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        removed = (self.orphan_tags, self.quarantines, self.lock_files, self.partial_packs)
        return any(removed) or bool(self.empty_repositories)


def quarantine_in_use(path: Path) -> bool:
    """True while a push (of this or another process) holds the quarantine's lock."""
    try:
        fd = os.open(path / QUARANTINE_LOCK, os.O_RDONLY)
    except OSError:
        return False  # not made yet, or gone: nothing holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove_quarantines(repo_path: Path) -> list[Path]:
    """Remove the quarantines no running push holds; returns the ones removed."""
    removed = []
    for path in sorted((repo_path / "objects").glob("incoming-*")):
        if path.is_dir() and not quarantine_in_use(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _stale_locks(repo_path: Path) -> list[Path]:
    # Git's lock files sit next to what they lock: loose refs, packed-refs, HEAD, config.
    found = [p for p in repo_path.glob("*.lock") if p.is_file()]
    refs = repo_path / "refs"
    if refs.is_dir():
        found += [p for p in refs.rglob("*.lock") if p.is_file()]
    return sorted(found)


def _remove_partial_packs(repo_path: Path) -> list[Path]:
    # A push moves a pack's .idx last; without it git and dulwich ignore the pack, so a pack
    # whose move was cut short is only dead weight.
    pack_dir = repo_path / "objects" / "pack"
    removed = []
    for path in sorted(pack_dir.glob("pack-*")):
        if path.suffix in (".pack", ".rev") and not path.with_suffix(".idx").exists():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _release_versions(session: Session, name: str) -> set[str]:
    rows = session.execute(
        select(Release.version).join(Agent, Release.agent_id == Agent.id).where(Agent.name == name)
    )
    return set(rows.scalars())


def _repositories(repos: RepoStore) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    if not repos.root.is_dir():
        return found
    for namespace in sorted(p for p in repos.root.iterdir() if p.is_dir()):
        for path in sorted(namespace.glob("*.git")):
            if path.is_dir() and not path.name.startswith("."):
                found.append((f"{namespace.name}/{path.name[: -len('.git')]}", path))
    return found


def _remove_unfinished_creations(repos: RepoStore) -> None:
    # RepoStore.create builds a repository under a hidden temporary name and renames it in.
    if repos.root.is_dir():
        for tmp in repos.root.glob("*/.*.git.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_if_empty_locked(repos: RepoStore, name: str) -> bool:
    path = repos.path_of(name)
    repo = repos.open(name)
    if repo is None:
        return False
    try:
        empty = not repo.refs.as_dict(b"refs/")
    finally:
        repo.close()
    if not empty or repos.held(name):
        return False
    if any(quarantine_in_use(q) for q in (path / "objects").glob("incoming-*")):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def remove_if_empty(repos: RepoStore, name: str) -> bool:
    """Remove the repository if it has no refs and no push is running into it.

    A push to a new name creates the repository; one that was refused or abandoned would
    otherwise leave an empty folder behind (and the name looking taken to an operator).
    """
    with repos.lock(name):
        return _remove_if_empty_locked(repos, name)


def recover(repos: RepoStore, db: Database) -> Recovery:
    """Bring every repository in line with the release index; run before serving."""
    report = Recovery()
    _remove_unfinished_creations(repos)
    for name, path in _repositories(repos):
        try:
            repos.path_of(name)
        except ValueError:
            log.warning("skipping a folder that is no agent's repository", extra={"path": str(path)})
            continue
        with repos.lock(name), db.session() as session:
            # Another replica may be pushing to it right now: wait for its commit, so its tag is
            # not taken for an interrupted push's (registry_server.git.pushlock).
            hold_push_lock(session, name)
            known = _release_versions(session, name)
            report.quarantines += [str(p) for p in remove_quarantines(path)]
            for lock in _stale_locks(path):
                lock.unlink(missing_ok=True)
                report.lock_files.append(str(lock))
            report.partial_packs += [str(p) for p in _remove_partial_packs(path)]
            repo = repos.open(name)
            if repo is None:
                continue
            try:
                # (as_dict takes a folder: "refs/tags/v" would match nothing)
                for tag, sha in sorted(repo.refs.as_dict(b"refs/tags").items()):
                    version = tag[1:].decode("utf-8", "replace")
                    if not tag.startswith(b"v") or version in known:
                        continue
                    if repo.refs.remove_if_equals(b"refs/tags/" + tag, sha):
                        report.orphan_tags.append(f"{name} v{version}")
            finally:
                repo.close()
            if _remove_if_empty_locked(repos, name):
                report.empty_repositories.append(name)
    if report.changed:
        log.warning(
            "recovered from an interrupted run",
            extra={
                "removed_release_tags": report.orphan_tags,
                "removed_quarantines": len(report.quarantines),
                "removed_lock_files": report.lock_files,
                "removed_partial_packs": len(report.partial_packs),
                "removed_empty_repositories": report.empty_repositories,
            },
        )
    return report
