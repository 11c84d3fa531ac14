"""What changed in an agent's tools between two versions: tools added, removed and changed, and
for a changed tool which of its fields and which input/output properties. Pure: the canonical
tool lists of `mcpz.tooldefs` in, dataclasses out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FIELDS = ("title", "description", "inputSchema", "outputSchema", "annotations")


@dataclass(frozen=True)
class ToolChange:
    tool: str
    fields: list[str]
    """Which of FIELDS differ."""
    inputs_added: list[str] = field(default_factory=list)
    inputs_removed: list[str] = field(default_factory=list)
    required_added: list[str] = field(default_factory=list)
    required_removed: list[str] = field(default_factory=list)

    @property
    def breaking(self) -> bool:
        """A caller of the old version may fail: an input went away or became required."""
        return bool(self.inputs_removed or self.required_added)


@dataclass(frozen=True)
class Changelog:
    older: str
    newer: str
    added: list[str]
    removed: list[str]
    changed: list[ToolChange]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    @property
    def breaking(self) -> bool:
        return bool(self.removed) or any(change.breaking for change in self.changed)


def _properties(schema: Any) -> set[str]:
    if isinstance(schema, Mapping) and isinstance(schema.get("properties"), Mapping):
        return {str(key) for key in schema["properties"]}
    return set()


def _required(schema: Any) -> set[str]:
    if isinstance(schema, Mapping) and isinstance(schema.get("required"), list):
        return {str(key) for key in schema["required"]}
    return set()


def tool_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> ToolChange | None:
    """How one tool changed, or None if it did not."""
    fields = [key for key in FIELDS if old.get(key) != new.get(key)]
    if not fields:
        return None
    before, after = old.get("inputSchema"), new.get("inputSchema")
    return ToolChange(
        tool=str(new["name"]),
        fields=fields,
        inputs_added=sorted(_properties(after) - _properties(before)),
        inputs_removed=sorted(_properties(before) - _properties(after)),
        required_added=sorted(_required(after) - _required(before)),
        required_removed=sorted(_required(before) - _required(after)),
    )


def changelog(
    older: str, old_tools: Sequence[Mapping[str, Any]], newer: str, new_tools: Sequence[Mapping[str, Any]]
) -> Changelog:
    old = {str(tool["name"]): tool for tool in old_tools}
    new = {str(tool["name"]): tool for tool in new_tools}
    changed = [
        change for name in sorted(old.keys() & new.keys()) if (change := tool_change(old[name], new[name]))
    ]
    return Changelog(
        older=older,
        newer=newer,
        added=sorted(new.keys() - old.keys()),
        removed=sorted(old.keys() - new.keys()),
        changed=changed,
    )
