"""The relay that nodes and `mcpz connect` run: a hostile call frame gets an error result, and the
relay goes on serving (its JSON is parsed with a depth bound, never by a recursing parser alone)."""

from __future__ import annotations

import itertools
import json

import anyio
import pytest

from mcpz.mesh import Call, Frame, Notify, Result
from mcpz.node.relay import INVALID_REQUEST, CallRelay

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_deeply_nested_calls_and_notifications_are_refused_and_the_relay_serves_on() -> None:
    sent: list[Frame] = []

    async def send(frame: Frame) -> None:
        sent.append(frame)

    relay = CallRelay(lambda replica_id, epoch: None)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.serve, send, itertools.count(1).__next__)
            await anyio.wait_all_tasks_blocked()
            deep = b"[" * 100_000 + b"]" * 100_000
            relay.notify(Notify(id=1, replica_id="r-1", epoch=1, payload=deep))
            relay.call(Call(id=2, call_id=7, replica_id="r-1", epoch=1, payload=deep))
            ping = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping"}).encode()
            relay.call(Call(id=3, call_id=8, replica_id="r-1", epoch=1, payload=ping))
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    results = {f.call_id: json.loads(f.payload) for f in sent if isinstance(f, Result)}
    assert results[7]["error"]["code"] == INVALID_REQUEST
    assert results[8]["error"]["data"]["reason"] == "agent-exited"  # served: no such replica here
