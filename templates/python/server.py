"""{{name}}: an MCP server over stdio, written with the official `mcp` SDK.

Each function decorated with `@mcp.tool()` becomes a tool: its name, its docstring (the
description a model reads) and its type hints (the input schema) are all it takes.

    mcpz tools --local .                   # list the tools
    mcpz call --local . add a=2 b=3        # call one
    mcpz run .                             # serve MCP on stdin/stdout
"""

# Import only what the server needs: an agent is started for each local call, so its
# start-up time is the floor of every call's latency.
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

mcp = MCPServer("{{name}}", version="{{version}}")


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged: the smallest possible tool."""
    return text


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool()
def divide(a: float, b: float) -> float:
    """Divide a by b. Shows how a tool reports a failure to its caller."""
    if b == 0:
        # A ToolError reaches the caller as a tool error carrying this message.
        raise ToolError("cannot divide by zero")
    return a / b


if __name__ == "__main__":
    mcp.run()  # stdio: JSON-RPC on stdin/stdout, logs on stderr
