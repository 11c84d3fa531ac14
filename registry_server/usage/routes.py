"""`GET /v1/usage`: usage events summed per agent and tool, and optionally the newest raw events.

Any token with scope `read` or `call` sees the calls its own account made. With `agent=ns/name`
for an agent in a namespace the account owns or is a member of, it sees every caller's calls of
that agent. Sums are done by the database (GROUP BY agent, tool).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, case, func, select

from mcpz.errors import NotFoundError, UsageError
from mcpz.instants import parse_instant
from mcpz.names import name_problem
from registry_server.accounts.auth import Forbidden, require
from registry_server.accounts.http import Caller
from registry_server.accounts.models import Account, Namespace
from registry_server.accounts.namespaces import role_of
from registry_server.accounts.service import Principal
from registry_server.http import State
from registry_server.openapi import AGENT_SCHEMA, errors
from registry_server.state import RegistryState
from registry_server.usage.events import Outcome
from registry_server.usage.models import UsageEventRow
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
    if agent is None:
        return "account"
    namespace = agent.split("/")[0]
    with state.db.session() as session:
        if session.get(Namespace, namespace) is None:
            raise NotFoundError(f'no namespace "{namespace}"')
        if role_of(session, principal.account_id, namespace) is None:
            raise Forbidden(
                f'account "{principal.account_name}" is neither owner nor member of the namespace '
                f'"{namespace}"',
                hint="without --agent you see your own calls of every agent",
            )
    return "agent"


def _query(
    state: RegistryState,
    principal: Principal,
    scope: str,
    agent: str | None,
    since: int | None,
    until: int | None,
    events: int,
) -> tuple[list[UsageSum], list[UsageEventOut]]:
    row = UsageEventRow
    where: list[ColumnElement[bool]] = []
    if scope == "account":
        where.append(row.account_id == principal.account_id)
    if agent is not None:
        where.append(row.agent == agent)
    if since is not None:
        where.append(row.started_us >= since)
    if until is not None:
        where.append(row.started_us < until)
    ok = func.coalesce(func.sum(case((row.outcome == Outcome.OK, 1), else_=0)), 0)
    with state.db.session() as session:
        sums = session.execute(
            select(
                row.agent,
                row.tool,
                func.count(),
                ok,
                func.coalesce(func.sum(row.duration_us), 0),
                func.coalesce(func.sum(row.bytes_in), 0),
                func.coalesce(func.sum(row.bytes_out), 0),
            )
            .where(*where)
            .group_by(row.agent, row.tool)
            .order_by(row.agent, row.tool)
        ).all()
        newest = (
            session.execute(
                select(row, Account.name)
                .join(Account, Account.id == row.account_id)
                .where(*where)
                .order_by(row.started_us.desc(), row.id)
                .limit(events)
            ).all()
            if events
            else []
        )
    # PostgreSQL sums BIGINTs as NUMERIC (Decimal): back to int for JSON.
    summary = [
        UsageSum(
            agent=agent_name,
            tool=tool,
            calls=int(calls),
            ok=int(oks),
            errors=int(calls) - int(oks),
            duration_ms_total=int(duration_us) / 1000,
            bytes_in=int(bytes_in),
            bytes_out=int(bytes_out),
        )
        for agent_name, tool, calls, oks, duration_us, bytes_in, bytes_out in sums
    ]
    raw = [UsageEventOut(account=name, **stored.event().to_dict()) for stored, name in newest]
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
    if agent is not None and name_problem(agent):
        raise UsageError(f'agent name "{agent}" {name_problem(agent)}')
    scope = await anyio.to_thread.run_sync(lambda: _allowed_scope(state, principal, agent))
    assert principal is not None  # _allowed_scope refused anonymous callers
    now = datetime.now(UTC)
    start = parse_instant(since, now) if since else None
    end = parse_instant(until, now) if until else None
    await _catch_up(request)
    summary, raw = await anyio.to_thread.run_sync(
        lambda: _query(
            state,
            principal,
            scope,
            agent,
            _micros(start) if start else None,
            _micros(end) if end else None,
            events,
        )
    )
    return UsageOut(scope=scope, agent=agent, since=start, until=end, summary=summary, events=raw)
