"""What the agent repository hands back, and the pure rules it follows.

Results are named tuples (immutable, and cheaper to define at import than dataclasses, which
`mcpz status` notices) with a `to_dict()` that is the command's `--json` payload. The helpers
here (version bumps, identities, revision syntax, tree grouping) take data and return data;
`mcpz.repo.repository` does the I/O around them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NamedTuple

from mcpz.errors import UsageError

ChangeKind = Literal["added", "modified", "deleted", "typechange", "unmerged"]
BumpPart = Literal["major", "minor", "patch"]
BUMP_PARTS: tuple[BumpPart, ...] = ("major", "minor", "patch")
DEFAULT_BRANCH = "main"
TAG_PREFIX = "v"

_IDENTITY = re.compile(r"^\s*([^<>]*?)\s*<([^<>]*)>\s*$")


# --- results -------------------------------------------------------------------------------------


def iso_time(seconds: int, offset: int) -> str:
    """A commit time (epoch seconds, UTC offset in seconds) as ISO 8601 with its own offset."""
    return datetime.fromtimestamp(seconds, timezone(timedelta(seconds=offset))).isoformat()


class CommitInfo(NamedTuple):
    """One commit, decoded."""

    id: str
    tree: str
    parents: tuple[str, ...]
    author: str
    author_time: int
    author_tz: int
    committer: str
    commit_time: int
    commit_tz: int
    message: str

    @property
    def short_id(self) -> str:
        return self.id[:7]

    @property
    def summary(self) -> str:
        return self.message.strip().split("\n", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tree": self.tree,
            "parents": list(self.parents),
            "author": self.author,
            "author_date": iso_time(self.author_time, self.author_tz),
            "committer": self.committer,
            "commit_date": iso_time(self.commit_time, self.commit_tz),
            "message": self.message,
        }


class FileChange(NamedTuple):
    path: str
    change: ChangeKind

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "change": self.change}


class CommitResult(NamedTuple):
    """What `commit` did. `commit` is None when there was nothing to commit."""

    commit: CommitInfo | None
    branch: str | None
    changes: tuple[FileChange, ...] = ()
    amended: bool = False

    @property
    def committed(self) -> bool:
        return self.commit is not None

    def to_dict(self) -> dict[str, Any]:
        info = self.commit
        return {
            "commit": info.id if info else None,
            "committed": info is not None,
            "branch": self.branch,
            "amended": self.amended,
            "parents": list(info.parents) if info else [],
            "message": info.message if info else None,
            "author": info.author if info else None,
            "changes": [c.to_dict() for c in self.changes],
        }


class Status(NamedTuple):
    """Like `git status --porcelain`: staged is HEAD vs index, unstaged is index vs work tree."""

    branch: str | None
    head: str | None
    staged: tuple[FileChange, ...] = ()
    unstaged: tuple[FileChange, ...] = ()
    untracked: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not (self.staged or self.unstaged or self.untracked)

    def porcelain(self) -> list[str]:
        """The lines `git status --porcelain -uall` would print, in path order."""
        codes: dict[str, list[str]] = {}
        letter = {"added": "A", "modified": "M", "deleted": "D", "typechange": "T", "unmerged": "U"}
        for change in self.staged:
            codes.setdefault(change.path, [" ", " "])[0] = letter[change.change]
        for change in self.unstaged:
            codes.setdefault(change.path, [" ", " "])[1] = letter[change.change]
        tracked = [f"{x}{y} {path}" for path, (x, y) in sorted(codes.items())]
        return tracked + [f"?? {path}" for path in sorted(self.untracked)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "branch": self.branch,
            "head": self.head,
            "clean": self.clean,
            "staged": [c.to_dict() for c in self.staged],
            "unstaged": [c.to_dict() for c in self.unstaged],
            "untracked": list(self.untracked),
        }


class FileDiff(NamedTuple):
    path: str
    change: ChangeKind
    old_id: str | None
    new_id: str | None
    old_mode: int | None
    new_mode: int | None
    binary: bool
    additions: int
    deletions: int
    patch: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "change": self.change,
            "old_id": self.old_id,
            "new_id": self.new_id,
            "old_mode": f"{self.old_mode:06o}" if self.old_mode is not None else None,
            "new_mode": f"{self.new_mode:06o}" if self.new_mode is not None else None,
            "binary": self.binary,
            "additions": self.additions,
            "deletions": self.deletions,
            "patch": self.patch,
        }


class Diff(NamedTuple):
    """Changes from `old` (a commit id, or None for the empty tree) to `new` (None: the work tree)."""

    old: str | None
    new: str | None
    files: tuple[FileDiff, ...] = ()

    @property
    def patch(self) -> str:
        return "".join(f.patch for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.old,
            "to": self.new,
            "files": [f.to_dict() for f in self.files],
            "patch": self.patch,
        }


class TreeItem(NamedTuple):
    name: str
    mode: int
    id: str

    @property
    def kind(self) -> str:
        return {0o040000: "tree", 0o160000: "commit"}.get(self.mode, "blob")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": f"{self.mode:06o}", "type": self.kind, "id": self.id}


class FileAtRev(NamedTuple):
    """A file (or, when `entries` is set, a folder) as it was at a revision."""

    rev: str
    commit: str
    path: str
    id: str
    mode: int
    content: bytes = b""
    entries: tuple[TreeItem, ...] | None = None

    @property
    def is_dir(self) -> bool:
        return self.entries is not None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "rev": self.rev,
            "commit": self.commit,
            "path": self.path,
            "id": self.id,
            "mode": f"{self.mode:06o}",
            "type": "tree" if self.is_dir else "blob",
        }
        if self.entries is not None:
            data["entries"] = [e.to_dict() for e in self.entries]
            return data
        data["size"] = len(self.content)
        try:
            data["content"] = self.content.decode("utf-8")
            data["encoding"] = "utf-8"
        except UnicodeDecodeError:
            import base64

            data["content"] = base64.b64encode(self.content).decode("ascii")
            data["encoding"] = "base64"
        return data


class ShowCommit(NamedTuple):
    commit: CommitInfo
    diff: Diff
    refs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit.to_dict(), "refs": list(self.refs), **self.diff.to_dict()}


class ReleaseResult(NamedTuple):
    name: str
    version: str
    previous_version: str
    tag: str
    commit: CommitInfo
    committed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "previous_version": self.previous_version,
            "tag": self.tag,
            "commit": self.commit.id,
            "committed": self.committed,
        }


class InitResult(NamedTuple):
    path: str
    name: str
    template: str
    files: tuple[str, ...]
    commit: CommitResult
    branch: str = DEFAULT_BRANCH
    inside: str | None = None  # the repository the new one was made inside of, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "template": self.template,
            "branch": self.branch,
            "files": list(self.files),
            "commit": self.commit.commit.id if self.commit.commit else None,
            "inside": self.inside,
        }


class LogEntry(NamedTuple):
    commit: CommitInfo
    refs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**self.commit.to_dict(), "refs": list(self.refs)}


# --- pure rules ----------------------------------------------------------------------------------


def bump_version(version: str, part: BumpPart) -> str:
    """The next version, as `npm version` computes it.

    A pre-release (or dev release) is released rather than skipped over: `1.2.0rc1` bumped by
    `patch` or `minor` gives `1.2.0`, and `2.0.0b1` bumped by `major` gives `2.0.0`. Post-release
    and local segments are dropped.
    """
    from packaging.version import InvalidVersion, Version

    if part not in BUMP_PARTS:
        raise UsageError(f'cannot bump "{part}"', hint="use major, minor or patch")
    try:
        v = Version(version)
    except InvalidVersion as e:
        raise UsageError(f'"{version}" is not a PEP 440 version') from e
    major, minor, patch = (*v.release, 0, 0)[:3]
    pre = v.is_prerelease
    if part == "major":
        return f"{major}.0.0" if pre and minor == 0 and patch == 0 else f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor}.0" if pre and patch == 0 else f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch}" if pre else f"{major}.{minor}.{patch + 1}"


def tag_for(version: str) -> str:
    return f"{TAG_PREFIX}{version}"


def parse_identity(text: str, source: str = "author") -> tuple[str, str]:
    """Split `"Name <email>"` into its parts, or raise UsageError saying how to write it."""
    match = _IDENTITY.match(text)
    if not match or not match.group(1):
        raise UsageError(
            f'{source} "{text}" is not of the form "Name <email>"',
            hint='e.g. --author "Ada Lovelace <ada@example.com>" or MCPZ_AUTHOR',
        )
    return match.group(1), match.group(2)


def choose_identity(
    setting: str | None, env: Mapping[str, str], git_name: str | None, git_email: str | None, fallback: str
) -> str:
    """Who authors a commit: the mcpz setting, else git's variables, else git's config, else fallback."""
    if setting:
        setting_name, setting_email = parse_identity(setting)
        return f"{setting_name} <{setting_email}>"
    name = env.get("GIT_AUTHOR_NAME") or git_name
    email = env.get("GIT_AUTHOR_EMAIL") or git_email
    if name and email:
        return f"{name} <{email}>"
    default_name, default_email = parse_identity(fallback)
    return f"{name or default_name} <{email or default_email}>"


_REV_SUFFIX = re.compile(r"(~\d*|\^\d*)$")


def split_rev(rev: str) -> tuple[str, list[tuple[str, int]]]:
    """Split `base~2^2` into `("base", [("~", 2), ("^", 2)])`; `~` and `^` alone mean 1."""
    steps: list[tuple[str, int]] = []
    rest = rev
    while True:
        match = _REV_SUFFIX.search(rest)
        if not match or match.start() == 0:
            break
        token = match.group(1)
        steps.append((token[0], int(token[1:]) if len(token) > 1 else 1))
        rest = rest[: match.start()]
    steps.reverse()
    return rest, steps


def split_rev_path(spec: str) -> tuple[str, str | None]:
    """`REV:PATH` -> (REV, PATH); a spec with no colon names a revision alone."""
    if ":" not in spec:
        return spec, None
    rev, path = spec.split(":", 1)
    return rev or "HEAD", path.strip("/")


def group_tree_entries(
    entries: Iterable[tuple[bytes, int, bytes]],
) -> dict[bytes, dict[bytes, tuple[int, bytes] | None]]:
    """Group flat `(path, mode, id)` entries by folder: `{folder: {name: (mode, id) or None}}`.

    A None value is a sub-folder whose id is computed later; every ancestor folder is present,
    the root under `b""`.
    """
    folders: dict[bytes, dict[bytes, tuple[int, bytes] | None]] = {b"": {}}
    for path, mode, sha in entries:
        folder, _, name = path.rpartition(b"/")
        children = folders.get(folder)
        if children is None:
            children = folders[folder] = {}
            child = folder
            while True:
                parent, _, base = child.rpartition(b"/")
                siblings = folders.get(parent)
                if siblings is None:
                    siblings = folders[parent] = {}
                    siblings[base] = None
                    child = parent
                    continue
                siblings[base] = None
                break
        children[name] = (mode, sha)
    return folders
