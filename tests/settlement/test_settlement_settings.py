"""Settlement settings: off by default, checked when on, and the operator key kept out of sight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcpz.errors import UsageError
from mcpz.keys.ethkeys import Account
from registry_server.settings import RegistrySettings
from registry_server.settlement.operator import KEY_VAR, PASSPHRASE_VAR, load_operator

CONTRACT = "0x" + "11" * 20


def settings(tmp_path: Path, **env: str) -> RegistrySettings:
    return RegistrySettings.load(data_dir=tmp_path, env=env)


def test_settlement_is_off_by_default(tmp_path: Path) -> None:
    config = settings(tmp_path)
    assert not config.settlement_on
    assert config.settlement_confirmations == 12
    assert load_operator(config, env={}) is None


def test_settlement_settings_come_from_the_environment(tmp_path: Path) -> None:
    config = settings(
        tmp_path,
        MCPZ_REGISTRY_SETTLEMENT_RPC="http://127.0.0.1:8545",
        MCPZ_REGISTRY_SETTLEMENT_CHAIN_ID="31337",
        MCPZ_REGISTRY_SETTLEMENT_CONTRACT=CONTRACT,
        MCPZ_REGISTRY_SETTLEMENT_CONFIRMATIONS="3",
    )
    assert config.settlement_on
    assert (config.settlement_chain_id, config.settlement_contract) == (31337, CONTRACT)
    assert config.settlement_confirmations == 3


def test_an_rpc_without_chain_id_and_contract_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="settlement_chain_id"):
        settings(tmp_path, MCPZ_REGISTRY_SETTLEMENT_RPC="http://127.0.0.1:8545")


def test_zero_confirmations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="settlement_confirmations"):
        settings(tmp_path, MCPZ_REGISTRY_SETTLEMENT_CONFIRMATIONS="0")


def test_the_voucher_lifetime_defaults_to_a_day_and_must_be_above_zero(tmp_path: Path) -> None:
    assert settings(tmp_path).settlement_voucher_ttl == 86400
    assert settings(tmp_path, MCPZ_REGISTRY_SETTLEMENT_VOUCHER_TTL="600").settlement_voucher_ttl == 600
    with pytest.raises(UsageError, match="settlement_voucher_ttl must be above 0"):
        settings(tmp_path, MCPZ_REGISTRY_SETTLEMENT_VOUCHER_TTL="0")


def test_the_operator_key_from_the_environment_stays_out_of_reprs(tmp_path: Path) -> None:
    account = Account.create()
    key = account.key.hex()
    config = settings(tmp_path)
    operator = load_operator(config, env={KEY_VAR: key})
    assert operator is not None and operator.address == account.address
    assert key.removeprefix("0x") not in repr(operator) + repr(config)


def test_a_bad_operator_key_is_refused_without_quoting_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        load_operator(settings(tmp_path), env={KEY_VAR: "0xnotakey-secret"})
    assert "secret" not in str(caught.value)


def test_the_operator_key_from_a_keystore(tmp_path: Path) -> None:
    account = Account.create()
    path = tmp_path / "operator.json"
    path.write_text(json.dumps(Account.encrypt(account.key, "pass", kdf="pbkdf2", iterations=2)))
    config = settings(tmp_path, MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEYSTORE=str(path))
    operator = load_operator(config, env={PASSPHRASE_VAR: "pass"})
    assert operator is not None and operator.address == account.address
    with pytest.raises(UsageError, match="wrong passphrase"):
        load_operator(config, env={PASSPHRASE_VAR: "nope"})
    with pytest.raises(UsageError, match=PASSPHRASE_VAR):
        load_operator(config, env={})


def test_the_relayer_key_comes_from_its_own_variable_or_keystore(tmp_path: Path) -> None:
    from registry_server.settlement.operator import RELAYER_KEY_VAR, RELAYER_PASSPHRASE_VAR, load_relayer

    account = Account.create()
    key = account.key.hex()
    config = settings(tmp_path)
    assert load_relayer(config, env={KEY_VAR: key}) is None  # the operator's key is not the relayer's
    relayer = load_relayer(config, env={RELAYER_KEY_VAR: key})
    assert relayer is not None and relayer.address == account.address
    assert key.removeprefix("0x") not in repr(relayer) + repr(config)
    assert repr(relayer).startswith("Operator(address=")
    with pytest.raises(UsageError) as caught:
        load_relayer(config, env={RELAYER_KEY_VAR: "0xnotakey-secret"})
    assert "secret" not in str(caught.value) and RELAYER_KEY_VAR in str(caught.value)
    path = tmp_path / "relayer.json"
    path.write_text(json.dumps(Account.encrypt(account.key, "pass", kdf="pbkdf2", iterations=2)))
    stored = settings(tmp_path, MCPZ_REGISTRY_SETTLEMENT_RELAYER_KEYSTORE=str(path))
    assert stored.settlement_relayer_keystore == str(path)
    found = load_relayer(stored, env={RELAYER_PASSPHRASE_VAR: "pass"})
    assert found is not None and found.address == account.address
    with pytest.raises(UsageError, match=RELAYER_PASSPHRASE_VAR):
        load_relayer(stored, env={PASSPHRASE_VAR: "pass"})
