"""Invoices and statements over HTTP, the CLI and the operator's commands, on a live registry: its
worker renews a subscription into this month, the operator closes last month, the consumer sees
the invoice (others get 404), a refund after closing becomes a credit note, the creator's statement
shows earnings, fees and the refund."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry
from meshutil import until
from sqlalchemy import select

from registry_server.billing import invoices, service
from registry_server.billing.models import Subscription
from registry_server.billing.pricing import Pricing
from registry_server.db import Database

pytestmark = pytest.mark.slow

AGENT = "acme/paid"
FEE = 5_000_000  # 5 USDC a month
WINDOW_DAYS = "60"  # long enough that last month's charge is still refundable on any day


@dataclass
class World:
    reg: LiveRegistry
    acme: str
    buyer: str
    stranger: str
    last_month: str
    this_month: str

    def get(self, path: str, token: str | None, **params: Any) -> Any:
        import httpx2

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx2.get(self.reg.url + path, headers=headers, params=params, timeout=30)

    def ok(self, path: str, token: str, **params: Any) -> Any:
        answer = self.get(path, token, **params)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("invoices-api")
    reg = start_registry(
        base / "registry",
        market_refresh_interval=3600.0,
        usage_flush_interval=0.2,
        price_notice_days=0.0,
        refund_window_days=float(WINDOW_DAYS),
    )
    try:
        tokens = {who: reg.account(who) for who in ("acme", "buyer", "stranger")}
        now = service.now_us()
        last_month_at = service.month_start_us(now) - 3_600_000_000  # an hour before this month
        db = Database(reg.database_url)
        try:
            with db.session() as session:
                owner = service.account_id_of(session, "acme")
                buyer = service.account_id_of(session, "buyer")
                service.set_prices(
                    session,
                    AGENT,
                    Pricing(monthly_fee=FEE),
                    by=owner,
                    notice_us=0,
                    at_us=last_month_at - 1,
                )
                service.credit(session, buyer, 20_000_000)
                service.subscribe(session, buyer, AGENT, "monthly", 2000, last_month_at)
        finally:
            db.dispose()
        yield World(
            reg,
            tokens["acme"],
            tokens["buyer"],
            tokens["stranger"],
            service.month_of(last_month_at),
            service.month_of(now),
        )
    finally:
        reg.stop()


def test_a_month_invoiced_refunded_and_stated(
    world: World, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker renews the subscription into this month: the draft shows its fee.
    def renewed() -> bool:
        draft = world.ok("/v1/billing/invoices/draft", world.buyer)
        return bool(draft["total"] == FEE)

    until(renewed, 30)
    draft = world.ok("/v1/billing/invoices/draft", world.buyer)
    assert (draft["status"], draft["number"], draft["period"]) == ("draft", None, world.this_month)
    assert draft["lines"] == [
        {
            "kind": "charge",
            "agent": AGENT,
            "tool": "",
            "plan": "monthly",
            "calls": 1,
            "amount": FEE,
            "event": "",
        }
    ]

    # The operator closes last month (the worker may have closed it already: once either way).
    monkeypatch.setenv("MCPZ_REGISTRY_REFUND_WINDOW_DAYS", WINDOW_DAYS)
    data = str(world.reg.data_dir)
    closed = cli("--json", "registry", "close-period", world.last_month, "--data", data)
    assert closed.exit_code == 0, closed.stderr
    assert json.loads(closed.stdout)["period"] == world.last_month
    again = cli("registry", "close-period", world.last_month, "--data", data)
    assert again.exit_code == 0 and "closed already" in again.stdout
    current = cli("registry", "close-period", world.this_month, "--data", data)
    assert current.exit_code == 2 and "not over yet" in current.stderr

    listed = world.ok("/v1/billing/invoices", world.buyer)
    [summary] = listed["invoices"]
    number = summary["number"]
    assert (summary["kind"], summary["period"], summary["total"]) == ("invoice", world.last_month, FEE)
    invoice = world.ok(f"/v1/billing/invoices/{number}", world.buyer)
    assert (invoice["paid"], invoice["paid_from"], invoice["amount_due"]) == (True, "balance", 0)
    assert (invoice["account"], invoice["currency"], invoice["decimals"]) == ("buyer", "USDC", 6)
    assert world.get(f"/v1/billing/invoices/{number}", world.stranger).status_code == 404
    assert world.get(f"/v1/billing/invoices/{number}", None).status_code == 401
    assert world.ok("/v1/billing/invoices", world.stranger)["invoices"] == []

    # Refund last month's fee: its month is invoiced, so a credit note. Twice: once.
    event = last_event(world)
    refunded = cli("--json", "registry", "refund", event, "--reason", "test", "--data", data)
    assert refunded.exit_code == 0, refunded.stderr
    note = json.loads(refunded.stdout)["credit_note"]
    assert note == number + 1
    twice = cli("registry", "refund", event, "--data", data)
    assert twice.exit_code == 0 and "refunded before" in twice.stdout
    credit = world.ok(f"/v1/billing/invoices/{note}", world.buyer)
    assert (credit["kind"], credit["refers_to"], credit["total"], credit["period"]) == (
        "credit-note",
        number,
        -FEE,
        world.last_month,
    )
    assert world.ok(f"/v1/billing/invoices/{number}", world.buyer)["total"] == FEE  # never edited

    statement = world.ok("/v1/billing/statement", world.acme, period=world.last_month)
    assert (statement["earnings"], statement["fees"], statement["refunds"], statement["net"]) == (
        4_000_000,
        1_000_000,
        4_000_000,
        0,
    )
    assert statement["payouts"] == 0 and "not yet available" in statement["payouts_note"]
    assert world.get("/v1/billing/statement", world.acme, period="2026-13").status_code == 400

    # The same through the CLI, as the consumer and the creator see it.
    who = ("--registry", world.reg.url, "--token", world.buyer)
    shown = cli("billing", "invoices", *who)
    assert shown.exit_code == 0, shown.stderr
    assert f"{world.last_month}" in shown.stdout and "-5.00 USDC" in shown.stdout
    one = cli("billing", "invoice", str(number), *who)
    assert one.exit_code == 0, one.stderr
    assert f"invoice {number} - buyer - {world.last_month}" in one.stdout and "5.00 USDC" in one.stdout
    as_json = json.loads(cli("--json", "billing", "invoice", "draft", *who).stdout)
    assert as_json["total"] == FEE and as_json["status"] == "draft"
    bad = cli("billing", "invoice", "latest", *who)
    assert bad.exit_code == 2 and 'give its number or "draft"' in bad.stderr
    stated = cli(
        "billing",
        "statement",
        "--period",
        world.last_month,
        "--registry",
        world.reg.url,
        "--token",
        world.acme,
    )
    assert stated.exit_code == 0, stated.stderr
    assert "4.00 USDC" in stated.stdout and "payouts: none" in stated.stdout


def last_event(world: World) -> str:
    db = Database(world.reg.database_url)
    try:
        with db.session() as session:
            buyer = service.account_id_of(session, "buyer")
            [found] = session.scalars(select(Subscription.id).where(Subscription.account_id == buyer))
            return f"subscription:{found}:{world.last_month}"
    finally:
        db.dispose()


def test_invoice_numbers_that_are_not_numbers_are_refused(world: World) -> None:
    assert world.get("/v1/billing/invoices/abc", world.buyer).status_code == 422
    assert world.get("/v1/billing/invoices/999999", world.buyer).status_code == 404
    assert invoices.period_bounds(world.this_month)[0] <= service.now_us()
