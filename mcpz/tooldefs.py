"""An agent's tool definitions (its `tools/list` answer) in one canonical form, and their digest.

The digest pins what a release's tools were when it was published: it goes into the signed release
statement, a node compares a running replica's answer against it, and the marketplace shows the
tools and their changes between versions. Pure: dicts in, bytes or text out.

Only the fields that say what a tool does and takes are kept (`name`, `description`, `inputSchema`,
`outputSchema`, `annotations`, `title`); the list is sorted by name and serialised as compact JSON
with sorted keys, so two agents answering the same tools in another order or with other extra
fields have the same digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

KEPT_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
MAX_TOOLS = 512
MAX_CANONICAL_BYTES = 1 << 20


class ToolDefinitionsError(ValueError):
    """Tool definitions that cannot be pinned: not a list of named tools, or too large."""


def canonical_tools(tools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tools with only the kept fields (absent and null fields dropped), sorted by name."""
    result: list[dict[str, Any]] = []
    names: set[str] = set()
    for tool in tools:
        name = tool.get("name") if isinstance(tool, Mapping) else None
        if not isinstance(name, str) or not name:
            raise ToolDefinitionsError("every tool needs a non-empty string `name`")
        if name in names:
            raise ToolDefinitionsError(f"tool {name!r} is listed twice")
        names.add(name)
        result.append({key: tool[key] for key in KEPT_FIELDS if tool.get(key) is not None})
        if len(result) > MAX_TOOLS:
            raise ToolDefinitionsError(f"more than {MAX_TOOLS} tools")
    result.sort(key=lambda tool: str(tool["name"]))
    return result


def definition_of(tool: Any) -> dict[str, Any]:
    """One tool of the `mcp` SDK's `tools/list` result (a pydantic `Tool`) as its JSON object: what
    the publisher pins and what a node compares are both made by this one function."""
    return dict(tool.model_dump(mode="json", by_alias=True, exclude_none=True))


def changes(pinned: Iterable[Mapping[str, Any]], now: Iterable[Mapping[str, Any]]) -> str:
    """A short description of what differs between two tool sets, for people: tools added,
    removed and changed, by name ("" when their canonical forms are the same)."""
    before = {str(t["name"]): t for t in canonical_tools(pinned)}
    after = {str(t["name"]): t for t in canonical_tools(now)}
    parts = []
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(n for n in before.keys() & after.keys() if before[n] != after[n])
    for word, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"{word} {shown}")
    return "; ".join(parts)


def canonical_bytes(tools: Iterable[Mapping[str, Any]]) -> bytes:
    data = json.dumps(
        canonical_tools(tools), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    if len(data) > MAX_CANONICAL_BYTES:
        raise ToolDefinitionsError(f"tool definitions exceed {MAX_CANONICAL_BYTES} bytes")
    return data


def tools_digest(tools: Iterable[Mapping[str, Any]]) -> str:
    """`sha256:` and the hex SHA-256 of the canonical JSON."""
    return "sha256:" + hashlib.sha256(canonical_bytes(tools)).hexdigest()
