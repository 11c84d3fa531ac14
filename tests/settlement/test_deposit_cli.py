"""`mcpz billing deposit` end to end: the user's wallet signs on a real anvil, a live registry watches
the contract and credits the deposit after its confirmations. The library's two deposit paths run on
the embedded EVM too (`either_settlement`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chainutil import CHAIN_ID, Miner, Settlement, _free_port, settlement_registry, user_wallet
from conftest import LiveRegistry
from gitutil import api

from mcpz import exit_codes
from mcpz.client import chain
from mcpz.client.chain import SettlementInfo
from mcpz.errors import UsageError
from mcpz.keys.ethkeys import LocalAccount

pytestmark = pytest.mark.slow

USDC = 1_000_000
CONFIRMATIONS = 3


@pytest.fixture
def chain_registry(tmp_path: Path, settlement: Settlement) -> Iterator[LiveRegistry]:
    reg = settlement_registry(tmp_path / "registry", settlement, CONFIRMATIONS)
    yield reg
    reg.stop()


@pytest.fixture
def wallet(monkeypatch: pytest.MonkeyPatch, settlement: Settlement) -> LocalAccount:
    return user_wallet(monkeypatch, settlement)


def available(reg: LiveRegistry, token: str) -> int:
    return int(api(reg, "/v1/billing/balance", token).json()["available"])


def test_a_deposit_from_the_wallet_is_credited(
    cli: Any, chain_registry: LiveRegistry, settlement: Settlement, wallet: LocalAccount
) -> None:
    token = chain_registry.account("erin")
    settlement.mint(wallet.address, 8 * USDC)
    args = ("--json", "billing", "deposit", "5", "--registry", chain_registry.url, "--token", token)
    with Miner(settlement):
        result = cli(*args, "--rpc", settlement.anvil.rpc_url)
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["credited"] is True and shown["available"] == 5 * USDC
    assert (shown["account"], shown["amount"], shown["method"]) == ("erin", 5 * USDC, "permit")
    assert shown["from"] == wallet.address and shown["tx_hash"] in result.stderr
    assert available(chain_registry, token) == 5 * USDC
    assert settlement.balance(wallet.address) == 3 * USDC


def test_the_rpc_url_from_the_environment_and_plain_output(
    cli: Any,
    chain_registry: LiveRegistry,
    settlement: Settlement,
    wallet: LocalAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = chain_registry.account("fay")
    settlement.mint(wallet.address, USDC)
    monkeypatch.setenv("MCPZ_CHAIN_RPC", settlement.anvil.rpc_url)
    with Miner(settlement):
        result = cli("billing", "deposit", "0.25", "--registry", chain_registry.url, "--token", token)
    assert result.exit_code == 0, result.stderr
    assert "deposited" in result.stdout and "credited" in result.stdout
    assert available(chain_registry, token) == USDC // 4


def test_too_few_tokens_is_one_line_and_sends_nothing(
    cli: Any, chain_registry: LiveRegistry, settlement: Settlement, wallet: LocalAccount
) -> None:
    token = chain_registry.account("gus")
    settlement.mint(wallet.address, USDC)
    before = settlement.anvil.w3.eth.get_transaction_count(wallet.address)
    result = cli(
        "billing", "deposit", "5", "--registry", chain_registry.url, "--token", token,
        "--rpc", settlement.anvil.rpc_url,
    )  # fmt: skip
    assert result.exit_code == exit_codes.USAGE
    assert result.stdout == ""
    assert "holds 1.00" in result.stderr.splitlines()[0] and "less than the 5.00" in result.stderr
    assert settlement.anvil.w3.eth.get_transaction_count(wallet.address) == before
    assert available(chain_registry, token) == 0


def test_a_registry_without_settlement_says_so(cli: Any, sqlite_registry: LiveRegistry) -> None:
    token = sqlite_registry.account("hal")
    result = cli(
        "billing", "deposit", "5", "--registry", sqlite_registry.url, "--token", token,
        "--rpc", "http://127.0.0.1:9",
    )  # fmt: skip
    assert result.exit_code == exit_codes.USAGE
    assert "this registry does not take deposits (settlement is not configured)" in result.stderr


def test_no_rpc_url_names_where_to_give_one(cli: Any, sqlite_registry: LiveRegistry) -> None:
    result = cli("billing", "deposit", "5", "--registry", sqlite_registry.url, "--token", "x")
    assert result.exit_code == exit_codes.USAGE
    assert "--rpc" in result.stderr and "MCPZ_CHAIN_RPC" in result.stderr and "chain_rpc" in result.stderr


@pytest.mark.parametrize("amount", ["abc", "-1", "0", "1.0000001"])
def test_a_bad_amount_is_a_usage_error(cli: Any, sqlite_registry: LiveRegistry, amount: str) -> None:
    result = cli(
        "billing", "deposit", amount, "--registry", sqlite_registry.url, "--token", "x",
        "--rpc", "http://127.0.0.1:9",
    )  # fmt: skip
    assert result.exit_code == exit_codes.USAGE, result.stderr


def test_a_deposit_the_contract_refuses_names_its_error(
    cli: Any, chain_registry: LiveRegistry, settlement: Settlement, wallet: LocalAccount
) -> None:
    token = chain_registry.account("ivy")
    settlement.mint(wallet.address, USDC)
    result = cli(
        "billing", "deposit", "1", "--account", "x" * 200, "--registry", chain_registry.url,
        "--token", token, "--rpc", settlement.anvil.rpc_url,
    )  # fmt: skip
    assert result.exit_code == exit_codes.ERROR
    assert "the deposit would revert: BadAccountName(200)" in result.stderr.splitlines()[0]
    assert settlement.balance(wallet.address) == USDC


def test_an_unreachable_chain_is_a_network_error(
    cli: Any, chain_registry: LiveRegistry, settlement: Settlement, wallet: LocalAccount
) -> None:
    token = chain_registry.account("jo")
    result = cli(
        "billing", "deposit", "1", "--registry", chain_registry.url, "--token", token,
        "--rpc", f"http://user:secret@127.0.0.1:{_free_port()}/v3/api-key",
    )  # fmt: skip
    assert result.exit_code == exit_codes.NETWORK
    assert "cannot reach the chain at http://127.0.0.1:" in result.stderr
    assert "secret" not in result.stderr and "api-key" not in result.stderr


# --- the library under the command ------------------------------------------------------------


def info_of(settlement: Settlement, chain_id: int = CHAIN_ID) -> SettlementInfo:
    return SettlementInfo(chain_id, settlement.contract.address, settlement.token.address, 6, CONFIRMATIONS)


def test_approve_then_deposit_when_permits_are_not_used(either_settlement: Settlement) -> None:
    settlement = either_settlement
    user = settlement.new_account()
    settlement.mint(user.address, 3 * USDC)
    sent: list[str] = []
    done = chain.deposit(
        settlement.anvil.rpc_url,
        info_of(settlement),
        user,
        "kim",
        2 * USDC,
        on_sent=sent.append,
        permit=False,
    )
    assert done.method == "approve" and len(sent) == 2 and sent[-1] == done.tx_hash
    receipt = settlement.anvil.w3.eth.get_transaction_receipt(done.tx_hash)
    [event] = settlement.events(receipt, "Deposited")
    assert (event.args.account, event.args.amount) == ("kim", 2 * USDC)
    assert settlement.balance(user.address) == USDC


def test_the_permit_path_is_one_transaction(either_settlement: Settlement) -> None:
    settlement = either_settlement
    user = settlement.new_account()
    settlement.mint(user.address, USDC)
    sent: list[str] = []
    done = chain.deposit(
        settlement.anvil.rpc_url, info_of(settlement), user, "lou", USDC, on_sent=sent.append
    )
    assert done.method == "permit" and sent == [done.tx_hash]
    assert settlement.balance(user.address) == 0


def test_a_node_on_another_chain_is_refused(settlement: Settlement) -> None:
    user = settlement.new_account()
    settlement.mint(user.address, USDC)
    with pytest.raises(UsageError) as caught:
        chain.deposit(settlement.anvil.rpc_url, info_of(settlement, chain_id=324), user, "max", USDC)
    assert str(caught.value).endswith(f"is chain {CHAIN_ID}, but the registry settles on chain 324")
    assert settlement.balance(user.address) == USDC
