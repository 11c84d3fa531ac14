"""Accounts' platform tiers in the database: read and set one, and count an account's calls in a
month (what the gateway's monthly counter starts from). Each function takes the caller's session."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mcpz.errors import UsageError
from registry_server.accounts.namespaces import find_account
from registry_server.billing.models import AccountTier
from registry_server.billing.tiers import Tier
from registry_server.usage.models import UsageEventRow


@dataclass(frozen=True)
class AccountTierView:
    account: str
    tier: Tier
    assigned: bool  # False: the account has no row, so it has the default tier


def tier_name(session: Session, account_id: int) -> str | None:
    """The tier assigned to the account, None when it has the default one."""
    return session.scalar(select(AccountTier.tier).where(AccountTier.account_id == account_id))


def resolve(tiers: tuple[Tier, ...], default: str, name: str | None) -> Tier:
    """The tier called `name`; the default for None or for a tier no longer configured."""
    by_name = {t.name: t for t in tiers}
    return by_name.get(name or default) or by_name[default]


def show_tier(session: Session, account: str, tiers: tuple[Tier, ...], default: str) -> AccountTierView:
    """`account` (a name or a wallet address) and its tier."""
    owner = find_account(session, account)
    name = tier_name(session, owner.id)
    return AccountTierView(
        owner.name, resolve(tiers, default, name), name is not None and name in _names(tiers)
    )


def set_tier(
    session: Session, account: str, tier: str, tiers: tuple[Tier, ...], default: str
) -> AccountTierView:
    """Give `account` the tier called `tier`, one of `tiers` (else a UsageError naming them)."""
    if tier not in _names(tiers):
        raise UsageError(
            f"no tier {tier!r}: the configured tiers are {', '.join(_names(tiers))}",
            hint="tiers are [tiers.NAME] tables in configs/registry.toml",
        )
    owner = find_account(session, account)
    row = session.get(AccountTier, owner.id)
    if row is None:
        session.add(AccountTier(account_id=owner.id, tier=tier))
    else:
        row.tier = tier
    return AccountTierView(owner.name, resolve(tiers, default, tier), True)


def calls_in(session: Session, account_id: int, start_us: int, end_us: int) -> int:
    """Usage events of the account that started in [start_us, end_us): every `tools/call` that
    reached an agent."""
    count = session.scalar(
        select(func.count())
        .select_from(UsageEventRow)
        .where(
            UsageEventRow.account_id == account_id,
            UsageEventRow.started_us >= start_us,
            UsageEventRow.started_us < end_us,
        )
    )
    return int(count or 0)


def _names(tiers: tuple[Tier, ...]) -> list[str]:
    return [t.name for t in tiers]
