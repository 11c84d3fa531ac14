"""Platform tiers enforced by the gateway, at the call: a live registry whose tiers have small
limits, a real `mcpz node run` process and a real agent; raw HTTP, as any MCP client sends it.

The registry's tiers use the bundled tiers' names (so `mcpz registry tier`, which checks names
against the settings it loads, accepts them) with limits small enough to reach: `free` 2 calls
per second per key, `pro` 7 calls per month, `enterprise` 2 sessions; `unlimited` is the default.
Every test uses an account of its own.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx2
import pytest
from conftest import CliResult, isolate
from meshutil import AGENT, Mesh, serving_one, until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG")

TIERS = {
    "unlimited": {},
    "free": {"calls_per_second": 2},
    "pro": {"calls_per_month": 7},
    "enterprise": {"sessions": 2},
}
ACCEPT = {"Accept": "application/json, text/event-stream"}
QUOTA_EXCEEDED = -32029


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, tmp_path_factory.mktemp("home"))
        with serving_one(tmp_path_factory.mktemp("tiers"), tiers=TIERS, default_tier="unlimited") as mesh:
            yield mesh


def account(mesh: Mesh, cli: Any, tier: str | None) -> tuple[str, str]:
    """A new account (name, token with read and call), given `tier` by the operator's command."""
    name = f"caller-{secrets.token_hex(4)}"
    token = mesh.reg.account(name, "read,call")
    if tier is not None:
        done: CliResult = cli("registry", "tier", name, tier, "--data", str(mesh.reg.data_dir))
        assert done.exit_code == 0, done.stderr
    return name, token


def url(mesh: Mesh) -> str:
    return f"{mesh.reg.url}/mcp/{AGENT}"


def init_body(request_id: int = 1) -> dict[str, Any]:
    params = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    }
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}


def call_body(request_id: int, text: str) -> dict[str, Any]:
    params = {"name": "echo", "arguments": {"text": text}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


async def open_session(http: httpx2.AsyncClient, mesh: Mesh, token: str) -> str:
    answer = await http.post(
        url(mesh), json=init_body(), headers={**ACCEPT, "Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.headers["mcp-session-id"])


async def burst(mesh: Mesh, token: str, count: int) -> list[httpx2.Response]:
    """`count` tools/calls at once on one session."""
    answers: list[httpx2.Response] = []
    async with httpx2.AsyncClient(timeout=60) as http:
        session = await open_session(http, mesh, token)
        headers = {**ACCEPT, "Authorization": f"Bearer {token}", "Mcp-Session-Id": session}

        async def one(i: int) -> None:
            answers.append(await http.post(url(mesh), json=call_body(100 + i, f"hello {i}"), headers=headers))

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
    return answers


def usage_calls(mesh: Mesh, token: str) -> int:
    """tools/calls of the token's account that reached the agent (its usage events)."""
    with httpx2.Client(
        base_url=mesh.reg.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        answer = http.get("/v1/usage")
    assert answer.status_code == 200, answer.text
    return sum(int(s["calls"]) for s in answer.json()["summary"])


def tier_view(mesh: Mesh, token: str) -> dict[str, Any]:
    with httpx2.Client(
        base_url=mesh.reg.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        answer = http.get("/v1/billing/tier")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def assert_refused(answer: httpx2.Response, limit: str, tier: str) -> dict[str, Any]:
    """A 429 as the tier promises: Retry-After, RateLimit fields, a JSON-RPC error naming it all."""
    assert answer.status_code == 429, answer.text
    retry_after = int(answer.headers["retry-after"])
    assert retry_after >= 1
    assert answer.headers["ratelimit-policy"].startswith(f'"{limit}";q=')
    assert answer.headers["ratelimit"].startswith(f'"{limit}";r=0;t=')
    body = answer.json()
    error = body["error"]
    assert error["code"] == QUOTA_EXCEEDED
    assert f"tier {tier!r}" in error["message"] and "\n" not in error["message"]
    data = error["data"]
    assert (data["limit"], data["tier"], data["retry_after"]) == (limit, tier, retry_after)
    reset = datetime.fromisoformat(data["reset"])
    assert reset > datetime.now(UTC)
    assert data["reset"] in error["message"]
    return data  # type: ignore[no-any-return]


def test_past_calls_per_second_the_gateway_answers_429_and_the_agent_is_not_called(
    mesh: Mesh, cli: Any
) -> None:
    _, token = account(mesh, cli, "free")
    answers = anyio.run(burst, mesh, token, 30)
    passed = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert passed and refused, [a.status_code for a in answers]
    for answer in refused:
        data = assert_refused(answer, "calls_per_second", "free")
        assert data["retry_after"] == 1
        assert answer.headers["ratelimit-policy"] == '"calls_per_second";q=2;w=1'
    for answer in passed:
        assert "result" in answer.json()
        assert answer.headers["ratelimit-policy"] == '"calls_per_second";q=2;w=1'
        assert answer.headers["ratelimit"].startswith('"calls_per_second";r=')
    # The refused calls never reached the agent: only the passed ones are usage events.
    assert usage_calls(mesh, token) == len(passed)


def test_calls_per_month_is_exact_under_twenty_concurrent_callers(mesh: Mesh, cli: Any) -> None:
    _, token = account(mesh, cli, "pro")
    answers = anyio.run(burst, mesh, token, 20)
    passed = [a for a in answers if a.status_code == 200]
    assert len(passed) == 7, [a.status_code for a in answers]
    for answer in answers:
        if answer.status_code != 200:
            data = assert_refused(answer, "calls_per_month", "pro")
            first = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            assert datetime.fromisoformat(data["reset"]) == first.replace(
                year=first.year + first.month // 12, month=first.month % 12 + 1
            )
    remaining = sorted(int(a.headers["ratelimit"].split("r=")[1].split(";")[0]) for a in passed)
    assert remaining == list(range(7))  # each passed call saw its own count
    assert usage_calls(mesh, token) == 7
    view = tier_view(mesh, token)
    assert view["tier"] == "pro" and view["assigned"] is True
    assert view["limits"] == {"calls_per_month": 7, "calls_per_second": 0, "sessions": 0}
    assert view["calls_this_month"] == 7


def test_initialize_past_the_session_limit_is_429_and_exact_under_concurrency(mesh: Mesh, cli: Any) -> None:
    _, token = account(mesh, cli, "enterprise")
    auth = {**ACCEPT, "Authorization": f"Bearer {token}"}

    async def main() -> tuple[list[httpx2.Response], httpx2.Response, httpx2.Response]:
        answers: list[httpx2.Response] = []
        async with httpx2.AsyncClient(timeout=60) as http:

            async def one() -> None:
                answers.append(await http.post(url(mesh), json=init_body(), headers=auth))

            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(one)
            opened = [a for a in answers if a.status_code == 200]
            # Ending a session frees its slot at once.
            session = opened[0].headers["mcp-session-id"]
            ended = await http.delete(url(mesh), headers={**auth, "Mcp-Session-Id": session})
            assert ended.status_code == 200
            again = await http.post(url(mesh), json=init_body(), headers=auth)
            still = await http.post(url(mesh), json=init_body(), headers=auth)
        return answers, again, still

    answers, again, still = anyio.run(main)
    opened = [a for a in answers if a.status_code == 200]
    assert len(opened) == 2, [a.status_code for a in answers]
    for answer in answers:
        if answer.status_code != 200:
            data = assert_refused(answer, "sessions", "enterprise")
            assert answer.headers["ratelimit-policy"] == '"sessions";q=2'
            # A slot frees when a session ends; idle, that is within the hour.
            assert 1 <= data["retry_after"] <= 3600
            assert "DELETE" in answer.json()["error"]["message"]
    assert opened[0].headers["ratelimit-policy"] == '"sessions";q=2'
    assert again.status_code == 200, again.text
    assert_refused(still, "sessions", "enterprise")


def test_only_tools_call_counts_and_unlimited_tiers_send_no_ratelimit_fields(mesh: Mesh, cli: Any) -> None:
    _, token = account(mesh, cli, "pro")

    async def main() -> list[httpx2.Response]:
        async with httpx2.AsyncClient(timeout=60) as http:
            session = await open_session(http, mesh, token)
            headers = {**ACCEPT, "Authorization": f"Bearer {token}", "Mcp-Session-Id": session}
            listed = [
                await http.post(
                    url(mesh), json={"jsonrpc": "2.0", "id": i, "method": "tools/list"}, headers=headers
                )
                for i in range(10)
            ]
            return [*listed, await http.post(url(mesh), json=call_body(99, "x"), headers=headers)]

    answers = anyio.run(main)
    assert {a.status_code for a in answers} == {200}
    assert "ratelimit" not in answers[0].headers  # tools/list: not counted, no fields
    assert answers[-1].headers["ratelimit"].startswith('"calls_per_month";r=6;t=')
    assert tier_view(mesh, token)["calls_this_month"] == 1

    _, free_token = account(mesh, cli, None)
    unlimited = anyio.run(burst, mesh, free_token, 3)
    assert {a.status_code for a in unlimited} == {200}
    assert "ratelimit-policy" not in unlimited[0].headers
    view = tier_view(mesh, free_token)
    assert (view["tier"], view["assigned"], view["calls_this_month"]) == ("unlimited", False, 3)


def test_mcpz_registry_tier_changes_an_accounts_limits_within_the_cache_ttl(mesh: Mesh, cli: Any) -> None:
    name, token = account(mesh, cli, None)
    assert {a.status_code for a in anyio.run(burst, mesh, token, 3)} == {200}  # unlimited, and cached

    shown = cli("--json", "registry", "tier", name, "--data", str(mesh.reg.data_dir))
    assert shown.exit_code == 0 and '"tier": "unlimited"' in shown.stdout
    unknown = cli("registry", "tier", name, "gold", "--data", str(mesh.reg.data_dir))
    assert unknown.exit_code == 2
    assert "no tier 'gold': the configured tiers are unlimited, free, pro, enterprise" in unknown.stderr
    changed = cli("registry", "tier", name, "pro", "--data", str(mesh.reg.data_dir))
    assert changed.exit_code == 0 and f"{name} now has tier pro" in changed.stdout

    async def refused() -> httpx2.Response | None:
        async with httpx2.AsyncClient(timeout=60) as http:
            session = await open_session(http, mesh, token)
            headers = {**ACCEPT, "Authorization": f"Bearer {token}", "Mcp-Session-Id": session}
            answer = await http.post(url(mesh), json=call_body(1, "again"), headers=headers)
            return answer if answer.status_code == 429 else None

    # Calls pass until the gateway reads the tier again (at most its TTL later), then the month's 7 are spent.
    answer = until(lambda: anyio.run(refused), timeout=30, what="the new tier's limit")
    assert_refused(answer, "calls_per_month", "pro")
    view = tier_view(mesh, token)
    assert view["tier"] == "pro" and view["calls_this_month"] == usage_calls(mesh, token) >= 7


def test_a_streamed_call_carries_the_ratelimit_fields_and_is_refused_before_its_stream(
    mesh: Mesh, cli: Any
) -> None:
    _, token = account(mesh, cli, "pro")

    async def main() -> list[httpx2.Response]:
        async with httpx2.AsyncClient(timeout=60) as http:
            session = await open_session(http, mesh, token)
            headers = {
                "Accept": "text/event-stream, application/json",
                "Authorization": f"Bearer {token}",
                "Mcp-Session-Id": session,
            }
            answers = []
            for i in range(8):
                body = call_body(i, "streamed")
                body["params"]["_meta"] = {"progressToken": f"p{i}"}
                answers.append(await http.post(url(mesh), json=body, headers=headers))
            return answers

    answers = anyio.run(main)
    assert [a.status_code for a in answers] == [200] * 7 + [429]
    assert answers[0].headers["content-type"].startswith("text/event-stream")
    assert answers[0].headers["ratelimit"].startswith('"calls_per_month";r=6;t=')
    assert answers[6].headers["ratelimit"].startswith('"calls_per_month";r=0;t=')
    assert_refused(answers[7], "calls_per_month", "pro")
