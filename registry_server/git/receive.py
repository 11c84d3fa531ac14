"""Receiving pushes: objects land in a quarantine, are checked, and only then join the repository.

Dulwich writes an incoming pack straight into the repository and has no quarantine, so this
handler replaces its pack application: the pack is indexed into `objects/incoming-*` (an
object store whose alternate is the repository, so thin packs resolve), every object is checked
(registry_server.git.pack_checks) and every ref update is decided (registry_server.releases.service). Only
when all of that passes are the pack files moved in, the refs moved and the releases committed;
otherwise the quarantine is deleted and nothing of the push can be read. A push is all or
nothing (git's `--atomic`), which is what makes "nothing readable" hold.

The database commit comes last because it is what publishes: a kill before it leaves at most
release tags with no release row, which start-up recovery removes (registry_server.git.recovery;
docs/registry.md, "Crash recovery"). `registry_server.git.crash_points` lets tests kill the process
at each step.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dulwich.errors import ObjectFormatException
from dulwich.file import FileLocked
from dulwich.object_store import DiskObjectStore, PackInputTooLarge
from dulwich.objects import ShaFile
from dulwich.protocol import SIDE_BAND_CHANNEL_PROGRESS
from dulwich.server import ReceivePackHandler
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from mcpz.errors import RefusedError
from registry_server.accounts.service import Principal
from registry_server.db import Database
from registry_server.git.crash_points import crash_point
from registry_server.git.pack_checks import (
    RawObject,
    check_objects,
    human_size,
    outside_references,
    pack_objects,
    store_lookup,
)
from registry_server.git.pushlock import hold_push_lock
from registry_server.git.recovery import QUARANTINE_LOCK
from registry_server.orm import utcnow
from registry_server.releases.models import Agent
from registry_server.releases.service import (
    ZERO,
    RefUpdate,
    plan_updates,
    published_versions,
    record_releases,
)
from registry_server.storage import RepoStore

# The logger keeps its name from before the domain packages, so logging configs still match.
log = logging.getLogger("registry_server.git_receive")


@dataclass(frozen=True)
class PushContext:
    name: str
    principal: Principal
    db: Database
    repos: RepoStore
    max_push_bytes: int
    on_published: Callable[[str, list[str]], None] | None = None


def _agent_row(session: Session, name: str) -> Agent:
    """The agent's row, made on its first push; another registry may be making it right now."""
    agent = session.scalar(select(Agent).where(Agent.name == name))
    if agent is not None:
        return agent
    try:
        with session.begin_nested():
            agent = Agent(
                name=name, namespace=name.split("/")[0], description="", created_at=utcnow(), serial=0
            )
            session.add(agent)
    except IntegrityError:
        agent = session.scalar(select(Agent).where(Agent.name == name))
        assert agent is not None
    return agent


def _gone_meanwhile(objects: list[RawObject], main_objects: Path) -> list[bytes]:
    """What `objects` refer to outside themselves and the repository no longer holds.

    Read from a store opened now: the push's own store may still map a pack that
    `mcpz registry gc` has since deleted (registry_server.maintenance.repack).
    """
    needed = outside_references(objects)
    if not needed:
        return []
    fresh = DiskObjectStore(str(main_objects))
    try:
        return sorted(oid for oid in needed if not (fresh.contains_packed(oid) or fresh.contains_loose(oid)))
    finally:
        fresh.close()


class RegistryReceivePack(ReceivePackHandler):  # type: ignore[misc]
    """A receive-pack whose pushes pass quarantine, object checks and release rules."""

    def __init__(self, backend: Any, args: Sequence[str], proto: Any, *, ctx: PushContext, **kw: Any) -> None:
        super().__init__(backend, args, proto, **kw)
        self.ctx = ctx
        self.published: list[str] = []

    def capabilities(self) -> list[bytes]:
        # Deleting refs is allowed by the protocol; releases refuse it in plan_updates.
        return list(super().capabilities())

    def _say(self, text: str) -> None:
        if self._client_capabilities is not None and self.has_capability(b"side-band-64k"):
            self.proto.write_sideband(SIDE_BAND_CHANNEL_PROGRESS, text.encode("utf-8", "replace") + b"\n")

    def _apply_pack(self, refs: list[tuple[bytes, bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:  # type: ignore[override]
        updates = [RefUpdate(old, new, ref) for old, new, ref in refs]
        main_store: DiskObjectStore = self.repo.object_store
        quarantine = Path(main_store.path) / f"incoming-{secrets.token_hex(8)}"
        quarantine.mkdir()
        stores: list[DiskObjectStore] = []
        # Held while the push runs, so that start-up recovery of another process leaves it be.
        with open(quarantine / QUARANTINE_LOCK, "wb") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            try:
                yield from self._apply_in_quarantine(updates, main_store, quarantine, stores)
            finally:
                for store in stores:
                    store.close()
                shutil.rmtree(quarantine, ignore_errors=True)

    def _refuse_all(
        self, updates: list[RefUpdate], reasons: list[str | None] | str
    ) -> Iterator[tuple[bytes, bytes]]:
        for i, update in enumerate(updates):
            reason = reasons if isinstance(reasons, str) else (reasons[i] or "atomic push failed")
            yield update.ref, reason.replace("\n", " ").encode("utf-8", "replace")

    def _apply_in_quarantine(
        self,
        updates: list[RefUpdate],
        main_store: DiskObjectStore,
        quarantine: Path,
        stores: list[DiskObjectStore],
    ) -> Iterator[tuple[bytes, bytes]]:
        store = DiskObjectStore.init(str(quarantine))
        stores.append(store)
        store.add_alternate_path(main_store.path)
        new_objects: list[RawObject] = []
        if any(u.new != ZERO for u in updates):
            try:
                pack = store.add_thin_pack(
                    self.proto.read, getattr(self.proto, "recv", None), max_input_size=self.ctx.max_push_bytes
                )
            except PackInputTooLarge:
                reason = f"push exceeds the registry's limit of {human_size(self.ctx.max_push_bytes)}"
                yield b"unpack", reason.encode()
                yield from self._refuse_all(updates, reason)
                return
            except Exception as e:  # hostile input may break the pack reader in any way
                log.info("unpack failed", extra={"agent": self.ctx.name, "error": repr(e)})
                yield b"unpack", str(e).replace("\n", " ").encode("utf-8", "replace")
                yield from self._refuse_all(updates, "unpack failed")
                return
            new_objects = list(pack_objects(pack))
        crash_point("after-unpack")
        yield b"unpack", b"ok"

        def lookup(sha: bytes) -> ShaFile | None:
            # Only used once every new object passed the checks below.
            try:
                return store[sha]
            except (KeyError, ObjectFormatException, ValueError):
                return None

        problems = check_objects(
            new_objects, store_lookup(store), tips=[u.new for u in updates if u.new != ZERO]
        )
        if problems:
            for problem in problems[:20]:
                self._say(f"error: {problem}")
            if len(problems) > 20:
                self._say(f"error: ... and {len(problems) - 20} more problems")
            first = problems[0].message
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            yield from self._refuse_all(updates, f"rejected: {first}{more}")
            return
        crash_point("after-checks")

        ctx = self.ctx
        with ctx.repos.lock(ctx.name):
            try:
                with ctx.db.session() as session:
                    # Across replicas: one push of this repository at a time, from the refs'
                    # check to the commit (registry_server.git.pushlock).
                    hold_push_lock(session, ctx.name)
                    existing = self.repo.refs.as_dict()
                    stale = [
                        None if existing.get(u.ref, ZERO) == u.old else "stale info: fetch first"
                        for u in updates
                    ]
                    if any(stale):
                        yield from self._refuse_all(updates, stale)
                        return
                    if _gone_meanwhile(new_objects, Path(main_store.path)):
                        # Garbage collection removed what this push builds on after the checks passed
                        # (only possible for objects no ref reached): landing it would leave a hole.
                        yield from self._refuse_all(
                            updates, "objects this push builds on were removed meanwhile; push again"
                        )
                        return
                    plan = plan_updates(ctx.name, updates, lookup, published_versions(session, ctx.name))
                    if plan.refused:
                        for update, error in zip(updates, plan.errors, strict=True):
                            if error:
                                self._say(f"error: {update.ref.decode(errors='replace')}: {error}")
                        yield from self._refuse_all(updates, plan.errors)
                        return
                    agent = _agent_row(session, ctx.name)
                    record_releases(session, agent, ctx.principal.account_id, plan.releases)
                    crash_point("after-db-flush")
                    self._apply(updates, quarantine, Path(main_store.path), session)
                    self.published = [r.version for r in plan.releases]
            except RefusedError as e:
                yield from self._refuse_all(updates, e.message)
                return
            crash_point("after-db-commit")
        for version in self.published:
            self._say(f"published {ctx.name} {version}")
        if ctx.on_published and self.published:
            ctx.on_published(ctx.name, self.published)
        for update in updates:
            yield update.ref, b"ok"

    def _apply(self, updates: list[RefUpdate], quarantine: Path, objects: Path, session: Session) -> None:
        """Packs in, refs moved, then the release rows committed: the commit is the publication.

        A crash before the commit leaves refs the index does not know; start-up recovery removes
        their release tags (registry_server.git.recovery). A failure here undoes refs and packs.
        """
        moved = self._move_packs(quarantine, objects)
        crash_point("after-packs-moved")
        done: list[RefUpdate] = []
        try:
            try:
                self._move_refs(updates, done)
            except FileLocked as e:
                # Only a git process outside the registry (or a crash, cleared at start-up) holds one.
                locked = os.path.relpath(os.fsdecode(e.filename), self.repo.path)
                raise RefusedError(f"{locked} is locked on the registry; retry later") from e
            crash_point("after-refs-moved")
            try:
                session.commit()
            except SQLAlchemyError as e:
                # Taken as not done: the refs go back, so the version stays absent (an error
                # after the database did commit would leave a release whose tag a re-push restores).
                # The driver's own error: SQLAlchemy's text would add the statement's parameters.
                error = repr(getattr(e, "orig", None) or e)
                log.warning("could not record a push", extra={"agent": self.ctx.name, "error": error})
                raise RefusedError("the registry could not record this push; nothing changed, retry") from e
        except BaseException:
            self._undo_refs(done)
            # Nothing points at them any more: take them out again so nothing is readable.
            for path in reversed(moved):
                path.unlink(missing_ok=True)
            raise

    @staticmethod
    def _move_packs(quarantine: Path, objects: Path) -> list[Path]:
        # The .pack goes first and the .idx last: a reader only sees a pack once its index exists.
        pack_dir = quarantine / "pack"
        moved: list[Path] = []
        for suffix in (".pack", ".rev", ".idx"):
            for path in sorted(pack_dir.glob(f"pack-*{suffix}")):
                target = objects / "pack" / path.name
                os.replace(path, target)
                moved.append(target)
                crash_point("mid-packs-moved")
        return moved

    def _move_refs(self, updates: list[RefUpdate], done: list[RefUpdate]) -> None:
        for update in updates:
            if update.new == ZERO:
                ok = self.repo.refs.remove_if_equals(update.ref, update.old)
            elif update.old == ZERO:
                ok = self.repo.refs.add_if_new(update.ref, update.new)
            else:
                ok = self.repo.refs.set_if_equals(update.ref, update.old, update.new)
            if not ok:
                raise RefusedError(f"{update.ref.decode(errors='replace')} changed during the push; retry")
            done.append(update)
        self._point_head(updates)

    def _undo_refs(self, done: list[RefUpdate]) -> None:
        for update in reversed(done):
            if update.old == ZERO:
                self.repo.refs.remove_if_equals(update.ref, update.new)
            elif update.new == ZERO:
                self.repo.refs.add_if_new(update.ref, update.old)
            else:
                self.repo.refs.set_if_equals(update.ref, update.new, update.old)

    def _point_head(self, updates: list[RefUpdate]) -> None:
        # A new repository's HEAD names main; when the first push has no main, name its branch.
        head = self.repo.refs.read_ref(b"HEAD")
        target = head[len(b"ref: ") :] if head and head.startswith(b"ref: ") else None
        if target is not None and target not in self.repo.refs.as_dict():
            branches = [u.ref for u in updates if u.ref.startswith(b"refs/heads/") and u.new != ZERO]
            if branches:
                self.repo.refs.set_symbolic_ref(b"HEAD", branches[0])
