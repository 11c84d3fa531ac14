"""Writing a commit's tree into a folder, refusing every path that would leave it.

A node runs code from a registry it does not fully trust, so a tree is checked before a single
byte is written, and written so that a check it missed still cannot reach outside:

- **Planned first.** `plan` walks the tree and refuses, naming the path: a name that is empty,
  `.`, `..`, holds `/` or NUL (an absolute or nested path smuggled into one entry), or is `.git`
  in any spelling git itself refuses (`.GIT`, `.git.`, `git~1`, `.g\u200cit`: `mcpz.gitpaths`, the
  rule the registry applies to pushes too); a name that appears twice in one
  folder; a submodule or an unknown mode; a symlink whose target is absolute or climbs out of the
  checkout (`../../x`). Trees are read from their raw bytes, so a duplicate entry cannot hide
  behind a parser that keeps only one of them.
- **Written through folder descriptors.** Every folder is opened with `O_NOFOLLOW` and every
  file created with `O_EXCL | O_NOFOLLOW` relative to its folder's descriptor: nothing is ever
  written through a symlink. Symlinks are created last, after every file.
- **Resolved again on disk.** Once written, each symlink is resolved for real (`realpath`), which
  catches what a lexical check cannot (`a -> .` with `b -> a/..`).
- **Atomic.** All of it goes into a temporary folder beside the destination, renamed into place
  only when complete; on any failure the temporary folder is removed and the destination does
  not exist.

Pure of the network: `checkout` takes any dulwich object store (the node's cache, or a local
repository in tests) and a commit id.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mcpz.errors import McpzError
from mcpz.gitpaths import is_dotgit
from mcpz.mesh import ErrorCode


class ReleaseError(McpzError):
    """What the registry served does not check out: a missing or corrupt object, a commit that is
    not the one asked for, a manifest that names another agent or version."""

    code = ErrorCode.VERIFY_FAILED


class CheckoutRefused(ReleaseError):
    """A tree holds a path that would escape its checkout (`..`, `/`, `.git`, an outward symlink)."""


MODE_DIR = 0o040000
MODE_LINK = 0o120000
MODE_GITLINK = 0o160000
_FILE_MODES = {0o100644: 0o644, 0o100664: 0o644, 0o100755: 0o755}

MAX_FILES = 200_000
MAX_BYTES = 4 * 1024**3
MAX_DEPTH = 64
MAX_LINK_TARGET = 4096

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_HINT = "the release's tree is not safe to write to disk; nothing of it was run"

Kind = Literal["dir", "file", "link"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of a planned checkout. `parts` are the raw name bytes of each component."""

    parts: tuple[bytes, ...]
    kind: Kind
    sha: str
    mode: int = 0o644
    target: bytes = b""  # a symlink's target
    data: bytes | None = None  # a file's content when it is not a blob of the store


@dataclass(frozen=True, slots=True)
class CheckoutStats:
    files: int
    directories: int
    symlinks: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Nested:
    """Another commit checked out at `path` inside the checkout (a locked dependency), with
    `files` (name, content) written at its root after it (replacing any of the same name)."""

    path: tuple[str, ...]
    commit: str
    files: tuple[tuple[str, bytes], ...] = ()


def display(parts: Sequence[bytes]) -> str:
    """A path for messages: components joined by `/`, undecodable bytes escaped."""
    return "/".join(p.decode("utf-8", "backslashreplace") for p in parts) or "."


def name_problem(name: bytes) -> str | None:
    """Why one tree entry's name cannot be written as one file name, or None when it can."""
    if not name:
        return "an empty name"
    if b"\0" in name:
        return "a name with a NUL byte"
    if b"/" in name:
        return "a path with '/' in one entry (an absolute or nested path)"
    if name in (b".", b".."):
        return f'the name "{name.decode()}"'
    if is_dotgit(name):
        return "a .git component"
    return None


def link_problem(parts: tuple[bytes, ...], target: bytes) -> str | None:
    """Why the symlink at `parts` may not point at `target`, judged lexically; None if it may."""
    if not target:
        return "an empty target"
    if b"\0" in target or len(target) > MAX_LINK_TARGET:
        return "a target that is not a path"
    if target.startswith(b"/"):
        return "an absolute target"
    resolved = posixpath.normpath(posixpath.join(b"/".join(parts[:-1]), target))
    if resolved == b".." or resolved.startswith(b"../"):
        return "a target outside the checkout"
    if any(is_dotgit(part) for part in resolved.split(b"/")):
        return "a target inside .git"
    return None


def plan(store: Any, commit: str, *, max_files: int = MAX_FILES, max_depth: int = MAX_DEPTH) -> list[Entry]:
    """Every path of `commit`'s tree, parents before children; CheckoutRefused on any unsafe one."""
    tree = _object(store, commit, b"commit", ()).tree
    entries: list[Entry] = []
    _walk(store, tree.decode() if isinstance(tree, bytes) else str(tree), (), entries, max_files, max_depth)
    return entries


def checkout(
    store: Any,
    commit: str,
    dest: Path,
    *,
    nested: Sequence[Nested] = (),
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_BYTES,
) -> CheckoutStats:
    """Write `commit`'s tree (and each `nested` commit at its path) into `dest`, atomically.

    `dest` must not exist; its parent is created. Raises CheckoutRefused for an unsafe tree
    (before anything is written) and ReleaseError for a missing object or a write that fails.
    """
    entries = plan(store, commit, max_files=max_files)
    for extra in nested:
        entries = _graft(entries, extra, plan(store, extra.commit, max_files=max_files))
    if len(entries) > max_files:
        raise CheckoutRefused(f"the release has over {max_files} files", hint=_HINT)
    if dest.exists() or dest.is_symlink():
        raise ReleaseError(f"cannot check out into {dest}: it already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{secrets.token_hex(4)}"
    os.mkdir(tmp, 0o755)
    try:
        stats = _write(store, entries, tmp, max_bytes)
        _check_resolved_links(tmp, entries)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


# ---------------------------------------------------------------------------------------------
# Planning


def _object(store: Any, sha: str, kind: bytes, parts: tuple[bytes, ...]) -> Any:
    try:
        obj = store[sha.encode()]
    except KeyError:
        where = f' (at "{display(parts)}")' if parts else ""
        raise ReleaseError(f"object {sha} is missing from the object cache{where}") from None
    if obj.type_name != kind:
        where = f'"{display(parts)}"' if parts else sha
        raise ReleaseError(f"{where} should be a {kind.decode()} but is a {obj.type_name.decode()}")
    return obj


def _walk(
    store: Any,
    tree_sha: str,
    prefix: tuple[bytes, ...],
    out: list[Entry],
    max_files: int,
    max_depth: int,
) -> None:
    from dulwich.errors import ObjectFormatException
    from dulwich.objects import parse_tree

    if len(prefix) >= max_depth:
        raise CheckoutRefused(f'"{display(prefix)}" is nested over {max_depth} folders deep', hint=_HINT)
    tree = _object(store, tree_sha, b"tree", prefix)
    seen: set[bytes] = set()
    try:
        # The raw bytes, not the parsed dict: a duplicated name must not collapse into one.
        items = list(parse_tree(tree.as_raw_string(), len(tree_sha) // 2))
    except (ObjectFormatException, ValueError) as e:
        raise ReleaseError(f'the tree at "{display(prefix)}" is malformed: {e}') from e
    for name, mode, sha in items:
        parts = (*prefix, name)
        where = display(parts)
        problem = name_problem(name)
        if problem:
            raise CheckoutRefused(f'the tree holds {problem}: "{where}"', hint=_HINT)
        if name in seen:
            raise CheckoutRefused(f'"{where}" appears twice in one folder', hint=_HINT)
        seen.add(name)
        hexsha = sha.decode() if isinstance(sha, bytes) else str(sha)
        if mode == MODE_DIR:
            out.append(Entry(parts, "dir", hexsha, 0o755))
            _walk(store, hexsha, parts, out, max_files, max_depth)
        elif mode in _FILE_MODES:
            out.append(Entry(parts, "file", hexsha, _FILE_MODES[mode]))
        elif mode == MODE_LINK:
            target = _object(store, hexsha, b"blob", parts).as_raw_string()
            problem = link_problem(parts, target)
            if problem:
                shown = target[:200].decode("utf-8", "backslashreplace")
                raise CheckoutRefused(f'symlink "{where}" has {problem} ("{shown}")', hint=_HINT)
            out.append(Entry(parts, "link", hexsha, target=target))
        elif mode == MODE_GITLINK:
            raise CheckoutRefused(f'"{where}" is a submodule; releases cannot hold submodules', hint=_HINT)
        else:
            raise CheckoutRefused(f'"{where}" has the unknown mode {mode:o}', hint=_HINT)
        if len(out) > max_files:
            raise CheckoutRefused(f"the release has over {max_files} files", hint=_HINT)


def _graft(entries: list[Entry], extra: Nested, sub: list[Entry]) -> list[Entry]:
    """`entries` with `sub` placed at `extra.path`, which the release itself may not occupy."""
    where = tuple(part.encode() for part in extra.path)
    for part in where:
        problem = name_problem(part)
        if problem:
            raise CheckoutRefused(f'cannot place a dependency at "{display(where)}": {problem}')
    existing = {entry.parts: entry for entry in entries}
    out = list(entries)
    for depth in range(1, len(where) + 1):
        prefix = where[:depth]
        found = existing.get(prefix)
        if depth == len(where) and found is not None:
            raise CheckoutRefused(
                f'the release already holds "{display(prefix)}", where a dependency goes', hint=_HINT
            )
        if found is None:
            out.append(Entry(prefix, "dir", "", 0o755))
        elif found.kind != "dir":
            raise CheckoutRefused(
                f'the release holds a {found.kind} at "{display(prefix)}", where dependencies go', hint=_HINT
            )
    ours = {name.encode() for name, _content in extra.files}
    out.extend(
        Entry((*where, *entry.parts), entry.kind, entry.sha, entry.mode, entry.target)
        for entry in sub
        if entry.parts[0] not in ours
    )
    for name, content in extra.files:
        problem = name_problem(name.encode())
        if problem:
            raise CheckoutRefused(f'cannot write "{name}" into a dependency: {problem}')
        out.append(Entry((*where, name.encode()), "file", "", 0o644, data=content))
    return out


# ---------------------------------------------------------------------------------------------
# Writing


class _DirStack:
    """Open descriptors of the folders from the root down to the one being written."""

    def __init__(self, root: Path) -> None:
        self.stack: list[tuple[tuple[bytes, ...], int]] = [((), os.open(root, _DIR_FLAGS))]

    def at(self, parts: tuple[bytes, ...]) -> int:
        """The descriptor of folder `parts`, opened component by component without following links."""
        while len(self.stack) > 1 and parts[: len(self.stack[-1][0])] != self.stack[-1][0]:
            os.close(self.stack.pop()[1])
        while len(self.stack[-1][0]) < len(parts):
            top_parts, top = self.stack[-1]
            child = parts[: len(top_parts) + 1]
            self.stack.append((child, os.open(child[-1], _DIR_FLAGS, dir_fd=top)))
        return self.stack[-1][1]

    def close(self) -> None:
        while self.stack:
            os.close(self.stack.pop()[1])


def _write(store: Any, entries: list[Entry], root: Path, max_bytes: int) -> CheckoutStats:
    files = directories = written = 0
    links: list[Entry] = []
    folders = _DirStack(root)
    try:
        for entry in entries:
            if entry.kind == "link":
                links.append(entry)
                continue
            parent = folders.at(entry.parts[:-1])
            name = entry.parts[-1]
            try:
                if entry.kind == "dir":
                    os.mkdir(name, 0o755, dir_fd=parent)
                    directories += 1
                    continue
                chunks = (
                    [entry.data]
                    if entry.data is not None
                    else _object(store, entry.sha, b"blob", entry.parts).as_raw_chunks()
                )
                fd = os.open(name, _FILE_FLAGS, entry.mode, dir_fd=parent)
                try:
                    for chunk in chunks:
                        written += len(chunk)
                        if written > max_bytes:
                            raise CheckoutRefused(
                                f"the release is over {max_bytes} bytes uncompressed", hint=_HINT
                            )
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view) :]
                    os.fchmod(fd, entry.mode)
                finally:
                    os.close(fd)
                files += 1
            except OSError as e:
                raise ReleaseError(f'cannot write "{display(entry.parts)}": {e.strerror or e}') from e
        for entry in links:
            try:
                os.symlink(entry.target, entry.parts[-1], dir_fd=folders.at(entry.parts[:-1]))
            except OSError as e:
                raise ReleaseError(
                    f'cannot create symlink "{display(entry.parts)}": {e.strerror or e}'
                ) from e
    finally:
        folders.close()
    return CheckoutStats(files=files, directories=directories, symlinks=len(links), bytes=written)


def _check_resolved_links(root: Path, entries: list[Entry]) -> None:
    real_root = os.path.realpath(os.fsencode(root))
    for entry in entries:
        if entry.kind != "link":
            continue
        real = os.path.realpath(os.path.join(os.fsencode(root), *entry.parts))
        if real != real_root and not real.startswith(real_root + b"/"):
            raise CheckoutRefused(
                f'symlink "{display(entry.parts)}" resolves outside the checkout through other symlinks',
                hint=_HINT,
            )
