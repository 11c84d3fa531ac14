"""Platform tiers, pure: the bucket per key, the monthly counter, the decisions, the RateLimit
fields, and the settings that define tiers. The clock is an argument: nanoseconds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpz.errors import UsageError
from registry_server.billing.tiers import (
    CALLS_PER_MONTH,
    CALLS_PER_SECOND,
    SECOND,
    SESSIONS,
    MonthCounter,
    Refusal,
    Tier,
    TokenBucket,
    check_session,
    month_of,
    ratelimit_fields,
    take_call,
    tightest,
)
from registry_server.settings import RegistrySettings

T0 = int(datetime(2026, 12, 4, 12, 0, tzinfo=UTC).timestamp()) * SECOND


def ns(moment: datetime) -> int:
    return int(moment.timestamp()) * SECOND


def calls(tier: Tier, bucket: TokenBucket | None, counter: MonthCounter, at: int, n: int) -> list[object]:
    return [take_call(tier, bucket, counter, at) for _ in range(n)]


@pytest.mark.parametrize("rate", [1, 3, 5, 7, 1000])
def test_exactly_n_calls_pass_at_once_and_the_next_is_refused_until_one_token_refills(rate: int) -> None:
    tier = Tier("t", calls_per_second=rate)
    bucket = TokenBucket.full(rate, T0)
    counter = MonthCounter.seeded(T0, 0)
    passed = calls(tier, bucket, counter, T0, rate)
    assert all(isinstance(v, list) for v in passed)
    refused = take_call(tier, bucket, counter, T0)
    assert isinstance(refused, Refusal)
    assert refused.limit == CALLS_PER_SECOND and refused.tier == "t"
    next_token = -(-SECOND // rate)  # one token refills in 1/rate s, rounded up to the nanosecond
    assert refused.retry_ns == next_token
    assert refused.retry_after == 1 and refused.standing.remaining == 0
    assert counter.count == rate  # the refused call took nothing
    # A nanosecond early is still too early; on time, exactly one more passes.
    assert isinstance(take_call(tier, bucket, counter, T0 + next_token - 1), Refusal)
    assert isinstance(take_call(tier, bucket, counter, T0 + next_token), list)
    assert isinstance(take_call(tier, bucket, counter, T0 + next_token), Refusal)


def test_a_steady_caller_at_the_rate_is_never_refused_and_the_bucket_does_not_drift() -> None:
    rate = 7  # 1/7 s is not a whole number of nanoseconds: the bucket must not drift
    tier = Tier("t", calls_per_second=rate)
    bucket = TokenBucket.full(rate, T0)
    counter = MonthCounter.seeded(T0, 0)
    calls(tier, bucket, counter, T0, rate)  # empty the burst
    # Over 100 seconds exactly 700 more fit: each as soon as its token is whole (rounded up).
    passed = 0
    for i in range(1, 100 * rate + 1):
        at = T0 + -(-i * SECOND // rate)
        passed += isinstance(take_call(tier, bucket, counter, at), list)
    assert passed == 100 * rate
    assert isinstance(take_call(tier, bucket, counter, T0 + 100 * SECOND), Refusal)


@given(st.lists(st.integers(min_value=0, max_value=3 * SECOND), min_size=1, max_size=60), st.integers(1, 20))
def test_no_window_of_one_second_passes_more_than_the_burst_plus_the_refill(
    gaps: list[int], rate: int
) -> None:
    tier = Tier("t", calls_per_second=rate)
    bucket = TokenBucket.full(rate, T0)
    counter = MonthCounter.seeded(T0, 0)
    at, times = T0, []
    for gap in gaps:
        at += gap
        if isinstance(take_call(tier, bucket, counter, at), list):
            times.append(at)
    for start in times:  # a full bucket plus less than a second of refill: under 2 x rate
        within = [t for t in times if start <= t < start + SECOND]
        assert len(within) <= 2 * rate - 1
    # ...never more than the burst plus what refilled since the first call.
    assert len(times) <= rate + (times[-1] - T0) * rate // SECOND


def test_the_month_allows_exactly_its_quota_and_resets_at_the_first_of_next_month_utc() -> None:
    tier = Tier("t", calls_per_month=3)
    counter = MonthCounter.seeded(T0, 1)  # one call earlier this month (seeded from usage events)
    assert all(isinstance(v, list) for v in calls(tier, None, counter, T0, 2))
    refused = take_call(tier, None, counter, T0)
    assert isinstance(refused, Refusal) and refused.limit == CALLS_PER_MONTH
    assert refused.reset_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert refused.retry_ns == ns(datetime(2027, 1, 1, tzinfo=UTC)) - T0
    # The last nanosecond of December is still December; the first of January starts afresh.
    assert isinstance(take_call(tier, None, counter, ns(datetime(2027, 1, 1, tzinfo=UTC)) - 1), Refusal)
    january = ns(datetime(2027, 1, 1, tzinfo=UTC))
    assert all(isinstance(v, list) for v in calls(tier, None, counter, january, 3))
    assert isinstance(take_call(tier, None, counter, january), Refusal)
    assert counter.count == 3


def test_month_bounds_over_the_year_and_a_leap_february() -> None:
    assert month_of(ns(datetime(2028, 2, 29, 23, 59, tzinfo=UTC))) == (
        ns(datetime(2028, 2, 1, tzinfo=UTC)),
        ns(datetime(2028, 3, 1, tzinfo=UTC)),
    )
    assert month_of(ns(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))) == (
        ns(datetime(2026, 12, 1, tzinfo=UTC)),
        ns(datetime(2027, 1, 1, tzinfo=UTC)),
    )


def test_past_both_limits_the_month_is_named_and_a_month_refusal_takes_no_token() -> None:
    tier = Tier("t", calls_per_month=2, calls_per_second=2)
    bucket = TokenBucket.full(2, T0)
    counter = MonthCounter.seeded(T0, 0)
    calls(tier, bucket, counter, T0, 2)
    refused = take_call(tier, bucket, counter, T0)
    assert isinstance(refused, Refusal) and refused.limit == CALLS_PER_MONTH


def test_standings_and_the_ratelimit_fields_of_the_tightest_limit() -> None:
    tier = Tier("free", calls_per_month=100, calls_per_second=5)
    bucket = TokenBucket.full(5, T0)
    counter = MonthCounter.seeded(T0, 10)
    standings = take_call(tier, bucket, counter, T0)
    assert isinstance(standings, list)
    second, month = standings
    assert (second.limit, second.remaining, second.window_s) == (CALLS_PER_SECOND, 4, 1)
    assert (month.limit, month.remaining, month.window_s) == (CALLS_PER_MONTH, 89, 31 * 86400)
    assert tightest(standings) == second
    assert ratelimit_fields(standings, second) == [
        ("RateLimit-Policy", f'"calls_per_second";q=5;w=1, "calls_per_month";q=100;w={31 * 86400}'),
        ("RateLimit", '"calls_per_second";r=4;t=1'),
    ]
    assert ratelimit_fields([], None) == []


def test_unlimited_tiers_count_but_never_refuse() -> None:
    counter = MonthCounter.seeded(T0, 10**9)
    assert take_call(Tier("u"), None, counter, T0) == []
    assert counter.count == 10**9 + 1
    assert check_session(Tier("u"), 10**6, SECOND, T0) is None


def test_sessions_allow_exactly_the_limit_and_say_when_one_frees() -> None:
    tier = Tier("free", sessions=2)
    opened = check_session(tier, 1, 0, T0)
    assert not isinstance(opened, Refusal) and opened is not None and opened.remaining == 0
    refused = check_session(tier, 2, 90 * SECOND, T0)
    assert isinstance(refused, Refusal) and refused.limit == SESSIONS
    assert refused.retry_after == 90 and refused.standing.window_s is None
    assert ratelimit_fields([refused.standing], refused.standing) == [
        ("RateLimit-Policy", '"sessions";q=2'),
        ("RateLimit", '"sessions";r=0;t=90'),
    ]


def test_a_tier_change_keeps_the_fill_within_the_new_capacity() -> None:
    bucket = TokenBucket.full(50, T0)
    bucket.refill(T0, 5)
    assert bucket.tokens == 5 and bucket.rate == 5


# --- settings ---------------------------------------------------------------------------------------


def test_tiers_come_from_the_settings_and_the_default_tier_from_the_environment() -> None:
    tables = {"free": {"calls_per_month": 10, "calls_per_second": 2, "sessions": 1}, "pro": {}}
    settings = RegistrySettings.load(env={"MCPZ_REGISTRY_DEFAULT_TIER": "pro"}, tiers=tables)
    assert settings.tiers == (Tier("free", 10, 2, 1), Tier("pro"))
    assert settings.default_tier == "pro"
    bundled = RegistrySettings.load(env={})
    assert {"free", "pro", "enterprise"} <= {t.name for t in bundled.tiers}
    assert bundled.default_tier in {t.name for t in bundled.tiers}


@pytest.mark.parametrize(
    ("tables", "default", "says"),
    [
        ({"free": {}}, "gold", "default_tier 'gold' is not a tier (tiers: free)"),
        (
            {"free": {"calls_per_second": -1}},
            "free",
            "tiers.free.calls_per_second must be a whole number >= 0",
        ),
        ({"free": {"sessions": 1.5}}, "free", "tiers.free.sessions must be a whole number"),
        ({"free": {"calls_per_day": 3}}, "free", "tiers.free has unknown keys calls_per_day"),
        ({}, "free", "[tiers] must define at least one tier"),
    ],
)
def test_bad_tier_settings_are_one_line_usage_errors(tables: object, default: str, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        RegistrySettings.load(env={}, tiers=tables, default_tier=default)
    assert says in caught.value.message
    assert "\n" not in caught.value.message
