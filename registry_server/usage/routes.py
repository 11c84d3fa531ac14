"""`GET /v1/usage`: usage events summed per agent and tool, and optionally the newest raw events.

Any token with scope `read` or `call` sees the calls its own account made. With `agent=ns/name`
for an agent in a namespace the account owns or is a member of, it sees every caller's calls of
that agent. Sums are done by the database (GROUP BY agent, tool).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from mcpz.instants import parse_instant
from registry_server.accounts.auth import require
from registry_server.accounts.http import Caller
from registry_server.accounts.service import Principal
from registry_server.http import State, checked_agent_name
from registry_server.openapi import AGENT_SCHEMA, errors
from registry_server.orm import utcnow
from registry_server.state import RegistryState
from registry_server.usage import report
from registry_server.usage.service import UsageRecorder

router = APIRouter(tags=["usage"])

MAX_EVENTS = 1000
FLUSH_WAIT = 2.0
"""Seconds a query waits for events still on their way to the database, at most."""


class UsageSum(BaseModel):
    agent: str
    tool: str
    calls: int
    ok: int = Field(description='Calls whose outcome was "ok"')
    errors: int = Field(description="Every other outcome: tool or RPC error, timeout, cancelled, ...")
    duration_ms_total: float
    bytes_in: int
    bytes_out: int


class UsageEventOut(BaseModel):
    id: str
    account: str = Field(description="The calling account's name")
    account_id: int
    token_id: int | None
    agent: str
    version: str
    tool: str
    deployment: str
    replica_id: str
    node_id: str
    started_us: int = Field(description="Unix time of the call's start, in microseconds")
    duration_us: int
    outcome: str
    bytes_in: int
    bytes_out: int


class UsageOut(BaseModel):
    scope: str = Field(description='"account": the calls this account made; "agent": every caller of `agent`')
    agent: str | None
    since: datetime | None
    until: datetime | None
    summary: list[UsageSum]
    events: list[UsageEventOut] = Field(description="The newest `events` raw events, newest first")


def _micros(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


def _allowed_scope(state: RegistryState, principal: Principal | None, agent: str | None) -> str:
    """ "account" or "agent": whose calls the caller may see; else Unauthenticated/Forbidden/NotFound."""
    principal = require(
        principal, "call" if principal is not None and principal.has("call") else "read", db=state.db
    )
    with state.db.session() as session:
        return report.scope_for(session, principal, agent)


def _query(
    state: RegistryState, principal: Principal, query: report.Query
) -> tuple[list[UsageSum], list[UsageEventOut]]:
    with state.db.session() as session:
        totals, newest = report.usage(session, principal, query)
    summary = [
        UsageSum(
            agent=t.agent,
            tool=t.tool,
            calls=t.calls,
            ok=t.ok,
            errors=t.errors,
            duration_ms_total=t.duration_us / 1000,
            bytes_in=t.bytes_in,
            bytes_out=t.bytes_out,
        )
        for t in totals
    ]
    raw = [UsageEventOut(account=name, **event.to_dict()) for event, name in newest]
    return summary, raw


async def _catch_up(request: Request) -> None:
    """Let events recorded before this request reach the database, so a caller sees its own calls."""
    recorder: UsageRecorder | None = getattr(request.app.state, "usage", None)
    if recorder is None:
        return
    # Shielded: a slow database makes the answer a little stale, never interrupts a write.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(recorder.flush()), FLUSH_WAIT)


@router.get("/v1/usage", response_model=UsageOut, responses=errors(400, 401, 403, 404, 422))
async def usage(
    request: Request,
    state: State,
    principal: Caller,
    agent: Annotated[
        str | None,
        Query(
            description="namespace/name: every caller's calls of this agent", json_schema_extra=AGENT_SCHEMA
        ),
    ] = None,
    since: Annotated[str | None, Query(description="ISO 8601, Unix seconds, or an age (1h, 7d)")] = None,
    until: Annotated[str | None, Query(description="ISO 8601, Unix seconds, or an age (1h, 7d)")] = None,
    events: Annotated[int, Query(ge=0, le=MAX_EVENTS, description="Also return the newest N events")] = 0,
) -> UsageOut:
    """Calls summed per agent and tool: calls, ok, errors, total duration, bytes in and out."""
    if agent is not None:
        checked_agent_name(agent)
    scope = await anyio.to_thread.run_sync(lambda: _allowed_scope(state, principal, agent))
    assert principal is not None  # _allowed_scope refused anonymous callers
    now = utcnow()
    start = parse_instant(since, now) if since else None
    end = parse_instant(until, now) if until else None
    await _catch_up(request)
    summary, raw = await anyio.to_thread.run_sync(
        lambda: _query(
            state,
            principal,
            report.Query(
                scope=scope,
                agent=agent,
                since=_micros(start) if start else None,
                until=_micros(end) if end else None,
                events=events,
            ),
        )
    )
    return UsageOut(scope=scope, agent=agent, since=start, until=end, summary=summary, events=raw)
