"""Amounts of money: integers in the settlement token's base units, parsed and shown as decimal text.

The default token is a USD stablecoin with 6 decimals, so `0.002` is 2,000 units. Nothing here
(or anywhere near money) uses floats: text goes to integers through `decimal`-free string
arithmetic, so every amount a user types is exact or refused.
"""

from __future__ import annotations

import re

from mcpz.errors import UsageError

CURRENCY = "USDC"
DECIMALS = 6
MAX_UNITS = 10**30
"""Larger amounts are refused: no price, balance or credit is anywhere near this (10^24 dollars)."""

_AMOUNT = re.compile(r"(?P<whole>\d+)?(?:\.(?P<frac>\d+))?")


def parse_amount(text: str, *, decimals: int = DECIMALS, what: str = "amount") -> int:
    """`"0.002"` -> 2000 (with 6 decimals). Refuses signs, exponents, and more decimals than the token has."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    match = _AMOUNT.fullmatch(cleaned)
    if not cleaned or match is None or (match["whole"] is None and match["frac"] is None):
        raise UsageError(
            f'{what} "{text}" is not an amount: write a decimal number such as 0.002 or 10',
        )
    frac = match["frac"] or ""
    if len(frac.rstrip("0")) > decimals:
        raise UsageError(
            f'{what} "{text}" has more than {decimals} decimals, the smallest unit of {CURRENCY}'
        )
    frac = frac[:decimals].ljust(decimals, "0")
    units: int = int(match["whole"] or "0") * 10**decimals + int(frac or "0")
    if units > MAX_UNITS:
        raise UsageError(f'{what} "{text}" is too large')
    return units


def format_amount(units: int, *, decimals: int = DECIMALS, currency: str | None = None) -> str:
    """2000 -> `"0.002"`; 10_000_000 -> `"10.00"`: at least two decimals, no trailing zeros past them."""
    if not isinstance(units, int) or isinstance(units, bool):
        raise TypeError(f"money must be an int of base units, not {type(units).__name__}")
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**decimals)
    digits = str(frac).rjust(decimals, "0").rstrip("0").ljust(min(2, decimals), "0")
    text = f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"
    return f"{text} {currency}" if currency else text


def parse_bps(text: str, *, what: str = "share") -> int:
    """A share as basis points: `"25%"` or `"2500"` -> 2500; `"12.5%"` -> 1250."""
    cleaned = text.strip()
    if cleaned.endswith("%"):
        units = parse_amount(cleaned[:-1], decimals=2, what=what)  # percent with 2 decimals = bps
    elif cleaned.isdigit():
        units = int(cleaned)
    else:
        raise UsageError(f'{what} "{text}" is not a share: write basis points (2500) or a percentage (25%)')
    if units > 10_000:
        raise UsageError(f'{what} "{text}" is more than 100%')
    return units
