"""Checks on the objects a push brings, at least as strict as git's `receive.fsckObjects` (strict).

A receive handler calls, in this order:

1. `PackSizeGuard(limit).add(len(chunk))` for every chunk of the incoming pack as it arrives:
   it raises `PackTooLarge` (carrying a `packTooLarge` `Problem`) once the pack passes the limit.
   (dulwich's `add_thin_pack(..., max_input_size=)` does the same job; use one or the other.)
2. `check_objects(pack_objects(pack), store_lookup(store), tips=new_ref_values)` once the pack
   is indexed (in a quarantine store whose alternate is the repository), before any ref moves.
   `pack_objects` reads the pack raw; `store_lookup` reads the objects the repository already
   holds, so that trees reused from earlier commits are walked again where they now sit. An empty
   result means the push may go on; otherwise refuse it and show each `str(problem)` (one line,
   safe for a terminal) to the pusher.

Objects may also be dulwich `ShaFile`s, and `lookup` may return them; but dulwich's parser
raises `dulwich.errors.ObjectFormatException` on some hostile objects (already inside
`add_thin_pack`, which parses every object it indexes): catch it and refuse the push too.

If the pack has already been merged into the object store, `find_new_objects(lookup, new_tips,
old_tips)` recovers the objects reachable from the new ref values and not from the old ones (and
lists the referenced objects that are missing, a connectivity check).

What is checked (the codes are git's fsck message ids where git has one):

- commits and tags parse as git's fsck parses them: header lines, `name <email> time +zone`
  identities, 40-hex ids, tag names that are valid ref names, a tagger line;
- trees parse; no entry is empty, `.`, `..`, `.git` or an NTFS/HFS+ alias of it (`is_ntfs_dotgit`,
  `is_hfs_dotgit` in git's path.c and utf8.c); no `/` in a name; no duplicate or unsorted entries;
  no zero-padded or non-standard mode; no null ids;
- `.gitmodules` (and its aliases) is not a symlink and parses as git-config, with no submodule name
  or path that has a `..` component, no URL, path or update command that git refuses;
  `.gitattributes` is not a symlink, not huge and has no over-long line; `.gitignore` and
  `.mailmap` are not symlinks;
- symlinks: the target is not absolute, does not name `.git`, and, resolved from the link's own
  directory, stays inside the repository; no `..` after a directory name in the target (it could
  leave through another symlink);
- every full path (from the root of each new commit's tree) is shorter than `Limits.path_bytes`.

Pure: it reads objects only through `lookup` (and the `Pack` given to `pack_objects`), writes
nothing and touches no network.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from dulwich.object_store import BaseObjectStore
from dulwich.objects import ShaFile
from dulwich.pack import Pack

from mcpz.errors import RepositoryError
from mcpz.gitpaths import ascii_lower, is_hfs_dot, is_ntfs_dot, is_ntfs_dotgit

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_PACK_BYTES",
    "Limits",
    "Lookup",
    "NewObjects",
    "PackSizeGuard",
    "PackTooLarge",
    "Problem",
    "RawObject",
    "check_objects",
    "find_new_objects",
    "pack_objects",
    "pack_size_problem",
    "store_lookup",
]

COMMIT, TREE, BLOB, TAG = 1, 2, 3, 4
_TYPE_NAMES = {COMMIT: b"commit", TREE: b"tree", BLOB: b"blob", TAG: b"tag"}
_TYPE_NUMS = {name: num for num, name in _TYPE_NAMES.items()}

S_IFMT, S_IFDIR, S_IFLNK, S_IFGITLINK = 0o170000, 0o040000, 0o120000, 0o160000
_GOOD_MODES = frozenset({0o100644, 0o100755, S_IFLNK, S_IFDIR, S_IFGITLINK})
NULL_ID = b"0" * 40

DEFAULT_MAX_PACK_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a push: a git-fsck-style `code` and a one-line `message`.

    `object_id` (40-hex bytes) names the object at fault: the tree for a bad entry or a bad
    placement (an escaping symlink, a long path), the blob for bad content (a `.gitmodules`, a
    symlink target), else the commit or tag. `path` is the full path from the root of the commit's
    tree when known, else the entry's name, else None.
    `str(problem)` is the line to show on the pusher's terminal.
    """

    code: str
    message: str
    object_id: bytes | None = None
    path: bytes | None = None

    def __str__(self) -> str:
        where = f"object {self.object_id.decode('ascii', 'replace')}" if self.object_id else "push"
        return f"{where}: {self.code}: {self.message}"


@dataclass(frozen=True)
class RawObject:
    """An object as stored: its id (40-hex bytes), type number (1-4) and content, never parsed."""

    id: bytes
    type_num: int
    data: bytes

    @classmethod
    def from_bytes(cls, type_num: int, data: bytes) -> RawObject:
        """Build the object and compute its id, as `git hash-object` would."""
        header = _TYPE_NAMES.get(type_num, b"unknown") + b" %d\0" % len(data)
        return cls(hashlib.sha1(header + data).hexdigest().encode("ascii"), type_num, data)

    @classmethod
    def from_shafile(cls, obj: ShaFile) -> RawObject:
        """From a dulwich `ShaFile` (its raw bytes as received, not a re-serialisation)."""
        return cls(bytes(obj.id), obj.type_num, obj.as_raw_string())


Lookup = Callable[[bytes], RawObject | ShaFile | None]
"""Reads an object by 40-hex id; None when the repository does not have it."""


def store_lookup(object_store: BaseObjectStore) -> Lookup:
    """A `Lookup` over a dulwich object store (`repo.object_store`) that reads raw bytes and
    never parses: prefer it to `store[oid]`, which raises on objects dulwich cannot parse."""

    def lookup(oid: bytes) -> RawObject | None:
        try:
            type_num, data = object_store.get_raw(oid)
        except KeyError:
            return None
        return RawObject(oid, type_num, data)

    return lookup


def _raw(obj: RawObject | ShaFile | None) -> RawObject | None:
    return obj if obj is None or isinstance(obj, RawObject) else RawObject.from_shafile(obj)


def pack_objects(pack: Pack) -> Iterator[RawObject]:
    """A dulwich `Pack`'s objects, deltas resolved and nothing parsed (unlike `pack.iterobjects()`,
    which raises on the first object dulwich cannot parse, before any check could refuse it)."""
    for oid in pack:
        type_num, data = pack.get_raw(oid)
        yield RawObject(bytes(oid), type_num, data)


@dataclass(frozen=True)
class Limits:
    """Sizes past which a push is refused."""

    path_bytes: int = 4096  # full paths must be shorter (PATH_MAX, which counts the NUL)
    symlink_target_bytes: int = 4096
    gitmodules_bytes: int = 1024 * 1024
    gitattributes_bytes: int = 100 * 1024 * 1024  # git's ATTR_MAX_FILE_SIZE
    gitattributes_line_bytes: int = 2048  # git's ATTR_MAX_LINE_LENGTH
    max_problems: int = 200  # stop looking after this many; a hostile pack could yield millions


DEFAULT_LIMITS = Limits()


# --- pack size ------------------------------------------------------------------------------------


def pack_size_problem(received: int, limit: int = DEFAULT_MAX_PACK_BYTES) -> Problem | None:
    """A `packTooLarge` problem when `received` bytes exceed `limit`, else None."""
    if received <= limit:
        return None
    return Problem(
        "packTooLarge",
        f"the pack is over the limit of {human_size(limit)} (at least {human_size(received)} sent); "
        "push fewer commits at a time, or keep large files out of the repository",
    )


class PackTooLarge(RepositoryError):
    """The incoming pack passed the size limit; `problem` says so in the push's words."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message, hint="push fewer commits at a time")
        self.problem = problem


class PackSizeGuard:
    """Counts pack bytes as they arrive; `add` raises `PackTooLarge` past the limit."""

    def __init__(self, limit: int = DEFAULT_MAX_PACK_BYTES) -> None:
        self.limit = limit
        self.received = 0

    def add(self, nbytes: int) -> None:
        self.received += nbytes
        problem = pack_size_problem(self.received, self.limit)
        if problem is not None:
            raise PackTooLarge(problem)


def human_size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


_DOTFILES = {
    "gitmodules": (b"gitmodules", b"gi7eba"),
    "gitattributes": (b"gitattributes", b"gi7d29"),
    "gitignore": (b"gitignore", b"gi250a"),
    "mailmap": (b"mailmap", b"maba30"),
}


def _special_names(name: bytes) -> set[str]:
    """Which of git, gitmodules, gitattributes, gitignore, mailmap this name could be checked out as."""
    kinds = set()
    if is_hfs_dot(name, b"git") or is_ntfs_dotgit(name):
        kinds.add("git")
    for kind, (dotname, short) in _DOTFILES.items():
        if is_hfs_dot(name, dotname) or is_ntfs_dot(name, dotname, short):
            kinds.add(kind)
    # NTFS takes a backslash for a directory separator: check what follows each one too.
    parts = name.split(b"\\")[1:]
    for part in parts:
        if is_ntfs_dotgit(part):
            kinds.add("git")
        for kind, (dotname, short) in _DOTFILES.items():
            if is_ntfs_dot(part, dotname, short):
                kinds.add(kind)
    return kinds


def _show(raw: bytes, limit: int = 160) -> str:
    """A name or value made safe for a terminal: invisible and control characters escaped."""
    out = []
    for ch in raw.decode("utf-8", "backslashreplace"):
        if ch != " " and unicodedata.category(ch)[0] in "CZ":
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(ch)
    text = "".join(out)
    if len(text) > limit:
        text = text[: limit // 2] + "..." + text[-limit // 2 :]
    return f"'{text}'"


# --- parsing --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    mode_text: bytes
    mode: int
    name: bytes
    id: bytes


_OCTAL = re.compile(rb"[0-7]+")
_HEX40 = re.compile(rb"[0-9a-f]{40}")


def _parse_tree(data: bytes) -> tuple[list[_Entry], str | None]:
    """The entries, and why parsing stopped early (None when the whole tree parsed)."""
    entries: list[_Entry] = []
    i, n = 0, len(data)
    while i < n:
        space = data.find(b" ", i)
        if space < 0:
            return entries, "entry without a mode"
        mode_text = data[i:space]
        if not _OCTAL.fullmatch(mode_text):
            return entries, "malformed mode in tree entry"
        nul = data.find(b"\0", space + 1)
        if nul < 0 or nul + 21 > n:
            return entries, "truncated tree entry"
        mode = int(mode_text, 8) if len(mode_text) <= 7 else -1
        entries.append(
            _Entry(mode_text, mode, data[space + 1 : nul], data[nul + 1 : nul + 21].hex().encode())
        )
        i = nul + 21
    return entries, None


def _is_dir(mode: int) -> bool:
    return mode >= 0 and mode & S_IFMT == S_IFDIR


def _is_link(mode: int) -> bool:
    return mode >= 0 and mode & S_IFMT == S_IFLNK


_UNORDERED, _DUPLICATE = -1, -2


def _less_than_slash(c: int) -> bool:
    return 0 < c < 0x2F


def _verify_ordered(mode1: int, name1: bytes, mode2: int, name2: bytes, candidates: list[bytes]) -> int:
    """git's verify_ordered: directories sort as if their name ended in '/'."""
    n = min(len(name1), len(name2))
    if name1[:n] != name2[:n]:
        return 0 if name1[:n] < name2[:n] else _UNORDERED
    c1 = name1[n] if len(name1) > n else 0
    c2 = name2[n] if len(name2) > n else 0
    if not c1 and not c2:
        return _DUPLICATE
    if not c1 and _is_dir(mode1):
        c1 = 0x2F
    if not c2 and _is_dir(mode2):
        c2 = 0x2F
    # "foo", "foo.bar", "foo/" : a file and a directory of the same name need not be adjacent.
    if not c1 and _less_than_slash(c2):
        candidates.append(name1)
    elif c2 == 0x2F and _less_than_slash(c1):
        while candidates:
            f_name = candidates.pop()
            if not name2.startswith(f_name):
                continue
            rest = name2[len(f_name) :]
            if not rest:
                return _DUPLICATE
            if _less_than_slash(rest[0]):
                candidates.append(f_name)
                break
    return 0 if c1 < c2 else _UNORDERED


@dataclass(frozen=True, slots=True)
class _Finding:
    code: str
    text: str
    name: bytes | None = None  # the tree entry at fault, for tree findings


def _verify_headers(data: bytes) -> _Finding | None:
    end = data.find(b"\n\n")
    nul = (data if end < 0 else data[:end]).find(b"\0")
    if nul >= 0:
        return _Finding("nulInHeader", f"NUL byte in the header at offset {nul}")
    if end < 0 and not data.endswith(b"\n"):
        return _Finding("unterminatedHeader", "the header does not end with a newline")
    return None


def _hex_line(data: bytes, at: int) -> bytes | None:
    if _HEX40.fullmatch(data, at, at + 40) and data[at + 40 : at + 41] == b"\n":
        return data[at : at + 40]
    return None


_NAME_STOP = re.compile(rb"[<>\n]")
_DIGITS = re.compile(rb"[0-9]+")


def _check_ident(data: bytes, p: int) -> tuple[_Finding | None, int]:
    """git's fsck_ident on the line at p: `Name <email> 1700000000 +0100`. Returns the next line."""
    eol = data.find(b"\n", p)
    nxt = len(data) if eol < 0 else eol + 1

    def at(i: int) -> int:
        return data[i] if i < len(data) else 0

    def bad(code: str, what: str) -> tuple[_Finding, int]:
        return _Finding(code, f"invalid author/committer line: {what}"), nxt

    def stop(i: int) -> int:
        m = _NAME_STOP.search(data, i)
        return m.start() if m else len(data)

    if at(p) == ord("<"):
        return bad("missingNameBeforeEmail", "missing name before email")
    q = stop(p)
    if at(q) == ord(">"):
        return bad("badName", "bad name")
    if at(q) != ord("<"):
        return bad("missingEmail", "missing email")
    if at(q - 1) != ord(" "):
        return bad("missingSpaceBeforeEmail", "missing space before email")
    q = stop(q + 1)
    if at(q) != ord(">"):
        return bad("badEmail", "bad email")
    if at(q + 1) != ord(" "):
        return bad("missingSpaceBeforeDate", "missing space before date")
    q += 2
    if at(q) == ord("0") and at(q + 1) != ord(" "):
        return bad("zeroPaddedDate", "zero-padded date")
    m = _DIGITS.match(data, q)
    if m and (len(m.group()) > 19 or int(m.group()) >= 2**63):
        return bad("badDateOverflow", "date causes integer overflow")
    if not m or at(m.end()) != ord(" "):
        return bad("badDate", "bad date")
    q = m.end() + 1
    if at(q) not in b"+-" or not data[q + 1 : q + 5].isdigit() or len(data[q + 1 : q + 5]) != 4:
        return bad("badTimezone", "bad time zone")
    if at(q + 5) != ord("\n"):
        return bad("badTimezone", "bad time zone")
    return None, nxt


def _check_commit(data: bytes) -> tuple[_Finding | None, bytes | None, list[bytes]]:
    """git's fsck_commit: the first problem, the tree id and the parent ids."""
    found = _verify_headers(data)
    if found:
        return found, None, []
    if not data.startswith(b"tree "):
        return _Finding("missingTree", "invalid format: expected a 'tree' line"), None, []
    tree = _hex_line(data, 5)
    if tree is None:
        return _Finding("badTreeSha1", "invalid 'tree' line: bad object id"), None, []
    pos, parents = 46, list[bytes]()
    while data.startswith(b"parent ", pos):
        parent = _hex_line(data, pos + 7)
        if parent is None:
            return _Finding("badParentSha1", "invalid 'parent' line: bad object id"), tree, parents
        parents.append(parent)
        pos += 48
    authors = 0
    while data.startswith(b"author ", pos):
        authors += 1
        found, pos = _check_ident(data, pos + 7)
        if found:
            return found, tree, parents
    if authors != 1:
        code, what = (
            ("missingAuthor", "expected an 'author' line")
            if not authors
            else ("multipleAuthors", "multiple 'author' lines")
        )
        return _Finding(code, f"invalid format: {what}"), tree, parents
    if not data.startswith(b"committer ", pos):
        return _Finding("missingCommitter", "invalid format: expected a 'committer' line"), tree, parents
    found, pos = _check_ident(data, pos + 10)
    if found:
        return found, tree, parents
    if b"\0" in data:
        return _Finding("nulInCommit", "NUL byte in the commit message"), tree, parents
    return None, tree, parents


_REFNAME_BAD = re.compile(rb"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{")


def _valid_tag_name(name: bytes) -> bool:
    """git's check_refname_format on refs/tags/<name>."""
    ref = b"refs/tags/" + name
    if ref.endswith((b"/", b".")) or _REFNAME_BAD.search(ref):
        return False
    return all(part and not part.startswith(b".") and not part.endswith(b".lock") for part in ref.split(b"/"))


def _check_tag(data: bytes) -> tuple[_Finding | None, bytes | None, int | None]:
    """git's fsck_tag: the first problem, the tagged id and its declared type."""
    found = _verify_headers(data)
    if found:
        return found, None, None
    if not data.startswith(b"object "):
        return _Finding("missingObject", "invalid format: expected an 'object' line"), None, None
    target = _hex_line(data, 7)
    if target is None:
        return _Finding("badObjectSha1", "invalid 'object' line: bad object id"), None, None
    if not data.startswith(b"type ", 48):
        return _Finding("missingTypeEntry", "invalid format: expected a 'type' line"), target, None
    eol = data.find(b"\n", 53)
    if eol < 0:
        return _Finding("missingType", "invalid format: unexpected end after the 'type' line"), target, None
    type_num = _TYPE_NUMS.get(data[53:eol])
    if type_num is None:
        return _Finding("badType", f"invalid 'type' value {_show(data[53:eol])}"), target, None
    pos = eol + 1
    if not data.startswith(b"tag ", pos):
        return _Finding("missingTagEntry", "invalid format: expected a 'tag' line"), target, type_num
    eol = data.find(b"\n", pos + 4)
    if eol < 0:
        return _Finding("missingTag", "invalid format: unexpected end after the 'tag' line"), target, type_num
    if not _valid_tag_name(data[pos + 4 : eol]):
        return _Finding("badTagName", f"invalid tag name {_show(data[pos + 4 : eol])}"), target, type_num
    pos = eol + 1
    if not data.startswith(b"tagger ", pos):
        return _Finding("missingTaggerEntry", "invalid format: expected a 'tagger' line"), target, type_num
    found, _ = _check_ident(data, pos + 7)
    return found, target, type_num


# --- .gitmodules: git-config, parsed as git's config.c parses it ---------------------------------


class _ConfigError(Exception):
    pass


_SPACE = b" \t\n\r"


class _ConfigReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.eof = data, 0, False

    def next(self) -> int:
        """The next byte, CRLF read as LF; LF (with `eof` set) past the end, as git's get_next_char."""
        if self.pos >= len(self.data):
            self.eof = True
            return 0x0A
        c = self.data[self.pos]
        self.pos += 1
        if c == 0x0D and self.data[self.pos : self.pos + 1] == b"\n":
            self.pos += 1
            return 0x0A
        return c

    def error(self, what: str) -> _ConfigError:
        line = self.data.count(b"\n", 0, max(self.pos - 1, 0)) + 1
        return _ConfigError(f"line {line}: {what}")


def _isalpha(c: int) -> bool:
    return 0x61 <= ascii_lower(c) <= 0x7A


def _iskeychar(c: int) -> bool:
    return _isalpha(c) or 0x30 <= c <= 0x39 or c == 0x2D


def _config_entries(data: bytes) -> list[tuple[bytes, bytes | None]]:
    """(`section.subsection.key`, value) pairs; raises _ConfigError where git's parser fails."""
    if b"\0" in data:
        raise _ConfigError("NUL byte")
    r = _ConfigReader(data)
    if data.startswith(b"\xef\xbb\xbf"):
        r.pos = 3
    out: list[tuple[bytes, bytes | None]] = []
    var = bytearray()
    baselen = 0
    comment = False
    while True:
        c = r.next()
        if c == 0x0A:
            if r.eof:
                return out
            comment = False
        elif comment or c in _SPACE:
            continue
        elif c in b"#;":
            comment = True
        elif c == ord("["):
            var = bytearray()
            _config_section(r, var)
            var.append(ord("."))
            baselen = len(var)
        elif _isalpha(c):
            del var[baselen:]
            var.append(ascii_lower(c))
            value = _config_value(r, var)  # reads the rest of the key into var first
            out.append((bytes(var), value))
        else:
            raise r.error("unexpected character")


def _config_section(r: _ConfigReader, var: bytearray) -> None:
    while True:
        c = r.next()
        if r.eof:
            raise r.error("unterminated section header")
        if c == ord("]"):
            if not var:
                raise r.error("empty section name")
            return
        if c in _SPACE:
            break
        if not (_iskeychar(c) or c == ord(".")):
            raise r.error("bad section name")
        var.append(ascii_lower(c))
    # [section "subsection"]
    while c in _SPACE:
        if c == 0x0A:
            raise r.error("unterminated section header")
        c = r.next()
    if c != ord('"'):
        raise r.error("expected a quoted subsection name")
    var.append(ord("."))
    while True:
        c = r.next()
        if c == 0x0A:
            raise r.error("unterminated subsection name")
        if c == ord('"'):
            break
        if c == ord("\\"):
            c = r.next()
            if c == 0x0A:
                raise r.error("unterminated subsection name")
        var.append(c)
    if r.next() != ord("]"):
        raise r.error("expected ']' after the subsection name")


_ESCAPES = {ord("t"): 0x09, ord("b"): 0x08, ord("n"): 0x0A, ord("\\"): ord("\\"), ord('"'): ord('"')}


def _config_value(r: _ConfigReader, var: bytearray) -> bytes | None:
    while True:
        c = r.next()
        if r.eof or not _iskeychar(c):
            break
        var.append(ascii_lower(c))
    while c in b" \t":
        c = r.next()
    if c == 0x0A:
        return None  # `key` alone: a boolean
    if c != ord("="):
        raise r.error("expected '=' after the key")
    quote = comment = False
    space = 0
    value = bytearray()
    while True:
        c = r.next()
        if c == 0x0A:
            if quote:
                raise r.error("unterminated quoted value")
            return bytes(value)
        if comment:
            continue
        if c in _SPACE and not quote:
            space += 1 if value else 0
            continue
        if not quote and c in b"#;":
            comment = True
            continue
        value += b" " * space
        space = 0
        if c == ord("\\"):
            c = r.next()
            if c == 0x0A:
                continue  # line continuation
            if c not in _ESCAPES:
                raise r.error("unknown escape in value")
            value.append(_ESCAPES[c])
        elif c == ord('"'):
            quote = not quote
        else:
            value.append(c)


def _has_dotdot(path: bytes) -> bool:
    return any(part == b".." for part in re.split(rb"[/\\]", path))


def _url_decode(url: bytes) -> bytes:
    return re.sub(rb"%([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), url)


def _bad_submodule_url(url: bytes) -> bool:
    """git's check_submodule_url (fsck.c / submodule-config.c)."""
    if url.startswith(b"-"):
        return True
    relative = re.match(rb"\.\.?[/\\]|\^/", url) is not None
    if relative or url.startswith(b"git://"):
        if b"\n" in _url_decode(url):
            return True
        rest, dotdots = url, 0
        while m := re.match(rb"(\.\.?)[/\\]", rest):
            dotdots += m.group(1) == b".."
            rest = rest[m.end() :]
        if dotdots and rest[:1] in (b":", b"/"):
            return True
        return url.startswith(b"^/") and url[2:3] in (b":", b"/")
    m = re.match(rb"(?:https?|ftps?)::", url)
    if m:
        curl = url[m.end() :]
    elif re.match(rb"(?:https?|ftps?)://", url):
        curl = url
    else:
        return False
    # git's credential_from_url_gently: a scheme, a host, no newline in any part.
    scheme_end = curl.find(b"://")
    if scheme_end <= 0 or b"\n" in _url_decode(curl):
        return True
    rest = curl[scheme_end + 3 :]
    slash = re.search(rb"[/?#]", rest)
    end = slash.start() if slash else len(rest)
    at = rest.find(b"@")
    host = rest[:end] if at < 0 or end <= at else rest[at + 1 : end]
    return not _url_decode(host)


def _gitmodules_findings(data: bytes, limits: Limits) -> list[_Finding]:
    if len(data) > limits.gitmodules_bytes:
        return [
            _Finding("gitmodulesLarge", f".gitmodules is larger than {human_size(limits.gitmodules_bytes)}")
        ]
    try:
        entries = _config_entries(data)
    except _ConfigError as e:
        return [_Finding("gitmodulesParse", f"could not parse .gitmodules: {e}")]
    found = []
    for var, value in entries:
        first, last = var.find(b"."), var.rfind(b".")
        if var[:first] != b"submodule" or first == last:
            continue
        name, key = var[first + 1 : last], var[last + 1 :]
        if not name or _has_dotdot(name):
            found.append(_Finding("gitmodulesName", f"disallowed submodule name {_show(name)}"))
        if value is None:
            continue
        if key == b"url" and _bad_submodule_url(value):
            found.append(_Finding("gitmodulesUrl", f"disallowed submodule url {_show(value)}"))
        if key == b"path" and (value.startswith((b"-", b"/", b"\\")) or _has_dotdot(value)):
            found.append(_Finding("gitmodulesPath", f"disallowed submodule path {_show(value)}"))
        if key == b"update" and value.startswith(b"!"):
            found.append(_Finding("gitmodulesUpdate", f"disallowed submodule update command {_show(value)}"))
    return found


def _gitattributes_findings(data: bytes, limits: Limits) -> list[_Finding]:
    if len(data) > limits.gitattributes_bytes:
        return [_Finding("gitattributesLarge", ".gitattributes is too large to parse")]
    if any(len(line) >= limits.gitattributes_line_bytes for line in data.split(b"\n")):
        return [_Finding("gitattributesLineLength", ".gitattributes has lines too long to parse")]
    return []


# --- symlinks ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Link:
    target: bytes
    climb: int  # how many directories the target goes up from the link's own directory
    findings: tuple[_Finding, ...]


def _analyse_link(target: bytes, limits: Limits) -> _Link:
    if len(target) >= limits.symlink_target_bytes:
        return _Link(b"", 0, (_Finding("symlinkTargetLength", "symbolic link target is too long"),))
    shown = _show(target)
    if b"\0" in target:
        return _Link(
            target, 0, (_Finding("symlinkTargetNul", f"symbolic link target {shown} has a NUL byte"),)
        )
    findings = []
    if target.startswith((b"/", b"\\")) or re.match(rb"[A-Za-z]:", target):
        findings.append(_Finding("symlinkAbsolute", f"symbolic link to the absolute path {shown}"))
    climb, below = 0, False
    for part in re.split(rb"[/\\]", target):  # Windows takes '\' as a separator too
        dots_only = not part.strip(b". ")  # Windows trims trailing dots and spaces
        if dots_only and part.count(b".") < 2:
            continue  # '', '.'
        if dots_only:  # '..', or what Windows trims to it ('...', '.. ')
            if below:
                findings.append(
                    _Finding(
                        "symlinkEscapes",
                        f"symbolic link to {shown} goes up with '..' after a directory name, which can "
                        "leave the repository through another symbolic link; write it without that '..'",
                    )
                )
                break
            climb += 1
        else:
            below = True
            if is_ntfs_dotgit(part) or is_hfs_dot(part, b"git"):
                findings.append(
                    _Finding("symlinkPointsToGitDir", f"symbolic link to {shown} points into .git")
                )
    return _Link(target, climb, tuple(findings))


# --- the check -----------------------------------------------------------------------------------


class _Enough(Exception):
    """Raised inside the checker once `max_problems` problems are found."""


@dataclass
class _Summary:
    longest: int = 0  # bytes in the longest path below this tree, relative to it
    escape: int = 0  # the most directories a symlink below climbs above this tree


@dataclass
class _Checker:
    lookup: Lookup
    limits: Limits
    incoming: dict[bytes, RawObject]
    problems: list[Problem] = field(default_factory=list)
    seen: set[tuple[str, bytes | None, bytes | None]] = field(default_factory=set)
    pending: list[tuple[bytes, _Finding, bytes]] = field(default_factory=list)  # (tree, finding, culprit)
    entries: dict[bytes, list[_Entry] | None] = field(default_factory=dict)
    summaries: dict[bytes, _Summary] = field(default_factory=dict)
    where: dict[bytes, tuple[bytes, str]] = field(default_factory=dict)  # tree -> (prefix, root label)
    links: dict[bytes, _Link | None] = field(default_factory=dict)
    blob_findings: dict[tuple[str, bytes], list[_Finding]] = field(default_factory=dict)
    walked: set[tuple[bytes, bytes]] = field(default_factory=set)

    def get(self, oid: bytes) -> RawObject | None:
        return self.incoming.get(oid) or _raw(self.lookup(oid))

    def emit(self, code: str, message: str, object_id: bytes | None, path: bytes | None = None) -> None:
        key = (code, object_id, path)
        if key in self.seen:
            return
        self.seen.add(key)
        if len(self.problems) >= self.limits.max_problems:
            self.problems.append(
                Problem(
                    "tooManyProblems", f"stopped after {self.limits.max_problems} problems; fix these first"
                )
            )
            raise _Enough
        self.problems.append(Problem(code, message, object_id, path))

    def note(self, tree: bytes, finding: _Finding, culprit: bytes | None = None) -> None:
        """A problem with an entry of `tree`, reported once the tree's full path is known."""
        self.pending.append((tree, finding, culprit or tree))
        if len(self.pending) > self.limits.max_problems * 4:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for tree, finding, culprit in pending:
            prefix, label = self.where.get(tree, (b"", ""))
            path = prefix + finding.name if finding.name is not None else (prefix.rstrip(b"/") or None)
            where = f" (in {label})" if label else ""
            text = f"{_show(path)}: {finding.text}{where}" if path else f"{finding.text}{where}"
            self.emit(finding.code, text, culprit, path)

    # -- one object at a time, as git's fsck_object

    def check_object(self, obj: RawObject) -> None:
        if obj.type_num == COMMIT:
            found, tree, parents = _check_commit(obj.data)
            if found:
                self.emit(found.code, found.text, obj.id)
            self.expect_type(obj.id, tree, TREE, "its tree")
            for parent in parents:
                self.expect_type(obj.id, parent, COMMIT, "its parent")
        elif obj.type_num == TAG:
            found, target, type_num = _check_tag(obj.data)
            if found:
                self.emit(found.code, found.text, obj.id)
            if target is not None and type_num is not None:
                self.expect_type(obj.id, target, type_num, "the tagged object")
        elif obj.type_num == TREE:
            self.check_tree(obj)
        elif obj.type_num != BLOB:
            self.emit("unknownType", f"unknown object type {obj.type_num}", obj.id)

    def expect_type(self, owner: bytes, oid: bytes | None, type_num: int, what: str) -> None:
        """Where `oid` is in the push, it must have the type `owner` says; missing ones are left to
        the connectivity check (except trees, which `walk` needs)."""
        target = self.incoming.get(oid) if oid else None
        if oid is not None and target is not None and target.type_num != type_num:
            self.emit(
                "wrongObjectType",
                f"{what} {oid.decode()} is a {_TYPE_NAMES.get(target.type_num, b'?').decode()}, "
                f"not a {_TYPE_NAMES[type_num].decode()}",
                owner,
            )

    def tree_entries(self, oid: bytes) -> list[_Entry] | None:
        if oid not in self.entries:
            obj = self.get(oid)
            self.entries[oid] = _parse_tree(obj.data)[0] if obj is not None and obj.type_num == TREE else None
        return self.entries[oid]

    def check_tree(self, obj: RawObject) -> None:
        entries, error = _parse_tree(obj.data)
        self.entries[obj.id] = entries
        if error:
            self.note(obj.id, _Finding("badTree", f"cannot be parsed as a tree: {error}"))
        candidates: list[bytes] = []
        previous: _Entry | None = None
        for e in entries:
            kinds = _special_names(e.name)
            for finding in self.entry_findings(e, kinds):
                self.note(obj.id, finding)
            if previous is not None:
                order = _verify_ordered(previous.mode, previous.name, e.mode, e.name, candidates)
                if order == _UNORDERED:
                    text = f"tree entries are not in git's order ({_show(previous.name)} before it)"
                    self.note(obj.id, _Finding("treeNotSorted", text, e.name))
                elif order == _DUPLICATE:
                    self.note(obj.id, _Finding("duplicateEntries", "appears twice in its tree", e.name))
            previous = e
            if e.id != NULL_ID:
                self.check_entry_object(obj.id, e, kinds)

    def entry_findings(self, e: _Entry, kinds: set[str]) -> Iterator[_Finding]:
        name = e.name
        if e.id == NULL_ID:
            yield _Finding("nullSha1", "points to the null object id", name)
        if not name:
            yield _Finding("emptyName", "tree entry with an empty name", name)
        if b"/" in name:
            yield _Finding("fullPathname", "tree entry name contains '/'", name)
        if name in (b".", b".."):
            code = "hasDot" if name == b"." else "hasDotdot"
            yield _Finding(code, f"tree entry named {_show(name)}", name)
        if "git" in kinds:
            yield _Finding(
                "hasDotgit", "git, Windows or macOS would take this name for '.git'; rename it", name
            )
        if e.mode_text.startswith(b"0"):
            yield _Finding("zeroPaddedFilemode", f"mode {e.mode_text.decode()} is zero-padded", name)
        if e.mode not in _GOOD_MODES:
            text = f"bad mode {_show(e.mode_text)} (git writes 100644, 100755, 120000, 40000, 160000)"
            yield _Finding("badFilemode", text, name)
        if _is_link(e.mode):
            for kind in ("gitmodules", "gitattributes", "gitignore", "mailmap"):
                if kind in kinds:
                    yield _Finding(f"{kind}Symlink", f".{kind} is a symbolic link", name)

    def check_entry_object(self, tree: bytes, e: _Entry, kinds: set[str]) -> None:
        """The objects a new tree's entry names, where their content matters."""
        expected = TREE if _is_dir(e.mode) else None if e.mode & S_IFMT == S_IFGITLINK else BLOB
        target = self.incoming.get(e.id)
        if expected and target is not None and target.type_num != expected:
            found = _TYPE_NAMES.get(target.type_num, b"?").decode()
            text = f"names a {found}, not a {_TYPE_NAMES[expected].decode()} ({e.id.decode()})"
            self.note(tree, _Finding("wrongObjectType", text, e.name))
            return
        if _is_link(e.mode):
            link = self.link(e.id)
            if link is None:
                self.note(tree, _Finding("symlinkTargetMissing", "cannot read the symbolic link", e.name))
            else:
                for finding in link.findings:
                    self.note(tree, _Finding(finding.code, finding.text, e.name), e.id)
            return
        for kind, check in (("gitmodules", _gitmodules_findings), ("gitattributes", _gitattributes_findings)):
            if kind not in kinds:
                continue
            key = (kind, e.id)
            if key not in self.blob_findings:
                blob = self.get(e.id)
                if blob is None:
                    self.blob_findings[key] = [_Finding(f"{kind}Missing", f"cannot read the .{kind} blob")]
                elif blob.type_num != BLOB:
                    self.blob_findings[key] = [_Finding(f"{kind}Blob", f".{kind} is not a file")]
                else:
                    self.blob_findings[key] = check(blob.data, self.limits)
            for finding in self.blob_findings[key]:
                self.note(tree, _Finding(finding.code, finding.text, e.name), e.id)

    def link(self, oid: bytes) -> _Link | None:
        if oid not in self.links:
            blob = self.get(oid)
            ok = blob is not None and blob.type_num == BLOB
            self.links[oid] = _analyse_link(blob.data, self.limits) if blob is not None and ok else None
        return self.links[oid]

    # -- walking trees with their full paths

    def summarise(self, root: bytes, label: str) -> None:
        """Walk the tree `root` (depth first, no recursion), recording where each tree first sits
        and, bottom up, the longest path and the farthest symlink climb below each tree."""
        stack: list[tuple[bytes, bytes, bool]] = [(root, b"", False)]
        while stack:
            tid, prefix, done = stack.pop()
            entries = self.tree_entries(tid)
            if done:
                summary = _Summary()
                for e in entries or ():
                    child = self.summaries.get(e.id) if _is_dir(e.mode) else None
                    length = len(e.name) + (1 + child.longest if child else 0)
                    summary.longest = max(summary.longest, length)
                    if child:
                        summary.escape = max(summary.escape, child.escape - 1)
                    elif _is_link(e.mode) and (link := self.link(e.id)) is not None:
                        summary.escape = max(summary.escape, link.climb)
                self.summaries[tid] = summary
                continue
            if tid in self.summaries or tid in self.where:
                continue
            self.where[tid] = (prefix, label)
            if entries is None:
                continue
            stack.append((tid, prefix, True))
            for e in entries:
                if _is_dir(e.mode) and e.id != NULL_ID:
                    if tid in self.incoming and self.tree_entries(e.id) is None:
                        if self.get(e.id) is None:
                            self.note(tid, _Finding("missingTreeObject", "the tree is missing", e.name))
                        else:
                            text = f"names {e.id.decode()}, which is not a tree"
                            self.note(tid, _Finding("wrongObjectType", text, e.name))
                        continue
                    stack.append((e.id, prefix + e.name + b"/", False))

    def walk(self, root: bytes, label: str) -> None:
        """Report the paths under `root` that are too long and the symlinks that leave the
        repository, descending only into trees whose summary says there is one."""
        self.summarise(root, label)
        where = f" (in {label})"
        stack: list[tuple[bytes, bytes, int]] = [(root, b"", 0)]
        while stack:
            tid, prefix, depth = stack.pop()
            summary = self.summaries.get(tid)
            if summary is None or (tid, prefix) in self.walked:
                continue
            self.walked.add((tid, prefix))
            if summary.escape <= depth and len(prefix) + summary.longest < self.limits.path_bytes:
                continue
            for e in self.entries.get(tid) or ():
                path = prefix + e.name
                if len(path) >= self.limits.path_bytes:
                    text = f"path is {len(path)} bytes long; the limit is {self.limits.path_bytes - 1}"
                    self.emit("pathTooLong", f"{_show(path)}: {text}{where}", tid, path)
                elif _is_dir(e.mode):
                    stack.append((e.id, path + b"/", depth + 1))
                elif _is_link(e.mode) and (link := self.link(e.id)) is not None and link.climb > depth:
                    text = f"symbolic link to {_show(link.target)} leads outside the repository"
                    self.emit("symlinkEscapes", f"{_show(path)}: {text}{where}", tid, path)

    def peel(self, oid: bytes) -> RawObject | None:
        """The object a chain of tags ends at."""
        for _ in range(16):
            obj = self.get(oid)
            if obj is None or obj.type_num != TAG:
                return obj
            target = _hex_line(obj.data, 7) if obj.data.startswith(b"object ") else None
            if target is None:
                return None
            oid = target
        return None

    def run(self, objects: Iterable[RawObject], tips: Iterable[bytes]) -> None:
        for obj in objects:
            self.check_object(obj)
        for obj in list(self.incoming.values()):
            if obj.type_num == COMMIT:
                tree = _hex_line(obj.data, 5) if obj.data.startswith(b"tree ") else None
                if tree is None:
                    continue
                if self.tree_entries(tree) is None:
                    if self.get(tree) is None:
                        self.emit("missingTreeObject", f"its tree {tree.decode()} is missing", obj.id)
                    else:
                        self.emit("wrongObjectType", f"its tree {tree.decode()} is not a tree", obj.id)
                    continue
                self.walk(tree, f"commit {obj.id[:12].decode()}")
        for oid in [o.id for o in self.incoming.values() if o.type_num == TAG] + list(tips):
            target = self.peel(oid)
            if target is not None and target.type_num == TREE:
                self.walk(target.id, f"tree {target.id[:12].decode()}")
        for obj in list(self.incoming.values()):
            if obj.type_num == TREE and obj.id not in self.where:
                self.walk(obj.id, f"tree {obj.id[:12].decode()}")
        self.flush()


def check_objects(
    objects: Iterable[RawObject | ShaFile],
    lookup: Lookup | None = None,
    *,
    tips: Iterable[bytes] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> list[Problem]:
    """Check the objects of one push; an empty list means none of them is refused.

    `objects` are the pack's objects, as `RawObject`s or dulwich `ShaFile`s. `lookup` reads the
    repository's existing objects (`store_lookup(repo.object_store)`); it is used to follow new
    commits into reused trees, so that paths and symlinks are checked where they now sit. `tips` are
    the new ref values: a ref may name a tree, which is then checked as a root too.
    Never raises on malformed objects: those are problems.
    """
    raws = [o if isinstance(o, RawObject) else RawObject.from_shafile(o) for o in objects]
    checker = _Checker(lookup or (lambda oid: None), limits, {o.id: o for o in raws})
    try:
        checker.run(raws, tips)
    except _Enough:
        pass
    return checker.problems


# --- which objects a push adds -------------------------------------------------------------------


@dataclass(frozen=True)
class NewObjects:
    """Objects reachable from the new ref values and not from the old ones."""

    ids: list[bytes]
    missing: list[bytes]  # referenced from the new objects, absent from the repository


def _header_ids(obj: RawObject, key: bytes) -> list[bytes]:
    """The ids on the `key` lines of a commit or tag header, read leniently."""
    out = []
    for line in obj.data.split(b"\n\n", 1)[0].split(b"\n"):
        name, _, value = line.partition(b" ")
        if name == key and _HEX40.fullmatch(value):
            out.append(value)
    return out


def _tree_links(obj: RawObject) -> list[bytes]:
    """A tree's entries, but submodule commits (which live in another repository)."""
    return [e.id for e in _parse_tree(obj.data)[0] if e.mode < 0 or e.mode & S_IFMT != S_IFGITLINK]


def outside_references(objects: Sequence[RawObject]) -> set[bytes]:
    """The ids `objects` refer to and do not include: what the repository must already hold."""
    ids = {obj.id for obj in objects}
    outside: set[bytes] = set()
    for obj in objects:
        if obj.type_num == COMMIT:
            links = _header_ids(obj, b"tree") + _header_ids(obj, b"parent")
        elif obj.type_num == TAG:
            links = _header_ids(obj, b"object")
        elif obj.type_num == TREE:
            links = _tree_links(obj)
        else:
            continue
        outside.update(link for link in links if link not in ids)
    return outside


def find_new_objects(lookup: Lookup, new_tips: Iterable[bytes], old_tips: Iterable[bytes]) -> NewObjects:
    """What `git rev-list --objects NEW --not OLD` lists: commits and tags reachable from
    `new_tips` and not from `old_tips`, then the trees and blobs they bring that the trees of the
    old commits they build on do not already hold. Use it when the pack has already been merged
    into the store; otherwise pass the pack's own objects to `check_objects`."""

    def get(oid: bytes) -> RawObject | None:
        return _raw(lookup(oid))

    old: set[bytes] = set()
    todo = list(old_tips)
    while todo:  # the old history: commits and tags only
        oid = todo.pop()
        if oid in old or oid == NULL_ID:
            continue
        old.add(oid)
        obj = get(oid)
        if obj is not None and obj.type_num in (COMMIT, TAG):
            todo += _header_ids(obj, b"parent" if obj.type_num == COMMIT else b"object")

    new: list[bytes] = []
    missing: list[bytes] = []
    seen: set[bytes] = set()
    boundary_trees: list[bytes] = []
    roots: list[bytes] = []
    todo = list(new_tips)
    while todo:  # new commits and tags
        oid = todo.pop()
        if oid in seen or oid == NULL_ID:
            continue
        seen.add(oid)
        obj = get(oid)
        if oid in old:
            if obj is not None and obj.type_num == COMMIT:
                boundary_trees += _header_ids(obj, b"tree")
            continue
        if obj is None:
            missing.append(oid)
        elif obj.type_num == COMMIT:
            new.append(oid)
            roots += _header_ids(obj, b"tree")
            todo += _header_ids(obj, b"parent")
        elif obj.type_num == TAG:
            new.append(oid)
            todo += _header_ids(obj, b"object")
        else:
            seen.discard(oid)
            roots.append(oid)

    known: set[bytes] = set()
    todo = boundary_trees + [oid for oid in old if (o := get(oid)) is not None and o.type_num == TREE]
    while todo:  # what the old commits at the boundary already hold
        oid = todo.pop()
        if oid not in known:
            known.add(oid)
            obj = get(oid)
            if obj is not None and obj.type_num == TREE:
                todo += _tree_links(obj)

    todo = roots[::-1]
    while todo:  # new trees and blobs
        oid = todo.pop()
        if oid in seen or oid in known or oid == NULL_ID:
            continue
        seen.add(oid)
        obj = get(oid)
        if obj is None:
            missing.append(oid)
            continue
        new.append(oid)
        if obj.type_num == TREE:
            todo += reversed(_tree_links(obj))
    return NewObjects(new, missing)
