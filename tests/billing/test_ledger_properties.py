"""Properties of billing's pure core, with hypothesis: the ledger (every transaction sums to zero,
balances are the sums of entries, posting twice changes nothing), splits exact for any amount and
any basis points, price changes never dearer at once, quotes never above the plan's price, and
amounts of money that survive text both ways."""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpz.errors import UsageError
from mcpz.money import MAX_UNITS, format_amount, parse_amount
from registry_server.billing import ledger, pricing
from registry_server.billing.ledger import Ledger, LedgerError, Transaction
from registry_server.billing.pricing import Pricing, quote

AMOUNTS = st.integers(min_value=0, max_value=10**24)
FEE_BPS = st.integers(min_value=0, max_value=10_000)
ACCOUNTS = st.sampled_from(
    [
        ledger.consumer_available(1),
        ledger.consumer_reserved(1),
        ledger.consumer_available(2),
        ledger.creator_pending(7),
        ledger.creator_available(7),
        ledger.PLATFORM_FEES,
        ledger.PLATFORM_CREDIT,
    ]
)


@st.composite
def shares(draw: st.DrawFn) -> list[tuple[int, int]]:
    """1-6 creators with non-negative basis points summing to 10,000 (zeros allowed)."""
    count = draw(st.integers(min_value=1, max_value=6))
    cuts = sorted(draw(st.lists(st.integers(0, 10_000), min_size=count - 1, max_size=count - 1)))
    bounds = [0, *cuts, 10_000]
    return [(100 + i, bounds[i + 1] - bounds[i]) for i in range(count)]


@st.composite
def balanced_legs(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Legs that sum to zero: random amounts on random accounts, the last leg taking the rest."""
    legs = draw(
        st.lists(st.tuples(ACCOUNTS, st.integers(-(10**12), 10**12).filter(bool)), min_size=1, max_size=6)
    )
    rest = -sum(amount for _, amount in legs)
    others = [a for a in (ledger.PLATFORM_CREDIT, ledger.PLATFORM_FEES) if a != legs[-1][0]]
    legs.append((others[0], rest))
    return legs


@st.composite
def transactions(draw: st.DrawFn) -> Transaction:
    """A transaction under one of few keys, so that keys are often reused (alike or not)."""
    key = draw(st.sampled_from([f"k{i}" for i in range(8)]))
    legs = draw(balanced_legs().filter(lambda legs: any(v for v in _merged(legs).values())))
    return ledger.transaction(key, draw(st.sampled_from(["usage", "credit"])), legs)


def _merged(legs: list[tuple[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = defaultdict(int)
    for account, amount in legs:
        merged[account] += amount
    return merged


# -- splits


@given(AMOUNTS, FEE_BPS, shares())
def test_a_split_is_exact_the_fee_rounds_down_and_each_part_is_within_one_unit(
    amount: int, fee_bps: int, creators: list[tuple[int, int]]
) -> None:
    fee, parts = ledger.split(amount, fee_bps, creators)
    assert fee == amount * fee_bps // 10_000  # the floor of the exact fee
    assert fee + sum(part for _, part in parts) == amount
    assert [account for account, _ in parts] == [account for account, _ in creators]
    rest = amount - fee
    for (_, part), (_, bps) in zip(parts, creators, strict=True):
        exact = Fraction(rest * bps, 10_000)
        assert part >= 0 and abs(part - exact) < 1
    # Largest remainder: a creator got the extra unit only if nobody without one had a larger remainder.
    got = [part - rest * bps // 10_000 for (_, part), (_, bps) in zip(parts, creators, strict=True)]
    remainder = [rest * bps % 10_000 for _, bps in creators]
    assert set(got) <= {0, 1}
    for i in range(len(parts)):
        for j in range(len(parts)):
            if got[i] and not got[j]:
                assert remainder[i] >= remainder[j]


@given(st.integers(max_value=-1) | st.integers(min_value=0).map(lambda n: n + 0.5), FEE_BPS)
def test_a_split_refuses_negative_or_fractional_amounts(amount: object, fee_bps: int) -> None:
    with pytest.raises(LedgerError):
        ledger.split(amount, fee_bps, [(1, 10_000)])  # type: ignore[arg-type]


@given(AMOUNTS, st.integers(min_value=10_001) | st.integers(max_value=-1))
def test_a_split_refuses_a_fee_outside_0_to_100_percent(amount: int, fee_bps: int) -> None:
    with pytest.raises(LedgerError):
        ledger.split(amount, fee_bps, [(1, 10_000)])


# -- the ledger


@given(st.lists(transactions(), max_size=30))
def test_posted_transactions_sum_to_zero_and_balances_are_the_sums_of_entries(
    txns: list[Transaction],
) -> None:
    book = Ledger()
    posted: dict[str, Transaction] = {}
    for txn in txns:
        assert sum(e.amount for e in txn.entries) == 0
        known = posted.get(txn.key)
        if known is not None and not known.same_as(txn):
            with pytest.raises(LedgerError, match="already used"):
                book.post(txn)
            continue
        assert book.post(txn) is (known is None)
        posted.setdefault(txn.key, txn)
    expected: dict[str, int] = defaultdict(int)
    for txn in posted.values():
        for entry in txn.entries:
            expected[entry.account] += entry.amount
    for account in {*expected, *book.balances}:
        assert book.balance(account) == expected.get(account, 0)
    book.verify()
    assert sum(book.balances.values()) == 0  # money is only moved, never made


@given(st.lists(transactions(), max_size=20))
def test_posting_everything_again_changes_nothing(txns: list[Transaction]) -> None:
    book = Ledger()
    first: dict[str, Transaction] = {}
    for txn in txns:
        if txn.key not in first:
            first[txn.key] = txn
            book.post(txn)
    balances = dict(book.balances)
    for txn in first.values():  # a retried batch: the same keys, the same entries, any order
        reordered = Transaction(txn.key, txn.kind, tuple(reversed(txn.entries)), txn.memo)
        assert book.post(reordered) is False
    assert dict(book.balances) == balances
    assert book.transactions == first


@given(balanced_legs(), st.integers(-(10**6), 10**6).filter(bool))
def test_an_unbalanced_transaction_is_refused(legs: list[tuple[str, int]], off: int) -> None:
    legs = [*legs, (ledger.consumer_available(9), off)]
    with pytest.raises(LedgerError, match="does not balance"):
        ledger.transaction("k", "usage", legs)


@given(st.integers(1, 10**9), st.sampled_from(["float", "bool", "text"]))
def test_a_transaction_refuses_amounts_that_are_not_integers(amount: int, kind: str) -> None:
    odd: object = {"float": amount + 0.0, "bool": True, "text": str(amount)}[kind]
    with pytest.raises((LedgerError, TypeError)):
        ledger.transaction("k", "usage", [("a", odd), ("b", -amount)])  # type: ignore[list-item]
    with pytest.raises(LedgerError):
        Transaction("k", "usage", (ledger.Entry("a", odd), ledger.Entry("b", -amount))).check()  # type: ignore[arg-type]
    with pytest.raises(LedgerError):
        ledger.transfer("k", "usage", "a", "b", odd)  # type: ignore[arg-type]


def test_a_transaction_needs_a_key_and_entries() -> None:
    with pytest.raises(LedgerError, match="key"):
        ledger.transaction("", "usage", [("a", 1), ("b", -1)])
    with pytest.raises(LedgerError, match="no entries"):
        ledger.transaction("k", "usage", [("a", 1), ("a", -1)])


# -- prices


def _price() -> st.SearchStrategy[int]:
    return st.integers(0, 10**7)


@st.composite
def pricings(draw: st.DrawFn) -> Pricing:
    """Any valid pricing (check() passes): free, per-call (maybe per tool), monthly, or both."""
    per_call = draw(st.none() | _price())
    tools = (
        draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), _price(), max_size=3))
        if per_call is not None
        else {}
    )
    monthly = draw(st.none() | _price())
    included = draw(st.integers(0, 20)) if monthly is not None else 0
    overage = draw(st.none() | _price()) if monthly is not None else None
    result = Pricing(
        per_call=per_call,
        tools=tools,
        monthly_fee=monthly,
        included=included,
        overage=overage,
        free_calls=draw(st.integers(0, 5)),
        charge_tool_errors=draw(st.booleans()),
    )
    result.check()
    return result


TOOLS = st.sampled_from(["a", "b", "c", "d"])


def _cost(q: pricing.Quote) -> int | None:
    """A quote's price; None when the call would be refused (dearer than any price)."""
    return None if q.refusal else q.price


def _not_dearer(now: int | None, before: int | None) -> bool:
    return before is None or (now is not None and now <= before)


@settings(max_examples=300)
@given(pricings(), pricings(), TOOLS, st.booleans(), st.integers(0, 40), st.integers(1, 10**6))
def test_a_change_of_price_is_never_dearer_at_once_and_the_new_price_comes_after_notice(
    old: Pricing, new: Pricing, tool: str, subscribed: bool, calls: int, notice: int
) -> None:
    now_us = 1_000_000_000
    rows = pricing.schedule(old, new, now_us, notice)
    assert rows[-1][1] == new  # whatever applies at once, the new pricing is where it ends
    assert [at for at, _ in rows] == sorted(at for at, _ in rows)
    immediate = [p for at, p in rows if at <= now_us]
    subscribed = subscribed and old.monthly_fee is not None  # as in the test below
    if not pricing.raises(old, new):
        assert rows == [(now_us, new)]
        return
    assert rows[-1][0] == now_us + notice
    for at_once in immediate:
        at_once.check()  # what applies at once is a valid pricing of its own
        # For every consumer, tool and month so far, the price at once is at most the old one.
        assert _not_dearer(
            _cost(quote(at_once, tool, subscribed=subscribed, calls_this_month=calls)),
            _cost(quote(old, tool, subscribed=subscribed, calls_this_month=calls)),
        )
        if old.monthly_fee is not None:
            assert at_once.monthly_fee is not None and at_once.monthly_fee <= old.monthly_fee
        assert not at_once.charge_tool_errors or old.charge_tool_errors
        assert not pricing.raises(old, at_once)


@settings(max_examples=300)
@given(pricings(), pricings(), TOOLS, st.booleans(), st.integers(0, 40))
def test_a_change_that_raises_nothing_applies_at_once_and_is_never_dearer(
    old: Pricing, new: Pricing, tool: str, subscribed: bool, calls: int
) -> None:
    if pricing.raises(old, new):
        return
    # Only a consumer of the old monthly plan can be subscribed: one who subscribes to a plan that
    # the change adds chose its terms (past its included calls, no overage: refused, by design).
    subscribed = subscribed and old.monthly_fee is not None
    assert _not_dearer(
        _cost(quote(new, tool, subscribed=subscribed, calls_this_month=calls)),
        _cost(quote(old, tool, subscribed=subscribed, calls_this_month=calls)),
    )


@settings(max_examples=300)
@given(pricings(), TOOLS, st.booleans(), st.integers(0, 40))
def test_a_quote_never_charges_more_than_the_plan_s_price(
    plan: Pricing, tool: str, subscribed: bool, calls: int
) -> None:
    q = quote(plan, tool, subscribed=subscribed, calls_this_month=calls)
    assert q.price >= 0
    if q.refusal:
        assert q.price == 0
        return
    if plan.free or calls < plan.free_calls:
        assert q.price == 0
    elif subscribed and plan.monthly_fee is not None:
        assert q.price in (0, plan.overage)  # included calls, then the overage price
    else:
        per_call = plan.per_call_price(tool)
        assert per_call is not None and q.price == per_call
    if not subscribed and plan.per_call_price(tool) is not None:
        assert q.price <= plan.per_call_price(tool)  # type: ignore[operator]


# -- amounts as text


@given(st.integers(0, MAX_UNITS))
def test_an_amount_survives_text_both_ways(units: int) -> None:
    text = format_amount(units)
    assert parse_amount(text) == units
    assert parse_amount(format_amount(units, currency="USDC").removesuffix(" USDC")) == units


@given(st.integers(0, 10**20), st.integers(0, 18))
def test_an_amount_survives_text_both_ways_for_any_token_decimals(units: int, decimals: int) -> None:
    assert parse_amount(format_amount(units, decimals=decimals), decimals=decimals) == units


@given(st.integers(0, 10**9), st.integers(1, 12), st.integers(1, 9))
def test_more_decimals_than_the_token_has_are_refused(whole: int, extra: int, last: int) -> None:
    text = f"{whole}.{'0' * (5 + extra)}{last}"  # a non-zero digit at the 7th decimal or later
    with pytest.raises(UsageError, match="more than 6 decimals"):
        parse_amount(text)
    assert parse_amount(f"{whole}.000001{'0' * extra}") == whole * 10**6 + 1  # zeros past are fine


@given(st.floats(allow_nan=True, allow_infinity=True) | st.booleans())
def test_format_amount_refuses_anything_but_an_integer(value: object) -> None:
    with pytest.raises(TypeError):
        format_amount(value)  # type: ignore[arg-type]
