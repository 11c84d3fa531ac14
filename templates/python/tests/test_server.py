"""The agent's own tests: the official client talks to the server in-process (no subprocess).

Run them with: python -m pytest tests
"""

import pytest
from mcp import Client

from server import mcp

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_lists_its_tools() -> None:
    async with Client(mcp) as client:
        tools = await client.list_tools()
    assert {tool.name for tool in tools.tools} == {"echo", "add", "divide"}


async def test_add() -> None:
    async with Client(mcp) as client:
        result = await client.call_tool("add", {"a": 2, "b": 3})
    assert not result.is_error
    assert result.structured_content == {"result": 5}


async def test_divide_by_zero_is_a_tool_error() -> None:
    async with Client(mcp) as client:
        result = await client.call_tool("divide", {"a": 1, "b": 0})
    assert result.is_error
    assert "cannot divide by zero" in result.content[0].text
