"""{{name}}: a plugin, code that agents declare in [dependencies] and import as `{{module}}`.

A plugin is not run on its own (its mcpz.toml has no [run]). It offers plain functions, and
optionally tools that an agent adds to its own server with `register`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for type checkers: importing a plugin stays cheap
    from mcp.server.mcpserver import MCPServer

__version__ = "{{version}}"


def greet(name: str) -> str:
    """Greet someone by name. Replace this with the code your agents share."""
    return f"Hello, {name}!"


def register(server: MCPServer) -> None:
    """Add this plugin's tools to an agent's server: `{{module}}.register(mcp)`."""
    server.add_tool(greet)
