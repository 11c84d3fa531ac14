"""Billing's work at a month's turn: renew monthly subscriptions, close the month that ended.

Run from the billing worker's tick (any number of registry processes may run it): renewal is
idempotent per subscription and month (the ledger key `subscription:{id}:{YYYY-MM}`), closing per
account and month (invoices.close_period). A month is closed once `CLOSE_GRACE_US` has passed after
it ended, so that calls made in its last seconds are written and rated first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry_server.billing import invoices, service
from registry_server.billing.models import Subscription

log = logging.getLogger("registry_server.billing")

CLOSE_GRACE_US = 10 * 60 * 1_000_000


@dataclass(frozen=True)
class Renewals:
    renewed: int
    ended: int


def renew_subscriptions(session: Session, fee_bps: int, at_us: int) -> Renewals:
    """Charge this month for every active subscription paid only through an earlier one; end the
    subscriptions the balance does not cover (or whose agent no longer offers a monthly plan)."""
    month = service.month_of(at_us)
    due = session.scalars(
        select(Subscription)
        .where(Subscription.ended_us.is_(None), Subscription.paid_through < month)
        .order_by(Subscription.id)
    ).all()
    renewed = ended = 0
    for subscription in due:
        fee = service.prices_of(session, subscription.agent, at_us).current.monthly_fee
        try:
            if fee is None:
                raise service.InsufficientBalance(f"{subscription.agent} no longer has a monthly plan")
            service.charge_fee(session, subscription, fee, fee_bps, at_us)
        except service.InsufficientBalance as e:
            subscription.ended_us = at_us
            ended += 1
            log.info(
                "subscription ended at renewal",
                extra={"subscription": subscription.id, "agent": subscription.agent, "why": str(e)},
            )
            continue
        subscription.paid_through = month
        renewed += 1
    return Renewals(renewed, ended)


def month_closing_due(at_us: int) -> str | None:
    """The month to close at `at_us`: the one before, once the grace after its end has passed."""
    if at_us - service.month_start_us(at_us) < CLOSE_GRACE_US:
        return None
    return invoices.previous_period(at_us)
