"""`mcpz billing ...` and `mcpz registry credit` against a live registry: prices and their notice,
the balance's JSON, spend caps, subscriptions that need a balance, operator credit, and amounts
refused with one line and exit 2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry

from registry_server.billing import service
from registry_server.billing.pricing import Pricing
from registry_server.db import Database

NOTICE_DAYS = 14


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRegistry]:
    live = start_registry(tmp_path_factory.mktemp("billing-cli") / "registry", price_notice_days=NOTICE_DAYS)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def tokens(reg: LiveRegistry) -> dict[str, str]:
    return {name: reg.account(name) for name in ("acme", "bob", "carol")}


def billing(cli: Any, reg: LiveRegistry, token: str, *args: str) -> Any:
    return cli("billing", *args, "--registry", reg.url, "--token", token)


def as_json(cli: Any, reg: LiveRegistry, token: str, *args: str) -> Any:
    done = cli("--json", "billing", *args, "--registry", reg.url, "--token", token)
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def one_line_error(done: Any, code: int = 2) -> str:
    assert done.exit_code == code, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_a_raise_waits_for_its_notice_and_a_decrease_applies_at_once(
    cli: Any, reg: LiveRegistry, tokens: dict[str, str]
) -> None:
    acme = tokens["acme"]
    raised = billing(
        cli, reg, acme, "price", "acme/weather", "--per-call", "0.002", "--tool", "forecast=0.005"
    )
    assert raised.exit_code == 0, raised.stderr
    assert f"after {NOTICE_DAYS} days' notice" in raised.stderr
    assert "  now: free\n" in raised.stdout

    shown = billing(cli, reg, acme, "plans", "acme/weather")
    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "acme/weather"
    assert lines[1] == "  now: free"
    assert lines[2].startswith("  from ") and lines[2].endswith(
        "UTC: 0.002 USDC per call; forecast 0.005 USDC per call"
    )
    assert lines[3] == "  earnings: acme 100% of what the platform fee (20%) leaves"

    plans = as_json(cli, reg, acme, "plans", "acme/weather")
    assert plans["current"]["per_call"] is None
    assert [(p["per_call"], p["tools"]) for p in plans["pending"]] == [(2000, {"forecast": 5000})]
    assert plans["pending"][0]["effective_us"] > service.now_us() + (NOTICE_DAYS - 1) * service.DAY_US

    # Free again: a decrease, so it applies now and the pending raise is gone.
    lowered = as_json(cli, reg, acme, "price", "acme/weather", "--free")
    assert lowered["current"]["per_call"] is None and lowered["pending"] == []


def test_only_the_owner_prices_and_plans_need_no_token(
    cli: Any, reg: LiveRegistry, tokens: dict[str, str]
) -> None:
    refused = billing(cli, reg, tokens["bob"], "price", "acme/weather", "--per-call", "1")
    assert "only an owner" in one_line_error(refused, 4)
    public = cli("billing", "plans", "acme/weather", "--registry", reg.url)
    assert public.exit_code == 0, public.stderr


def test_split_shares_name_accounts_and_sum_to_100(
    cli: Any, reg: LiveRegistry, tokens: dict[str, str]
) -> None:
    acme = tokens["acme"]
    split = as_json(cli, reg, acme, "split", "acme/weather", "acme=70%", "carol=3000")
    assert split["splits"] == [{"account": "acme", "bps": 7000}, {"account": "carol", "bps": 3000}]
    short = billing(cli, reg, acme, "split", "acme/weather", "acme=70%", "carol=20%")
    assert "sum to 90.00%, not 100%" in one_line_error(short)


def test_balance_json_is_integers_in_base_units_with_the_token(
    cli: Any, reg: LiveRegistry, tokens: dict[str, str]
) -> None:
    found = as_json(cli, reg, tokens["carol"], "balance")
    assert found == {
        "available": 0,
        "reserved": 0,
        "earnings": {"pending": 0, "available": 0},
        "currency": "USDC",
        "decimals": 6,
    }
    shown = billing(cli, reg, tokens["carol"], "balance")
    assert shown.stdout.splitlines()[:3] == ["account carol", "available  0.00 USDC", "reserved   0.00 USDC"]


def test_spend_caps_are_set_listed_changed_and_removed(
    cli: Any, reg: LiveRegistry, tokens: dict[str, str]
) -> None:
    carol = tokens["carol"]
    assert as_json(cli, reg, carol, "caps") == []
    assert billing(cli, reg, carol, "caps").stdout == "no spend caps\n"
    made = as_json(cli, reg, carol, "caps", "set", "5", "--per", "day")
    made = as_json(cli, reg, carol, "caps", "set", "0.25", "--per", "month", "--agent", "acme/weather")
    assert [(c["period"], c["amount"], c["agent"]) for c in made] == [
        ("day", 5_000_000, ""),
        ("month", 250_000, "acme/weather"),
    ]
    changed = as_json(cli, reg, carol, "caps", "set", "7", "--per", "day")
    assert [c["amount"] for c in changed] == [7_000_000, 250_000]
    listed = billing(cli, reg, carol, "caps")
    day, month = (c["id"] for c in changed)
    assert listed.stdout == (
        f"{day}  7.00 USDC per day on every agent\n{month}  0.25 USDC per month on acme/weather\n"
    )
    left = as_json(cli, reg, carol, "caps", "remove", str(day))
    assert [c["id"] for c in left] == [month]
    gone = billing(cli, reg, carol, "caps", "remove", str(day))
    assert f"no spend cap {day}" in one_line_error(gone, 5)
    bad_period = billing(cli, reg, carol, "caps", "set", "1", "--per", "week")
    assert "per" in one_line_error(bad_period)


def test_subscribing_needs_the_balance_and_operator_credit_provides_it(
    cli: Any, reg: LiveRegistry, tokens: dict[str, str]
) -> None:
    db = Database(reg.database_url)
    try:
        with db.session() as session:
            owner = service.account_id_of(session, "acme")
            monthly = Pricing(monthly_fee=10_000_000, included=1000, overage=1000)
            service.set_prices(session, "acme/maps", monthly, by=owner, notice_us=0)
    finally:
        db.dispose()
    bob = tokens["bob"]
    broke = billing(cli, reg, bob, "subscribe", "acme/maps", "monthly")
    assert "does not cover the monthly fee" in one_line_error(broke)

    credited = cli("registry", "credit", "bob", "25", "--reason", "welcome", "--data", str(reg.data_dir))
    assert credited.exit_code == 0, credited.stderr
    assert credited.stdout == "credited 25.00 USDC to bob: available 25.00 USDC\n"
    assert as_json(cli, reg, bob, "balance")["available"] == 25_000_000

    # The same key twice is one credit.
    for _ in range(2):
        again = cli("--json", "registry", "credit", "bob", "1.5", "--key", "promo-1", "--expires", "30d",
                    "--data", str(reg.data_dir))  # fmt: skip
        assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["available"] == 26_500_000
    assert json.loads(again.stdout)["credited"] == 0

    subscribed = as_json(cli, reg, bob, "subscribe", "acme/maps", "monthly")
    assert subscribed["agent"] == "acme/maps" and subscribed["plan"] == "monthly"
    assert [s["agent"] for s in as_json(cli, reg, bob, "subscriptions")] == ["acme/maps"]
    assert as_json(cli, reg, bob, "balance")["available"] == 16_500_000
    usage = as_json(cli, reg, bob, "usage")
    assert (usage["total"], usage["calls"]) == (10_000_000, 1)
    assert usage["charges"][0]["plan"] == "monthly"
    shown = billing(cli, reg, bob, "usage")
    assert shown.stdout.splitlines()[0] == "charged 10.00 USDC for 1 call this month"

    ended = billing(cli, reg, bob, "unsubscribe", "acme/maps")
    assert ended.stdout == "unsubscribed from acme/maps (monthly)\n"
    assert as_json(cli, reg, bob, "subscriptions") == []
    # The creator earns 80 % of the fee, pending through the refund window.
    earned = as_json(cli, reg, tokens["acme"], "balance")["earnings"]
    assert earned == {"pending": 8_000_000, "available": 0}


@pytest.mark.parametrize("amount", ["0.0000001", "abc", "1e3", "-1"])
def test_bad_amounts_are_one_line_errors_exiting_2(
    cli: Any, reg: LiveRegistry, tokens: dict[str, str], amount: str
) -> None:
    acme = tokens["acme"]
    price = billing(cli, reg, acme, "price", "acme/weather", "--per-call", amount)
    one_line_error(price)
    cap = billing(cli, reg, acme, "caps", "set", amount, "--per", "day")
    one_line_error(cap)
    credit = cli("registry", "credit", "acme", amount, "--data", str(reg.data_dir))
    one_line_error(credit)


def test_credit_refuses_unknown_accounts_zero_and_past_expiry(cli: Any, reg: LiveRegistry) -> None:
    data = str(reg.data_dir)
    one_line_error(cli("registry", "credit", "nobody", "5", "--data", data), 5)
    one_line_error(cli("registry", "credit", "acme", "0", "--data", data))
    one_line_error(cli("registry", "credit", "acme", "5", "--expires", "2001-01-01", "--data", data))


def test_price_needs_something_to_charge(cli: Any, reg: LiveRegistry, tokens: dict[str, str]) -> None:
    nothing = billing(cli, reg, tokens["acme"], "price", "acme/weather")
    assert "--per-call AMOUNT, --monthly AMOUNT, or --free" in one_line_error(nothing)
    both = billing(cli, reg, tokens["acme"], "price", "acme/weather", "--free", "--per-call", "1")
    assert "--free takes no prices" in one_line_error(both)


def test_plans_without_a_name_lists_the_agents_of_your_namespaces(
    cli: Any, reg: LiveRegistry, tokens: dict[str, str]
) -> None:
    # Only published (listed) agents are found; carol has none.
    assert billing(cli, reg, tokens["carol"], "plans").stdout == "no agents in your namespaces\n"
    assert as_json(cli, reg, tokens["carol"], "plans") == []
