"""GET /v1/usage and `mcpz usage` against a live registry, on SQLite and PostgreSQL.

Events go in through the registry's own recorder (`app.state.usage.record`), as the gateway
records them; the registry flushes only on demand (an hour's interval), so every query here also
checks that the API writes pending events before it answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import LiveRegistry, start_registry

from registry_server.accounts import service as accounts
from registry_server.db import Database
from registry_server.usage.events import Outcome, UsageEvent
from registry_server.usage.service import UsageRecorder

HOUR_US = 3600 * 1_000_000


@dataclass
class World:
    reg: LiveRegistry
    acme: str  # owns the namespace acme: every scope
    other: str  # scope read only
    caller: str  # scope call only
    deployer: str  # scope deploy only: may not read usage
    ids: dict[str, int]  # account name -> id

    @property
    def recorder(self) -> UsageRecorder:
        app = self.reg._handle.server.config.app  # type: ignore[attr-defined]
        recorder: UsageRecorder = app.state.usage
        return recorder

    def get(self, token: str | None, **params: Any) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx2.get(f"{self.reg.url}/v1/usage", params=params, headers=headers, timeout=30)


def _ids(database_url: str, names: list[str]) -> dict[str, int]:
    db = Database(database_url)
    try:
        with db.session() as session:
            return {name: accounts.account_by_name(session, name).id for name in names}
    finally:
        db.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    reg = start_registry(tmp_path / "registry", url, usage_flush_interval=3600.0)
    world = World(
        reg, reg.account("acme"), reg.account("other", "read"), reg.account("caller", "call"), "", {}
    )
    try:
        world.deployer = reg.account("deployer", "deploy")
        world.ids = _ids(reg.database_url, ["acme", "other", "caller", "deployer"])
        yield world
    finally:
        world.reg.stop()  # a test may have restarted it


_serial = iter(range(1, 10**9))


def call(world: World, who: str, agent: str = "acme/echo", tool: str = "echo", **kw: Any) -> UsageEvent:
    """A finished call as the gateway records it: `started_us` defaults to a second ago."""
    base = UsageEvent(
        id=f"ev-{next(_serial):09d}",
        account_id=world.ids[who],
        token_id=None,
        agent=agent,
        version="1.0.0",
        tool=tool,
        deployment=agent,
        replica_id="r1",
        node_id="n1",
        started_us=time.time_ns() // 1000 - 1_000_000,
        duration_us=2500,
        outcome=Outcome.OK,
        bytes_in=100,
        bytes_out=300,
    )
    event = replace(base, **kw)
    world.recorder.record(event)
    return event


def _sums(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["agent"], row["tool"]): row for row in body["summary"]}


def test_usage_needs_a_token_with_read_or_call(world: World) -> None:
    answer = world.get(None)
    assert answer.status_code == 401
    assert answer.json()["error"]["message"] == "authentication required"
    answer = world.get(world.deployer)
    assert answer.status_code == 403
    assert 'lacks the "read" scope' in answer.json()["error"]["message"]
    for token in (world.other, world.caller, world.acme):
        assert world.get(token).status_code == 200
    assert world.get(world.acme).json() == {
        "scope": "account",
        "agent": None,
        "since": None,
        "until": None,
        "summary": [],
        "events": [],
    }


def test_usage_is_summed_per_agent_and_tool(world: World) -> None:
    call(world, "acme")
    call(world, "acme", duration_us=1500, bytes_in=10, bytes_out=20)
    call(world, "acme", outcome=Outcome.TOOL_ERROR)
    call(world, "acme", tool="slow", duration_us=2_000_000)
    call(world, "acme", agent="other/thing", outcome=Outcome.TIMEOUT)
    retried = call(world, "acme", agent="other/thing")
    world.recorder.record(retried)  # recorded twice, counted once
    call(world, "other")
    call(world, "caller", outcome=Outcome.RPC_ERROR)

    # No agent: the calls this account made, of every agent; the API flushes before it reads.
    mine = world.get(world.acme)
    assert mine.status_code == 200, mine.text
    assert mine.json()["scope"] == "account"
    assert _sums(mine.json()) == {
        ("acme/echo", "echo"): {
            "agent": "acme/echo",
            "tool": "echo",
            "calls": 3,
            "ok": 2,
            "errors": 1,
            "duration_ms_total": 6.5,
            "bytes_in": 210,
            "bytes_out": 620,
        },
        ("acme/echo", "slow"): {
            "agent": "acme/echo",
            "tool": "slow",
            "calls": 1,
            "ok": 1,
            "errors": 0,
            "duration_ms_total": 2000.0,
            "bytes_in": 100,
            "bytes_out": 300,
        },
        ("other/thing", "echo"): {
            "agent": "other/thing",
            "tool": "echo",
            "calls": 2,
            "ok": 1,
            "errors": 1,
            "duration_ms_total": 5.0,
            "bytes_in": 200,
            "bytes_out": 600,
        },
    }
    assert list(_sums(mine.json())) == [("acme/echo", "echo"), ("acme/echo", "slow"), ("other/thing", "echo")]
    assert world.recorder.stats.duplicates == 1

    # The agent's owner: every caller's calls of it.
    agent = world.get(world.acme, agent="acme/echo").json()
    assert agent["scope"] == "agent"
    assert {k: (v["calls"], v["errors"]) for k, v in _sums(agent).items()} == {
        ("acme/echo", "echo"): (5, 2),
        ("acme/echo", "slow"): (1, 0),
    }
    # Other accounts see their own calls only.
    theirs = world.get(world.other).json()
    assert {k: v["calls"] for k, v in _sums(theirs).items()} == {("acme/echo", "echo"): 1}
    assert {k: v["calls"] for k, v in _sums(world.get(world.caller).json()).items()} == {
        ("acme/echo", "echo"): 1
    }


def test_only_owners_and_members_see_every_caller_of_an_agent(world: World) -> None:
    call(world, "other")
    refused = world.get(world.other, agent="acme/echo")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["message"] == 'account "other" is neither owner nor member of the namespace "acme"'
    assert "without --agent" in error["hint"]
    missing = world.get(world.acme, agent="nobody/echo")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == 'no namespace "nobody"'
    invalid = world.get(world.acme, agent="Not A Name")
    assert invalid.status_code == 400
    assert invalid.json()["error"]["message"].startswith('agent name "Not A Name"')


def test_since_and_until_select_by_start_time(world: World) -> None:
    now_us = time.time_ns() // 1000
    call(world, "acme", tool="old", started_us=now_us - 3 * 24 * HOUR_US)
    call(world, "acme", tool="hours", started_us=now_us - 2 * HOUR_US)
    call(world, "acme", tool="recent", started_us=now_us - 60 * 1_000_000)

    def tools(**params: Any) -> list[str]:
        answer = world.get(world.acme, **params)
        assert answer.status_code == 200, answer.text
        return [row["tool"] for row in answer.json()["summary"]]

    assert tools() == ["hours", "old", "recent"]
    assert tools(since="1h") == ["recent"]
    assert tools(since="7d") == ["hours", "old", "recent"]
    assert tools(since=str((now_us - 3 * HOUR_US) / 1e6)) == ["hours", "recent"]  # Unix seconds
    three_hours_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_us / 1e6 - 3 * 3600))
    assert tools(since=three_hours_ago) == ["hours", "recent"]
    assert tools(since="2d", until="1h") == ["hours"]
    body = world.get(world.acme, since=three_hours_ago).json()
    assert body["since"].startswith(three_hours_ago[:-1])

    bad = world.get(world.acme, since="yesterday")
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == '"yesterday" is not a time'
    assert "7d" in bad.json()["error"]["hint"]


OUT_OF_RANGE = [
    "99999999999999w",  # an age before year 1
    "0001-01-01T00:00:00+05:00",  # year 0 in UTC
    "9999-12-31T23:59:59-05:00",  # year 10000 in UTC
    "1e300",  # Unix seconds
    "-1e300",
    "inf",
]


@pytest.mark.parametrize("which", ["since", "until"])
def test_out_of_range_times_are_a_400_with_one_line(world: World, which: str) -> None:
    call(world, "acme")
    for text in OUT_OF_RANGE:
        answer = world.get(world.acme, **{which: text})
        assert answer.status_code == 400, (text, answer.text)
        error = answer.json()["error"]
        assert (
            error["message"]
            == f'"{text}" is out of range: a time must fall between the years 1 and 9999 in UTC'
        )
        assert "\n" not in error["message"]
    long = world.get(world.acme, **{which: "9" * 5000 + "w"})
    assert long.status_code == 400 and "too long" in long.json()["error"]["message"]
    # The edges themselves are times, and the registry kept serving.
    edges = world.get(world.acme, since="0001-01-01T00:00:00Z", until="9999-12-31T23:59:59Z")
    assert edges.status_code == 200, edges.text
    assert edges.json()["summary"][0]["calls"] == 1


def test_events_lists_the_newest_raw_events(world: World) -> None:
    now_us = time.time_ns() // 1000
    made = [call(world, "acme", started_us=now_us - n * 1_000_000) for n in range(5)]
    call(world, "other", started_us=now_us)  # not acme's
    answer = world.get(world.acme, events=3).json()
    assert [e["id"] for e in answer["events"]] == [e.id for e in made[:3]]
    assert answer["events"][0] == {"account": "acme", **made[0].to_dict()}
    assert world.get(world.acme, events=1001).status_code == 422
    # The owner sees every caller; the same start time orders by id.
    everyone = world.get(world.acme, agent="acme/echo", events=1000).json()["events"]
    assert [e["account"] for e in everyone] == ["acme", "other", "acme", "acme", "acme", "acme"]


def test_events_recorded_before_a_stop_are_there_after_a_restart(world: World) -> None:
    made = [call(world, "acme") for _ in range(50)]
    assert world.recorder.stats.pending == 50  # the flush interval is an hour
    world.reg.stop()
    world.reg = start_registry(world.reg.data_dir, world.reg.database_url, usage_flush_interval=3600.0)
    body = world.get(world.acme, events=100).json()
    assert sorted(e["id"] for e in body["events"]) == sorted(e.id for e in made)
    assert body["summary"][0]["calls"] == 50


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_usage_json_and_table(world: World, cli: Any) -> None:
    call(world, "acme", duration_us=1_500_000, bytes_out=4096)
    call(world, "acme", duration_us=250_000, outcome=Outcome.TOOL_ERROR)
    call(world, "other", duration_us=250_000)
    registry = ("--registry", world.reg.url, "--token", world.acme)

    result = cli("usage", "--json", *registry)
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["scope"] == "account"
    assert [(r["agent"], r["tool"], r["calls"], r["errors"]) for r in body["summary"]] == [
        ("acme/echo", "echo", 2, 1)
    ]

    result = cli("usage", "--agent", "acme/echo", "--since", "1h", "--events", "2", *registry)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("usage: every caller of acme/echo since ")
    assert lines[1].split() == ["agent", "tool", "calls", "ok", "errors", "time", "avg", "in", "out"]
    assert lines[2].split() == ["acme/echo", "echo", "3", "2", "1", "2.00s", "666.7ms", "300B", "4.6K"]
    assert lines[3] == ""
    assert lines[4].split()[:3] == ["started", "(UTC)", "account"]
    assert [line.split()[2:] for line in lines[5:]] == [
        ["other", "acme/echo", "echo", "1.0.0", "ok", "250.0ms"],
        ["acme", "acme/echo", "echo", "1.0.0", "tool-error", "250.0ms"],
    ]

    result = cli("usage", "--since", "last week", *registry)
    assert result.exit_code == 2
    assert 'error: "last week" is not a time' in result.stderr
    for option in ("--since", "--until"):
        for text in ("99999999999999w", "0001-01-01T00:00:00+05:00"):
            result = cli("usage", option, text, *registry)
            assert result.exit_code == 2, (option, text, result.stderr)
            assert result.stderr.startswith(f'error: "{text}" is out of range'), result.stderr
            assert "Traceback" not in result.stderr

    result = cli("usage", "--agent", "acme/echo", "--registry", world.reg.url, "--token", world.other)
    assert result.exit_code == 4
    assert "neither owner nor member" in result.stderr


def test_cli_usage_without_a_token_says_how_to_get_one(world: World, cli: Any) -> None:
    result = cli("usage", "--registry", world.reg.url)
    assert result.exit_code == 4
    assert "mcpz login" in result.stderr


def test_cli_usage_with_nothing_recorded(world: World, cli: Any) -> None:
    result = cli("usage", "--registry", world.reg.url, "--token", world.acme)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "no usage (your calls)\n"
