"""Session modes through the gateway, against a live registry, a real `mcpz node run` process and the
everything agent (examples/everything) as real agent processes.

Two registries side by side, each with one node and one replica: `isolated` runs the agent with
`[run] sessions = "isolated"` (a process per client session, at most 3 at once), `shared` with the
default (one warm process for every session). In isolated mode log messages, sampling requests,
the client's capabilities and the log level belong to one session exactly; in shared mode what
cannot be tied to one session is refused with an error that says so, and reaches no other client.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import pytest
from conformanceutil import EVERYTHING
from conftest import isolate, start_registry
from gitutil import git
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from meshutil import AGENT, FAST, Mesh, agent_pids, until

from mcpz.repo.templates import render_template

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG"),
]

MAX_SESSIONS = 3
ACCEPT_BOTH = "application/json, text/event-stream"


@dataclass
class Site:
    mesh: Mesh
    token: str

    @property
    def url(self) -> str:
        return f"{self.mesh.reg.url}/mcp/{AGENT}"


def _site(tmp: Any, policy: str) -> Mesh:
    mesh = Mesh(tmp, start_registry(tmp / "registry", **FAST))
    work = tmp / "tiny"
    work.mkdir()
    render_template("python", work, AGENT)
    shutil.copy(EVERYTHING / "server.py", work / "server.py")
    manifest = work / "mcpz.toml"
    manifest.write_text(manifest.read_text().replace("[run]\n", f"[run]\n{policy}"))
    git("init", "-q", "-b", "main", cwd=work)
    mesh.publish("1.0.0")
    mesh.node("node-0")
    return mesh


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Site]]:
    policies = {"isolated": f'sessions = "isolated"\nmax_sessions = {MAX_SESSIONS}\n', "shared": ""}
    meshes: dict[str, Mesh] = {}
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, tmp_path_factory.mktemp("home"))
        try:
            for name, policy in policies.items():
                meshes[name] = _site(tmp_path_factory.mktemp(name), policy)
            for mesh in meshes.values():
                mesh.connected(1)
                mesh.deploy("1.0.0", replicas=1)
            meshes["isolated"].settled(1, "1.0.0", processes=2)  # the warm process and the spare
            meshes["shared"].settled(1, "1.0.0")
            yield {name: Site(mesh, mesh.reg.account("caller", "read,call")) for name, mesh in meshes.items()}
        finally:
            for mesh in meshes.values():
                mesh.close()
                mesh.reg.stop()


@asynccontextmanager
async def client(site: Site, **options: Any) -> AsyncIterator[Any]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {site.token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(site.url, http_client=http), **options) as session:
            yield session


class Logs:
    """A client's logging callback: the log lines it received."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, params: Any) -> None:
        self.lines.append(str(params.data))


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def sampler(context: Any, params: Any) -> Any:
    from mcp_types import CreateMessageResult, TextContent

    prompt = params.messages[0].content.text
    return CreateMessageResult(
        role="assistant", content=TextContent(text=f"answer to {prompt}"), model="test", stop_reason="endTurn"
    )


# --- isolated -------------------------------------------------------------------------------------


def test_isolated_log_messages_reach_only_the_calling_session(sites: dict[str, Site]) -> None:
    site = sites["isolated"]

    async def run() -> None:
        mine, theirs = Logs(), Logs()
        async with client(site, logging_callback=mine) as a, client(site, logging_callback=theirs) as b:
            result = await a.call_tool("test_tool_with_logging", {})
            assert text_of(result) == "Tool with logging executed successfully"
            await b.call_tool("test_simple_text", {})  # b's streams have had every chance to get them
        assert mine.lines == ["Tool execution started", "Tool processing data", "Tool execution completed"]
        assert theirs.lines == []

    anyio.run(run)


def test_isolated_log_level_is_each_sessions_own(sites: dict[str, Site]) -> None:
    site = sites["isolated"]

    async def run() -> None:
        quiet, loud = Logs(), Logs()
        async with client(site, logging_callback=quiet) as a, client(site, logging_callback=loud) as b:
            with warnings.catch_warnings():  # logging/setLevel is deprecated in 2026-07-28, not before
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await a.set_logging_level("error")
            await a.call_tool("test_tool_with_logging", {})
            await b.call_tool("test_tool_with_logging", {})
        assert quiet.lines == []  # a's agent logs at info: below a's level
        assert len(loud.lines) == 3  # b's agent process never heard of a's level

    anyio.run(run)


def test_isolated_sampling_asks_the_calling_client_and_the_agent_sees_each_clients_capabilities(
    sites: dict[str, Site],
) -> None:
    site = sites["isolated"]

    async def run() -> None:
        async with client(site, sampling_callback=sampler) as a, client(site) as b:
            sampled = await a.call_tool("test_sampling", {"prompt": "two plus two"})
            assert text_of(sampled) == "LLM response: answer to two plus two"
            refused = await b.call_tool("test_sampling", {"prompt": "x"})  # b offered no sampling
            assert refused.is_error and "does not support sampling" in text_of(refused)

    anyio.run(run)


def test_isolated_a_full_pool_answers_initialize_with_503_and_delete_frees_a_slot(
    sites: dict[str, Site],
) -> None:
    site = sites["isolated"]
    headers = {
        "Authorization": f"Bearer {site.token}",
        "Accept": ACCEPT_BOTH,
        "Content-Type": "application/json",
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }

    def initialize(http: httpx2.Client) -> httpx2.Response:
        return http.post(site.url, content=json.dumps(body), headers=headers)

    with httpx2.Client(timeout=30) as http:
        opened = []
        for _ in range(MAX_SESSIONS):
            response = initialize(http)
            assert response.status_code == 200, response.text
            opened.append(response.headers["mcp-session-id"])
        full = initialize(http)
        assert full.status_code == 503, full.text
        assert full.headers["retry-after"]
        error = full.json()["error"]
        assert error["code"] == -32000
        assert f"all {MAX_SESSIONS} agent processes" in error["message"], error

        ended = http.delete(site.url, headers={**headers, "Mcp-Session-Id": opened.pop()})
        assert ended.status_code == 200

        # The node ends that session's process, then its slot takes a session again.
        def admitted() -> httpx2.Response | None:
            response = initialize(http)
            return response if response.status_code == 200 else None

        opened.append(until(admitted, 30, "a freed slot").headers["mcp-session-id"])
        for session_id in opened:
            assert http.delete(site.url, headers={**headers, "Mcp-Session-Id": session_id}).status_code == 200


def test_isolated_a_session_whose_process_died_gets_404_and_starts_anew(sites: dict[str, Site]) -> None:
    """Each session's process is its own: killing one fails that session alone (404: the client
    initializes again), and a new session works."""
    site = sites["isolated"]
    data = site.mesh.nodes[0].data
    headers = {
        "Authorization": f"Bearer {site.token}",
        "Accept": ACCEPT_BOTH,
        "Content-Type": "application/json",
    }
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    }
    listed = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})

    def initialize(http: httpx2.Client) -> str:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
        response = http.post(site.url, content=body, headers=headers)
        assert response.status_code == 200, response.text
        return str(response.headers["mcp-session-id"])

    with httpx2.Client(timeout=30) as http:
        # Settled: the warm process and the spare, nothing of earlier tests' sessions left.
        def settled() -> set[int] | None:
            pids = set(agent_pids(data))
            return pids if len(pids) == 2 else None

        before = until(settled, 30, "two processes")
        first = initialize(http)  # takes the spare; the node starts the next one
        spare = until(lambda: set(agent_pids(data)) - before, 30, "the next spare")
        second = initialize(http)  # takes that one
        (pid,) = spare
        os.kill(pid, signal.SIGKILL)
        until(lambda: pid not in agent_pids(data), 30, "the killed process gone")
        gone = http.post(site.url, content=listed, headers={**headers, "Mcp-Session-Id": second})
        assert gone.status_code == 404, gone.text
        assert gone.json()["error"]["message"].endswith(": initialize again"), gone.text
        kept = http.post(site.url, content=listed, headers={**headers, "Mcp-Session-Id": first})
        assert kept.status_code == 200 and "test_simple_text" in kept.text
        third = initialize(http)
        works = http.post(site.url, content=listed, headers={**headers, "Mcp-Session-Id": third})
        assert works.status_code == 200 and "test_simple_text" in works.text
        for session_id in (first, third):
            http.delete(site.url, headers={**headers, "Mcp-Session-Id": session_id})


# --- shared ---------------------------------------------------------------------------------------


def test_shared_what_cannot_be_tied_to_a_session_is_refused_and_reaches_no_other_client(
    sites: dict[str, Site],
) -> None:
    """On the shared process an elicitation request is answered by the node with an error naming
    why (the tool fails with it), never put before some client; log lines go to no session."""
    site = sites["shared"]

    async def run() -> None:
        asked: list[Any] = []

        async def elicitor(context: Any, params: Any) -> Any:
            asked.append(params)
            raise AssertionError("no elicitation may reach a client through a shared process")

        mine, theirs = Logs(), Logs()
        async with (
            client(site, logging_callback=mine, elicitation_callback=elicitor) as a,
            client(site, logging_callback=theirs, elicitation_callback=elicitor) as b,
        ):
            with pytest.raises(MCPError, match=r"elicitation/create cannot reach a client: .* shared"):
                await a.call_tool("test_elicitation", {"message": "your name?"})
            logged = await a.call_tool("test_tool_with_logging", {})
            assert text_of(logged) == "Tool with logging executed successfully"
            await b.call_tool("test_simple_text", {})
        assert asked == []
        assert mine.lines == [] and theirs.lines == []

    anyio.run(run)
