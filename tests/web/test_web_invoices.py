"""The invoice pages on a live registry: a signed-in person's list, a printable invoice (and the
draft), another account's invoice answered 404, the dashboard's link; in Chromium, the invoice page
passes axe-core and prints without the site's header."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import LiveRegistry, isolate, start_registry
from test_web_session import sign_in

import mcpz.keys.siwe as siwe
from mcpz.keys.ethkeys import Account
from registry_server.billing import invoices, service
from registry_server.billing.pricing import Pricing
from registry_server.db import Database

pytestmark = pytest.mark.slow

ERIN = Account.from_key("0x" + "a7" * 32)  # pays a monthly plan, gets an invoice
FRANK = Account.from_key("0x" + "f8" * 32)  # has none
AGENT = "acme/paid"


@dataclass
class World:
    reg: LiveRegistry
    number: int
    period: str


def text_of(html: str) -> str:
    body = re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", html)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, home)
        reg: LiveRegistry = start_registry(home / "registry", price_notice_days=0.0)
        try:
            reg.account("acme")
            for wallet in (ERIN, FRANK):
                with httpx2.Client(base_url=reg.url, timeout=30) as client:
                    assert sign_in(client, wallet).status_code == 200
            at = service.month_start_us(service.now_us()) - 86_400_000_000  # last month
            db = Database(reg.database_url)
            try:
                with db.session() as session:
                    owner = service.account_id_of(session, "acme")
                    erin = service.account_id_of(session, ERIN.address.lower())
                    service.set_prices(
                        session, AGENT, Pricing(monthly_fee=2_500_000), by=owner, notice_us=0, at_us=at - 1
                    )
                    service.credit(session, erin, 10_000_000)
                    service.subscribe(session, erin, AGENT, "monthly", 2000, at)
                with db.session() as session:
                    [number] = invoices.close_period(session, service.month_of(at))
            finally:
                db.dispose()
            yield World(reg, number, service.month_of(at))
        finally:
            reg.stop()


def test_the_invoice_pages_show_ones_own_invoices_and_no_one_elses(world: World) -> None:
    with httpx2.Client(base_url=world.reg.url, timeout=30) as anon:
        assert anon.get(f"/billing/invoices/{world.number}").status_code == 303  # sign in first
    with httpx2.Client(base_url=world.reg.url, timeout=30) as erin:
        sign_in(erin, ERIN)
        assert 'href="/billing/invoices"' in erin.get("/dashboard").text
        listed = erin.get("/billing/invoices")
        assert listed.status_code == 200
        assert f'href="/billing/invoices/{world.number}"' in listed.text
        assert f"{world.period} 2.50 USDC" in text_of(listed.text)
        page = erin.get(f"/billing/invoices/{world.number}")
        assert page.status_code == 200
        shown = text_of(page.text)
        assert f"Invoice {world.number}" in shown and f"Month {world.period}" in shown
        assert f"{AGENT} monthly fee monthly 1 2.50 USDC" in shown
        assert "Total 2.50 USDC" in shown and "amount due 0.00 USDC" in shown
        assert page.headers["cache-control"] == "private, no-store"
        draft = erin.get("/billing/invoices/draft")
        assert draft.status_code == 200 and "Draft invoice" in text_of(draft.text)
        assert erin.get("/billing/invoices/nope").status_code == 404
    with httpx2.Client(base_url=world.reg.url, timeout=30) as frank:
        sign_in(frank, FRANK)
        other = frank.get(f"/billing/invoices/{world.number}")
        assert other.status_code == 404 and ERIN.address.lower() not in other.text
        assert "No invoices yet" in text_of(frank.get("/billing/invoices").text)


def test_the_invoice_page_is_accessible_and_prints_without_the_site_chrome(world: World) -> None:
    from conftest import missing
    from test_web_browser import AXE, CHROMIUM, SHOTS

    if not Path(CHROMIUM).exists():
        missing(f"chromium ({CHROMIUM})")
    if not AXE.exists():
        missing("axe-core (tests/web/node_modules)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            context = chromium.new_context(base_url=world.reg.url, bypass_csp=True)
            # Signed in as the wallet page would: the session cookie lands in this context.
            issued = context.request.post("/sign-in/message", data={"address": ERIN.address}).json()
            signature = siwe.sign(issued["message"], ERIN.key)
            done = context.request.post(
                "/sign-in", data={"message": issued["message"], "signature": signature}
            )
            assert done.ok, done.text()
            page = context.new_page()
            for path in (f"/billing/invoices/{world.number}", "/billing/invoices"):
                answer = page.goto(path)
                assert answer is not None and answer.status == 200
                if path == "/billing/invoices":
                    SHOTS.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(SHOTS / "13-invoices.png"), full_page=True)
                page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
                violations: list[dict[str, Any]] = page.evaluate(
                    """async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
                         .map((v) => ({ id: v.id, impact: v.impact, help: v.help }))"""
                )
                assert [v for v in violations if v["impact"] in ("serious", "critical")] == []
            page.goto(f"/billing/invoices/{world.number}")
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "11-invoice.png"), full_page=True)
            page.emulate_media(media="print")
            page.screenshot(path=str(SHOTS / "12-invoice-print.png"), full_page=True)
            assert not page.locator("header.site").is_visible()
            assert page.locator("article.invoice").is_visible()
            context.close()
        finally:
            chromium.close()
