"""x402 on the gateway, end to end on anvil: a live registry as its own facilitator, a real node and
agent that writes down every call it receives, a payer with an EIP-3009-signing key and no account.

Each test says what the issue asks of it; balances are read from the chain, never from our books.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from chainutil import CHAIN_ID, Settlement, deploy_settlement, start_anvil, transact
from gitutil import api
from meshutil import AGENT, FAST, Mesh, until
from x402util import Anonymous, pay

from mcpz.keys import eip3009, receipts
from mcpz.keys.ethkeys import LocalAccount
from registry_server.billing import ledger, service
from registry_server.db import Database
from registry_server.settlement.operator import KEY_VAR, RELAYER_KEY_VAR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG"),
]

PRICE = 25_000  # 0.025 TUSD
SESSIONS = 8  # max_sessions_per_account: what anonymous sessions not paid yet share, and each payer
FEE_BPS = 2000

# `note` writes its text down; `gated` also waits for a file first, so a test can act mid-call.
TOOLS = '''

import os as _os
import time as _time


@mcp.tool()
def note(text: str) -> str:
    """Write the text down and return it."""
    with open(_os.environ.get("CALL_LOG", "/dev/null"), "a") as log:
        log.write(text + "\\n")
    return text


@mcp.tool()
def echo(text: str) -> str:
    """Return the text (free: no price on this tool)."""
    return text


@mcp.tool()
def gated(text: str) -> str:
    """Write the text down, wait for the gate file, return the text."""
    with open(_os.environ.get("CALL_LOG", "/dev/null"), "a") as log:
        log.write(text + "\\n")
    gate = _os.environ.get("GATE", "/nonexistent")
    for _ in range(600):
        if _os.path.exists(gate):
            break
        _time.sleep(0.05)
    return text
'''


@dataclass
class World:
    mesh: Mesh
    chain: Settlement
    log: Path
    gate: Path
    relayer: LocalAccount

    @property
    def url(self) -> str:
        return f"{self.mesh.reg.url}/mcp/{AGENT}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from conftest import start_registry

    anvil = start_anvil()
    chain = deploy_settlement(anvil)
    tmp = tmp_path_factory.mktemp("x402")
    log, gate = tmp / "calls.log", tmp / "gate"
    log.touch()
    relayer = chain.new_account()  # x402's relayer: gas money, no role on the contract
    os.environ[KEY_VAR] = chain.operator.key.hex()  # the registry runs in this process's threads
    os.environ[RELAYER_KEY_VAR] = relayer.key.hex()
    try:
        reg = start_registry(
            tmp / "registry", **FAST, price_notice_days=0.0, usage_flush_interval=0.2,
            platform_fee_bps=FEE_BPS, settlement_rpc=anvil.rpc_url, settlement_chain_id=CHAIN_ID,
            settlement_contract=chain.contract.address, settlement_confirmations=1,
            settlement_poll_interval=0.5, max_sessions_per_account=SESSIONS,
        )  # fmt: skip
    finally:
        os.environ.pop(KEY_VAR, None)
        os.environ.pop(RELAYER_KEY_VAR, None)
    mesh = Mesh(tmp, reg)
    mesh.write_agent(tools=TOOLS, env={"CALL_LOG": str(log), "GATE": str(gate)})
    try:
        mesh.serve_one("1.0.0")
        priced = api(
            reg,
            f"/v1/billing/plans/{AGENT}",
            mesh.token,
            method="PUT",
            json={"per_call": PRICE, "tools": {"echo": 0}, "x402": True},
        )
        assert priced.status_code == 200, priced.text
        assert priced.json()["current"]["x402"] is True
        yield World(mesh, chain, log, gate, relayer)
    finally:
        mesh.close()
        reg.stop()
        anvil.stop()


def payer(w: World, funds: int = 10 * PRICE) -> LocalAccount:
    account = w.chain.new_account()
    w.chain.mint(account.address, funds)
    return account


def calls(w: World) -> list[str]:
    return w.log.read_text().splitlines()


def ledger_balance(w: World, account: str) -> int:
    db = Database(w.mesh.reg.database_url)
    try:
        with db.session() as session:
            return service.balances(session, [account]).get(account, 0)
    finally:
        db.dispose()


def account_id(w: World, name: str) -> int:
    db = Database(w.mesh.reg.database_url)
    try:
        with db.session() as session:
            return service.account_id_of(session, name)
    finally:
        db.dispose()


def test_an_anonymous_paid_call_settles_exactly_the_price(world: World) -> None:
    w = world
    key = payer(w)
    session = Anonymous(w.url)
    text = f"paid-{secrets.token_hex(4)}"
    asked = session.call("note", text=text)
    result = asked["result"]
    assert result["isError"] is True
    required = result["structuredContent"]
    [accepted] = required["accepts"]
    assert accepted["scheme"] == "exact" and accepted["network"] == f"eip155:{CHAIN_ID}"
    assert accepted["amount"] == str(PRICE) and accepted["payTo"] == w.chain.contract.address
    assert accepted["asset"] == w.chain.token.address
    assert accepted["extra"]["name"] == "mcpz Test USD" and accepted["extra"]["version"] == "1"
    assert text not in calls(w)  # asking for payment runs nothing

    before_payer, before_contract = w.chain.balance(key.address), w.chain.balance(w.chain.contract.address)
    fees, x402_in = ledger_balance(w, ledger.PLATFORM_FEES), ledger_balance(w, ledger.CHAIN_X402)
    creator = ledger.creator_available(account_id(w, "acme"))
    earned = ledger_balance(w, creator)
    answer = session.call("note", {"x402/payment": pay(required, key)}, text=text)
    result = answer["result"]
    assert result.get("isError") is not True, result
    assert result["content"][0]["text"] == text
    settled = result["_meta"]["x402/payment-response"]
    assert settled["success"] is True and settled["payer"] == key.address
    assert settled["network"] == f"eip155:{CHAIN_ID}"
    receipt = w.chain.anvil.w3.eth.get_transaction_receipt(settled["transaction"])
    assert receipt["status"] == 1
    assert w.chain.balance(key.address) == before_payer - PRICE
    assert w.chain.balance(w.chain.contract.address) == before_contract + PRICE
    # The ledger agrees with the chain: the price came from chain:x402, the fee went to the platform.
    assert ledger_balance(w, ledger.CHAIN_X402) == x402_in - PRICE
    assert ledger_balance(w, ledger.PLATFORM_FEES) == fees + PRICE * FEE_BPS // 10_000
    # ... and the rest is the creator's at once, available for the next payout batch (final on chain).
    assert ledger_balance(w, creator) == earned + PRICE - PRICE * FEE_BPS // 10_000
    # The paid answer carries the billing issue's signed receipt, for the price paid.
    _, got = receipts.detach(result)
    assert got is not None and got.price == PRICE
    assert calls(w).count(text) == 1


def test_a_replayed_authorization_is_refused(world: World) -> None:
    w = world
    key = payer(w)
    session = Anonymous(w.url)
    required = session.call("note", text="x")["result"]["structuredContent"]
    payment = pay(required, key)
    first = session.call("note", {"x402/payment": payment}, text="once")["result"]
    assert first["_meta"]["x402/payment-response"]["success"] is True
    balance = w.chain.balance(key.address)
    again = Anonymous(w.url).call("note", {"x402/payment": payment}, text="twice")["result"]
    # No payment identifier: the same authorization is the same payment, answered as before.
    assert (
        again["_meta"]["x402/payment-response"]["transaction"]
        == first["_meta"]["x402/payment-response"]["transaction"]
    )
    assert "twice" not in calls(w)
    assert w.chain.balance(key.address) == balance


def test_a_payment_below_the_price_is_refused_before_the_agent_runs(world: World) -> None:
    w = world
    key = payer(w)
    session = Anonymous(w.url)
    required = session.call("note", text="x")["result"]["structuredContent"]
    text = f"cheap-{secrets.token_hex(4)}"
    result = session.call("note", {"x402/payment": pay(required, key, amount=PRICE - 1)}, text=text)["result"]
    assert result["isError"] is True
    assert "authorization_value" in result["structuredContent"]["error"]
    assert text not in calls(w)
    assert w.chain.balance(key.address) == 10 * PRICE


def test_a_failed_settlement_withholds_the_result_and_charges_nothing(world: World) -> None:
    w = world
    key = payer(w, funds=PRICE)
    session = Anonymous(w.url)
    required = session.call("gated", text="x")["result"]["structuredContent"]
    text = f"withheld-{secrets.token_hex(4)}"
    answer: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: answer.update(session.call("gated", {"x402/payment": pay(required, key)}, text=text))
    )
    w.gate.unlink(missing_ok=True)
    thread.start()
    until(lambda: text in calls(w), what="the agent to run the call")
    # Verified and running: the payer moves its money away before the registry settles.
    sink = w.chain.new_account()
    transact(w.chain.anvil, w.chain.token.functions.transfer(sink.address, PRICE), key)
    w.gate.touch()
    thread.join(60)
    result = answer["result"]
    assert result["isError"] is True
    assert text not in json.dumps(result)  # the tool's answer is withheld
    assert result["_meta"]["x402/payment-response"]["success"] is False
    assert w.chain.balance(sink.address) == PRICE and w.chain.balance(key.address) == 0


def test_a_retry_with_the_same_payment_identifier_is_answered_alike_and_pays_once(world: World) -> None:
    w = world
    key = payer(w)
    session = Anonymous(w.url)
    required = session.call("note", text="x")["result"]["structuredContent"]
    payment_id = f"pay_{secrets.token_hex(12)}"
    payment = pay(required, key, payment_id=payment_id)
    text = f"idem-{secrets.token_hex(4)}"
    first = session.call("note", {"x402/payment": payment}, text=text)["result"]
    balance = w.chain.balance(key.address)
    second = session.call("note", {"x402/payment": payment}, text=text)["result"]
    assert second == first
    assert calls(w).count(text) == 1
    assert w.chain.balance(key.address) == balance == 10 * PRICE - PRICE
    other = pay(required, key, payment_id=payment_id)  # another authorization under the same id
    conflict = session.http.post(
        session.url,
        json={"jsonrpc": "2.0", "id": 99, "method": "tools/call",
              "params": {"name": "note", "arguments": {"text": text}, "_meta": {"x402/payment": other}}},
    ).json()  # fmt: skip
    assert conflict["error"]["code"] == -32022
    assert w.chain.balance(key.address) == balance


def test_anonymous_callers_reach_only_listings_that_take_x402(world: World) -> None:
    w = world
    answer = httpx2.post(
        f"{w.mesh.reg.url}/mcp/acme/elsewhere",
        json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}},
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 401


def test_the_library_pays_with_no_account_and_never_above_the_maximum(world: World) -> None:
    import anyio

    from mcpz.client.gateway import call_remote_tool
    from mcpz.client.x402 import Payer, PaymentRefused

    w = world
    key = payer(w)
    text = f"lib-{secrets.token_hex(4)}"
    remote: dict[str, Any] = {"registry": w.mesh.reg.url, "token": None, "timeout": 60.0}
    with pytest.raises(PaymentRefused, match="above your maximum"):
        anyio.run(
            lambda: call_remote_tool(
                AGENT, "note", {"text": text}, payer=Payer(key, max_price=PRICE - 1), **remote
            )
        )
    assert text not in calls(w) and w.chain.balance(key.address) == 10 * PRICE
    result = anyio.run(
        lambda: call_remote_tool(AGENT, "note", {"text": text}, payer=Payer(key, max_price=PRICE), **remote)
    )
    assert result.content[0]["text"] == text
    assert result.result is not None and result.result["_meta"]["x402/payment-response"]["success"] is True
    assert w.chain.balance(key.address) == 9 * PRICE


def test_mcpz_call_max_price_below_the_asked_price_refuses_to_sign(world: World, cli: Any) -> None:
    from mcpz.keys.wallet import Wallet

    w = world
    key = payer(w)
    Wallet.import_key(key.key.hex(), "pass-phrase-1")
    os.environ["MCPZ_WALLET_PASSPHRASE"] = "pass-phrase-1"
    try:
        text = f"cli-{secrets.token_hex(4)}"
        refused = cli(
            "call",
            AGENT,
            "note",
            f"text={text}",
            "--pay",
            "--max-price",
            str(PRICE - 1),
            "--registry",
            w.mesh.reg.url,
        )
        assert refused.exit_code == 8, refused.stderr
        assert "above your maximum" in refused.stderr and "nothing was signed" in refused.stderr
        assert text not in calls(w) and w.chain.balance(key.address) == 10 * PRICE
        paid = cli(
            "call",
            AGENT,
            "note",
            f"text={text}",
            "--pay",
            "--max-price",
            str(PRICE),
            "--registry",
            w.mesh.reg.url,
        )
        assert paid.exit_code == 0, paid.stderr
        assert text in paid.stdout
        assert w.chain.balance(key.address) == 9 * PRICE
    finally:
        os.environ.pop("MCPZ_WALLET_PASSPHRASE", None)


def test_mcpz_call_pay_unlocks_no_wallet_for_a_free_call(world: World, cli: Any) -> None:
    w = world
    # No wallet, no passphrase: a call nobody asks payment for must not need them.
    os.environ.pop("MCPZ_WALLET_PASSPHRASE", None)
    text = f"free-{secrets.token_hex(4)}"
    token = w.mesh.reg.account(f"free-{secrets.token_hex(4)}", "read,call")
    free = cli("call", AGENT, "echo", f"text={text}", "--pay", "--registry", w.mesh.reg.url,
               "--token", token)  # fmt: skip
    assert free.exit_code == 0, free.stderr
    assert text in free.stdout
    url = w.mesh.reg.url
    decimal = cli("call", AGENT, "note", "text=x", "--pay", "--max-price", "0.05", "--registry", url)
    assert decimal.exit_code != 0 and "base units" in decimal.stderr


class SyncMcp:
    """The sync MCP client x402's `x402MCPClientSync` wraps: `call_tool(params, **kwargs)` returning
    the result's fields as attributes. Ours, plain JSON-RPC over Streamable HTTP with no token: the
    official MCP SDK 2.x renamed the result's fields (is_error) and x402 2.25's async client still
    reads the 1.x ones (isError), so the SDK's own session cannot be handed to it unchanged."""

    def __init__(self, url: str) -> None:
        self.session = Anonymous(url)

    def call_tool(self, params: dict[str, Any], **kwargs: Any) -> Any:
        from types import SimpleNamespace

        meta = params.get("_meta")
        answer = self.session.call(params["name"], meta, **params.get("arguments", {}))
        result = answer["result"]
        return SimpleNamespace(
            content=result.get("content", []),
            isError=bool(result.get("isError")),
            structuredContent=result.get("structuredContent"),
            _meta=result.get("_meta", {}),
        )


def test_the_official_x402_client_pays_our_gateway(world: World) -> None:
    """x402's own MCP client and scheme code (PyPI `x402`: x402MCPClientSync, x402ClientSync,
    ExactEvmClientScheme) detect our PaymentRequired, sign, and read our SettleResponse unchanged."""
    x402_mcp = pytest.importorskip("x402.mcp")
    from x402 import x402ClientSync
    from x402.mechanisms.evm.exact import ExactEvmClientScheme

    w = world
    key = payer(w)
    text = f"sdk-{secrets.token_hex(4)}"
    client = x402ClientSync()
    # It wraps an eth_account key itself (EthAccountSigner); its annotation names only the protocol.
    client.register(f"eip155:{CHAIN_ID}", ExactEvmClientScheme(key))  # type: ignore[arg-type]
    # Its spend controls know the production stablecoins only: the test token is opted in, capped.
    asset: Any = {
        "network": f"eip155:{CHAIN_ID}",
        "asset": w.chain.token.address,
        "max_amount_per_payment": str(PRICE),
    }
    client.set_spend_controls({"allowed_assets": [asset]})
    paying = x402_mcp.x402MCPClientSync(SyncMcp(w.url), client, auto_payment=True)
    result = paying.call_tool("note", {"text": text})
    assert result.is_error is False, result
    assert result.payment_made is True
    assert result.payment_response is not None and result.payment_response.success is True
    assert calls(w).count(text) == 1
    assert w.chain.balance(key.address) == 9 * PRICE


def test_an_unknown_settlement_is_settled_by_its_hash_on_the_retry_never_by_a_new_402(world: World) -> None:
    w = world
    key = payer(w)
    session = Anonymous(w.url)
    required = session.call("note", text="x")["result"]["structuredContent"]
    payment = pay(required, key, payment_id=f"pay_{secrets.token_hex(12)}")
    text = f"unmined-{secrets.token_hex(4)}"
    rpc = w.chain.anvil.w3.provider.make_request
    rpc("evm_setAutomine", [False])  # the settlement waits in the pool past the gateway's wait
    params = {"name": "note", "arguments": {"text": text}, "_meta": {"x402/payment": payment}}
    try:
        pending = session.http.post(
            session.url, json={"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
        ).json()
    finally:
        rpc("evm_setAutomine", [True])
    assert pending["error"]["code"] == -32023
    tx_hash = pending["error"]["data"]["transaction"]
    rpc("anvil_mine", ["0x1"])
    assert w.chain.anvil.w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    result = session.call("note", {"x402/payment": payment}, text=text)["result"]
    assert result["content"][0]["text"] == text
    assert result["_meta"]["x402/payment-response"] == {
        "success": True, "transaction": tx_hash, "network": f"eip155:{CHAIN_ID}", "payer": key.address,
        "amount": str(PRICE),
    }  # fmt: skip
    # Settled on the retry, and still the billing issue's signed receipt, over this answer and price.
    trusted = httpx2.get(f"{w.mesh.reg.url}/v1/billing/receipt-key").json()["key"]
    signed = receipts.verify_result(result, trusted, {"name": "note", "arguments": {"text": text}})
    assert signed.price == PRICE
    assert session.call("note", {"x402/payment": payment}, text=text)["result"] == result  # kept as given
    assert calls(w).count(text) == 1
    assert w.chain.balance(key.address) == 9 * PRICE


def test_settlements_are_sent_by_the_relayer_and_leave_the_operators_nonces_to_payouts(world: World) -> None:
    w = world
    w3 = w.chain.anvil.w3
    operator_nonce = w3.eth.get_transaction_count(w.chain.operator.address)
    relayer_nonce = w3.eth.get_transaction_count(w.relayer.address)
    session = Anonymous(w.url)
    required = session.call("note", text="x")["result"]["structuredContent"]
    keys = [payer(w) for _ in range(4)]
    answers: list[dict[str, Any]] = []
    threads = [
        threading.Thread(
            target=lambda k=k: answers.append(
                Anonymous(w.url).call("note", {"x402/payment": pay(required, k)}, text="relayed")
            )
        )
        for k in keys
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    hashes = [a["result"]["_meta"]["x402/payment-response"]["transaction"] for a in answers]
    assert len(set(hashes)) == 4
    sent = [w3.eth.get_transaction(h) for h in hashes]
    assert {t["from"] for t in sent} == {w.relayer.address}
    # One nonce each, in a row from the relayer's, and none of the operator's (the payout job's).
    assert sorted(t["nonce"] for t in sent) == list(range(relayer_nonce, relayer_nonce + 4))
    assert all(w3.eth.get_transaction_receipt(h)["status"] == 1 for h in hashes)
    assert w3.eth.get_transaction_count(w.chain.operator.address) == operator_nonce


def test_reconciliation_puts_chain_x402_beside_the_authorized_transfers_into_the_contract(
    world: World,
) -> None:
    from chainutil import settlement_chain

    from registry_server.settlement.reconcile import reconcile

    w = world
    session = Anonymous(w.url)
    required = session.call("note", text="x")["result"]["structuredContent"]
    paid = session.call("note", {"x402/payment": pay(required, payer(w))}, text="reconciled")["result"]
    assert paid["_meta"]["x402/payment-response"]["success"] is True

    def x402_row() -> Any:
        db = Database(w.mesh.reg.database_url)
        try:
            report = reconcile(db, settlement_chain(w.chain), 1)
        finally:
            db.dispose()
        return next(r for r in report.rows if r.what == "x402 payments")

    row = x402_row()
    assert row.chain == -ledger_balance(w, ledger.CHAIN_X402) > 0
    assert row.difference == 0
    # An authorization used on chain that the registry never booked: reconciliation shows it.
    key = payer(w)
    [accepted] = required["accepts"]
    extra = accepted["extra"]
    domain = eip3009.Domain(extra["name"], extra["version"], CHAIN_ID, accepted["asset"])
    auth = eip3009.Authorization(
        sender=key.address, to=w.chain.contract.address, value=PRICE, valid_after=0,
        valid_before=int(time.time()) + 300, nonce=eip3009.new_nonce(),
    )  # fmt: skip
    v, r, s = eip3009.split(eip3009.sign(key, domain, auth))
    transfer = w.chain.token.functions.transferWithAuthorization(
        auth.sender, auth.to, auth.value, auth.valid_after, auth.valid_before,
        bytes.fromhex(auth.nonce[2:]), v, r, s,
    )  # fmt: skip
    transact(w.chain.anvil, transfer, w.chain.user)
    # A plain transfer into the contract is no x402 payment: it is not counted.
    transact(w.chain.anvil, w.chain.token.functions.transfer(w.chain.contract.address, 7), key)
    after = x402_row()
    assert after.chain == row.chain + PRICE
    assert after.difference == -PRICE


def test_anonymous_payers_each_have_their_own_session_cap(world: World) -> None:
    w = world
    key = payer(w)
    mine = Anonymous(w.url)
    required = mine.call("note", text="x")["result"]["structuredContent"]
    first = mine.call("note", {"x402/payment": pay(required, key)}, text="mine")["result"]
    assert first["_meta"]["x402/payment-response"]["success"] is True
    # Someone else opens more anonymous sessions than one cap holds, and pays for none.
    others = [Anonymous(w.url) for _ in range(SESSIONS + 1)]
    assert others
    # The paying session was not ended for them: it counts against its payer's cap only.
    again = mine.http.post(
        mine.url,
        json={"jsonrpc": "2.0", "id": 50, "method": "tools/call",
              "params": {"name": "note", "arguments": {"text": "again"},
                         "_meta": {"x402/payment": pay(required, key)}}},
    )  # fmt: skip
    assert again.status_code == 200, again.text
    assert again.json()["result"]["_meta"]["x402/payment-response"]["success"] is True
    # The oldest of the sessions that never paid was ended instead.
    oldest = others[0].http.post(
        others[0].url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                             "params": {"name": "note", "arguments": {"text": "x"}}},
    )  # fmt: skip
    assert oldest.status_code == 404, oldest.text
