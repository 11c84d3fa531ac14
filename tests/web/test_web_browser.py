"""The pages in a real browser: Debian's headless Chromium driven by playwright (executable_path,
no browser download), against a live registry with a small published market (tests/webutil.py).

A person searches, opens an agent's page, signs in with a wallet, and posts a review. The wallet
is an EIP-1193 provider announced through EIP-6963, injected before any page script runs; its
`personal_sign` is forwarded to Python, which signs with eth_account (through mcpz.keys.ethkeys) as a
wallet extension would. axe-core (npm, tests/web/package.json) checks every page: no serious or
critical violation. Screenshots go to test-artifacts/screenshots/, named in the test output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry, isolate, missing, start_registry
from webutil import CHROMIUM, PROVIDER, WALLET, MarketWorld, chromium, seed, wallet_sign

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketWorld]:
    if not Path(CHROMIUM).exists():
        missing(f"chromium ({CHROMIUM})")
    if not AXE.exists():
        missing(f"axe-core ({AXE.relative_to(ROOT)})")
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, home)
        reg: LiveRegistry = start_registry(home / "registry")
        try:
            yield seed(reg, home / "work")
        finally:
            reg.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


class Person:
    """One browser context (its own cookies) with the helpers the tests share."""

    def __init__(
        self, browser: Any, world: MarketWorld, request: pytest.FixtureRequest, **options: Any
    ) -> None:
        # bypass_csp: axe is injected as an inline script, which the pages' CSP (rightly) refuses.
        self.context = browser.new_context(base_url=world.reg.url, bypass_csp=True, **options)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.request = request

    def goto(self, path: str) -> Any:
        answer = self.page.goto(path)
        assert answer is not None
        return answer

    def check_accessibility(self) -> None:
        """axe-core over the page as it stands: no serious or critical violation."""
        self.page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
        violations = self.page.evaluate(
            """async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
                 .map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                               nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }))"""
        )
        bad = [v for v in violations if v["impact"] in ("serious", "critical")]
        assert bad == [], f"{self.page.url}: {bad}"

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        capture = self.request.config.pluginmanager.get_plugin("capturemanager")
        reporter = self.request.config.pluginmanager.get_plugin("terminalreporter")
        if capture is not None and reporter is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"screenshot: {path.relative_to(ROOT)}")
        return path

    def close(self) -> None:
        self.context.close()


def test_search_open_an_agent_sign_in_with_a_wallet_and_post_a_review(
    world: MarketWorld, browser: Any, request: pytest.FixtureRequest
) -> None:
    # The wallet's account has called acme/weather once (through the usage recorder, as the
    # gateway records a call); without that call the market would refuse its review.
    world.calls("acme/weather", world.account_for_wallet(WALLET.address), 1)
    person = Person(browser, world, request, viewport={"width": 1280, "height": 900})
    try:
        page = person.page
        person.context.expose_function("mcpzTestSign", wallet_sign)
        person.context.add_init_script(PROVIDER)

        person.goto("/")
        assert page.get_by_role("heading", name="Find an agent for your MCP client").is_visible()
        person.check_accessibility()
        person.shot("01-home")

        page.get_by_role("searchbox", name="Search agents and tools").fill("forecast")
        page.get_by_role("main").get_by_role("button", name="Search").click()
        page.wait_for_url(re.compile(r"/search\?q=forecast$"))
        results = page.locator("ul.cards > li")
        assert results.count() >= 1
        person.check_accessibility()
        person.shot("02-search-forecast")

        page.get_by_role("link", name="acme/weather").first.click()
        page.wait_for_url("**/agents/acme/weather")
        assert page.get_by_role("heading", level=1, name="acme/weather").is_visible()
        assert page.locator(".readme").get_by_text("Forecasts for any city").is_visible()
        assert page.evaluate("() => window.__pwned === undefined")  # the hostile README ran nothing
        assert page.get_by_role("img", name="Calls per day to acme/weather, last 30 days").is_visible()
        page.get_by_text("alerts —").click()  # open the tool's details
        assert page.get_by_role("heading", name="Output schema").is_visible()
        person.check_accessibility()
        person.shot("03-agent-acme-weather")

        page.get_by_role("link", name="Sign in", exact=True).last.click()
        page.wait_for_url(re.compile(r"/sign-in\?next="))
        wallet = page.get_by_role("button", name="Test Wallet")
        wallet.wait_for()
        person.check_accessibility()
        person.shot("04-sign-in")
        wallet.click()
        page.wait_for_url(re.compile(r"/agents/acme/weather#write-review$"))
        assert page.get_by_role("button", name=f"Sign out {WALLET.address.lower()}").is_visible()
        cookie = next(c for c in person.context.cookies() if c["name"] == "mcpz_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert page.evaluate("() => document.cookie") == ""  # not readable by scripts

        page.get_by_role("radio", name="4").check()
        page.get_by_label("What worked, what did not").fill("Accurate forecasts for Oslo; alerts came fast.")
        page.get_by_role("button", name="Post review").click()
        page.wait_for_url(re.compile(r"/agents/acme/weather\?reviewed=1#reviews$"))
        assert page.get_by_role("status").filter(has_text="Your review is posted.").is_visible()
        review = page.locator(".review").filter(has_text="Accurate forecasts for Oslo")
        assert review.is_visible()
        assert "1 call" in review.inner_text()
        person.check_accessibility()
        person.shot("05-agent-after-review")

        person.goto("/dashboard")
        person.check_accessibility()
        person.shot("06-dashboard")
        person.goto("/keys")
        page.get_by_label("Name").fill("laptop")
        page.get_by_role("button", name="Create key").click()
        assert page.locator("#new-key").inner_text().startswith("mcpz_")
        assert page.get_by_role("cell", name="laptop").is_visible()
        person.check_accessibility()
        person.shot("07-keys")
        assert person.errors == []
    finally:
        person.close()

    # Another browser, not signed in, sees the review.
    other = Person(browser, world, request)
    try:
        other.goto("/agents/acme/weather")
        assert other.page.locator(".review").filter(has_text="Accurate forecasts for Oslo").is_visible()
        other.goto("/creators/acme")
        other.check_accessibility()
        other.shot("08-creator-acme")
    finally:
        other.close()


def test_the_pages_work_without_javascript_and_on_a_phone(
    world: MarketWorld, browser: Any, request: pytest.FixtureRequest
) -> None:
    phone = Person(
        browser,
        world,
        request,
        java_script_enabled=False,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
    )
    try:
        page = phone.page
        phone.goto("/")
        page.get_by_role("searchbox", name="Search agents and tools").fill("wether")
        page.get_by_role("main").get_by_role("button", name="Search").click()
        page.wait_for_url(re.compile(r"/search\?q=wether$"))
        assert page.get_by_text("showing results for “weather”").is_visible()
        page.get_by_role("link", name="acme/weather").first.click()
        page.wait_for_url("**/agents/acme/weather")
        # Nothing wider than the screen: the layout folds into one column.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        assert page.get_by_role("heading", name="README").is_visible()
        phone.shot("09-agent-phone-no-js")
        phone.goto("/sign-in")
        # (playwright's text locators skip <noscript>, so its rendered text is read instead)
        assert "sign in from a terminal with mcpz login --wallet" in page.locator("#sign-in").inner_text()
        phone.shot("10-sign-in-no-js")
    finally:
        phone.close()
    # axe needs scripts: the same screen size with them on, for the pages a phone reads most.
    checked = Person(browser, world, request, viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        for path in ("/", "/search?q=weather", "/agents/acme/weather", "/sign-in"):
            checked.goto(path)
            checked.check_accessibility()
    finally:
        checked.close()


def test_an_mcp_clients_authorization_request_signs_in_and_asks_to_allow(
    world: MarketWorld, browser: Any, request: pytest.FixtureRequest
) -> None:
    """The authorization page of the registry as an OAuth server (docs/gateway.md): a stranger signs
    in with the wallet and comes back to the consent page, which is accessible like the others."""
    import httpx2

    from registry_server.oauth import rules

    with httpx2.Client(base_url=world.reg.url, timeout=30) as http:
        registered = http.post(
            rules.REGISTER_PATH,
            json={"redirect_uris": ["http://127.0.0.1:53119/callback"], "client_name": "Desktop Client"},
        )
    params = {
        "response_type": "code",
        "client_id": registered.json()["client_id"],
        "redirect_uri": "http://127.0.0.1:53119/callback",
        "code_challenge": rules.challenge_of("v" * 43),
        "code_challenge_method": "S256",
        "resource": f"{world.reg.url}/mcp/acme/weather",
        "state": "xyz",
    }
    person = Person(browser, world, request, viewport={"width": 1280, "height": 900})
    try:
        page = person.page
        person.context.expose_function("mcpzTestSign", wallet_sign)
        person.context.add_init_script(PROVIDER)
        from urllib.parse import urlencode

        person.goto(f"{rules.AUTHORIZE_PATH}?{urlencode(params)}")
        page.wait_for_url(re.compile(r"/sign-in\?next=%2Foauth%2Fauthorize"))
        page.get_by_role("button", name="Test Wallet").click()
        page.wait_for_url(re.compile(r"/oauth/authorize\?"))
        assert page.get_by_role("heading", name="Allow Desktop Client to use your agents?").is_visible()
        assert page.get_by_text(f"{world.reg.url}/mcp/acme/weather").is_visible()
        assert page.get_by_role("button", name="Deny").is_visible()
        person.check_accessibility()
        person.shot("11-oauth-consent")
        assert person.errors == []
    finally:
        person.close()
