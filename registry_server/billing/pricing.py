"""A listing's prices, pure: the plans, what one call costs, and when a change of price applies.

A listing offers nothing to pay (free), a per-call plan (one price, optionally per tool), a monthly
plan (a fee with included calls and an overage price per call), or both; and optionally N free
calls per consumer per month. A consumer without a subscription pays per call; with the monthly
plan, calls past the included ones cost the overage price.

Changes protect consumers: a change that only lowers prices applies at once; one that raises any
price, adds a charge, or takes away a cheaper way applies after the notice period. Its lowering
parts still apply at once (`schedule`), so nobody waits for a decrease.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

PER_CALL = "per-call"
MONTHLY = "monthly"
PLANS = (PER_CALL, MONTHLY)


@dataclass(frozen=True)
class Pricing:
    per_call: int | None = None  # base units; None: no per-call plan
    tools: Mapping[str, int] = field(default_factory=dict)  # per-tool prices of the per-call plan
    monthly_fee: int | None = None  # None: no monthly plan
    included: int = 0  # calls included in the monthly fee
    overage: int | None = None  # per call past `included`; None: such calls are refused
    free_calls: int = 0  # per consumer per month, before any plan applies
    charge_tool_errors: bool = False  # a call that ends in a tool error is charged too
    x402: bool = False  # the per-call plan may also be paid per call with x402 (docs/x402.md), by anyone

    @property
    def free(self) -> bool:
        return self.per_call is None and self.monthly_fee is None

    def plans(self) -> list[str]:
        return [
            p
            for p, on in ((PER_CALL, self.per_call is not None), (MONTHLY, self.monthly_fee is not None))
            if on
        ]

    def per_call_price(self, tool: str) -> int | None:
        """What an unsubscribed consumer pays for one call of `tool`; None: not offered without a plan."""
        if self.free:
            return 0
        if self.per_call is None:
            return None
        return self.tools.get(tool, self.per_call)

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_call": self.per_call,
            "tools": dict(sorted(self.tools.items())),
            "monthly_fee": self.monthly_fee,
            "included": self.included,
            "overage": self.overage,
            "free_calls": self.free_calls,
            "charge_tool_errors": self.charge_tool_errors,
            # Only when on: pricings stored before x402 existed keep the same JSON.
            **({"x402": True} if self.x402 else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pricing:
        return cls(
            per_call=data.get("per_call"),
            tools=dict(data.get("tools") or {}),
            monthly_fee=data.get("monthly_fee"),
            included=int(data.get("included") or 0),
            overage=data.get("overage"),
            free_calls=int(data.get("free_calls") or 0),
            charge_tool_errors=bool(data.get("charge_tool_errors")),
            x402=bool(data.get("x402")),
        )

    def check(self) -> None:
        """Raise ValueError naming the first field out of range."""
        amounts = {"per-call price": self.per_call, "monthly fee": self.monthly_fee, "overage": self.overage}
        for label, value in {**amounts, **{f"price of tool {t}": v for t, v in self.tools.items()}}.items():
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"the {label} must be a non-negative amount")
        if self.tools and self.per_call is None:
            raise ValueError("per-tool prices need a per-call price for the other tools")
        if self.included < 0 or self.free_calls < 0:
            raise ValueError("included and free calls must not be negative")
        if self.monthly_fee is None and (self.included or self.overage is not None):
            raise ValueError("included calls and an overage price belong to a monthly plan (--monthly)")
        if self.x402 and self.per_call is None:
            raise ValueError("x402 pays per call: it needs a per-call price")


FREE = Pricing()


def _amount(units: int, decimals: int) -> str:
    whole, frac = divmod(units, 10**decimals)
    digits = str(frac).rjust(decimals, "0").rstrip("0").ljust(min(2, decimals), "0")
    return f"{whole}.{digits}" if digits else str(whole)


def label(pricing: Pricing, decimals: int, currency: str) -> str:
    """A listing's price in a few words (at most 32 characters): what search results show."""
    if pricing.free:
        return "free"
    if pricing.per_call is not None:
        cheapest = min([pricing.per_call, *pricing.tools.values()])
        prefix = "from " if cheapest != max([pricing.per_call, *pricing.tools.values()]) else ""
        text = f"{prefix}{_amount(cheapest, decimals)} {currency}/call"
    else:
        assert pricing.monthly_fee is not None
        text = f"{_amount(pricing.monthly_fee, decimals)} {currency}/month"
    return text[:32]


def describe(pricing: Pricing, decimals: int, currency: str) -> list[str]:
    """Each plan of a pricing as one line of text, for the agent's page and `mcpz billing plans`."""
    if pricing.free:
        return ["Free: every call."]
    lines = []
    if pricing.free_calls:
        lines.append(f"The first {pricing.free_calls} calls each month are free.")
    if pricing.per_call is not None:
        lines.append(f"Per call: {_amount(pricing.per_call, decimals)} {currency}.")
        for tool, price in sorted(pricing.tools.items()):
            lines.append(f"Tool {tool}: {_amount(price, decimals)} {currency} per call.")
    if pricing.monthly_fee is not None:
        over = (
            f"then {_amount(pricing.overage, decimals)} {currency} per call"
            if pricing.overage is not None
            else "no calls past them"
        )
        fee = _amount(pricing.monthly_fee, decimals)
        lines.append(f"Monthly: {fee} {currency} with {pricing.included} calls included, {over}.")
    lines.append(
        "Calls that end in a tool error are charged too."
        if pricing.charge_tool_errors
        else "Only calls that succeed are charged."
    )
    return lines


@dataclass(frozen=True)
class Quote:
    """What a call will cost: `price` units under `plan`; or `refusal` says why it may not run."""

    price: int = 0
    plan: str = ""  # "free", "free-call", "per-call", "monthly", "overage"
    refusal: str = ""


def quote(pricing: Pricing, tool: str, *, subscribed: bool, calls_this_month: int) -> Quote:
    """The price of the next call of `tool` by a consumer who made `calls_this_month` charged calls."""
    if pricing.free:
        return Quote(0, "free")
    if calls_this_month < pricing.free_calls:
        return Quote(0, "free-call")
    if subscribed and pricing.monthly_fee is not None:
        if calls_this_month - pricing.free_calls < pricing.included:
            return Quote(0, MONTHLY)
        if pricing.overage is None:
            return Quote(refusal="the monthly plan's included calls are used up and it has no overage price")
        return Quote(pricing.overage, "overage")
    price = pricing.per_call_price(tool)
    if price is None:
        return Quote(refusal="this agent is sold by subscription only")
    return Quote(price, PER_CALL)


def _higher(old: int | None, new: int | None) -> bool:
    """True when `new` costs more: None is 'not offered', dearer than any price."""
    if new is None:
        return old is not None
    return old is not None and new > old


def raises(old: Pricing, new: Pricing) -> bool:
    """True when `new` costs some consumer more than `old` for anything."""
    if old.free:
        return not new.free
    tools = set(old.tools) | set(new.tools) | {""}
    return (
        any(_higher(old.per_call_price(t), new.per_call_price(t)) for t in tools)
        or _higher(old.monthly_fee, new.monthly_fee)
        or (old.monthly_fee is not None and new.included < old.included)
        or (old.monthly_fee is not None and _higher(old.overage, new.overage))
        or new.free_calls < old.free_calls
        or (new.charge_tool_errors and not old.charge_tool_errors)
    )


def _lower(old: int | None, new: int | None) -> int | None:
    return old if old is None or new is None else min(old, new)


def cheaper_of(old: Pricing, new: Pricing) -> Pricing:
    """What may apply at once: each of `new`'s decreases, none of its increases."""
    if old.free:
        return old
    tools: dict[str, int] = {}
    if old.per_call is not None:
        for tool in set(old.tools) | set(new.tools):
            was, will = old.per_call_price(tool), new.per_call_price(tool)
            if was is not None:
                tools[tool] = was if will is None else min(was, will)
    return replace(
        old,
        per_call=_lower(old.per_call, new.per_call),
        tools=tools,
        monthly_fee=_lower(old.monthly_fee, new.monthly_fee),
        # More included calls only where a monthly plan stays: without one, `included` is invalid.
        included=max(old.included, new.included)
        if old.monthly_fee is not None and new.monthly_fee is not None
        else old.included,
        overage=_lower(old.overage, new.overage),
        free_calls=max(old.free_calls, new.free_calls),
        charge_tool_errors=old.charge_tool_errors and new.charge_tool_errors,
    )


def schedule(current: Pricing, new: Pricing, now_us: int, notice_us: int) -> list[tuple[int, Pricing]]:
    """The (effective time, pricing) rows a change makes: at once, or at once in part and the rest later."""
    if not raises(current, new):
        return [(now_us, new)]
    rows = [(now_us + notice_us, new)]
    now = cheaper_of(current, new)
    if now != current:
        rows.insert(0, (now_us, now))
    return rows
