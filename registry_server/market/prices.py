"""Listings show their agent's price: the label search results carry (`Listing.pricing`), kept in
step with billing's prices after each change and by the periodic sweep (a raise that waited for
its notice takes effect without anyone touching the listing)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry_server.billing import service as billing
from registry_server.billing.pricing import label
from registry_server.market.models import Listing


def refresh_pricing(session: Session, names: Iterable[str] | None, *, decimals: int, currency: str) -> int:
    """Set the price label of the named listings (None: of every agent that has a price); returns how
    many changed."""
    agents = billing.priced_agents(session) if names is None else list(names)
    if not agents:
        return 0
    changed = 0
    for listing in session.scalars(select(Listing).where(Listing.name.in_(agents))):
        text = label(billing.prices_of(session, listing.name).current, decimals, currency)
        if listing.pricing != text:
            listing.pricing = text
            changed += 1
    return changed
