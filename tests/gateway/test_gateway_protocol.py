"""The gateway's Streamable HTTP transport, progress, cancellation, timeouts and overload, against a
live registry, a real `mcpz node run` process and a real agent process.

Raw HTTP (httpx2) where the transport's rules are the subject, the official `mcp` client where the
behaviour is. The agent is the python template plus tools written for these tests: `slow` sleeps
until cancelled (and leaves marker files saying so), `steps` reports progress, `grow` adds a tool
at runtime and announces it with `notifications/tools/list_changed`.

Two registries, each with one node and one replica, shared by the module's tests: `main` with the
default call timeout and at most 2 calls in flight (so overload is cheap to reach), `short` with a
2 s call timeout.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from conftest import isolate, start_registry
from meshutil import AGENT, FAST, Mesh, until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG")

AGENT_SERVER = '''"""An agent for the gateway's protocol tests."""

import time
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

mcp = MCPServer("acme/tiny", version="1.0.0")


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.tool()
async def slow(seconds: float, marker: str) -> str:
    """Sleep, leaving `marker`.started, then `marker`.cancelled or `marker`.finished."""
    Path(marker + ".started").write_text(str(time.time()))
    try:
        await anyio.sleep(seconds)
    except BaseException:
        Path(marker + ".cancelled").write_text(str(time.time()))
        raise
    Path(marker + ".finished").write_text(str(time.time()))
    return "slept"


@mcp.tool()
async def steps(count: int, label: str, ctx: Context) -> str:
    """Report `count` progress steps, each with `label` in its message."""
    for i in range(1, count + 1):
        await ctx.report_progress(i, count, f"{label} {i}")
        await anyio.sleep(0.02)
    return f"{label} done"


def _grown(text: str) -> str:
    """A tool added at runtime."""
    return text


@mcp.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool called `name` and tell the clients that the tool list changed."""
    mcp.add_tool(_grown, name=name)
    await ctx.request_context.session.send_tool_list_changed()
    return name


WATCHED: set[str] = set()  # the URIs subscribed to: the process's, for every session at once


async def _subscribe(ctx, params):
    WATCHED.add(str(params.uri))
    return EmptyResult()


async def _unsubscribe(ctx, params):
    WATCHED.discard(str(params.uri))
    return EmptyResult()


mcp._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
mcp._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)


@mcp.tool()
async def touch(uri: str, ctx: Context) -> list[str]:
    """Announce that `uri` changed, if anyone subscribed to it; the URIs subscribed to."""
    if uri in WATCHED:
        await ctx.request_context.session.send_resource_updated(uri)
    return sorted(WATCHED)


if __name__ == "__main__":
    mcp.run()
'''


# --- the shared setup -----------------------------------------------------------------------------


@dataclass
class Site:
    """One registry with AGENT running on one node, and a token with scope `call`."""

    mesh: Mesh
    token: str
    markers: Path

    @property
    def url(self) -> str:
        return f"{self.mesh.reg.url}/mcp/{AGENT}"

    @property
    def gateway(self) -> Any:
        app = self.mesh.reg._handle.server.config.app  # type: ignore[attr-defined]
        return app.state.gateway

    def marker(self, name: str) -> str:
        return str(self.markers / name)

    def caller(self) -> str:
        """A token of a new account, for a test that counts its own usage events."""
        return self.mesh.reg.account(f"caller-{secrets.token_hex(4)}", "read,call")


def _site(tmp: Path, **settings: Any) -> Mesh:
    """A registry, AGENT (with this module's server.py) published, a node started, 1 replica asked."""
    mesh = Mesh(tmp, start_registry(tmp / "registry", **FAST, **settings))
    mesh.write_agent(AGENT_SERVER)
    mesh.publish("1.0.0")
    mesh.node("node-0")
    return mesh


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Site]]:
    """Both registries, set up side by side (their nodes start and pull at the same time)."""
    meshes: list[Mesh] = []
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, tmp_path_factory.mktemp("home"))
        try:
            for name, settings in (("main", {"max_calls_in_flight": 2}), ("short", {"call_timeout": 2.0})):
                meshes.append(_site(tmp_path_factory.mktemp(name), **settings))
            for mesh in meshes:
                mesh.connected(1)
                mesh.deploy("1.0.0", replicas=1)
            for mesh in meshes:
                mesh.settled(1, "1.0.0")
            found = {}
            for name, mesh in zip(("main", "short"), meshes, strict=True):
                markers = mesh.tmp / "markers"
                markers.mkdir()
                found[name] = Site(mesh, mesh.reg.account("caller", "read,call"), markers)
            yield found
        finally:
            for mesh in meshes:
                mesh.close()
                mesh.reg.stop()


@pytest.fixture
def main(sites: dict[str, Site]) -> Site:
    return sites["main"]


@pytest.fixture
def short(sites: dict[str, Site]) -> Site:
    return sites["short"]


# --- clients --------------------------------------------------------------------------------------

ACCEPT_BOTH = "application/json, text/event-stream"


def tool_call(request_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def initialize_body(request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }


class Raw:
    """One raw HTTP session with the gateway: headers kept, messages sent as the test says."""

    def __init__(self, site: Site, http: Any = None, token: str | None = None) -> None:
        self.site = site
        self.http = http
        self.auth = {"Authorization": f"Bearer {token or site.token}"}
        self.session_id = ""

    def headers(self, **extra: str) -> dict[str, str]:
        base = {**self.auth, "Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
        if self.session_id:
            base["Mcp-Session-Id"] = self.session_id
        return {**base, **{k.replace("_", "-"): v for k, v in extra.items()}}

    def initialize(self) -> Raw:
        response = self.http.post(self.site.url, json=initialize_body(), headers=self.headers())
        assert response.status_code == 200, response.text
        self.session_id = response.headers["mcp-session-id"]
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert self.post(initialized).status_code == 202
        return self

    def post(self, message: Any, **headers: str) -> httpx2.Response:
        response: httpx2.Response = self.http.post(
            self.site.url, content=json.dumps(message), headers=self.headers(**headers)
        )
        return response


@asynccontextmanager
async def mcp_client(site: Site, token: str | None = None, **options: Any) -> AsyncIterator[Any]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token or site.token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(site.url, http_client=http), **options) as client:
            yield client


def usage_events(site: Site, token: str) -> list[dict[str, Any]]:
    """The events of the calls the account of `token` made."""
    with httpx2.Client(base_url=site.mesh.reg.url, headers={"Authorization": f"Bearer {token}"}) as http:
        response = http.get("/v1/usage", params={"events": 1000})
    assert response.status_code == 200, response.text
    return response.json()["events"]  # type: ignore[no-any-return]


def in_flight_drained(site: Site) -> None:
    """Wait until the gateway has no call in flight (a test's cancelled calls are gone)."""
    until(lambda: site.gateway.in_flight == 0, 10, "no call in flight at the gateway")


# --- the transport's rules ------------------------------------------------------------------------


def test_requests_outside_a_session_are_refused_as_the_transport_says(main: Site) -> None:
    with httpx2.Client(timeout=30) as http:
        raw = Raw(main, http)
        listed = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}

        no_session = raw.post(listed)
        assert no_session.status_code == 400
        assert "Mcp-Session-Id" in no_session.json()["error"]["message"]

        unknown = raw.post(listed, Mcp_Session_Id="no-such-session")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == -32600

        raw.initialize()
        assert raw.post(listed).status_code == 200
        ended = http.delete(main.url, headers=raw.headers())
        assert ended.status_code == 200
        gone = raw.post(listed)
        assert gone.status_code == 404
        assert "initialize again" in gone.json()["error"]["message"]
        assert http.delete(main.url, headers=raw.headers()).status_code == 404


def test_get_streams_need_sse_and_are_one_per_session(main: Site) -> None:
    with httpx2.Client(timeout=30) as http:
        raw = Raw(main, http).initialize()
        wrong = http.get(main.url, headers=raw.headers(Accept="application/json"))
        assert wrong.status_code == 406
        with http.stream("GET", main.url, headers=raw.headers(Accept="text/event-stream")) as first:
            assert first.status_code == 200
            assert first.headers["content-type"].startswith("text/event-stream")
            second = http.get(main.url, headers=raw.headers(Accept="text/event-stream"))
            assert second.status_code == 409
            assert "stream open already" in second.json()["error"]["message"]
            # Ending the session ends its stream.
            assert http.delete(main.url, headers=raw.headers()).status_code == 200
            assert first.read() == b""


def test_malformed_posts_get_the_statuses_the_transport_names(main: Site) -> None:
    with httpx2.Client(timeout=30) as http:
        raw = Raw(main, http).initialize()
        listed = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}

        text = raw.post(listed, Content_Type="text/plain")
        assert text.status_code == 415

        broken = http.post(main.url, content=b'{"jsonrpc": "2.0", "id": ', headers=raw.headers())
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == -32700

        batch = raw.post([listed, {**listed, "id": 4}])
        assert batch.status_code == 400
        assert "batch" in batch.json()["error"]["message"]

        future = raw.post(listed, MCP_Protocol_Version="2099-01-01")
        assert future.status_code == 400
        assert "2099-01-01" in future.json()["error"]["message"]
        assert raw.post(listed, MCP_Protocol_Version="2025-06-18").status_code == 200

        put = http.put(main.url, content=json.dumps(listed), headers=raw.headers())
        assert put.status_code == 405
        assert set(put.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST", "DELETE"}

        note = raw.post({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
        assert note.status_code == 202 and note.content == b""
        cancel_nothing = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}
        assert raw.post(cancel_nothing).status_code == 202

        huge = {**listed, "params": {"padding": "x" * (5 * 1024 * 1024)}}
        too_big = raw.post(huge)
        assert too_big.status_code == 413

        # None of that broke the session.
        assert raw.post(listed).json()["result"]["tools"]


def test_initialize_answers_the_version_the_client_offered(main: Site) -> None:
    """The node's health check initialized the agent once, at the version it negotiated; each
    session is answered with the version its own client offered, when the gateway speaks it."""
    with httpx2.Client(timeout=30) as http:
        raw = Raw(main, http)
        for offered, answered in (
            ("2024-11-05", "2024-11-05"),
            ("2025-06-18", "2025-06-18"),
            ("2025-11-25", "2025-11-25"),
            ("2099-01-01", "2025-11-25"),  # unknown: the latest the gateway speaks
        ):
            body = initialize_body()
            body["params"]["protocolVersion"] = offered
            response = http.post(main.url, json=body, headers=raw.headers())
            assert response.status_code == 200, response.text
            result = response.json()["result"]
            assert result["protocolVersion"] == answered, offered
            assert result["serverInfo"]["name"] == "acme/tiny"
            session = {"Mcp-Session-Id": response.headers["mcp-session-id"]}
            assert http.delete(main.url, headers={**raw.headers(), **session}).status_code == 200


def test_a_host_that_is_not_the_registrys_is_refused_dns_rebinding(main: Site) -> None:
    """A page whose own name was re-pointed at the registry sends that name as Host: 421, before
    the token is even looked at; loopback names and the registry's own pass."""
    port = main.mesh.reg.url.rsplit(":", 1)[1]
    with httpx2.Client(timeout=30) as http:
        raw = Raw(main, http)
        evil = http.post(main.url, json=initialize_body(), headers={**raw.headers(), "Host": "evil.example"})
        assert evil.status_code == 421
        assert "evil.example" in evil.json()["error"]["message"]
        anonymous = http.post(main.url, json=initialize_body(), headers={"Host": f"evil.example:{port}"})
        assert anonymous.status_code == 421  # not 401: nothing about the token is told
        for name in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
            ok = http.post(main.url, json=initialize_body(), headers={**raw.headers(), "Host": name})
            assert ok.status_code == 200, (name, ok.text)


def test_one_account_cannot_fill_the_session_table_its_oldest_idle_session_ends(main: Site) -> None:
    cap = 64  # max_sessions_per_account, by default
    listed = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    with httpx2.Client(timeout=30) as http:
        mine = main.caller()
        other = Raw(main, http, main.caller()).initialize()
        sessions = [Raw(main, http, mine).initialize() for _ in range(cap)]
        assert sessions[0].post(listed).status_code == 200  # the first is now the most recently used
        newest = Raw(main, http, mine).initialize()
        gone = sessions[1].post(listed)
        assert gone.status_code == 404, "the least recently used idle session should have ended"
        assert "initialize again" in gone.json()["error"]["message"]
        for raw in (sessions[0], *sessions[2:], newest, other):
            assert raw.post(listed).status_code == 200
        for raw in (sessions[0], *sessions[2:], newest, other):
            http.delete(main.url, headers=raw.headers())


# --- progress -------------------------------------------------------------------------------------


def test_progress_reaches_the_callers_progress_callback(main: Site) -> None:
    async def run() -> tuple[list[tuple[float, float | None, str | None]], Any]:
        seen: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))

        async with mcp_client(main) as client:
            result = await client.call_tool(
                "steps", {"count": 5, "label": "p"}, progress_callback=on_progress
            )
        return seen, result

    seen, result = anyio.run(run)
    assert result.content[0].text == "p done"
    assert seen == [(i, 5, f"p {i}") for i in range(1, 6)]


def test_concurrent_sessions_each_see_only_their_own_progress(main: Site) -> None:
    counts = {"left": 20, "right": 15}  # 0.4 s and 0.3 s of steps: the two calls overlap

    async def one(label: str, ready: list[anyio.Event], seen: dict[str, list[str | None]]) -> None:
        got: list[str | None] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            got.append(message)

        async with mcp_client(main) as client:
            ready[list(counts).index(label)].set()
            for event in ready:  # both sessions are open before either calls
                await event.wait()
            arguments = {"count": counts[label], "label": label}
            result = await client.call_tool("steps", arguments, progress_callback=on_progress)
        assert result.content[0].text == f"{label} done"
        seen[label] = got

    async def run() -> dict[str, list[str | None]]:
        seen: dict[str, list[str | None]] = {}
        ready = [anyio.Event() for _ in counts]
        async with anyio.create_task_group() as tg:
            for label in counts:
                tg.start_soon(one, label, ready, seen)
        return seen

    seen = anyio.run(run)
    assert seen == {label: [f"{label} {i}" for i in range(1, n + 1)] for label, n in counts.items()}


# --- cancellation, timeout, overload --------------------------------------------------------------


def test_a_client_cancelling_a_call_cancels_it_in_the_agent(main: Site) -> None:
    marker = Path(main.marker("cancelled-by-client"))
    token = main.caller()

    async def run() -> Any:
        async with mcp_client(main, token) as client:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await client.call_tool("slow", {"seconds": 30, "marker": str(marker)})

                tg.start_soon(call)
                await _wait_for_file(marker.with_suffix(".started"), 15)
                tg.cancel_scope.cancel()  # the client gives up: it sends notifications/cancelled
            # The agent hears of it while the session is still open (not from its end).
            await _wait_for_file(marker.with_suffix(".cancelled"), 10)
            assert main.gateway.in_flight == 0
            # The session goes on: the next call on it is answered.
            return await client.call_tool("echo", {"text": "after"})

    after = anyio.run(run)
    assert after.content[0].text == "after"
    assert not marker.with_suffix(".finished").exists()
    outcomes = sorted((e["tool"], e["outcome"]) for e in usage_events(main, token))
    assert outcomes == [("echo", "ok"), ("slow", "cancelled")]


def test_a_call_over_the_timeout_is_an_error_cancelled_in_the_agent_and_metered_as_timeout(
    short: Site,
) -> None:
    from mcp.shared.exceptions import MCPError

    marker = Path(short.marker("timed-out"))
    token = short.caller()

    async def run() -> tuple[str, float]:
        async with mcp_client(short, token) as client:
            started = time.monotonic()
            try:
                await client.call_tool("slow", {"seconds": 30, "marker": str(marker)})
            except MCPError as e:
                return str(e), time.monotonic() - started
        raise AssertionError("the slow call was answered")

    message, took = anyio.run(run)
    assert "did not answer within 2 s" in message
    assert 1.9 < took < 15
    until(marker.with_suffix(".cancelled").exists, 10, "the agent to be told to cancel")
    assert not marker.with_suffix(".finished").exists()
    events = usage_events(short, token)
    assert [(e["tool"], e["outcome"]) for e in events] == [("slow", "timeout")]
    # The event loop may fire the 2 s timer a fraction of a millisecond early by the wall clock.
    assert 1_990_000 <= events[0]["duration_us"] < 15_000_000


def test_past_max_calls_in_flight_a_call_gets_503_with_retry_after(main: Site) -> None:
    markers = [Path(main.marker(f"busy-{i}")) for i in range(2)]
    token = main.caller()

    async def run() -> httpx2.Response:
        async with httpx2.AsyncClient(timeout=60) as http:
            raws = [Raw(main, token=token) for _ in range(3)]
            for raw in raws:
                response = await http.post(main.url, json=initialize_body(), headers=raw.headers())
                raw.session_id = response.headers["mcp-session-id"]

            async def slow(raw: Raw, marker: Path) -> None:
                body = tool_call(1, "slow", {"seconds": 30, "marker": str(marker)})
                await http.post(main.url, json=body, headers=raw.headers())

            async with anyio.create_task_group() as tg:
                for raw, marker in zip(raws, markers, strict=False):
                    tg.start_soon(slow, raw, marker)
                for marker in markers:  # both calls reached the agent: the gateway holds 2
                    await _wait_for_file(marker.with_suffix(".started"), 15)
                third = await http.post(
                    main.url, json=tool_call(7, "echo", {"text": "one too many"}), headers=raws[2].headers()
                )
                # Ending the two sessions cancels their calls; their requests then return.
                for raw in raws[:2]:
                    await http.delete(main.url, headers=raw.headers())
            return third

    third = anyio.run(run)
    assert third.status_code == 503, third.text
    assert int(third.headers["retry-after"]) >= 1
    body = third.json()
    assert body["id"] == 7 and "limit of calls in flight" in body["error"]["message"]
    for marker in markers:
        until(marker.with_suffix(".cancelled").exists, 10, f"{marker.name} cancelled in the agent")
    in_flight_drained(main)
    # The refused call reached no replica: it is not metered; the two cancelled ones are.
    outcomes = sorted((e["tool"], e["outcome"]) for e in usage_events(main, token))
    assert outcomes == [("slow", "cancelled"), ("slow", "cancelled")]


# --- list_changed ---------------------------------------------------------------------------------


def test_a_tool_list_change_reaches_the_sessions_get_stream(main: Site) -> None:
    async def run() -> tuple[dict[str, Any], set[str]]:
        async with httpx2.AsyncClient(timeout=30) as http:
            raw = Raw(main)
            response = await http.post(main.url, json=initialize_body(), headers=raw.headers())
            raw.session_id = response.headers["mcp-session-id"]
            get = raw.headers(Accept="text/event-stream")
            async with http.stream("GET", main.url, headers=get) as stream:
                assert stream.status_code == 200
                grow = tool_call(5, "grow", {"name": "grown_tool"})
                grown = await http.post(main.url, json=grow, headers=raw.headers())
                assert grown.status_code == 200, grown.text
                with anyio.fail_after(10):
                    message = await _next_sse_message(stream)
            listed = await http.post(
                main.url, json={"jsonrpc": "2.0", "id": 6, "method": "tools/list"}, headers=raw.headers()
            )
            await http.delete(main.url, headers=raw.headers())
        return message, {t["name"] for t in listed.json()["result"]["tools"]}

    message, names = anyio.run(run)
    assert message["method"] == "notifications/tools/list_changed"
    assert "grown_tool" in names


def test_a_resource_update_reaches_only_the_sessions_subscribed_to_it(main: Site) -> None:
    """One agent process, three sessions: each update goes to the sessions that subscribed to its
    URI; one session unsubscribing does not stop another's updates, the last one does; a session
    that ends takes its subscriptions with it."""

    def subscription(request_id: int, method: str, uri: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id, "method": f"resources/{method}", "params": {"uri": uri}}

    async def run() -> None:
        async with httpx2.AsyncClient(timeout=30) as http:
            raws = []
            for _ in range(3):
                raw = Raw(main)
                response = await http.post(main.url, json=initialize_body(), headers=raw.headers())
                raw.session_id = response.headers["mcp-session-id"]
                raws.append(raw)
            a, b, c = raws
            for raw, uri in ((a, "test://x"), (b, "test://x"), (c, "test://y")):
                done = await http.post(
                    main.url, json=subscription(2, "subscribe", uri), headers=raw.headers()
                )
                assert done.status_code == 200 and done.json()["result"] == {}, done.text

            async def touched(uri: str) -> list[str]:
                call = await http.post(
                    main.url, json=tool_call(3, "touch", {"uri": uri}), headers=a.headers()
                )
                assert call.status_code == 200, call.text
                return call.json()["result"]["structuredContent"]["result"]  # type: ignore[no-any-return]

            async with (
                http.stream("GET", main.url, headers=a.headers(Accept="text/event-stream")) as sa,
                http.stream("GET", main.url, headers=b.headers(Accept="text/event-stream")) as sb,
                http.stream("GET", main.url, headers=c.headers(Accept="text/event-stream")) as sc,
            ):
                la, lb, lc = (stream.aiter_lines() for stream in (sa, sb, sc))
                assert await touched("test://x") == ["test://x", "test://y"]
                await touched("test://y")
                with anyio.fail_after(10):
                    assert (await _next_line_message(la))["params"] == {"uri": "test://x"}
                    assert (await _next_line_message(lb))["params"] == {"uri": "test://x"}
                    assert (await _next_line_message(lc))["params"] == {"uri": "test://y"}
                # a leaves test://x: b still watches it, so the agent keeps it.
                gone = await http.post(
                    main.url, json=subscription(4, "unsubscribe", "test://x"), headers=a.headers()
                )
                assert gone.json()["result"] == {}
                assert await touched("test://x") == ["test://x", "test://y"]
                with anyio.fail_after(10):
                    assert (await _next_line_message(lb))["params"] == {"uri": "test://x"}
                # b ends: nobody watches test://x, and the agent is told.
                await http.delete(main.url, headers=b.headers())
                with anyio.fail_after(10):
                    while await touched("test://x") != ["test://y"]:
                        await anyio.sleep(0.05)
                # a never saw a second test://x update, nor c any test://x one: the next message on
                # each is the one this touch of test://y sends (to c only) or none.
                await touched("test://y")
                with anyio.fail_after(10):
                    assert (await _next_line_message(lc))["params"] == {"uri": "test://y"}
                await http.delete(main.url, headers=a.headers())
                await http.delete(main.url, headers=c.headers())
                assert [line async for line in la if line.startswith("data:")] == []  # nothing more

    anyio.run(run)


def test_the_get_stream_resumes_from_last_event_id(main: Site) -> None:
    """Events on a session's GET stream have ids; one sent while no stream was open is replayed to
    the client that comes back with the last id it saw; a client of 2025-11-25 gets a priming
    event (an id and `retry`, no data) when there is nothing to replay."""

    async def run() -> None:
        async with httpx2.AsyncClient(timeout=30) as http:
            raw = Raw(main)
            body = initialize_body()
            body["params"]["protocolVersion"] = "2025-11-25"
            response = await http.post(main.url, json=body, headers=raw.headers())
            raw.session_id = response.headers["mcp-session-id"]
            get = raw.headers(Accept="text/event-stream")

            async def grow(name: str) -> None:
                grown = await http.post(
                    main.url, json=tool_call(5, "grow", {"name": name}), headers=raw.headers()
                )
                assert grown.status_code == 200, grown.text

            async with http.stream("GET", main.url, headers=get) as stream:
                events = _sse_events(stream.aiter_lines())
                with anyio.fail_after(10):
                    priming = await anext(events)
                assert priming["data"] == "" and priming["retry"] == "1000"
                await grow("resumed_a")
                with anyio.fail_after(10):
                    first = await anext(events)
                assert json.loads(first["data"])["method"] == "notifications/tools/list_changed"
                assert int(first["id"]) > int(priming["id"])
            await grow("resumed_b")  # no stream open: kept for the client that comes back
            with anyio.fail_after(10):
                while main.gateway.sessions[raw.session_id].last_event <= int(first["id"]):
                    await anyio.sleep(0.02)
            resume = {**get, "Last-Event-ID": first["id"]}
            async with http.stream("GET", main.url, headers=resume) as stream:
                events = _sse_events(stream.aiter_lines())
                with anyio.fail_after(10):
                    missed = await anext(events)
                assert int(missed["id"]) == int(first["id"]) + 1
                assert json.loads(missed["data"])["method"] == "notifications/tools/list_changed"
            # A GET without an id while the gateway has not yet seen the last stream go is a 409
            # (one stream per session): wait for it to notice.
            with anyio.fail_after(10):
                while main.gateway.sessions[raw.session_id].stream is not None:
                    await anyio.sleep(0.02)
            async with http.stream("GET", main.url, headers=get) as stream:  # no id: nothing replayed
                assert stream.status_code == 200
                events = _sse_events(stream.aiter_lines())
                with anyio.fail_after(10):
                    again = await anext(events)
                assert again["data"] == "" and again["id"] == missed["id"]
            await http.delete(main.url, headers=raw.headers())

    anyio.run(run)


# --- helpers --------------------------------------------------------------------------------------


async def _wait_for_file(path: Path, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while not path.exists():
            await anyio.sleep(0.02)


async def _sse_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """SSE events as {field: value} (comments skipped), from a stream's lines."""
    event: dict[str, str] = {}
    async for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


async def _next_line_message(lines: AsyncIterator[str]) -> dict[str, Any]:
    """The next JSON-RPC message from an SSE stream's lines (one iterator kept per stream)."""
    async for line in lines:
        if line.startswith("data:"):
            return json.loads(line[5:])  # type: ignore[no-any-return]
    raise AssertionError("the stream ended without a message")


async def _next_sse_message(stream: httpx2.Response) -> dict[str, Any]:
    """The next JSON-RPC message on an SSE response (keepalive comments skipped)."""
    async for line in stream.aiter_lines():
        if line.startswith("data:"):
            return json.loads(line[5:])  # type: ignore[no-any-return]
    raise AssertionError("the stream ended without a message")
