"""Reading a repository's history: refs, revisions, commits, trees, files and diffs between commits.

`RepoReader` needs no work tree, so it serves bare repositories as well; `mcpz.repo.repository.AgentRepo`
adds the work tree (status, commit, tags) on top of it. Revisions are what git users type:
`HEAD`, branches, tags, a version (`1.2.0` for the tag `v1.2.0`), an id or a unique prefix of
one, each optionally followed by `~N` or `^N`.
"""

from __future__ import annotations

import contextlib
import heapq
import re
from collections.abc import Iterator, Mapping

from dulwich.errors import (
    ChecksumMismatch,
    FileFormatException,
    NotGitRepository,
    ObjectMissing,
    RefFormatError,
)
from dulwich.file import FileLocked
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tag
from dulwich.refs import Ref
from dulwich.repo import Repo

from mcpz.errors import NotFoundError, RepositoryError, UsageError
from mcpz.repo import store
from mcpz.repo.diff import Change, file_patch, tree_changes
from mcpz.repo.model import (
    CommitInfo,
    Diff,
    FileAtRev,
    FileChange,
    FileDiff,
    LogEntry,
    ShowCommit,
    TreeItem,
    split_rev,
    split_rev_path,
    tag_for,
)

__all__ = ["RepoReader", "clean_message", "commit_info_of", "file_changes", "path_str", "translated"]

_HEX = re.compile(r"^[0-9a-f]{4,40}$")
# Errors dulwich raises for a damaged or unreadable repository.
_GIT_ERRORS = (
    ChecksumMismatch,
    FileFormatException,
    ObjectMissing,
    NotGitRepository,
    RefFormatError,
    OSError,
)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn dulwich's and the OS's failures into RepositoryError, naming what was being done."""
    try:
        yield
    except FileLocked as e:
        raise RepositoryError(
            f"cannot {what}: {e.filename!s} is locked by another git process",
            hint=f"wait for it to finish; if none is running, remove {e.lockfilename!s}",
        ) from e
    except _GIT_ERRORS as e:
        raise RepositoryError(f"cannot {what}: {e}") from e


def clean_message(message: str) -> str:
    """Tidy a commit message as `git commit -m` does: no trailing spaces or blank edge lines."""
    lines = [line.rstrip() for line in message.replace("\r\n", "\n").split("\n")]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    while tidy and not tidy[-1]:
        tidy.pop()
    if not tidy:
        raise UsageError("the commit message is empty", hint='pass one with -m "what changed"')
    return "\n".join(tidy) + "\n"


def commit_info_of(commit: Commit) -> CommitInfo:
    encoding = (commit.encoding or b"utf-8").decode("ascii", "replace")
    return CommitInfo(
        id=commit.id.decode("ascii"),
        tree=commit.tree.decode("ascii"),
        parents=tuple(p.decode("ascii") for p in commit.parents),
        author=commit.author.decode(encoding, "replace"),
        author_time=commit.author_time,
        author_tz=commit.author_timezone,
        committer=commit.committer.decode(encoding, "replace"),
        commit_time=commit.commit_time,
        commit_tz=commit.commit_timezone,
        message=commit.message.decode(encoding, "replace"),
    )


def path_str(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


def file_changes(changes: list[Change]) -> tuple[FileChange, ...]:
    return tuple(FileChange(path_str(c.path), c.kind) for c in changes)


class RepoReader:
    """Refs and objects of one repository, read-only."""

    def __init__(self, repo: Repo) -> None:
        self._repo = repo

    # --- refs and objects ------------------------------------------------------------------------

    @property
    def _store(self) -> DiskObjectStore:
        store = self._repo.object_store
        assert isinstance(store, DiskObjectStore)
        return store

    def _object(self, sha: bytes) -> ShaFile:
        try:
            obj: ShaFile = self._store[ObjectID(sha)]
        except KeyError:
            raise NotFoundError(f"object {sha.decode('ascii', 'replace')} is missing") from None
        return obj

    def _commit(self, sha: bytes) -> Commit:
        obj = self._object(sha)
        if not isinstance(obj, Commit):
            raise UsageError(f"{sha.decode('ascii')} is a {obj.type_name.decode()}, not a commit")
        return obj

    def _tree(self, sha: bytes) -> dict[bytes, tuple[int, bytes]]:
        """A tree's entries, `{name: (mode, id)}`."""
        try:
            type_num, raw = self._store.get_raw(ObjectID(sha))
        except KeyError:
            raise NotFoundError(f"object {sha.decode('ascii', 'replace')} is missing") from None
        if type_num != store.TREE:
            raise RepositoryError(f"{sha.decode('ascii')} is not a tree")
        return store.parse_tree(raw)

    def _head(self) -> bytes | None:
        with translated("read HEAD"):
            try:
                return bytes(self._repo.refs[Ref(b"HEAD")])
            except KeyError:
                return None

    def head_id(self) -> str | None:
        """The commit HEAD names, or None on a branch with no commits yet."""
        head = self._head()
        return head.decode("ascii") if head else None

    def branch(self) -> str | None:
        """The current branch's short name, or None when HEAD is detached."""
        with translated("read HEAD"):
            names, _ = self._repo.refs.follow(Ref(b"HEAD"))
        last = names[-1] if names else b"HEAD"
        if last.startswith(b"refs/heads/"):
            return last[len(b"refs/heads/") :].decode("utf-8", "replace")
        return None

    def tags(self) -> dict[str, str]:
        """`{tag name: commit id}` for every tag, peeled to its commit."""
        found: dict[str, str] = {}
        with translated("read tags"):
            for name, sha in self._repo.refs.as_dict(Ref(b"refs/tags")).items():
                with contextlib.suppress(NotFoundError, UsageError):
                    found[name.decode("utf-8", "replace")] = self._peel(sha).decode("ascii")
        return found

    def _peel(self, sha: bytes) -> bytes:
        obj = self._object(sha)
        while isinstance(obj, Tag):
            obj = self._object(obj.object[1])
        if not isinstance(obj, Commit):
            raise UsageError(f"{sha.decode('ascii')} names a {obj.type_name.decode()}, not a commit")
        return bytes(obj.id)

    def resolve(self, rev: str = "HEAD") -> str:
        """The commit id a revision names: HEAD, a branch, a tag, a version (`1.2.0` for `v1.2.0`),
        an id or a unique prefix of one, each optionally followed by `~N` or `^N`."""
        base, steps = split_rev(rev.strip())
        with translated(f'resolve "{rev}"'):
            sha = self._peel(self._resolve_base(base, rev))
            for op, n in steps:
                if op == "^" and n == 0:
                    continue
                for _ in range(n if op == "~" else 1):
                    parents = self._commit(sha).parents
                    index = 0 if op == "~" else n - 1
                    if index >= len(parents):
                        raise NotFoundError(f'revision "{rev}" goes past the first commit')
                    sha = parents[index]
        return sha.decode("ascii")

    def _resolve_base(self, base: str, rev: str) -> bytes:
        if base in ("HEAD", "@", ""):
            head = self._head()
            if head is None:
                raise NotFoundError("HEAD has no commits yet", hint='make one with `mcpz commit -m "..."`')
            return head
        refs = self._repo.refs
        for candidate in (
            base,
            f"refs/{base}",
            f"refs/tags/{base}",
            f"refs/heads/{base}",
            f"refs/remotes/{base}",
            f"refs/remotes/{base}/HEAD",
            f"refs/tags/{tag_for(base)}",
        ):
            if not candidate.startswith("refs/") and candidate != base:
                continue
            with contextlib.suppress(KeyError, RefFormatError, ValueError):
                found: bytes = refs[Ref(candidate.encode())]
                return found
        if _HEX.match(base):
            if len(base) == 40 and ObjectID(base.encode()) in self._store:
                return base.encode()
            matches = sorted(set(self._store.iter_prefix(base.encode())))
            if len(matches) == 1:
                return bytes(matches[0])
            if len(matches) > 1:
                raise UsageError(
                    f'"{base}" is ambiguous: {len(matches)} objects start with it', hint="use more digits"
                )
        raise NotFoundError(f'unknown revision "{rev}"', hint="see `mcpz log` for commits and tags")

    # --- history ---------------------------------------------------------------------------------

    def _decorations(self) -> dict[str, list[str]]:
        labels: dict[str, list[str]] = {}
        head = self.head_id()
        branch = self.branch()
        if head:
            labels.setdefault(head, []).append(f"HEAD -> {branch}" if branch else "HEAD")
        with translated("read refs"):
            for name, sha in sorted(self._repo.refs.as_dict(Ref(b"refs/heads")).items()):
                short = bytes(name).decode("utf-8", "replace")
                if short != branch:
                    labels.setdefault(bytes(sha).decode("ascii"), []).append(short)
        for tag, sha in sorted(self.tags().items()):
            labels.setdefault(sha, []).append(f"tag: {tag}")
        return labels

    def log(self, rev: str = "HEAD", limit: int | None = None) -> list[LogEntry]:
        """Commits reachable from `rev`, newest first (by commit date); [] on an empty branch."""
        if limit is not None and limit < 0:
            raise UsageError("-n must be 0 or more")
        if rev in ("HEAD", "@") and self._head() is None:
            return []
        start = self.resolve(rev).encode("ascii")
        labels = self._decorations()
        entries: list[LogEntry] = []
        with translated("read the history"):
            first = self._commit(start)
            queue: list[tuple[int, int, Commit]] = [(-first.commit_time, 0, first)]
            seen = {start}
            counter = 1
            while queue and (limit is None or len(entries) < limit):
                _, _, commit = heapq.heappop(queue)
                info = commit_info_of(commit)
                entries.append(LogEntry(info, tuple(labels.get(info.id, ()))))
                for parent in commit.parents:
                    if parent not in seen:
                        seen.add(parent)
                        parent_commit = self._commit(parent)
                        heapq.heappush(queue, (-parent_commit.commit_time, counter, parent_commit))
                        counter += 1
        return entries

    def _blob_data(self, sha: bytes) -> bytes:
        obj = self._object(sha)
        return obj.as_raw_string() if isinstance(obj, Blob) else b""

    def _side_data(self, side: tuple[int, bytes] | None) -> bytes:
        if side is None:
            return b""
        if side[0] == 0o160000:
            return b"Subproject commit " + side[1] + b"\n"
        return self._blob_data(side[1])

    def _file_diffs(
        self, changes: list[Change], worktree: Mapping[bytes, bytes] | None = None
    ) -> tuple[FileDiff, ...]:
        files = []
        for change in changes:
            new_data = worktree.get(change.path) if worktree is not None and change.new else None
            patch = file_patch(
                change,
                self._side_data(change.old),
                new_data if new_data is not None else self._side_data(change.new),
            )
            files.append(
                FileDiff(
                    path=path_str(change.path),
                    change=change.kind,
                    old_id=change.old[1].decode("ascii") if change.old else None,
                    new_id=change.new[1].decode("ascii") if change.new else None,
                    old_mode=change.old[0] if change.old else None,
                    new_mode=change.new[0] if change.new else None,
                    binary=patch.binary,
                    additions=patch.additions,
                    deletions=patch.deletions,
                    patch=patch.text,
                )
            )
        return tuple(files)

    def show_commit(self, rev: str = "HEAD") -> ShowCommit:
        """A commit and its changes against its first parent."""
        sha = self.resolve(rev)
        with translated(f"show {rev}"):
            commit = self._commit(sha.encode())
            base = self._commit(commit.parents[0]).tree if commit.parents else None
            changes = tree_changes(self._tree, base, commit.tree)
            parent = commit.parents[0].decode("ascii") if commit.parents else None
            labels = tuple(self._decorations().get(sha, ()))
            return ShowCommit(commit_info_of(commit), Diff(parent, sha, self._file_diffs(changes)), labels)

    def read_file(self, rev: str, path: str) -> FileAtRev:
        """A file's content (or a folder's listing) as it was at `rev`."""
        sha = self.resolve(rev)
        with translated(f"read {rev}:{path}"):
            mode, oid = store.TREE_MODE, bytes(self._commit(sha.encode()).tree)
            parts = [p for p in path.strip("/").split("/") if p]
            for i, part in enumerate(parts):
                tree = self._tree(oid)
                try:
                    mode, oid = tree[part.encode("utf-8", "surrogateescape")]
                except KeyError:
                    where = "/".join(parts[: i + 1])
                    raise NotFoundError(
                        f'no "{where}" in {rev} ({sha[:7]})', hint=f"list files with `mcpz show {rev}:`"
                    ) from None
                if mode != 0o040000 and i < len(parts) - 1:
                    raise NotFoundError(f'"{"/".join(parts[: i + 1])}" is a file in {rev}, not a folder')
            if mode == 0o040000:
                items = tuple(
                    TreeItem(path_str(name), m, i.decode("ascii"))
                    for name, (m, i) in sorted(self._tree(oid).items())
                )
                return FileAtRev(rev, sha, "/".join(parts), oid.decode("ascii"), mode, entries=items)
            content = self._blob_data(oid) if mode != 0o160000 else b""
            return FileAtRev(rev, sha, "/".join(parts), oid.decode("ascii"), mode, content)

    def show(self, spec: str = "HEAD") -> ShowCommit | FileAtRev:
        """`REV` shows a commit with its diff; `REV:PATH` a file's content (or a folder's listing)."""
        rev, path = split_rev_path(spec)
        if path is None:
            return self.show_commit(rev)
        return self.read_file(rev, path)

    def has_tag(self, name: str) -> bool:
        with translated("read tags"):
            return Ref(f"refs/tags/{name}".encode()) in self._repo.refs

    def commit_info(self, rev: str = "HEAD") -> CommitInfo:
        """One commit's metadata."""
        return commit_info_of(self._commit(self.resolve(rev).encode("ascii")))
