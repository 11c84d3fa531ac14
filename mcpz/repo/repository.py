"""Agent repositories: ordinary git repositories, read and written through dulwich.

`AgentRepo` is what the CLI calls. A repository it makes is one `git` itself is happy with
(`git status` clean after a commit, `git fsck --strict` quiet), and any git repository with an
`mcpz.toml` at its root works with it. No `git` program is needed.

`commit` is `git add -A && git commit`: it stages every change the ignore rules allow
(new files, edits and deletions), refusing first if the manifest is invalid. Releases are
annotated tags `v{version}` (see `mcpz.repo.release` for why annotated).

The work is split by concept: `history` reads refs and objects, `worktree` scans
the work tree, `store` reads and writes git's file formats fast, `diff` compares
trees and renders patches, `config` reads git's settings, `model` holds the
results and the pure rules.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dulwich.file import FileLocked
from dulwich.objects import Commit, ObjectID, Tag
from dulwich.refs import Ref
from dulwich.repo import Repo

from mcpz.errors import RepositoryError, UsageError
from mcpz.repo import store
from mcpz.repo import worktree as wt
from mcpz.repo.config import GitSettings
from mcpz.repo.diff import compare_files, flatten_tree, tree_changes
from mcpz.repo.history import RepoReader, clean_message, commit_info_of, file_changes, path_str, translated
from mcpz.repo.model import DEFAULT_BRANCH, BumpPart, CommitResult, Diff, FileChange, ReleaseResult, Status

if TYPE_CHECKING:
    from mcpz.repo.release import init_agent

log = logging.getLogger(__name__)

__all__ = ["AgentRepo", "RepoReader", "clean_message", "init_agent"]


def __getattr__(name: str) -> Any:
    # `init_agent` lives with the release code; imported on first use to keep `status` light.
    if name == "init_agent":
        from mcpz.repo.release import init_agent

        return init_agent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AgentRepo(RepoReader):
    """One agent repository with a work tree. Use `open` or `init`, and `close` (or `with`)."""

    def __init__(self, repo: Repo, env: Mapping[str, str] | None = None) -> None:
        super().__init__(repo)
        self._env = dict(os.environ if env is None else env)
        self.root = Path(repo.path)
        self._git_config: GitSettings | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str] = ".", env: Mapping[str, str] | None = None) -> AgentRepo:
        """The repository holding `path`, looking upward for `.git` as git does."""
        start = Path(path).absolute()
        for folder in (start, *start.parents):
            if (folder / ".git").exists():
                with translated(f"open the repository in {folder}"):
                    return cls(Repo(str(folder)), env)
        raise UsageError(
            f"{start} is not inside an agent repository",
            hint="create one with `mcpz init ns/name`, or cd into one",
        )

    @classmethod
    def init(cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> AgentRepo:
        """Make `path` (an existing folder) an empty repository on branch `main`."""
        with translated(f"create a repository in {path}"):
            repo = Repo.init(str(path), default_branch=DEFAULT_BRANCH.encode())
        return cls(repo, env)

    def close(self) -> None:
        self._repo.close()

    def __enter__(self) -> AgentRepo:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- configuration ---------------------------------------------------------------------------

    @property
    def git_config(self) -> GitSettings:
        """git's own settings as they apply here (repository, global, system)."""
        if self._git_config is None:
            self._git_config = GitSettings(self._repo.get_config(), self._env)
        return self._git_config

    def identity(self, author: str | None = None) -> str:
        """Who commits: `author` (`Settings.author`), else GIT_AUTHOR_NAME/EMAIL, else git's
        user.name/user.email, else `login <login@host>`."""
        return self.git_config.identity(author)

    # --- the work tree ---------------------------------------------------------------------------

    @property
    def _index_path(self) -> str:
        return str(self._repo.index_path())

    def _refresh(self, index: store.IndexFile, nested: list[bytes] | None = None) -> wt.Refresh:
        found = wt.scan_worktree(
            str(self.root),
            self.git_config.ignore_rules(str(self.root), self._repo.controldir()),
            index.entries,
            nested,
        )
        return wt.refresh(str(self.root), index.entries, index.mtime_ns, found)

    def status(self) -> Status:
        """Branch, and changes staged (HEAD vs index), unstaged (index vs files) and untracked
        (files, and `folder/` for a folder holding a repository of its own, which commit skips)."""
        with translated("read the status"):
            index = store.read_index(self._index_path)
            nested: list[bytes] = []
            r = self._refresh(index, nested)
            head = self._head()
            index_tree, _, index_trees = store.build_trees(
                (path, e.mode, bytes(e.sha))
                for path, e in sorted(index.entries.items())
                if isinstance(e, store.IndexEntry)
            )
            unmerged = [
                FileChange(path_str(p), "unmerged")
                for p, e in index.entries.items()
                if not isinstance(e, store.IndexEntry)
            ]
            staged = file_changes(
                [
                    c
                    for c in tree_changes(
                        lambda sha: index_trees.get(sha) or self._tree(sha),
                        self._commit(head).tree if head else None,
                        index_tree,
                    )
                    if not isinstance(index.entries.get(c.path), store.ConflictedIndexEntry)
                ]
            )
            unstaged = sorted(
                [
                    *unmerged,
                    *(
                        FileChange(path_str(p), "modified")
                        for p in r.modified
                        if isinstance(index.entries.get(p), store.IndexEntry)
                    ),
                    *(FileChange(path_str(p), "typechange") for p in r.typechanged),
                    *(FileChange(path_str(p), "deleted") for p in r.deleted),
                ],
                key=lambda c: c.path,
            )
            if r.stat_only:
                self._save_stat_refresh(index, r)
        return Status(
            branch=self.branch(),
            head=head.decode("ascii") if head else None,
            staged=staged,
            unstaged=tuple(unstaged),
            untracked=tuple(sorted(path_str(p) for p in (*r.added, *nested))),
        )

    def _save_stat_refresh(self, index: store.IndexFile, r: wt.Refresh) -> None:
        """Record new stat data of files whose content did not change, if the index is free (as git
        status does), so that the next look is cheap."""
        entries = dict(index.entries)
        for path, old in index.entries.items():
            new = r.entries.get(path)
            if isinstance(old, store.IndexEntry) and isinstance(new, store.IndexEntry):
                if new.sha == old.sha and new.mode == old.mode:
                    entries[path] = new
        try:
            lock = store.IndexLock(self._index_path)
        except FileLocked:
            return
        try:
            # Only if nobody rewrote the index since we read it.
            if os.stat(self._index_path).st_mtime_ns == index.mtime_ns:
                lock.save(entries, index.version)
        except FileNotFoundError:
            pass
        finally:
            lock.release()

    # --- commit ----------------------------------------------------------------------------------

    def commit(self, message: str | None, *, amend: bool = False, author: str | None = None) -> CommitResult:
        """Stage every change (as `git add -A`) and commit it; `commit` is None if nothing changed.

        The manifest is validated first: an invalid `mcpz.toml` raises ManifestError and nothing
        is written.
        """
        from mcpz.manifest import load_manifest

        load_manifest(self.root)
        head = self._head()
        previous = self._commit(head) if head else None
        if amend and previous is None:
            raise UsageError("nothing to amend: there are no commits yet", hint="commit without --amend")
        if message is None and previous is not None and amend:
            text = previous.message.decode("utf-8", "replace")
        elif message is None:
            raise UsageError("a commit message is required", hint='pass one with -m "what changed"')
        else:
            text = message
        text = clean_message(text)
        identity = self.identity(author).encode("utf-8")
        with translated("commit"):
            lock = store.IndexLock(self._index_path)
            try:
                return self._commit_locked(lock, head, previous, text, identity, amend)
            finally:
                lock.release()

    def _commit_locked(
        self,
        lock: store.IndexLock,
        head: bytes | None,
        previous: Commit | None,
        message: str,
        identity: bytes,
        amend: bool,
    ) -> CommitResult:
        index = store.read_index(self._index_path)
        r = self._refresh(index)
        tree_id, trees, tree_items = store.build_trees(
            (path, e.mode, bytes(e.sha))
            for path, e in sorted(r.entries.items())
            if isinstance(e, store.IndexEntry)
        )
        parents = list(previous.parents) if amend and previous else ([head] if head else [])
        base_tree = self._commit(parents[0]).tree if parents else None
        index_changed = bool(r.stat_only or r.added or r.modified or r.deleted or r.typechanged)
        if not amend and previous is not None and previous.tree == tree_id:
            if index_changed:
                lock.save(r.entries, index.version)
            return CommitResult(None, self.branch())
        now = int(time.time())
        offset = time.localtime(now).tm_gmtoff
        commit = Commit()
        commit.tree = ObjectID(tree_id)
        commit.parents = [ObjectID(p) for p in parents]
        commit.author = commit.committer = identity
        if amend and previous is not None:
            commit.author = previous.author
            commit.author_time, commit.author_timezone = previous.author_time, previous.author_timezone
        else:
            commit.author_time, commit.author_timezone = now, offset
        commit.commit_time, commit.commit_timezone = now, offset
        commit.encoding = None
        commit.message = message.encode("utf-8")
        blobs = [store.RawObject.of(store.BLOB, data) for data in r.contents.values()]
        commit_object = store.RawObject(store.COMMIT, commit.as_raw_string(), commit.id)
        store.write_objects(self._store, [*blobs, *trees.values(), commit_object])
        summary = message.split("\n", 1)[0]
        kind = "commit (amend)" if amend else "commit" if head else "commit (initial)"
        self._move_head(head, commit.id, identity, now, offset, f"{kind}: {summary}")
        lock.save(r.entries, index.version)

        changes = tree_changes(lambda sha: tree_items.get(sha) or self._tree(sha), base_tree, tree_id)
        return CommitResult(commit_info_of(commit), self.branch(), file_changes(changes), amended=amend)

    def _move_head(
        self, old: bytes | None, new: bytes, identity: bytes, now: int, offset: int, message: str
    ) -> None:
        """Point HEAD (through its branch) at `new` if it still names `old`; keep git's reflogs."""
        from dulwich.reflog import format_reflog_line

        refs = self._repo.refs
        if old is None:
            moved = refs.add_if_new(Ref(b"HEAD"), ObjectID(new))
        else:
            moved = refs.set_if_equals(Ref(b"HEAD"), ObjectID(old), ObjectID(new))
        if not moved:
            raise RepositoryError("HEAD moved while committing", hint="another git command ran; try again")
        names, _ = refs.follow(Ref(b"HEAD"))
        line = format_reflog_line(old, new, identity, now, offset, message.encode("utf-8")) + b"\n"
        for name in {b"HEAD", *names}:
            path = os.path.join(self._repo.controldir(), "logs", os.fsdecode(name))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "ab") as f:
                f.write(line)

    def diff(self, old: str | None = None, new: str | None = None) -> Diff:
        """What changed from `old` (default HEAD) to `new` (default: the work tree, as `mcpz commit`
        would record it, so new untracked files count as added)."""
        with translated("compute the diff"):
            if old is None and self._head() is None:
                old_id, old_tree = None, None
            else:
                old_id = self.resolve(old or "HEAD")
                old_tree = self._commit(old_id.encode()).tree
            if new is not None:
                new_id = self.resolve(new)
                changes = tree_changes(self._tree, old_tree, self._commit(new_id.encode()).tree)
                return Diff(old_id, new_id, self._file_diffs(changes))
            index = store.read_index(self._index_path)
            r = self._refresh(index)
            current = {
                path: (e.mode, bytes(e.sha))
                for path, e in r.entries.items()
                if isinstance(e, store.IndexEntry)
            }
            changes = compare_files(flatten_tree(self._tree, old_tree), current)
            return Diff(old_id, None, self._file_diffs(changes, r.contents))

    # --- tags and releases -----------------------------------------------------------------------

    def tag(
        self, name: str, rev: str = "HEAD", *, message: str | None = None, author: str | None = None
    ) -> str:
        """Create the annotated tag `name` on `rev`; refuse if it exists. Returns the tag object id."""
        ref = Ref(f"refs/tags/{name}".encode())
        target = self.resolve(rev)
        with translated(f"tag {name}"):
            if ref in self._repo.refs:
                existing = self._peel(self._repo.refs[ref]).decode("ascii")
                raise UsageError(
                    f"tag {name} already exists (on {existing[:7]})",
                    hint="a released version is never moved; release a new version instead",
                )
            now = int(time.time())
            tag = Tag()
            tag.name = name.encode("utf-8")
            tag.object = (Commit, ObjectID(target.encode()))
            tag.tagger = self.identity(author).encode("utf-8")
            tag.tag_time, tag.tag_timezone = now, time.localtime(now).tm_gmtoff
            tag.message = clean_message(message or name).encode("utf-8")
            store.write_objects(self._store, [store.RawObject(store.TAG, tag.as_raw_string(), tag.id)])
            if not self._repo.refs.add_if_new(ref, tag.id):
                raise RepositoryError(f"tag {name} appeared while tagging", hint="try again")
        return bytes(tag.id).decode("ascii")

    def release(
        self,
        version: str | None = None,
        *,
        bump: BumpPart | None = None,
        author: str | None = None,
        message: str | None = None,
    ) -> ReleaseResult:
        """Set the manifest's version, commit it, and tag the commit `v{version}` (annotated).

        The work tree must be clean apart from `mcpz.toml`, so the release is exactly what was
        committed; the tag must not exist yet. See `mcpz.repo.release.release`.
        """
        from mcpz.repo.release import release

        return release(self, version, bump=bump, author=author, message=message)
