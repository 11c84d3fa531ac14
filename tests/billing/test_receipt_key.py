"""The registry's receipt key: made once in the data folder (private), read back the same after a
restart, taken from MCPZ_REGISTRY_RECEIPT_KEY when set, and never shown."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from mcpz.errors import UsageError
from mcpz.keys import receipts
from registry_server.billing.receipt_key import ENV_VAR, ReceiptSigner, key_path
from registry_server.settings import RegistrySettings


def _settings(tmp_path: Path) -> RegistrySettings:
    return RegistrySettings.load(data_dir=tmp_path / "data", env={}, public_url="https://reg.example.com/")


def test_the_key_is_made_once_privately_and_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path)
    with caplog.at_level(logging.DEBUG):
        first = ReceiptSigner(settings, env={})
    path = key_path(settings)
    assert path == settings.data_dir / "keys" / "receipts.key"
    seed = path.read_bytes()
    assert len(seed) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert first.public_key == receipts.public_key_text(receipts.private_key_from_seed(seed))
    assert first.registry == "https://reg.example.com"
    secret_texts = (seed.hex(), receipts.encode_b64url(seed), repr(seed))
    logged = caplog.text + repr(first)
    assert not any(text in logged for text in secret_texts)

    # A restart reads the same key; a restored copy left readable by others is made private again.
    path.chmod(0o644)
    again = ReceiptSigner(settings, env={})
    assert again.public_key == first.public_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_key_is_private_whatever_the_umask(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    old = os.umask(0)
    try:
        ReceiptSigner(settings, env={})
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_path(settings).stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path(settings).parent.stat().st_mode) == 0o700


def test_a_receipt_signed_by_the_signer_verifies_against_its_public_key(tmp_path: Path) -> None:
    signer = ReceiptSigner(_settings(tmp_path), env={})
    receipt = signer.sign(
        event="ev-1",
        agent="acme/weather",
        version="1.0.0",
        tool="forecast",
        price=10,
        time=1,
        request=receipts.request_digest({"name": "forecast"}),
        response=receipts.response_digest({"content": []}),
    )
    assert receipt.registry == "https://reg.example.com" and receipt.key == signer.public_key
    assert (receipt.currency, receipt.decimals) == ("USDC", 6), "the registry's settlement token"
    receipts.verify(receipt, signer.public_key)


def test_the_key_from_the_environment_wins_and_writes_no_file(tmp_path: Path) -> None:
    seed = bytes(range(32))
    settings = _settings(tmp_path)
    for text in (receipts.encode_b64url(seed), base64.urlsafe_b64encode(seed).decode()):  # padded or not
        signer = ReceiptSigner(settings, env={ENV_VAR: text})
        assert signer.public_key == receipts.public_key_text(receipts.private_key_from_seed(seed))
    assert not key_path(settings).exists()


def test_a_bad_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    secret = receipts.encode_b64url(b"\x01" * 31)
    with pytest.raises(UsageError, match=ENV_VAR) as caught:
        ReceiptSigner(settings, env={ENV_VAR: secret})
    assert secret not in str(caught.value) and secret not in (caught.value.hint or "")

    path = key_path(settings)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x02" * 33)
    with pytest.raises(UsageError, match="33 bytes") as refused:
        ReceiptSigner(settings, env={})
    assert "\x02" not in str(refused.value)
    assert path.read_bytes() == b"\x02" * 33, "a bad key file is never overwritten"


def test_receipts_are_in_the_registrys_settlement_token(tmp_path: Path) -> None:
    settings = RegistrySettings.load(
        data_dir=tmp_path / "data",
        env={"MCPZ_REGISTRY_CURRENCY": "EURC", "MCPZ_REGISTRY_CURRENCY_DECIMALS": "2"},
    )
    signer = ReceiptSigner(settings, env={})
    digest = receipts.digest_json({})
    receipt = signer.sign(
        event="ev-1", agent="acme/x", version="1", tool="t", price=5, time=1, request=digest, response=digest
    )
    assert (receipt.currency, receipt.decimals) == ("EURC", 2)
    receipts.verify(receipt, signer.public_key)
