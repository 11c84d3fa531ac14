"""The gateway end to end: the official `mcp` client over Streamable HTTP, a live registry, real
`mcpz node run` processes, real agent processes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import pytest
from meshutil import AGENT, Mesh, until

if TYPE_CHECKING:
    from registry_server.gateway.asgi import Gateway

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG")


def deployed(mesh: Mesh, replicas: int = 1, nodes: int = 1) -> str:
    """AGENT published, deployed and running; a token with scope `call`."""
    mesh.publish("1.0.0")
    for i in range(nodes):
        mesh.node(f"node-{i}")
    mesh.connected(nodes)
    mesh.deploy("1.0.0", replicas=replicas)
    mesh.settled(replicas, "1.0.0")
    return mesh.reg.account("caller", "read,call")


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One replica of AGENT on one node, shared by the tests that leave it as they found it."""
    from conftest import start_registry
    from meshutil import FAST

    tmp = tmp_path_factory.mktemp("gateway")
    mesh = Mesh(tmp, start_registry(tmp / "registry", **FAST))
    try:
        deployed(mesh)
        yield mesh
    finally:
        mesh.close()
        mesh.reg.stop()


def caller(mesh: Mesh, scopes: str = "read,call") -> str:
    """A token of a new account: each test counts only its own calls."""
    return mesh.reg.account(f"caller-{secrets.token_hex(4)}", scopes)


@asynccontextmanager
async def mcp_client(url: str, token: str) -> AsyncIterator[Any]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


def endpoint(mesh: Mesh) -> str:
    return f"{mesh.reg.url}/mcp/{AGENT}"


def test_the_official_mcp_client_lists_tools_and_calls_one_through_the_gateway(one: Mesh) -> None:
    mesh = one
    token = caller(mesh)

    async def main() -> tuple[list[str], Any, Any]:
        async with mcp_client(endpoint(mesh), token) as client:
            tools = await client.list_tools()
            added = await client.call_tool("add", {"a": 2, "b": 3})
            failed = await client.call_tool("divide", {"a": 1, "b": 0})
            return [t.name for t in tools.tools], added, failed

    names, added, failed = anyio.run(main)
    assert {"echo", "add", "divide"} <= set(names)
    assert not added.is_error and added.content[0].text == "5"
    assert failed.is_error and "cannot divide by zero" in failed.content[0].text


def test_many_concurrent_sessions_on_one_replica_each_get_their_own_answers(one: Mesh) -> None:
    mesh = one
    token = caller(mesh)

    async def session(i: int, answers: dict[int, list[str]]) -> None:
        async with mcp_client(endpoint(mesh), token) as client:
            got = []
            for j in range(5):
                result = await client.call_tool("echo", {"text": f"{i}-{j}"})
                got.append(result.content[0].text)
            answers[i] = got

    async def main() -> dict[int, list[str]]:
        answers: dict[int, list[str]] = {}
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(session, i, answers)
        return answers

    answers = anyio.run(main)
    assert answers == {i: [f"{i}-{j}" for j in range(5)] for i in range(12)}
    assert sum(mesh.running_processes().values()) == 1  # one warm agent served every session


def test_auth_scope_and_origin_are_checked(one: Mesh) -> None:
    mesh = one
    token = caller(mesh)
    no_call = caller(mesh, "read")
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    with httpx2.Client(timeout=30) as http:
        anonymous = http.post(endpoint(mesh), json=init, headers=accept)
        assert anonymous.status_code == 401
        assert "authentication required" in anonymous.json()["error"]["message"]
        assert anonymous.headers["www-authenticate"].startswith("Bearer")

        lacking = http.post(
            endpoint(mesh), json=init, headers={**accept, "Authorization": f"Bearer {no_call}"}
        )
        assert lacking.status_code == 403
        assert '"call" scope' in lacking.json()["error"]["message"]

        auth = {**accept, "Authorization": f"Bearer {token}"}
        evil = http.post(endpoint(mesh), json=init, headers={**auth, "Origin": "https://evil.example"})
        assert evil.status_code == 403
        assert "origin" in evil.json()["error"]["message"]

        own = http.post(endpoint(mesh), json=init, headers={**auth, "Origin": mesh.reg.url})
        assert own.status_code == 200, own.text
        session = own.headers["mcp-session-id"]
        assert own.json()["result"]["serverInfo"]

        # The session belongs to its account: another account's token cannot use it.
        other = caller(mesh, "call")
        listed = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        stolen = http.post(
            endpoint(mesh),
            json=listed,
            headers={**accept, "Authorization": f"Bearer {other}", "Mcp-Session-Id": session},
        )
        assert stolen.status_code == 404
        mine = http.post(endpoint(mesh), json=listed, headers={**auth, "Mcp-Session-Id": session})
        assert mine.status_code == 200 and mine.json()["result"]["tools"]

        # Without a session id, and after DELETE, requests are refused as the transport says.
        assert http.post(endpoint(mesh), json=listed, headers=auth).status_code == 400
        assert http.delete(endpoint(mesh), headers={**auth, "Mcp-Session-Id": session}).status_code == 200
        gone = http.post(endpoint(mesh), json=listed, headers={**auth, "Mcp-Session-Id": session})
        assert gone.status_code == 404


def test_no_deployment_and_no_healthy_replica_are_clear_json_rpc_errors(one: Mesh) -> None:
    mesh = one
    token = caller(mesh)

    async def main() -> str:
        try:
            async with mcp_client(f"{mesh.reg.url}/mcp/acme/nothing", token):
                return "connected"
        except Exception as e:  # the client raises what the gateway answered
            return repr(e)

    message = anyio.run(main)
    assert "no deployment acme/nothing" in message


def test_a_replica_killed_mid_call_gives_an_error_and_the_next_call_lands_on_the_survivor(
    mesh: Mesh,
) -> None:
    token = deployed(mesh, replicas=2, nodes=2)

    from mcp.shared.exceptions import MCPError

    async def main() -> tuple[Any, Any, int]:
        async with mcp_client(endpoint(mesh), token) as client:
            await client.call_tool("echo", {"text": "warm"})
            pids = {pid: rid for n in mesh.nodes for pid, rid in n.agents().items()}
            view = mesh.view()
            # The replica this session is bound to is the one whose agent answered: kill it while
            # a call is in flight (the agent is stopped first, so the call cannot finish).
            async with anyio.create_task_group() as tg:
                result: dict[str, Any] = {}

                async def slow() -> None:
                    try:
                        await client.call_tool("echo", {"text": "never"})
                    except MCPError as e:
                        result["r"] = e

                bound = await _bound_replica(mesh, token)
                victim = next(pid for pid, rid in pids.items() if rid == bound)
                os.kill(victim, signal.SIGSTOP)
                tg.start_soon(slow)
                # Kill only once the call is in flight at the gateway, so it is this call that fails.
                with anyio.fail_after(10):
                    while _gateway(mesh).in_flight < 1:
                        await anyio.sleep(0.01)
                os.kill(victim, signal.SIGKILL)
            after = await client.call_tool("echo", {"text": "again"})
            return result["r"], after, len(view["instances"])

    failed, after, count = anyio.run(main)
    assert count == 2
    # The node says the agent exited, or is not running when the kill beat the call to its stdin:
    # both are the one reason the gateway turns into an error without a retry.
    assert isinstance(failed, MCPError)
    assert failed.data == {"reason": "agent-exited"}, failed
    assert "the agent process" in failed.message
    assert after.content[0].text == "again"


def _gateway(mesh: Mesh) -> Gateway:
    """The in-process registry's gateway (the registry serves from a thread of this process)."""
    app = mesh.reg._handle.server.config.app  # type: ignore[attr-defined]
    gateway: Gateway = app.state.gateway
    return gateway


async def _bound_replica(mesh: Mesh, token: str) -> str:
    """The replica the gateway routes this test's sessions to (the only one with calls)."""
    del token
    gateway = _gateway(mesh)
    targets = {s.target.replica_id for s in gateway.sessions.values() if s.target is not None}
    assert len(targets) == 1
    return targets.pop()


def test_usage_events_are_recorded_once_per_call(one: Mesh) -> None:
    mesh = one
    token = caller(mesh)

    async def main() -> None:
        async with mcp_client(endpoint(mesh), token) as client:
            for i in range(7):
                await client.call_tool("add", {"a": i, "b": 1})
            await client.call_tool("divide", {"a": 1, "b": 0})
            await client.list_tools()

    anyio.run(main)
    with httpx2.Client(base_url=mesh.reg.url, headers={"Authorization": f"Bearer {token}"}) as http:
        response = http.get("/v1/usage", params={"events": 100})
    assert response.status_code == 200, response.text
    body = response.json()
    rows = {(r["agent"], r["tool"]): r for r in body["summary"]}
    assert rows[(AGENT, "add")]["calls"] == 7
    assert rows[(AGENT, "divide")]["calls"] == 1
    assert rows[(AGENT, "divide")]["errors"] == 1
    assert len(body["events"]) == 8
    assert len({e["id"] for e in body["events"]}) == 8


def test_the_cli_lists_and_calls_tools_of_a_deployed_agent(one: Mesh) -> None:
    mesh = one
    token = caller(mesh)
    where = ["--registry", mesh.reg.url, "--token", token]

    tools = mcpz("tools", AGENT, *where, "--json")
    assert tools.returncode == 0, tools.stderr
    assert {"echo", "add", "divide"} <= {t["name"] for t in json.loads(tools.stdout)["tools"]}

    added = mcpz("call", AGENT, "add", "a=2", "b=40", *where)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "42"

    by_json = mcpz("call", AGENT, "echo", "--args-json", '{"text": "hi"}', *where, "--json")
    assert json.loads(by_json.stdout)["content"][0]["text"] == "hi"

    failed = mcpz("call", AGENT, "divide", "a=1", "b=0", *where)
    assert failed.returncode == 7
    assert "cannot divide by zero" in failed.stderr and "Traceback" not in failed.stderr

    typo = mcpz("call", AGENT, "ad", "a=1", *where)
    assert typo.returncode == 2 and 'did you mean "add"' in typo.stderr

    # Arguments are checked against the tool's input schema before anything is sent.
    short = mcpz("call", AGENT, "add", "a=1", *where)
    assert short.returncode == 2 and 'missing argument "b"' in short.stderr, short.stderr
    unknown = mcpz("call", AGENT, "add", "a=1", "b=2", "c=3", *where)
    assert unknown.returncode == 2 and 'unknown argument "c"' in unknown.stderr, unknown.stderr
    latest = mcpz("call", f"{AGENT}@latest", "add", "a=1", "b=2", *where)
    assert latest.returncode == 0 and latest.stdout.strip() == "3", latest.stderr

    missing = mcpz("call", "acme/nothing", "add", *where)
    assert missing.returncode == 5, missing.stderr
    assert "no deployment acme/nothing" in missing.stderr

    anonymous = mcpz("tools", AGENT, "--registry", mesh.reg.url, env={"MCPZ_TOKEN": "mcpz_wrong"})
    assert anonymous.returncode == 4, anonymous.stderr


@pytest.mark.anyio
async def test_the_cli_client_reads_json_and_sse_answers_and_ends_its_session(one: Mesh) -> None:
    from mcpz.client.gateway import open_remote

    token = caller(one)
    async with open_remote(AGENT, registry=one.reg.url, token=token, timeout=30) as agent:
        session = agent.session_id
        assert session and agent.protocol_version
        assert (await agent.call("add", {"a": 2, "b": 40})).text == "42"  # answered as JSON
        # Asking for progress makes the gateway answer as an SSE stream; the answer is found in it.
        streamed = await agent.request(
            "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}, "_meta": {"progressToken": "p"}}
        )
        assert streamed["content"][0]["text"] == "3"
    async with httpx2.AsyncClient(timeout=30) as http:
        after = await http.post(
            f"{one.reg.url}/mcp/{AGENT}",
            headers={"Authorization": f"Bearer {token}", "Mcp-Session-Id": session,
                     "Accept": "application/json", "Content-Type": "application/json"},
            json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
        )  # fmt: skip
    assert after.status_code == 404, after.text  # the session was ended on the way out


def test_connect_serves_a_local_agent_at_dev_to_its_namespace_only(mesh: Mesh, tmp_path: Path) -> None:
    from mcpz.repo.templates import render_template

    owner = mesh.reg.account("acme", "read,deploy,call")
    work = tmp_path / "local-agent"
    work.mkdir()
    render_template("python", work, "acme/local")
    connector = subprocess.Popen(
        [sys.executable, "-m", "mcpz", "connect", str(work), "--registry", mesh.reg.url, "--token", owner],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url_line = until(lambda: _line_with(connector, "call it at"), 30, "the connector to attach")
        url = url_line.split("call it at", 1)[1].strip()
        assert url == f"{mesh.reg.url}/mcp/acme/local@dev"

        async def main() -> Any:
            async with mcp_client(url, owner) as client:
                return await client.call_tool("add", {"a": 20, "b": 22})

        assert anyio.run(main).content[0].text == "42"

        # A second connector for the same agent is refused while the first is attached.
        second = mcpz("connect", str(work), "--registry", mesh.reg.url, "--token", owner, timeout=30)
        assert second.returncode == 8, second.stdout + second.stderr
        assert "connected from another machine" in second.stderr

        # Someone outside the namespace cannot call it.
        stranger = mesh.reg.account("stranger", "call")
        refused = mcpz("tools", "acme/local@dev", "--registry", mesh.reg.url, "--token", stranger)
        assert refused.returncode == 4 and "neither owner nor member" in refused.stderr
    finally:
        connector.send_signal(signal.SIGINT)
        rest, _ = connector.communicate(timeout=60)  # a loaded CI machine is slow to stop the agent
    assert connector.returncode == 0, rest
    assert "detached" in rest
    gone = mcpz("tools", "acme/local@dev", "--registry", mesh.reg.url, "--token", owner)
    assert gone.returncode != 0 and "nothing is connected" in gone.stderr


def _line_with(proc: subprocess.Popen[str], needle: str) -> str | None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line and proc.poll() is not None:
        raise AssertionError(f"the connector exited with {proc.returncode}")
    return line if needle in line else None


def mcpz(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpz", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
