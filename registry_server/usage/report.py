"""What was used: calls summed per agent and tool, and the newest raw events, for the calling
account's own calls or for every caller of an agent of a namespace the caller belongs to.

Each function takes the caller's session; `registry_server.usage.routes` parses and renders.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from mcpz.errors import NotFoundError
from registry_server.accounts.auth import Forbidden
from registry_server.accounts.models import Account, Namespace
from registry_server.accounts.namespaces import role_of
from registry_server.accounts.service import Principal
from registry_server.usage.events import Outcome, UsageEvent
from registry_server.usage.models import UsageEventRow

ACCOUNT = "account"
"""The scope of the calls the caller made, to any agent."""
AGENT = "agent"
"""The scope of every caller's calls of one agent."""


@dataclass(frozen=True)
class UsageTotal:
    """The calls of one tool of one agent in the window."""

    agent: str
    tool: str
    calls: int
    ok: int
    duration_us: int
    bytes_in: int
    bytes_out: int

    @property
    def errors(self) -> int:
        return self.calls - self.ok


@dataclass(frozen=True)
class Query:
    """Which events: `scope` ACCOUNT (the principal's own) or AGENT, an agent, a window in Unix
    microseconds ([since, until)), and how many of the newest raw events to return."""

    scope: str
    agent: str | None = None
    since: int | None = None
    until: int | None = None
    events: int = 0


def scope_for(session: Session, principal: Principal, agent: str | None) -> str:
    """ACCOUNT without `agent`; AGENT when the principal owns or is a member of its namespace;
    else NotFoundError (no such namespace) or Forbidden."""
    if agent is None:
        return ACCOUNT
    namespace = agent.split("/")[0]
    if session.get(Namespace, namespace) is None:
        raise NotFoundError(f'no namespace "{namespace}"')
    if role_of(session, principal.account_id, namespace) is None:
        raise Forbidden(
            f'account "{principal.account_name}" is neither owner nor member of the namespace "{namespace}"',
            hint="without --agent you see your own calls of every agent",
        )
    return AGENT


def usage(
    session: Session, principal: Principal, query: Query
) -> tuple[list[UsageTotal], list[tuple[UsageEvent, str]]]:
    """The totals per agent and tool, and the newest `query.events` events (newest first) with the
    name of the account that made each."""
    row = UsageEventRow
    where: list[ColumnElement[bool]] = []
    if query.scope == ACCOUNT:
        where.append(row.account_id == principal.account_id)
    if query.agent is not None:
        where.append(row.agent == query.agent)
    if query.since is not None:
        where.append(row.started_us >= query.since)
    if query.until is not None:
        where.append(row.started_us < query.until)
    ok = func.coalesce(func.sum(case((row.outcome == Outcome.OK, 1), else_=0)), 0)
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
            .limit(query.events)
        ).all()
        if query.events
        else []
    )
    # PostgreSQL sums BIGINTs as NUMERIC (Decimal): back to int.
    totals = [
        UsageTotal(
            agent=agent,
            tool=tool,
            calls=int(calls),
            ok=int(oks),
            duration_us=int(duration_us),
            bytes_in=int(bytes_in),
            bytes_out=int(bytes_out),
        )
        for agent, tool, calls, oks, duration_us, bytes_in, bytes_out in sums
    ]
    return totals, [(stored.event(), name) for stored, name in newest]
