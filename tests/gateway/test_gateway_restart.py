"""Exactly one usage event per call the gateway answered, across registry restarts.

The registry runs as its own process (`mcpz registry serve`) with usage flushed to the database
only every hour (`MCPZ_REGISTRY_USAGE_FLUSH_INTERVAL=3600`), so the events of the calls it answers
live only in its journal until it stops or someone asks for usage. A real node process runs the
agent. The registry is then killed (SIGKILL) or stopped (SIGTERM) with calls in flight, started
again on the same data folder and port, and the events are counted through `GET /v1/usage`.

Each call's request body has a size of its own, so an event (whose `bytes_in` is the size of the
request it metered) names the call it belongs to.
"""

from __future__ import annotations

import json
import secrets
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from conftest import isolate
from mcputil import INITIALIZE, mcp_headers, padded_call
from meshutil import AGENT, Mesh
from registryproc import RegistryProcess, start_restartable

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG")

AGENT_SERVER = '''"""An agent for the gateway's restart tests: echo, and a slow tool."""

import time
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("acme/tiny", version="1.0.0")


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.tool()
async def slow(seconds: float, marker: str) -> str:
    """Leave `marker`.started, then sleep."""
    Path(marker + ".started").write_text(str(time.time()))
    await anyio.sleep(seconds)
    return "slept"


if __name__ == "__main__":
    mcp.run()
'''

REGISTRY_ENV = {
    "MCPZ_REGISTRY_USAGE_FLUSH_INTERVAL": "3600",
    "MCPZ_REGISTRY_HEARTBEAT_INTERVAL": "0.3",
    "MCPZ_REGISTRY_HEARTBEAT_GRACE": "2",
    "MCPZ_REGISTRY_RESYNC_INTERVAL": "1",
}


@dataclass
class Stack:
    """The registry process, a node process running one replica of AGENT, and its tokens."""

    registry: RegistryProcess
    mesh: Mesh
    markers: Path

    @property
    def endpoint(self) -> str:
        return f"{self.registry.url}/mcp/{AGENT}"

    def caller(self) -> tuple[str, str]:
        """(account name, token) of a new account: each test counts only its own calls.

        The registry runs again first if a test before this one stopped it and failed."""
        if self.registry.proc is None or self.registry.proc.poll() is not None:
            self.restart()
        name = f"caller-{secrets.token_hex(4)}"
        return name, self.mesh.reg.account(name, "read,call")

    def restart(self) -> None:
        """Start the registry again; wait until the node reconnected and the replica runs."""
        self.registry.start()
        self.mesh.connected(1)
        self.mesh.settled(1, "1.0.0", timeout=90)

    def usage(self, token: str) -> list[dict[str, Any]]:
        with httpx2.Client(base_url=self.registry.url, headers={"Authorization": f"Bearer {token}"}) as http:
            response = http.get("/v1/usage", params={"events": 1000}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["events"]  # type: ignore[no-any-return]

    def journaled(self, account: str) -> list[dict[str, Any]]:
        """The events of `account` in the registry's usage journal (not yet in the database)."""
        from registry_server.accounts import service as accounts
        from registry_server.db import Database

        db = Database(self.mesh.reg.database_url)
        try:
            with db.session() as session:
                account_id = accounts.account_by_name(session, account).id
        finally:
            db.dispose()
        found = []
        for path in (self.registry.data_dir / "usage").glob("journal*"):
            for line in path.read_bytes().splitlines():
                event = json.loads(line)
                if event["account_id"] == account_id:
                    found.append(event)
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("restart")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, tmp_path_factory.mktemp("home"))
        registry, reg = start_restartable(tmp, REGISTRY_ENV)
        mesh = Mesh(tmp, reg)
        try:
            mesh.write_agent(AGENT_SERVER)
            mesh.serve_one("1.0.0")
            markers = tmp / "markers"
            markers.mkdir()
            yield Stack(registry, mesh, markers)
        finally:
            mesh.close()
            registry.stop()


# --- calls whose size names them ------------------------------------------------------------------


@dataclass
class Calls:
    """Calls made through the gateway, by the size of their request body."""

    token: str
    endpoint: str
    next_size: int = 0  # the size of the next request body, at least
    sent: set[int] = field(default_factory=set)  # every request body size sent
    answered: dict[int, dict[str, Any]] = field(default_factory=dict)  # size -> JSON-RPC response
    errors: list[str] = field(default_factory=list)  # answers other than 200: status and body
    failed: list[str] = field(default_factory=list)  # transport errors (the registry went away)

    def problems(self) -> str:
        return f"{len(self.answered)} answered, refused: {self.errors}, transport errors: {self.failed}"

    async def session(self, http: httpx2.AsyncClient) -> str:
        response = await http.post(self.endpoint, json=INITIALIZE, headers=mcp_headers(self.token))
        assert response.status_code == 200, response.text
        return str(response.headers["mcp-session-id"])

    def body(self, tool: str, arguments: dict[str, Any]) -> bytes:
        """A tools/call whose body is longer than any before it (its id is padded to that end)."""
        body = padded_call(tool, arguments, self.next_size)
        self.next_size = len(body) + 1
        return body

    async def call(
        self, http: httpx2.AsyncClient, session_id: str, tool: str, arguments: dict[str, Any]
    ) -> bool:
        """One call; True if the gateway answered it with a JSON-RPC response."""
        body = self.body(tool, arguments)
        self.sent.add(len(body))
        try:
            response = await http.post(
                self.endpoint, content=body, headers=mcp_headers(self.token, session_id)
            )
        except httpx2.HTTPError as e:
            self.failed.append(repr(e))
            return False
        if response.status_code != 200:
            self.errors.append(f"{response.status_code} {response.text[:300]}")
            return False
        self.answered[len(body)] = response.json()
        return True

    async def echo_loop(self, session_id: str, count: int | None, stop: anyio.Event | None = None) -> None:
        """`count` echo calls on one session (or until one is not answered, or `stop` is set)."""
        async with httpx2.AsyncClient(timeout=60) as http:
            done = 0
            while count is None or done < count:
                if stop is not None and stop.is_set():
                    return
                if not await self.call(http, session_id, "echo", {"text": "hi"}):
                    return
                done += 1

    async def sessions(self, count: int) -> list[str]:
        async with httpx2.AsyncClient(timeout=60) as http:
            return [await self.session(http) for _ in range(count)]


def check_events(calls: Calls, events: list[dict[str, Any]]) -> Counter[str]:
    """Exactly one event per answered call, none twice, none for a call never sent; their outcomes."""
    assert len({e["id"] for e in events}) == len(events), "an event id is there twice"
    sizes = Counter(e["bytes_in"] for e in events)
    twice = {size: n for size, n in sizes.items() if n > 1}
    assert not twice, f"calls metered more than once: {twice}"
    assert set(sizes) <= calls.sent, f"events of calls never sent: {set(sizes) - calls.sent}"
    missing = set(calls.answered) - set(sizes)
    assert not missing, f"{len(missing)} answered calls have no usage event"
    return Counter(e["outcome"] for e in events)


# --- the tests ------------------------------------------------------------------------------------


def test_sigkill_loses_no_usage_event_of_an_answered_call_and_the_restart_counts_none_twice(
    stack: Stack,
) -> None:
    account, token = stack.caller()
    calls = Calls(token, stack.endpoint)
    before, after, workers = 24, 10, 4
    markers = [stack.markers / f"killed-{i}" for i in range(2)]

    async def before_kill() -> None:
        session_ids = await calls.sessions(workers + len(markers))
        async with anyio.create_task_group() as tg:
            for i in range(workers):
                tg.start_soon(calls.echo_loop, session_ids[i], before // workers)
        assert len(calls.answered) == before, calls.problems()
        # Two slow calls are in the agent when the registry dies: never answered, never metered.
        async with httpx2.AsyncClient(timeout=60) as http, anyio.create_task_group() as tg:
            for marker, session_id in zip(markers, session_ids[workers:], strict=True):
                tg.start_soon(calls.call, http, session_id, "slow", {"seconds": 30, "marker": str(marker)})
            await _started(markers, calls)
            # The answered calls' events are journaled, and only journaled (flushed hourly).
            assert len(stack.journaled(account)) == before
            stack.registry.kill()

    anyio.run(before_kill)
    assert len(calls.answered) == before
    assert len(calls.failed) == len(markers)  # the slow calls lost their connection
    assert all("result" in r for r in calls.answered.values())

    stack.restart()

    async def after_restart() -> None:
        session_ids = await calls.sessions(2)
        async with anyio.create_task_group() as tg:
            for session_id in session_ids:
                tg.start_soon(calls.echo_loop, session_id, after // 2)

    anyio.run(after_restart)
    assert len(calls.answered) == before + after
    events = stack.usage(token)
    outcomes = check_events(calls, events)
    assert len(events) == before + after
    assert outcomes == Counter({"ok": before + after})
    assert not (stack.registry.data_dir / "usage" / "conflicts.jsonl").exists()


def test_a_graceful_stop_with_calls_in_flight_meters_each_answered_call_once(stack: Stack) -> None:
    _account, token = stack.caller()
    calls = Calls(token, stack.endpoint)
    workers = 6
    markers = [stack.markers / f"stopped-{i}" for i in range(2)]
    answered_before_stop = 30

    async def during_stop() -> None:
        session_ids = await calls.sessions(workers + len(markers))
        stop = anyio.Event()
        async with httpx2.AsyncClient(timeout=60) as slow_http, anyio.create_task_group() as tg:
            for marker, session_id in zip(markers, session_ids[workers:], strict=True):
                tg.start_soon(
                    calls.call, slow_http, session_id, "slow", {"seconds": 4, "marker": str(marker)}
                )
            for session_id in session_ids[:workers]:
                tg.start_soon(calls.echo_loop, session_id, None, stop)
            with anyio.fail_after(30):
                while len(calls.answered) < answered_before_stop or not all(
                    Path(f"{m}.started").exists() for m in markers
                ):
                    await anyio.sleep(0.01)
            stack.registry.interrupt(signal.SIGTERM)
            # The echo loops run on until their calls are refused; the slow calls end somehow.
            # Bounded: uvicorn waits for open requests, and the agent's slow calls take 4 s.
            with anyio.fail_after(60):
                while stack.registry.proc is not None and stack.registry.proc.poll() is None:
                    await anyio.sleep(0.05)
            stop.set()

    anyio.run(during_stop)
    # uvicorn re-raises the signal once it has shut down cleanly: "killed by SIGTERM" is its clean exit.
    assert stack.registry.wait(5) in (0, -signal.SIGTERM), stack.registry.tail()
    assert len(calls.answered) >= answered_before_stop

    stack.restart()
    events = stack.usage(token)
    outcomes = check_events(calls, events)
    # An answered call's event says how it ended; a call whose answer was lost may have one too.
    assert len(calls.answered) <= len(events) <= len(calls.sent)
    assert outcomes["ok"] >= answered_before_stop
    assert set(outcomes) <= {"ok", "shutdown", "replica-lost", "cancelled"}, outcomes
    for event in events:
        response = calls.answered.get(event["bytes_in"])
        if response is not None and "result" in response and not response["result"].get("isError"):
            assert event["outcome"] == "ok", event


def test_calls_in_flight_at_a_graceful_stop_are_answered_and_metered_as_shutdown(stack: Stack) -> None:
    """The gateway's contract (`Gateway.stop`): calls in flight when the registry stops end with
    outcome "shutdown", and their callers are told the registry is shutting down."""
    _account, token = stack.caller()
    calls = Calls(token, stack.endpoint)
    markers = [stack.markers / f"shutdown-{i}" for i in range(2)]

    async def during_stop() -> None:
        session_ids = await calls.sessions(len(markers))
        with anyio.fail_after(60):  # the answers come at the stop, not when the tool would end
            async with httpx2.AsyncClient(timeout=90) as http, anyio.create_task_group() as tg:
                for marker, session_id in zip(markers, session_ids, strict=True):
                    arguments = {"seconds": 30, "marker": str(marker)}
                    tg.start_soon(calls.call, http, session_id, "slow", arguments)
                await _started(markers, calls)
                stack.registry.interrupt(signal.SIGTERM)

    anyio.run(during_stop)
    assert stack.registry.wait(30) in (0, -signal.SIGTERM), stack.registry.tail()
    assert len(calls.answered) == len(markers), calls.problems()
    stack.restart()
    events = stack.usage(token)
    check_events(calls, events)
    answers = [r["error"]["message"] for r in calls.answered.values()]
    outcomes = [e["outcome"] for e in events]
    assert outcomes == ["shutdown"] * len(markers), (outcomes, answers)
    assert all("shutting down" in message for message in answers), answers


async def _started(markers: list[Path], calls: Calls, timeout: float = 20) -> None:
    """Wait until the agent began the slow calls leaving `markers`."""
    answered = len(calls.answered)
    with anyio.fail_after(timeout):
        while not all(Path(f"{m}.started").exists() for m in markers):
            assert len(calls.answered) == answered and not calls.errors, calls.problems()
            await anyio.sleep(0.02)
