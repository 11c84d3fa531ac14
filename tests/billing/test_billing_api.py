"""Billing over HTTP on a live registry: prices and their notice, splits, the market's price label,
subscriptions paid from the balance, spend caps, and the balance's shape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry
from gitutil import api, git, init_agent

from registry_server.billing import service
from registry_server.db import Database

pytestmark = pytest.mark.slow

NAME = "acme/paid"
DAY_US = 86_400_000_000


@dataclass
class World:
    reg: LiveRegistry
    acme: str  # owns the namespace
    buyer: str
    stranger: str

    def get(self, path: str, token: str | None = None, **params: Any) -> Any:
        return api(self.reg, path, token, params=params)

    def send(self, method: str, path: str, token: str | None, body: Any = None) -> Any:
        return api(self.reg, path, token, method=method, json=body)

    def credit(self, who: str, amount: int) -> None:
        db = Database(self.reg.database_url)
        try:
            with db.session() as session:
                service.credit(session, service.account_id_of(session, who), amount)
        finally:
            db.dispose()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("billing-api")
    reg = start_registry(base / "registry", market_refresh_interval=3600.0)
    try:
        tokens = {who: reg.account(who) for who in ("acme", "buyer", "stranger")}
        work = base / "work"
        init_agent(work, NAME, "1.0.0")
        git("tag", "v1.0.0", cwd=work)
        git("push", reg.git_url(NAME, tokens["acme"]), "main", "v1.0.0", cwd=work)
        yield World(reg, tokens["acme"], tokens["buyer"], tokens["stranger"])
    finally:
        reg.stop()


def listing_price(world: World) -> str:
    found = world.get(f"/v1/market/agents/{NAME}")
    assert found.status_code == 200, found.text
    return str(found.json()["pricing"])


def test_a_new_charge_waits_for_its_notice_and_a_decrease_applies_at_once(world: World) -> None:
    assert world.get(f"/v1/billing/plans/{NAME}").json()["current"]["free"] is True
    before = time.time_ns() // 1000
    priced = world.send("PUT", f"/v1/billing/plans/{NAME}", world.acme, {"per_call": 2000})
    assert priced.status_code == 200, priced.text
    plans = priced.json()
    assert plans["current"]["free"] is True  # a new charge: consumers get the notice period first
    (pending,) = plans["pending"]
    assert pending["per_call"] == 2000
    assert before + 14 * DAY_US <= pending["effective_us"] <= time.time_ns() // 1000 + 14 * DAY_US
    assert (plans["currency"], plans["decimals"], plans["platform_fee_bps"]) == ("USDC", 6, 2000)
    assert listing_price(world) == "free"
    page = world.get(f"/agents/{NAME}")
    assert "Free: every call." in page.text and "0.002 USDC" in page.text  # now, and the pending change


def test_only_the_namespace_owner_prices_an_agent(world: World) -> None:
    assert world.send("PUT", f"/v1/billing/plans/{NAME}", world.stranger, {"per_call": 1}).status_code == 403
    bad = world.send("PUT", f"/v1/billing/plans/{NAME}", world.acme, {"included": 5})
    assert bad.status_code == 400 and "monthly plan" in bad.json()["error"]["message"]
    assert world.send("PUT", f"/v1/billing/plans/{NAME}", world.acme, {"per_call": -1}).status_code == 422


def test_splits_must_sum_to_the_whole(world: World) -> None:
    half = [{"account": "acme", "bps": 5000}]
    assert world.send("PUT", f"/v1/billing/splits/{NAME}", world.acme, {"shares": half}).status_code == 400
    shares = [{"account": "acme", "bps": 7000}, {"account": "stranger", "bps": 3000}]
    done = world.send("PUT", f"/v1/billing/splits/{NAME}", world.acme, {"shares": shares})
    assert done.status_code == 200, done.text
    assert done.json()["splits"] == shares
    nobody = [{"account": "nobody-at-all", "bps": 10000}]
    assert world.send("PUT", f"/v1/billing/splits/{NAME}", world.acme, {"shares": nobody}).status_code == 404
    whole = [{"account": "acme", "bps": 10000}]
    assert world.send("PUT", f"/v1/billing/splits/{NAME}", world.acme, {"shares": whole}).status_code == 200


def test_subscriptions_are_paid_from_the_balance(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("billing-subscribe")
    reg = start_registry(base / "registry", price_notice_days=0.0)
    try:
        acme, buyer = reg.account("acme"), reg.account("buyer")
        world = World(reg, acme, buyer, reg.account("stranger"))
        work = base / "work"
        init_agent(work, NAME, "1.0.0")
        git("tag", "v1.0.0", cwd=work)
        git("push", reg.git_url(NAME, acme), "main", "v1.0.0", cwd=work)
        plan = {"monthly_fee": 5_000_000, "included": 1000, "overage": 1000}
        assert (
            world.send("PUT", f"/v1/billing/plans/{NAME}", acme, plan).json()["current"]["monthly_fee"]
            == 5_000_000
        )
        body = {"agent": NAME, "plan": "monthly"}
        poor = world.send("POST", "/v1/billing/subscriptions", buyer, body)
        assert poor.status_code == 400 and "does not cover" in poor.json()["error"]["message"]
        world.credit("buyer", 6_000_000)
        made = world.send("POST", "/v1/billing/subscriptions", buyer, body)
        assert made.status_code == 201, made.text
        assert world.send("POST", "/v1/billing/subscriptions", buyer, body).status_code == 400  # already
        assert [s["agent"] for s in world.get("/v1/billing/subscriptions", buyer).json()] == [NAME]
        balance = world.get("/v1/billing/balance", buyer).json()
        assert balance == {
            "currency": "USDC",
            "decimals": 6,
            "account": "buyer",
            "available": 1_000_000,
            "reserved": 0,
            "earnings": {"pending": 0, "available": 0},
        }
        assert world.get("/v1/billing/balance", acme).json()["earnings"]["pending"] == 4_000_000
        assert world.send("DELETE", f"/v1/billing/subscriptions/{NAME}", buyer).status_code == 200
        assert world.send("DELETE", f"/v1/billing/subscriptions/{NAME}", buyer).status_code == 404
        assert world.get("/v1/billing/subscriptions", buyer).json() == []
        # The listing says what it costs.
        deadline = time.monotonic() + 10
        while listing_price(world) == "free" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listing_price(world) == "5.00 USDC/month"
    finally:
        reg.stop()


def test_spend_caps_are_the_accounts_own(world: World) -> None:
    assert world.get("/v1/billing/caps", world.buyer).json() == []
    cap = {"period": "day", "amount": 10_000}
    assert world.send("PUT", "/v1/billing/caps", world.buyer, cap).status_code == 200
    caps = world.send("PUT", "/v1/billing/caps", world.buyer, {**cap, "amount": 20_000}).json()
    assert [(c["period"], c["amount"]) for c in caps] == [("day", 20_000)]  # the same cap, changed
    cap_id = caps[0]["id"]
    assert world.send("DELETE", f"/v1/billing/caps/{cap_id}", world.stranger).status_code == 404
    other_key = world.send("PUT", "/v1/billing/caps", world.stranger, {**cap, "token_id": 1})
    assert other_key.status_code == 404  # key 1 is another account's
    assert (
        world.send("PUT", "/v1/billing/caps", world.buyer, {"period": "week", "amount": 1}).status_code == 422
    )
    assert world.send("DELETE", f"/v1/billing/caps/{cap_id}", world.buyer).json() == []
