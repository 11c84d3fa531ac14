"""The dashboard's claim button in a real browser against a real chain: a live registry's payout job
commits a batch on anvil, the creator signs in with a browser wallet, clicks Claim, the wallet sends
the call the page prepared, and the tokens arrive at the creator's address; a second claim is refused.

The wallet is the EIP-6963 test provider of test_web_browser.py, extended as a wallet extension would
be: `eth_sendTransaction` is signed in Python with the wallet's key and sent to anvil, and the reads
the page asks of the wallet (chain id, receipts) go to anvil too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chainutil import Miner, Settlement, settlement_registry, transact
from conftest import LiveRegistry, missing
from test_web_browser import AXE, Person
from webutil import CHROMIUM, chromium

from mcpz.keys.ethkeys import Account, LocalAccount, encode_defunct
from registry_server.accounts import namespaces
from registry_server.billing import ledger, service
from registry_server.db import Database

pytestmark = pytest.mark.slow

USDC = 1_000_000
CREATOR: LocalAccount = Account.from_key("0x" + "c7" * 32)

PROVIDER = """
(() => {
  const provider = {
    async request({ method, params }) {
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [ADDRESS];
      if (method === "personal_sign") return await window.mcpzTestSign(params[0], params[1]);
      if (method === "eth_sendTransaction") return await window.mcpzTestSend(JSON.stringify(params[0]));
      if (method === "eth_chainId" || method === "eth_getTransactionReceipt") {
        return JSON.parse(await window.mcpzTestRead(method, JSON.stringify(params || [])));
      }
      throw Object.assign(new Error("unsupported method " + method), { code: 4200 });
    },
    on() {},
    removeListener() {},
  };
  const info = Object.freeze({ uuid: "7c1e0b9c-6f0e-4c3b-9d6e-0c2f3a4b5c6d", name: "Test Wallet",
    icon: "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 8 8'%3E%3C/svg%3E",
    rdns: "dev.mcpz.test-wallet" });
  const announce = () => window.dispatchEvent(
    new CustomEvent("eip6963:announceProvider", { detail: Object.freeze({ info, provider }) }));
  window.addEventListener("eip6963:requestProvider", announce);
  announce();
})();
""".replace("ADDRESS", repr(CREATOR.address))


@pytest.fixture
def chain_registry(
    tmp_path: Path, settlement: Settlement, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveRegistry]:
    if not Path(CHROMIUM).exists():
        missing(f"chromium ({CHROMIUM})")
    if not AXE.exists():
        missing("axe-core (tests/web/node_modules)")
    monkeypatch.setenv("MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY", settlement.operator.key.hex())
    reg = settlement_registry(
        tmp_path / "registry",
        settlement,
        2,
        settlement_payout_interval=0.5,
        settlement_payout_minimum=1,
    )
    yield reg
    reg.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def earn(reg: LiveRegistry, settlement: Settlement, amount: int) -> None:
    """Tokens on the contract for the creator's earnings, and the earnings, ready for payout."""
    settlement.deposit(settlement.user, "nobody-here", amount)  # unallocated, held for no account
    db = Database(reg.database_url)
    try:
        with db.session() as session:
            creator = namespaces.account_for_address(session, CREATOR.address)
            service.post(
                session,
                ledger.transfer(
                    "earned",
                    "test-earnings",
                    ledger.PLATFORM_CREDIT,
                    ledger.creator_available(creator.id),
                    amount,
                ),
            )
    finally:
        db.dispose()


def test_a_creator_claims_a_payout_from_the_dashboard_with_the_browser_wallet(
    chain_registry: LiveRegistry, settlement: Settlement, browser: Any, request: pytest.FixtureRequest
) -> None:
    w3 = settlement.anvil.w3
    settlement.anvil.fund(CREATOR.address)
    earn(chain_registry, settlement, 9 * USDC)

    def sign(message_hex: str, address: str) -> str:
        assert address.lower() == CREATOR.address.lower()
        signed = CREATOR.sign_message(encode_defunct(primitive=bytes.fromhex(message_hex.removeprefix("0x"))))
        return "0x" + bytes(signed.signature).hex()

    sent: list[str] = []

    def send(tx_json: str) -> str:
        import json

        tx = json.loads(tx_json)
        assert tx["from"].lower() == CREATOR.address.lower()

        class Call:  # what chainutil.transact builds from: a prepared call
            def build_transaction(self, params: dict[str, Any]) -> dict[str, Any]:
                return {**params, "to": w3.to_checksum_address(tx["to"]), "data": tx["data"],
                        "gas": 300_000, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9}  # fmt: skip

        receipt = transact(settlement.anvil, Call(), CREATOR)
        sent.append("0x" + bytes(receipt["transactionHash"]).hex())
        return sent[-1]

    def read(method: str, params_json: str) -> str:
        import json

        answer = w3.provider.make_request(method, json.loads(params_json))
        return json.dumps(answer.get("result"))

    world: Any = _World(chain_registry)  # Person reads only `.reg` of its world
    person = Person(browser, world, request, viewport={"width": 1280, "height": 900})
    try:
        page = person.page
        person.context.expose_function("mcpzTestSign", sign)
        person.context.expose_function("mcpzTestSend", send)
        person.context.expose_function("mcpzTestRead", read)
        person.context.add_init_script(PROVIDER)

        with Miner(settlement):
            person.goto("/sign-in?next=/dashboard")
            page.get_by_role("button", name="Test Wallet").click()
            page.wait_for_url(re.compile(r"/dashboard$"))
            claim = page.get_by_role("button", name="Claim batch 1")
            deadline = time.monotonic() + 60
            while not claim.count():
                assert time.monotonic() < deadline, "the payout never became claimable"
                time.sleep(0.5)
                person.goto("/dashboard")
        person.check_accessibility()
        person.shot("12-dashboard-payouts")
        claim.click()
        page.get_by_role("status").filter(has_text="Claimed batch 1").wait_for()
        assert settlement.balance(CREATOR.address) == 9 * USDC
        assert len(sent) == 1
        person.shot("13-dashboard-claimed")

        person.goto("/dashboard")  # the button is back after a reload: the contract refuses a second claim
        page.get_by_role("button", name="Claim batch 1").click()
        page.get_by_role("status").filter(has_text="Claim failed").wait_for()
        assert settlement.balance(CREATOR.address) == 9 * USDC
        assert person.errors == []
    finally:
        person.close()


class _World:
    """What Person needs of a world: the registry it browses."""

    def __init__(self, reg: LiveRegistry) -> None:
        self.reg = reg
