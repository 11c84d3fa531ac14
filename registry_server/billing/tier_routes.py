"""`GET /v1/billing/tier`: the caller's platform tier, its limits, and its calls this month.

Any token with scope `read` or `call` sees its own account's. The calls are the gateway's own
counter (what it enforces), so they include calls in flight; 0 in a limit means unlimited.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import anyio.to_thread
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from registry_server.accounts.auth import require
from registry_server.accounts.http import Caller
from registry_server.accounts.service import Principal
from registry_server.billing import service_tiers
from registry_server.billing.quotas import Quotas
from registry_server.billing.tiers import SECOND, MonthCounter, month_of
from registry_server.http import State
from registry_server.openapi import errors
from registry_server.state import RegistryState

router = APIRouter(tags=["billing"])


class TierLimits(BaseModel):
    calls_per_month: int = Field(description="Per account, calendar month in UTC; 0: unlimited")
    calls_per_second: int = Field(description="Per key (token), a token bucket; 0: unlimited")
    sessions: int = Field(description="Open gateway sessions per account; 0: unlimited")


class TierOut(BaseModel):
    account: str
    tier: str
    assigned: bool = Field(description="False: the account has the registry's default tier")
    limits: TierLimits
    calls_this_month: int = Field(description="tools/calls counted this calendar month (UTC)")
    month_start: datetime
    resets_at: datetime = Field(description="When calls_this_month starts again from 0")


def _view(state: RegistryState, principal: Principal | None) -> service_tiers.AccountTierView:
    settings = state.settings
    principal = require(
        principal, "call" if principal is not None and principal.has("call") else "read", db=state.db
    )
    with state.db.session() as session:
        return service_tiers.show_tier(session, principal.account_name, settings.tiers, settings.default_tier)


def _counted(state: RegistryState, account_id: int) -> MonthCounter:
    """Without a gateway (an app serving no calls): the month's calls as the database has them."""
    start, end = month_of(time.time_ns())
    with state.db.session() as session:
        return MonthCounter(
            start, end, service_tiers.calls_in(session, account_id, start // 1000, end // 1000)
        )


@router.get("/v1/billing/tier", response_model=TierOut, responses=errors(401, 403))
async def tier(request: Request, state: State, principal: Caller) -> TierOut:
    """The caller's tier, its limits, and its calls this month."""
    view = await anyio.to_thread.run_sync(lambda: _view(state, principal))
    assert principal is not None  # _view refused anonymous callers
    quotas: Quotas | None = getattr(request.app.state, "quotas", None)
    if quotas is not None:
        counter = await quotas.calls_this_month(principal.account_id)
    else:
        account_id = principal.account_id
        counter = await anyio.to_thread.run_sync(lambda: _counted(state, account_id))
    t = view.tier
    return TierOut(
        account=view.account,
        tier=t.name,
        assigned=view.assigned,
        limits=TierLimits(
            calls_per_month=t.calls_per_month, calls_per_second=t.calls_per_second, sessions=t.sessions
        ),
        calls_this_month=counter.count,
        month_start=datetime.fromtimestamp(counter.month_start // SECOND, UTC),
        resets_at=datetime.fromtimestamp(counter.month_end // SECOND, UTC),
    )
