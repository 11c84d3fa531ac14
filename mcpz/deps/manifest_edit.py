"""Editing `mcpz.toml` in place: one dependency set or removed, comments and layout kept.

`edit_dependency` changes only the line of that dependency (or adds one, in sorted position when
the table is sorted), then parses the result: when it is not exactly the intended manifest (an
unusual layout, such as dotted keys or an inline table), the file is written afresh from the
parsed manifest instead, and the caller is told. `write_atomic` writes through a temporary file
and a rename, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import re

from mcpz.errors import UsageError
from mcpz.manifest import Manifest, parse_manifest

_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_KEY = re.compile(r"""^(\s*)("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*=\s*(.*)$""")
_VALUE = re.compile(r"""^("(?:[^"\\]|\\.)*"|'[^']*')(\s*#.*)?\s*$""")


def _basic(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key_text(raw: str) -> str:
    if raw.startswith('"'):
        try:
            return str(json.loads(raw))
        except ValueError:
            return raw
    if raw.startswith("'"):
        return raw[1:-1]
    return raw


def _edit_text(text: str, name: str, specifier: str | None) -> str:
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    start = next(
        (i for i, line in enumerate(lines) if (m := _HEADER.match(line)) and m.group(1) == "dependencies"),
        None,
    )
    entry = f"{_basic(name)} = {_basic(specifier)}{newline}" if specifier is not None else ""
    if start is None:
        if specifier is None:
            return text
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += newline
        if lines and lines[-1].strip():
            lines.append(newline)
        return "".join([*lines, f"[dependencies]{newline}", entry])
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    keys: list[tuple[int, str]] = []
    for i in range(start + 1, end):
        match = _KEY.match(lines[i].rstrip("\r\n"))
        if match:
            keys.append((i, _key_text(match.group(2))))
    found = next((i for i, key in keys if key == name), None)
    if found is not None:
        match = _KEY.match(lines[found].rstrip("\r\n"))
        assert match is not None
        if specifier is None:
            del lines[found]
            remaining = [ln for ln in lines[start + 1 : end - 1] if ln.strip()]
            if not remaining:
                # The table is empty now: drop its header, and a blank line before it.
                del lines[start]
                if start > 0 and not lines[start - 1].strip():
                    del lines[start - 1]
            return "".join(lines)
        value = _VALUE.match(match.group(3))
        comment = (value.group(2) or "") if value else ""
        lines[found] = f"{match.group(1)}{_basic(name)} = {_basic(specifier)}{comment}{newline}"
        return "".join(lines)
    if specifier is None:
        return text
    names = [key for _, key in keys]
    if keys and names == sorted(names):
        position = next((i for i, key in keys if key > name), keys[-1][0] + 1)
    elif keys:
        position = keys[-1][0] + 1
    else:
        position = start + 1
    if position > 0 and not lines[position - 1].endswith(("\n", "\r")):
        lines[position - 1] += newline
    lines.insert(position, entry)
    return "".join(lines)


def edit_dependency(text: str, manifest: Manifest, name: str, specifier: str | None) -> tuple[str, bool]:
    """mcpz.toml's text with `name` set to `specifier` (removed when None) in [dependencies].

    The edit is made in place, so comments, order and layout survive; it is checked by parsing
    the result, and when that does not give exactly the intended manifest (an unusual layout,
    such as dotted keys), the whole file is written afresh instead: (text, False)."""
    dependencies = dict(manifest.dependencies)
    if specifier is None:
        dependencies.pop(name, None)
    else:
        dependencies[name] = specifier
    wanted = manifest.with_dependencies(dependencies)
    try:
        edited = _edit_text(text, name, specifier)
        if parse_manifest(edited) == wanted:
            return edited, True
    except UsageError:
        pass
    return wanted.to_toml(), False
