"""The node's pool of session processes (isolated session mode) on real agent processes: the
everything agent (examples/everything) over stdio, one process per session, each initialized by
its own client; a bounded pool that refuses past its limit, ends a session's process on request
and after its idle time, and keeps a warm spare."""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import pytest
from conformanceutil import EVERYTHING

from mcpz.node import ProcessSpec
from mcpz.node.channel import JSON
from mcpz.node.sessions import PoolExhausted, SessionPool

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="needs PR_SET_PDEATHSIG"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def spec() -> ProcessSpec:
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/")}
    return ProcessSpec(argv=(sys.executable, "server.py"), cwd=EVERYTHING, env=env)


def initialize(request_id: int, sampling: bool = False) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"sampling": {}} if sampling else {}
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": capabilities,
        "clientInfo": {"name": "t", "version": "1"},
    }
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}


def tool_call(request_id: int, name: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": {}},
    }


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


async def eventually(predicate: Any, what: str, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_each_session_has_its_own_process_and_its_own_messages() -> None:
    received: list[tuple[str, JSON]] = []
    pool = SessionPool(spec(), max_processes=4, idle=300, on_message=lambda s, m: received.append((s, m)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run)
        a = await pool.open("session-a")
        b = await pool.open("session-b")
        assert a.process.pid != b.process.pid
        answer = await a.request(initialize(1))
        assert answer["result"]["serverInfo"]
        await b.request(initialize(1))
        await a.send_message({"jsonrpc": "2.0", "method": "notifications/initialized"})
        await b.send_message({"jsonrpc": "2.0", "method": "notifications/initialized"})

        result = await a.request(tool_call(2, "test_tool_with_logging"))
        assert result["result"]["content"][0]["text"] == "Tool with logging executed successfully"
        logs = [m for s, m in received if m.get("method") == "notifications/message"]
        assert len(logs) == 3 and {s for s, m in received} == {"session-a"}

        # The agent asks its own client: c's sampling request goes to c, c's answer back to its agent.
        received.clear()
        c = await pool.open("session-c")
        await c.request(initialize(1, sampling=True))
        await c.send_message({"jsonrpc": "2.0", "method": "notifications/initialized"})
        async with anyio.create_task_group() as calls:
            outcome: dict[str, Any] = {}

            async def call() -> None:
                outcome.update(await c.request(tool_call(2, "test_sampling")))

            calls.start_soon(call)
            await eventually(lambda: received, "the sampling request")
            session, request = received[0]
            assert (session, request["method"]) == ("session-c", "sampling/createMessage")
            content = {"type": "text", "text": "from c's model"}
            answer_message = {"role": "assistant", "content": content, "model": "m", "stopReason": "endTurn"}
            await c.send_message({"jsonrpc": "2.0", "id": request["id"], "result": answer_message})
        assert outcome["result"]["content"][0]["text"] == "LLM response: from c's model"
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_the_pool_is_bounded_ends_sessions_and_keeps_a_spare() -> None:
    pool = SessionPool(spec(), max_processes=2, idle=1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run)
        await eventually(lambda: pool.running == 1, "the spare")
        a = await pool.open("a")  # the spare, already started
        b = await pool.open("b")
        with pytest.raises(PoolExhausted, match="all 2 agent processes"):
            await pool.open("c")
        pid_a, pid_b = a.process.pid, b.process.pid

        pool.end("a", "the client's session ended")
        await eventually(lambda: not alive(pid_a), "a's process to end")
        assert pool.get("a") is None
        await eventually(lambda: pool.running == 2, "a spare in the freed slot")

        # b is kept busy past the idle time by nothing: unused for a second, it ends.
        await eventually(lambda: not alive(pid_b), "b's process to end after its idle time", timeout=20)
        assert pool.get("b") is None
        tg.cancel_scope.cancel()
    assert pool.running == 0


@pytest.mark.anyio
async def test_a_session_in_a_call_is_not_idle() -> None:
    pool = SessionPool(spec(), max_processes=2, idle=1.0, spare=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run)
        channel = await pool.open("a")
        process = pool.get("a")
        assert process is not None
        process.calls.add(1)  # as the relay marks a call in flight
        await channel.request(initialize(1))
        await anyio.sleep(2.5)
        assert pool.get("a") is not None and alive(channel.process.pid)
        process.calls.discard(1)
        await eventually(lambda: "a" not in pool.sessions, "the idle session to end", timeout=20)
        tg.cancel_scope.cancel()
