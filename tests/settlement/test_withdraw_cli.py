"""Withdrawals end to end: `/v1/billing/withdrawals` on a live registry watching a real anvil, and
`mcpz billing withdraw` / `withdrawals` sending the voucher from the user's wallet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chainutil import CHAIN_ID, Miner, Settlement, settlement_registry, user_wallet
from conftest import LiveRegistry
from gitutil import api
from meshutil import until

from mcpz import exit_codes
from mcpz.keys.ethkeys import LocalAccount
from registry_server.accounts import service as accounts
from registry_server.accounts import tokens
from registry_server.accounts.namespaces import account_for_address
from registry_server.db import Database
from registry_server.settlement.operator import KEY_VAR

pytestmark = pytest.mark.slow

USDC = 1_000_000
CONFIRMATIONS = 2
PASSPHRASE = "Quiet-Harbour-Lamp-41"


def _start(tmp_path: Path, settlement: Settlement, **kw: Any) -> LiveRegistry:
    reg: LiveRegistry = settlement_registry(tmp_path / "registry", settlement, CONFIRMATIONS, **kw)
    return reg


@pytest.fixture
def chain_registry(
    tmp_path: Path, settlement: Settlement, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveRegistry]:
    monkeypatch.setenv(KEY_VAR, settlement.operator.key.hex())
    reg = _start(tmp_path, settlement)
    yield reg
    reg.stop()


@pytest.fixture
def wallet(monkeypatch: pytest.MonkeyPatch, settlement: Settlement) -> LocalAccount:
    return user_wallet(monkeypatch, settlement)


def wallet_token(reg: LiveRegistry, address: str, scopes: str = "read,call") -> str:
    """A token of the account `address` signs in to (as `mcpz login --wallet` makes it)."""
    db = Database(reg.database_url)
    try:
        with db.session() as session:
            name = account_for_address(session, address).name
        with db.session() as session:
            account = accounts.account_by_name(session, name)
            _row, secret = accounts.create_token(
                session, account, tokens.parse_scopes(scopes), expires_in=None
            )
    finally:
        db.dispose()
    return secret


def available(reg: LiveRegistry, token: str) -> int:
    return int(api(reg, "/v1/billing/balance", token).json()["available"])


def funded(reg: LiveRegistry, s: Settlement, address: str, amount: int) -> str:
    """The wallet's account, with `amount` deposited on chain and credited."""
    token = wallet_token(reg, address)
    s.deposit(s.admin, address.lower(), amount)
    with Miner(s):
        until(lambda: available(reg, token) == amount, what="the deposit's credit")
    return token


def vouchers(reg: LiveRegistry, token: str) -> list[dict[str, Any]]:
    answer = api(reg, "/v1/billing/withdrawals", token)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def post(reg: LiveRegistry, token: str | None, body: dict[str, Any]) -> Any:
    return api(reg, "/v1/billing/withdrawals", token, method="POST", json=body)


# --- the API --------------------------------------------------------------------------------------


def test_a_voucher_from_the_api_is_used_on_chain_and_shown_withdrawn(
    chain_registry: LiveRegistry, settlement: Settlement, wallet: LocalAccount
) -> None:
    s = settlement
    token = funded(chain_registry, s, wallet.address, 5 * USDC)
    answer = post(chain_registry, token, {"amount": 2 * USDC, "address": wallet.address})
    assert answer.status_code == 201, answer.text
    v = answer.json()
    assert (v["state"], v["address"], v["amount"], v["nonce"]) == (
        "issued",
        wallet.address,
        2 * USDC,
        v["id"],
    )
    assert (v["chain_id"], v["contract"]) == (CHAIN_ID, s.contract.address)
    assert available(chain_registry, token) == 3 * USDC
    call = s.contract.functions.withdraw(
        v["amount"], v["nonce"], v["expiry"], bytes.fromhex(v["signature"][2:])
    )
    s.send(call, wallet)
    assert s.balance(wallet.address) == 2 * USDC
    with Miner(s):
        until(lambda: vouchers(chain_registry, token)[0]["state"] == "withdrawn", what="the withdrawal")
    (shown,) = vouchers(chain_registry, token)
    assert shown["tx_hash"].startswith("0x") and shown["settled_us"] is not None
    assert available(chain_registry, token) == 3 * USDC
    # Another account sees none of it.
    other = wallet_token(chain_registry, s.new_account().address)
    assert vouchers(chain_registry, other) == []


def test_an_expired_voucher_comes_back_to_the_balance(
    tmp_path: Path, settlement: Settlement, wallet: LocalAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settlement
    monkeypatch.setenv(KEY_VAR, s.operator.key.hex())
    reg = _start(tmp_path, s, settlement_voucher_ttl=30)
    try:
        token = funded(reg, s, wallet.address, 3 * USDC)
        v = post(reg, token, {"amount": 3 * USDC}).json()
        assert available(reg, token) == 0
        s.anvil.set_next_timestamp(v["expiry"] + 1)
        with Miner(s):
            until(lambda: vouchers(reg, token)[0]["state"] == "expired", what="the expiry")
        assert available(reg, token) == 3 * USDC
        call = s.contract.functions.withdraw(
            v["amount"], v["nonce"], v["expiry"], bytes.fromhex(v["signature"][2:])
        )
        s.reverts("VoucherExpired", call, wallet)
    finally:
        reg.stop()


def test_refusals_are_one_line_and_hold_nothing(
    chain_registry: LiveRegistry, settlement: Settlement, wallet: LocalAccount
) -> None:
    token = funded(chain_registry, settlement, wallet.address, USDC)
    over = post(chain_registry, token, {"amount": USDC + 1})
    assert over.status_code == 400
    assert "is less than the 1.000001 to withdraw" in over.json()["error"]["message"]
    elsewhere = post(chain_registry, token, {"amount": USDC, "address": settlement.user.address})
    assert elsewhere.status_code == 409 and "pays its wallet" in elsewhere.json()["error"]["message"]
    assert post(chain_registry, token, {"amount": 0}).status_code == 422
    assert vouchers(chain_registry, token) == [] and available(chain_registry, token) == USDC
    named = chain_registry.account("nowallet")
    refused = post(chain_registry, named, {"amount": 1})
    assert (
        refused.status_code == 409
        and 'account "nowallet" has no wallet' in refused.json()["error"]["message"]
    )
    assert "mcpz login --wallet" in refused.json()["error"]["hint"]
    reader = wallet_token(chain_registry, wallet.address, "read")
    assert post(chain_registry, reader, {"amount": 1}).status_code == 403
    assert vouchers(chain_registry, reader) == []


def test_without_an_operator_key_vouchers_are_refused(
    tmp_path: Path, settlement: Settlement, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_VAR, raising=False)
    reg = _start(tmp_path, settlement)
    try:
        token = wallet_token(reg, settlement.user.address)
        refused = post(reg, token, {"amount": 1})
        assert (
            refused.status_code == 409 and "no settlement operator key" in refused.json()["error"]["message"]
        )
    finally:
        reg.stop()


def test_withdrawals_are_404_when_settlement_is_not_configured(sqlite_registry: LiveRegistry) -> None:
    token = sqlite_registry.account("ann")
    for answer in (
        post(sqlite_registry, token, {"amount": 1}),
        api(sqlite_registry, "/v1/billing/withdrawals", token),
    ):
        assert answer.status_code == 404
        assert answer.json()["error"]["message"].startswith("settlement is not configured on this registry")
    assert post(sqlite_registry, None, {"amount": 1}).status_code == 401


# --- the command ----------------------------------------------------------------------------------


def test_withdraw_sends_the_voucher_from_the_wallet(
    cli: Any, chain_registry: LiveRegistry, settlement: Settlement, wallet: LocalAccount
) -> None:
    s = settlement
    token = funded(chain_registry, s, wallet.address, 5 * USDC)
    where = ("--registry", chain_registry.url, "--token", token)
    result = cli("--json", "billing", "withdraw", "1.5", *where, "--rpc", s.anvil.rpc_url)
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["amount"], shown["available"], shown["address"]) == (1_500_000, 3_500_000, wallet.address)
    assert shown["tx_hash"] in result.stderr
    assert s.balance(wallet.address) == 1_500_000
    listed = cli("--json", "billing", "withdrawals", *where)
    assert listed.exit_code == 0, listed.stderr
    assert [(v["id"], v["amount"]) for v in json.loads(listed.stdout)] == [(shown["voucher"], 1_500_000)]
    plain = cli("billing", "withdrawals", *where)
    assert f"{shown['voucher']}  1.50 USDC" in plain.stdout


def test_a_voucher_sent_again_is_refused_by_the_contract(
    cli: Any, chain_registry: LiveRegistry, settlement: Settlement, wallet: LocalAccount
) -> None:
    s = settlement
    token = funded(chain_registry, s, wallet.address, 2 * USDC)
    v = post(chain_registry, token, {"amount": USDC}).json()
    where = ("--registry", chain_registry.url, "--token", token, "--rpc", s.anvil.rpc_url)
    first = cli("billing", "withdraw", "--voucher", str(v["id"]), *where)
    assert first.exit_code == 0, first.stderr
    assert "withdrew 1.00 USDC" in first.stdout and "available 1.00 USDC" in first.stdout
    again = cli("billing", "withdraw", "--voucher", str(v["id"]), *where)
    assert again.exit_code == exit_codes.ERROR
    assert (
        f"the withdrawal would revert: NonceUsed({wallet.address.lower()}, {v['id']})"
        in again.stderr.splitlines()[0]
    )
    assert s.balance(wallet.address) == USDC
    with Miner(s):
        until(lambda: vouchers(chain_registry, token)[0]["state"] == "withdrawn", what="the withdrawal")
    done = cli("billing", "withdraw", "--voucher", str(v["id"]), *where)
    assert done.exit_code == exit_codes.USAGE and "is withdrawn" in done.stderr


def test_over_the_balance_is_refused_before_anything_is_sent(
    cli: Any, chain_registry: LiveRegistry, settlement: Settlement, wallet: LocalAccount
) -> None:
    token = funded(chain_registry, settlement, wallet.address, USDC)
    before = settlement.anvil.w3.eth.get_transaction_count(wallet.address)
    result = cli(
        "billing", "withdraw", "2", "--registry", chain_registry.url, "--token", token,
        "--rpc", settlement.anvil.rpc_url,
    )  # fmt: skip
    assert result.exit_code == exit_codes.USAGE
    assert "is less than the 2.00 to withdraw" in result.stderr.splitlines()[0]
    assert settlement.anvil.w3.eth.get_transaction_count(wallet.address) == before
    assert available(chain_registry, token) == USDC


def test_a_wallet_other_than_the_accounts_is_refused_before_anything_is_held(
    cli: Any, chain_registry: LiveRegistry, settlement: Settlement, wallet: LocalAccount
) -> None:
    other = settlement.new_account()
    token = funded(chain_registry, settlement, other.address, USDC)
    result = cli(
        "billing", "withdraw", "1", "--registry", chain_registry.url, "--token", token,
        "--rpc", settlement.anvil.rpc_url,
    )  # fmt: skip
    assert result.exit_code == exit_codes.REFUSED
    assert f"pays its wallet {other.address}, not {wallet.address}" in result.stderr
    assert vouchers(chain_registry, token) == [] and available(chain_registry, token) == USDC


def test_withdraw_on_a_registry_without_settlement_says_so(
    cli: Any, sqlite_registry: LiveRegistry, wallet: LocalAccount
) -> None:
    token = sqlite_registry.account("hal")
    result = cli(
        "billing", "withdraw", "5", "--registry", sqlite_registry.url, "--token", token,
        "--rpc", "http://127.0.0.1:9",
    )  # fmt: skip
    assert result.exit_code == exit_codes.USAGE
    assert "this registry settles nothing on chain (settlement is not configured)" in result.stderr


@pytest.mark.parametrize("args", [(), ("abc",), ("0",), ("1", "--voucher", "3")])
def test_bad_arguments_are_usage_errors(cli: Any, args: tuple[str, ...]) -> None:
    result = cli(
        "billing", "withdraw", *args, "--registry", "http://127.0.0.1:9", "--token", "x", "--rpc", "x"
    )
    assert result.exit_code == exit_codes.USAGE, result.stderr
