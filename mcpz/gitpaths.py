"""Names git refuses to check out, because some file system would take them for `.git` (or another
special dotfile): git's own rules (path.c `is_ntfs_dotgit` / `is_ntfs_dot_generic`, utf8.c
`is_hfs_dot_generic`), on one tree entry's raw name.

- NTFS: trailing dots and spaces are dropped, `:` starts an alternate data stream, and `GIT~1` (or
  a hashed 8.3 short name) stands for the long name, so `.git.`, `.GIT ` and `git~1::$INDEX_ALLOCATION`
  are `.git`.
- HFS+: some invisible code points (zero-width joiners, direction marks, the BOM) are ignored in
  names, so `.g\u200cit` is `.git`.

One rule for both sides: the registry refuses a push holding such a name
(`registry_server.git.pack_checks`), and a node refuses to write one (`mcpz.node.checkout`). Pure:
bytes in, a verdict out.
"""

from __future__ import annotations


def is_dotgit(name: bytes) -> bool:
    """Whether git, Windows or macOS would take this one path component for `.git`."""
    return is_hfs_dot(name, b"git") or is_ntfs_dotgit(name)


_HFS_IGNORED = frozenset(
    (*range(0x200C, 0x2010), *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF)
)  # zero-width joiners, direction marks and overrides, shaping controls, BOM


def _utf8_char(s: bytes, i: int) -> tuple[int, int] | None:
    """One UTF-8 character at s[i]: (code point, next index), or None where git gives up."""
    lead = s[i]
    if lead < 0x80:
        return lead, i + 1
    n = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0
    try:
        text = s[i : i + n].decode("utf-8") if n else ""
    except UnicodeDecodeError:
        return None
    if len(text) != 1 or ord(text) in (0xFFFE, 0xFFFF):
        return None
    return ord(text), i + n


def _next_hfs_char(s: bytes, i: int) -> tuple[int, int]:
    """The next character HFS+ would not ignore; 0 at the end or on bad UTF-8, as git's next_hfs_char."""
    while i < len(s):
        got = _utf8_char(s, i)
        if got is None:
            return 0, len(s)
        cp, i = got
        if cp not in _HFS_IGNORED:
            return cp, i
    return 0, i


def ascii_lower(c: int) -> int:
    """An ASCII upper-case letter's lower-case code; any other code as it is (as git's tolower)."""
    return c | 0x20 if 0x41 <= c <= 0x5A else c


def is_hfs_dot(name: bytes, needle: bytes) -> bool:
    """Whether HFS+ would take `name` for `.{needle}` (`needle` lower-case ASCII)."""
    c, i = _next_hfs_char(name, 0)
    if c != 0x2E:
        return False
    for want in needle:
        c, i = _next_hfs_char(name, i)
        if c > 127 or ascii_lower(c) != want:
            return False
    c, i = _next_hfs_char(name, i)
    return c in (0, 0x2F)


def is_ntfs_dotgit(name: bytes) -> bool:
    """Whether NTFS would take `name` (up to a `/`, `\\` or `:`) for `.git`."""
    low = name[:5].lower()
    if low.startswith(b".git"):
        rest = name[4:]
    elif low == b"git~1":
        rest = name[5:]
    else:
        return False
    for c in rest:
        if c in b"/\\:":
            return True
        if c not in b". ":
            return False
    return True


def _ntfs_tail_ok(name: bytes, i: int) -> bool:
    for c in name[i:]:
        if c == 0x3A:  # ':' starts an alternate data stream
            return True
        if c not in b" .":
            return False
    return True


def is_ntfs_dot(name: bytes, dotname: bytes, shortname: bytes) -> bool:
    """git's is_ntfs_dot_generic: `.dotname`, `DOTNAM~1`..`~4`, or its hashed 8.3 short name."""
    n = len(dotname)
    if name[:1] == b"." and name[1 : 1 + n].lower() == dotname:
        return _ntfs_tail_ok(name, n + 1)
    if name[:6].lower() == dotname[:6] and name[6:7] == b"~" and name[7:8] in (b"1", b"2", b"3", b"4"):
        return _ntfs_tail_ok(name, 8)
    saw_tilde = False
    i = 0
    while i < 8:
        c = name[i] if i < len(name) else 0
        if c == 0:
            return False
        if saw_tilde:
            if not 0x30 <= c <= 0x39:
                return False
        elif c == 0x7E:
            i += 1
            c = name[i] if i < len(name) else 0
            if not 0x31 <= c <= 0x39:
                return False
            saw_tilde = True
        elif i >= 6 or c & 0x80 or ascii_lower(c) != shortname[i]:
            return False
        i += 1
    return _ntfs_tail_ok(name, i)
