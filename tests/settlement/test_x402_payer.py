"""The payer's side, with no chain: what `Payer.authorize` signs, and what it refuses to sign."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcpz.client.x402 import Payer, PaymentRefused, SpendPolicy, journal_path, required_of, user_payer
from mcpz.config import set_value
from mcpz.errors import UsageError
from mcpz.keys import eip3009
from mcpz.keys.ethkeys import Account

TOKEN = "0x" + "ab" * 20
PAY_TO = "0x" + "cd" * 20


def required(amount: int, **overrides: Any) -> dict[str, Any]:
    accepted = {
        "scheme": "exact", "network": "eip155:31337", "asset": TOKEN, "amount": str(amount), "payTo": PAY_TO,
        "maxTimeoutSeconds": 300, "extra": {"name": "mcpz Test USD", "version": "1"},
    } | overrides  # fmt: skip
    return {"x402Version": 2, "accepts": [accepted]}


def test_the_payload_is_an_exact_authorization_of_the_price_signed_by_the_key(tmp_path: Path) -> None:
    key = Account.create()
    payload = Payer(key).authorize("acme/tiny", required(25_000))
    auth = eip3009.Authorization.from_json(payload["payload"]["authorization"])
    assert auth.value == 25_000 and auth.to == PAY_TO and auth.sender == key.address
    domain = eip3009.Domain("mcpz Test USD", "1", 31337, TOKEN)
    assert eip3009.recover(domain, auth, payload["payload"]["signature"]) == key.address
    assert payload["x402Version"] == 2 and payload["accepted"]["amount"] == "25000"
    assert len(payload["extensions"]["payment-identifier"]["info"]["id"]) >= 16


def test_max_price_below_the_asked_price_refuses_to_sign(tmp_path: Path) -> None:
    journal = tmp_path / "spent.json"
    payer = Payer(Account.create(), max_price=24_999, journal=journal)
    with pytest.raises(PaymentRefused, match="above your maximum") as refused:
        payer.authorize("acme/tiny", required(25_000))
    assert refused.value.exit_code == 8
    assert not journal.exists()  # nothing signed, nothing counted
    assert Payer(Account.create(), max_price=25_000).authorize("acme/tiny", required(25_000))


def test_the_spend_policy_holds_per_agent_and_per_day_across_processes(tmp_path: Path) -> None:
    journal = tmp_path / "spent.json"
    policy = SpendPolicy(per_day=50, per_agent_per_day=30)
    key = Account.create()
    Payer(key, policy=policy, journal=journal).authorize("a/one", required(20))
    # A new process (a new Payer) reads what the last one signed.
    with pytest.raises(PaymentRefused, match="per agent per day"):
        Payer(key, policy=policy, journal=journal).authorize("a/one", required(20))
    Payer(key, policy=policy, journal=journal).authorize("a/two", required(30))
    with pytest.raises(PaymentRefused, match="per day"):
        Payer(key, policy=policy, journal=journal).authorize("a/three", required(1))


def test_only_exact_eip3009_on_evm_is_paid() -> None:
    payer = Payer(Account.create())
    with pytest.raises(PaymentRefused, match="cannot make"):
        payer.authorize("a/b", required(1, scheme="upto"))
    with pytest.raises(PaymentRefused, match="cannot make"):
        payer.authorize("a/b", required(1, network="solana:mainnet"))
    assert required_of({"isError": True, "structuredContent": required(1)}) is not None
    assert required_of({"isError": False, "structuredContent": required(1)}) is None


def test_the_user_config_sets_the_policy(isolated_env: Path) -> None:
    set_value("x402_max_per_day", "100")
    set_value("x402_max_per_agent_per_day", "40")
    payer = user_payer(Account.create, "500000")
    assert payer.max_price == 500_000  # base units: the token's decimals are the token's
    with pytest.raises(UsageError, match="base units"):
        user_payer(Account.create, "0.5")
    assert payer.policy == SpendPolicy(per_day=100, per_agent_per_day=40)
    assert payer.journal is not None and payer.journal.name == journal_path(Path("x")).name


def test_the_wallet_is_unlocked_only_to_sign_a_payment_within_the_limits() -> None:
    key = Account.create()
    unlocked: list[str] = []

    def unlock() -> Any:
        unlocked.append("asked")
        return key

    payer = Payer(max_price=100, policy=SpendPolicy(per_day=150), unlock=unlock)
    with pytest.raises(PaymentRefused, match="above your maximum"):
        payer.authorize("a/b", required(101))
    assert unlocked == []  # refused before the passphrase is asked for
    payload = payer.authorize("a/b", required(100))
    assert payload["payload"]["authorization"]["from"] == key.address
    with pytest.raises(PaymentRefused, match="per day"):
        payer.authorize("a/b", required(100))
    payer.authorize("a/b", required(50))
    assert unlocked == ["asked"]  # once
