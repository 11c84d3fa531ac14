"""MCP over the gateway's streamable HTTP, as the tests that drive it by hand speak it: the headers,
the initialize request, a tools/call padded to a size (to tell each call's traffic apart)."""

from __future__ import annotations

import json
from typing import Any

INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}},
}


def mcp_headers(token: str, session: str = "") -> dict[str, str]:
    """A JSON-RPC POST's headers with `token`, in `session` when one is given."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    if session:
        headers["Mcp-Session-Id"] = session
    return headers


def padded_call(tool: str, arguments: dict[str, Any], size: int) -> bytes:
    """A tools/call of at least `size` bytes (its id padded to that end): with each call one byte
    longer than the last, a body's length names its call in logs and journals."""
    params = {"name": tool, "arguments": arguments}
    base = len(json.dumps({"jsonrpc": "2.0", "id": "", "method": "tools/call", "params": params}))
    body = json.dumps(
        {"jsonrpc": "2.0", "id": "c" * max(1, size - base), "method": "tools/call", "params": params}
    )
    assert len(body) >= size
    return body.encode()
