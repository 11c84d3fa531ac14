"""Differences between trees, the index and the work tree, and git-style unified patches.

`file_patch` is pure (contents in, patch text out); the tree walkers read trees from an object
store, skipping identical sub-trees by id so that a one-file change costs a handful of reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from mcpz.repo.model import ChangeKind

TREE_MODE = 0o040000
LINK_MODE = 0o120000
GITLINK_MODE = 0o160000
NULL_ID = "0" * 40
BINARY_PROBE = 8000

Side = tuple[int, bytes]  # (mode, object id)
TreeReader = Callable[[bytes], dict[bytes, Side]]  # tree id -> {name: (mode, id)}


class Change(NamedTuple):
    path: bytes
    old: Side | None
    new: Side | None

    @property
    def kind(self) -> ChangeKind:
        if self.old is None:
            return "added"
        if self.new is None:
            return "deleted"
        if (self.old[0] == LINK_MODE) != (self.new[0] == LINK_MODE):
            return "typechange"
        return "modified"


def flatten_tree(read: TreeReader, tree_id: bytes | None, prefix: bytes = b"") -> dict[bytes, Side]:
    """Every file in a tree, as `{path: (mode, id)}`."""
    files: dict[bytes, Side] = {}
    if tree_id is None:
        return files
    for name, (mode, sha) in read(tree_id).items():
        path = prefix + name
        if mode == TREE_MODE:
            files.update(flatten_tree(read, sha, path + b"/"))
        else:
            files[path] = (mode, sha)
    return files


def tree_changes(
    read: TreeReader, old_id: bytes | None, new_id: bytes | None, prefix: bytes = b""
) -> list[Change]:
    """The files that differ between two trees, in path order; equal sub-trees are not opened."""
    if old_id == new_id:
        return []
    old = read(old_id) if old_id is not None else {}
    new = read(new_id) if new_id is not None else {}
    changes: list[Change] = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        path = prefix + name
        a_tree = a is not None and a[0] == TREE_MODE
        b_tree = b is not None and b[0] == TREE_MODE
        if a_tree or b_tree:
            changes.extend(
                tree_changes(
                    read, a[1] if a and a_tree else None, b[1] if b and b_tree else None, path + b"/"
                )
            )
        changes_here = (a if not a_tree else None, b if not b_tree else None)
        if changes_here != (None, None):
            changes.append(Change(path, *changes_here))
    changes.sort(key=lambda c: c.path)
    return changes


def compare_files(old: Mapping[bytes, Side], new: Mapping[bytes, Side]) -> list[Change]:
    """The files that differ between two flat `{path: (mode, id)}` maps, in path order."""
    return [
        Change(path, old.get(path), new.get(path))
        for path in sorted(old.keys() | new.keys())
        if old.get(path) != new.get(path)
    ]


def is_binary(data: bytes) -> bool:
    return b"\0" in data[:BINARY_PROBE]


class Patch(NamedTuple):
    text: str
    binary: bool
    additions: int
    deletions: int


def file_patch(change: Change, old_data: bytes, new_data: bytes, context: int = 3) -> Patch:
    """The `git diff` text for one file: header, then hunks (or "Binary files ... differ")."""
    path = change.path.decode("utf-8", "replace")
    old, new = change.old, change.new
    old_sha = old[1].decode("ascii")[:7] if old else NULL_ID[:7]
    new_sha = new[1].decode("ascii")[:7] if new else NULL_ID[:7]
    lines = [f"diff --git a/{path} b/{path}\n"]
    if old is None and new is not None:
        lines.append(f"new file mode {new[0]:o}\n")
        lines.append(f"index {old_sha}..{new_sha}\n")
    elif new is None and old is not None:
        lines.append(f"deleted file mode {old[0]:o}\n")
        lines.append(f"index {old_sha}..{new_sha}\n")
    elif old is not None and new is not None:
        if old[0] != new[0]:
            lines.append(f"old mode {old[0]:o}\nnew mode {new[0]:o}\n")
            if old[1] != new[1]:
                lines.append(f"index {old_sha}..{new_sha}\n")
        else:
            lines.append(f"index {old_sha}..{new_sha} {old[0]:o}\n")
    if old is not None and new is not None and old[1] == new[1]:
        return Patch("".join(lines), False, 0, 0)
    if is_binary(old_data) or is_binary(new_data):
        a = f"a/{path}" if old else "/dev/null"
        b = f"b/{path}" if new else "/dev/null"
        lines.append(f"Binary files {a} and {b} differ\n")
        return Patch("".join(lines), True, 0, 0)
    a_lines = old_data.splitlines(keepends=True)
    b_lines = new_data.splitlines(keepends=True)
    hunks, additions, deletions = _hunks(a_lines, b_lines, context)
    if hunks:
        lines.append(f"--- {'a/' + path if old else '/dev/null'}\n")
        lines.append(f"+++ {'b/' + path if new else '/dev/null'}\n")
        lines.extend(hunks)
    return Patch("".join(lines), False, additions, deletions)


def _range(start: int, stop: int) -> str:
    length = stop - start
    if length == 1:
        return f"{start + 1}"
    return f"{start if length == 0 else start + 1},{length}"


def _line(prefix: str, line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    if text.endswith("\n"):
        return prefix + text
    return f"{prefix}{text}\n\\ No newline at end of file\n"


def _function_line(a: list[bytes], start: int) -> str:
    """git's default hunk-header context: the nearest line above the hunk that starts with a
    letter, `_` or `$`, cut to 80 bytes."""
    for line in reversed(a[:start]):
        if line[:1].isalpha() or line[:1] in (b"_", b"$"):
            return " " + line[:80].rstrip().decode("utf-8", "replace")
    return ""


def _hunks(a: list[bytes], b: list[bytes], context: int) -> tuple[list[str], int, int]:
    out: list[str] = []
    import difflib

    additions = deletions = 0
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        first, last = group[0], group[-1]
        header = _function_line(a, first[1])
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@{header}\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out.extend(_line(" ", line) for line in a[i1:i2])
                continue
            if tag in ("replace", "delete"):
                out.extend(_line("-", line) for line in a[i1:i2])
                deletions += i2 - i1
            if tag in ("replace", "insert"):
                out.extend(_line("+", line) for line in b[j1:j2])
                additions += j2 - j1
    return out, additions, deletions
