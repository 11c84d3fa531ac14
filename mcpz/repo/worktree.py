"""The work tree as git sees it: ignore rules and a stat-aware scan.

`scan_worktree` walks the folder once, honouring `.gitignore` files at every level,
`.git/info/exclude` and `core.excludesFile`, and pruning ignored folders. `refresh` then compares
what it found with the index by stat data, hashing only files whose stat changed (or that are
"racily clean": touched in the same instant the index was written), which is what makes a
one-file commit in a large tree cheap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Mapping
from typing import NamedTuple

from dulwich.ignore import IgnoreFilter, Pattern, read_ignore_patterns
from dulwich.objects import S_IFGITLINK, ObjectID

from mcpz.repo.store import Entries, IndexEntry

log = logging.getLogger(__name__)

__all__ = ["IgnoreRules", "Refresh", "blob_id", "refresh", "scan_worktree"]

FILE_MODE = 0o100644
EXEC_MODE = 0o100755
LINK_MODE = 0o120000


# --- ignore rules --------------------------------------------------------------------------------


class IgnoreRules:
    """Git's ignore rules for one work tree; `.gitignore` files are read as the walk meets them."""

    def __init__(self, base: list[list[Pattern]], ignorecase: bool = False) -> None:
        self.base = base  # core.excludesFile, then info/exclude: lowest precedence first
        self.ignorecase = ignorecase
        self._cache: dict[str, list[Pattern] | None] = {}

    @classmethod
    def load(cls, root: str, controldir: str, excludes_file: str | None, ignorecase: bool) -> IgnoreRules:
        base = []
        for path in (excludes_file, os.path.join(controldir, "info", "exclude")):
            if path:
                patterns = _read_patterns(os.path.expanduser(path), ignorecase)
                if patterns:
                    base.append(patterns)
        return cls(base, ignorecase)

    def folder_patterns(self, abs_folder: str) -> list[Pattern] | None:
        try:
            return self._cache[abs_folder]
        except KeyError:
            patterns = _read_patterns(os.path.join(abs_folder, ".gitignore"), self.ignorecase)
            self._cache[abs_folder] = patterns
            return patterns

    @staticmethod
    def decide(stack: list[tuple[int, list[Pattern]]], parts: list[str], is_dir: bool) -> bool:
        """Whether the entry `parts` (its path, split) is excluded by the filters in `stack`.

        `stack` holds `(depth, patterns)` from shallowest to deepest, depth being how many path
        parts the folder holding the patterns has. The deepest file with a matching pattern wins,
        and within a file the last match wins, as in git.
        """
        for depth, patterns in reversed(stack):
            name = os.fsencode("/".join(parts[depth:]))
            for pattern in reversed(patterns):
                if pattern.matches(name, is_dir):
                    return bool(pattern.is_exclude)
        return False


def _read_patterns(path: str, ignorecase: bool) -> list[Pattern] | None:
    try:
        with open(path, "rb") as f:
            return IgnoreFilter(read_ignore_patterns(f), ignorecase, path=path).patterns or None
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


# --- the scan ------------------------------------------------------------------------------------


def scan_worktree(
    root: str,
    rules: IgnoreRules,
    tracked: Mapping[bytes, object],
    nested: list[bytes] | None = None,
) -> dict[bytes, os.stat_result]:
    """Every file git would consider: tracked files, and untracked ones that are not ignored.

    Returns `{path: lstat}` with `/`-separated byte paths relative to `root`. `.git` entries
    are skipped; symbolic links are files (never followed). Folders holding a repository of
    their own are not entered: they are appended to `nested` (as `path/`), as git lists them.
    """
    found: dict[bytes, os.stat_result] = {}
    base_stack = [(0, patterns) for patterns in rules.base]
    root_patterns = rules.folder_patterns(root)
    if root_patterns:
        base_stack.append((0, root_patterns))
    pending: list[tuple[str, list[str], list[tuple[int, list[Pattern]]]]] = [(root, [], base_stack)]
    while pending:
        folder, parts, stack = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
            log.info("skipping %s: %s", folder, e)
            continue
        for entry in entries:
            name = entry.name
            if name == ".git":
                continue
            child = [*parts, name]
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                if IgnoreRules.decide(stack, child, True):
                    continue  # tracked files inside are picked up by the caller
                if os.path.lexists(os.path.join(entry.path, ".git")):
                    log.info("skipping nested repository %s", entry.path)
                    if nested is not None:
                        nested.append(os.fsencode("/".join(child)) + b"/")
                    continue
                patterns = rules.folder_patterns(entry.path)
                pending.append((entry.path, child, [*stack, (len(child), patterns)] if patterns else stack))
            elif stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                path = os.fsencode("/".join(child))
                if path in tracked or not IgnoreRules.decide(stack, child, False):
                    found[path] = st
    for path in tracked:
        if path not in found:
            # Tracked files under an ignored folder stay tracked, as in git.
            try:
                st = os.lstat(os.path.join(root, os.fsdecode(path)))
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                found[path] = st
    return found


def mode_of(st: os.stat_result) -> int:
    if stat.S_ISLNK(st.st_mode):
        return LINK_MODE
    return EXEC_MODE if st.st_mode & stat.S_IXUSR else FILE_MODE


def _ns(value: int | float | tuple[int, int]) -> int:
    if isinstance(value, tuple):
        return value[0] * 1_000_000_000 + value[1]
    return int(value * 1_000_000_000)


def stat_matches(entry: IndexEntry, st: os.stat_result) -> bool:
    """Whether `st` is the stat data recorded in `entry` (the fields git itself compares)."""
    return (
        _ns(entry.mtime) == st.st_mtime_ns
        and _ns(entry.ctime) == st.st_ctime_ns
        and entry.size == st.st_size & 0xFFFFFFFF
        and entry.ino == st.st_ino & 0xFFFFFFFF
        and entry.mode == mode_of(st)
        and entry.uid == st.st_uid & 0xFFFFFFFF
        and entry.gid == st.st_gid & 0xFFFFFFFF
    )


def read_worktree_file(root: str, path: bytes, st: os.stat_result) -> bytes:
    full = os.path.join(root, os.fsdecode(path))
    if stat.S_ISLNK(st.st_mode):
        return os.fsencode(os.readlink(full))
    with open(full, "rb") as f:
        return f.read()


def blob_id(data: bytes) -> bytes:
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest().encode("ascii")


def entry_from_stat(st: os.stat_result, sha: bytes) -> IndexEntry:
    return IndexEntry(
        ctime=(st.st_ctime_ns // 1_000_000_000, st.st_ctime_ns % 1_000_000_000),
        mtime=(st.st_mtime_ns // 1_000_000_000, st.st_mtime_ns % 1_000_000_000),
        dev=st.st_dev & 0xFFFFFFFF,
        ino=st.st_ino & 0xFFFFFFFF,
        mode=mode_of(st),
        uid=st.st_uid & 0xFFFFFFFF,
        gid=st.st_gid & 0xFFFFFFFF,
        size=st.st_size & 0xFFFFFFFF,
        sha=ObjectID(sha),
    )


class Refresh(NamedTuple):
    """The work tree compared with the index.

    `entries` is the index as `git add -A` would leave it (every present file at its current
    content, deleted files gone); `contents` holds the data of files whose content is not in the
    index (new or modified), keyed by path, for writing as blobs or showing in a diff.
    `modified`/`added`/`deleted` are index-relative; `stat_only` says whether any unchanged file
    merely had new stat data (so the index is worth rewriting).
    """

    entries: Entries
    contents: dict[bytes, bytes]
    added: list[bytes]
    modified: list[bytes]
    deleted: list[bytes]
    typechanged: list[bytes]
    stat_only: bool


def refresh(root: str, index: Entries, index_mtime_ns: int, found: Mapping[bytes, os.stat_result]) -> Refresh:
    """Compare the scan with the index; hash only what stat data cannot vouch for."""
    entries: Entries = {}
    contents: dict[bytes, bytes] = {}
    added: list[bytes] = []
    modified: list[bytes] = []
    typechanged: list[bytes] = []
    stat_only = False
    for path, st in found.items():
        old = index.get(path)
        if isinstance(old, IndexEntry):
            if old.skip_worktree or old.mode == S_IFGITLINK:
                entries[path] = old
                continue
            if stat_matches(old, st) and _ns(old.mtime) < index_mtime_ns:
                entries[path] = old
                continue
        data = read_worktree_file(root, path, st)
        sha = blob_id(data)
        new = entry_from_stat(st, sha)
        entries[path] = new
        if not isinstance(old, IndexEntry):
            if old is None:
                added.append(path)
            else:
                modified.append(path)  # was unmerged; now resolved to the work tree's file
            contents[path] = data
        elif old.sha != sha or old.mode != new.mode:
            if (old.mode == LINK_MODE) != (new.mode == LINK_MODE):
                typechanged.append(path)
            else:
                modified.append(path)
            contents[path] = data
        else:
            stat_only = True
    deleted: list[bytes] = []
    for path, old in index.items():
        if path in found:
            continue
        if isinstance(old, IndexEntry) and (old.skip_worktree or old.mode == S_IFGITLINK):
            entries[path] = old
        else:
            deleted.append(path)
    return Refresh(entries, contents, added, modified, sorted(deleted), typechanged, stat_only)
