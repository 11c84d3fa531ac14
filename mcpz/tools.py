"""What an MCP agent's tools and their results look like to mcpz, wherever the agent runs (on this
machine over stdio, `mcpz.local`; deployed, through the gateway, `mcpz.client.gateway`). Pure: no MCP
client library is imported here, so the fast remote path does not pay for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mcpz.errors import AgentError, UsageError

if TYPE_CHECKING:
    from mcp.types import CallToolResult, Tool

__all__ = ["ToolInfo", "ToolResult", "find_tool", "tool_failed"]


@dataclass(frozen=True)
class ToolInfo:
    """One tool an agent offers, as its `tools/list` describes it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    title: str | None = None
    # The whole `tools/list` entry as JSON (annotations included): what `mcpz push` pins.
    definition: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_mcp(cls, tool: Tool) -> ToolInfo:
        from mcpz.tooldefs import definition_of

        return cls(
            name=tool.name,
            description=tool.description or "",
            input_schema=dict(tool.input_schema),
            output_schema=dict(tool.output_schema) if tool.output_schema is not None else None,
            title=tool.title,
            definition=definition_of(tool),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["definition"]
        return data


@dataclass(frozen=True)
class ToolResult:
    """What a `tools/call` returned: content blocks, structured content, and the error flag."""

    tool: str
    content: tuple[dict[str, Any], ...]
    structured_content: dict[str, Any] | None = None
    is_error: bool = False
    # The result object exactly as a registry's gateway returned it (None from a local agent): what a
    # paid call's signed receipt covers, kept so `mcpz billing verify-receipt` can check it.
    result: dict[str, Any] | None = None

    @classmethod
    def from_mcp(cls, tool: str, result: CallToolResult) -> ToolResult:
        return cls(
            tool=tool,
            content=tuple(
                block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content
            ),
            structured_content=result.structured_content,
            is_error=bool(result.is_error),
        )

    @property
    def text(self) -> str:
        """The text content blocks, one per line."""
        return "\n".join(block["text"] for block in self.content if block.get("type") == "text")

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "is_error": self.is_error,
            "text": self.text,
            "content": list(self.content),
            "structured_content": self.structured_content,
            **({"result": self.result} if self.result is not None else {}),
        }


def find_tool(tools: Mapping[str, ToolInfo], name: str, agent: str, list_command: str) -> ToolInfo:
    """The tool called `name`; UsageError, naming the closest match, when there is none."""
    if name in tools:
        return tools[name]
    import difflib

    close = difflib.get_close_matches(name, list(tools), n=1)
    message = f'{agent} has no tool "{name}"'
    if close:
        message += f'; did you mean "{close[0]}"?'
    raise UsageError(message, hint=f"list its tools with: {list_command}")


def tool_failed(agent: str, tool: str, result: ToolResult) -> AgentError:
    """The error for a call whose tool reported a failure (`mcpz call` exits non-zero on it)."""
    detail = " ".join(result.text.split()) or "no message"
    # The Python SDK words every tool error this way; the prefix says nothing new here.
    detail = detail.removeprefix(f"Error executing tool {tool}: ")
    return AgentError(f'{agent}: tool "{tool}" failed: {detail}')
