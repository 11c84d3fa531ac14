"""`mcpz billing verify-receipt` against a live registry: the key served at
GET /v1/billing/receipt-key is the one in its data folder, the CLI fetches it and checks receipts
signed with it, refuses tampered ones with exit 4, and checks offline with --key."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry
from gitutil import api

from mcpz.keys import receipts
from mcpz.keys.receipts import Receipt

PARAMS = {"name": "forecast", "arguments": {"city": "Oslo"}}
RESULT = {"content": [{"type": "text", "text": "Sunny"}], "isError": False}


def _signed(seed: bytes, registry: str, **change: Any) -> Receipt:
    fields: dict[str, Any] = {
        "event": "ev-42",
        "agent": "acme/weather",
        "version": "1.2.0",
        "tool": "forecast",
        "price": 1500,
        "currency": "USDC",
        "decimals": 6,
        "time": 1_764_876_161_000_000,
        "request": receipts.request_digest(PARAMS),
        "response": receipts.response_digest(RESULT),
        "registry": registry,
        "private_key": receipts.private_key_from_seed(seed),
    }
    return receipts.sign(**(fields | change))


def _write(path: Path, data: Any) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_the_served_key_is_the_data_folders_and_the_cli_checks_receipts_with_it(
    registry: LiveRegistry, cli: Any, tmp_path: Path
) -> None:
    key_file = registry.data_dir / "keys" / "receipts.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    seed = key_file.read_bytes()
    public = receipts.public_key_text(receipts.private_key_from_seed(seed))

    answer = api(registry, "/v1/billing/receipt-key")  # no token: the key is public
    assert answer.status_code == 200
    assert answer.json() == {"key": public, "registry": registry.url, "algorithm": "ed25519"}

    receipt = _signed(seed, registry.url)
    held = receipts.attach(RESULT, receipt)
    response = _write(tmp_path / "response.json", {"jsonrpc": "2.0", "id": 1, "result": held})
    ok = cli("billing", "verify-receipt", response)
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout == (
        f"receipt valid: ev-42 acme/weather@1.2.0 forecast 0.0015 USDC, signed by {public}\n"
    )
    assert f"key from {registry.url}" in ok.stderr

    # The request too, given as the whole JSON-RPC request.
    request = _write(
        tmp_path / "request.json", {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": PARAMS}
    )
    as_json = cli("--json", "billing", "verify-receipt", response, "--request", request)
    assert as_json.exit_code == 0, as_json.stderr
    payload = json.loads(as_json.stdout)
    assert payload["valid"] is True and payload["receipt"] == receipt.to_dict()
    assert payload["checked"] == {"signature": True, "response": True, "request": True}
    assert payload["key_from"] == registry.url and payload["amount"] == "0.0015"

    # Tampered: the price lowered after signing.
    cheaper = receipts.attach(RESULT, Receipt.from_dict(receipt.to_dict() | {"price": 1}))
    bad = cli("billing", "verify-receipt", _write(tmp_path / "cheaper.json", cheaper))
    assert bad.exit_code == 4
    assert bad.stdout == "" and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("error: the receipt's signature does not match its fields")

    # Genuine receipt, other result.
    moved = receipts.attach({"content": [], "isError": False}, receipt)
    mismatch = cli("--json", "billing", "verify-receipt", _write(tmp_path / "moved.json", moved))
    assert mismatch.exit_code == 4
    assert json.loads(mismatch.stdout)["error"]["exit_code"] == 4
    assert "not signed for this result" in mismatch.stderr

    wrong_request = _write(
        tmp_path / "other-request.json", {"name": "forecast", "arguments": {"city": "Rome"}}
    )
    other = cli("billing", "verify-receipt", response, "--request", wrong_request)
    assert other.exit_code == 4 and "not signed for this request" in other.stderr


def test_a_receipt_of_another_key_is_refused_by_the_registry_named(
    registry: LiveRegistry, cli: Any, tmp_path: Path
) -> None:
    # Signed by a stranger who wrote this registry's URL into it.
    forged = _signed(b"\x09" * 32, registry.url)
    path = _write(tmp_path / "receipt.json", forged.to_dict())
    refused = cli("billing", "verify-receipt", path)
    assert refused.exit_code == 4
    assert "not by the trusted key" in refused.stderr
    # --registry picks the registry whatever the receipt names.
    elsewhere = _signed(b"\x09" * 32, "http://127.0.0.1:9")
    named = cli(
        "billing",
        "verify-receipt",
        _write(tmp_path / "e.json", elsewhere.to_dict()),
        "--registry",
        registry.url,
    )
    assert named.exit_code == 4 and "not by the trusted key" in named.stderr


def test_offline_with_key_no_registry_needed(cli: Any, tmp_path: Path) -> None:
    seed = b"\x05" * 32
    public = receipts.public_key_text(receipts.private_key_from_seed(seed))
    # A registry URL nothing listens on: with --key nothing is fetched.
    receipt = _signed(seed, "http://127.0.0.1:9")
    bare = _write(tmp_path / "receipt.json", receipt.to_dict())
    ok = cli("billing", "verify-receipt", bare, "--key", public)
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout.startswith("receipt valid: ev-42 acme/weather@1.2.0 forecast 0.0015 USDC")
    assert "receipt alone" in ok.stderr  # only the signature could be checked

    held = receipts.attach(RESULT, receipt)
    from_stdin = cli("billing", "verify-receipt", "-", "--key", public, input=json.dumps(held))
    assert from_stdin.exit_code == 0, from_stdin.stderr
    assert "receipt alone" not in from_stdin.stderr

    dear = _write(tmp_path / "dear.json", _signed(seed, "http://127.0.0.1:9", price=25_000_000).to_dict())
    assert " 25.00 USDC, signed by " in cli("billing", "verify-receipt", dear, "--key", public).stdout

    stranger = receipts.public_key_text(receipts.private_key_from_seed(b"\x06" * 32))
    wrong = cli("billing", "verify-receipt", bare, "--key", stranger)
    assert wrong.exit_code == 4 and "not by the trusted key" in wrong.stderr

    # Without --key, the registry it names must answer.
    unreachable = cli("billing", "verify-receipt", bare)
    assert unreachable.exit_code == 6


@pytest.mark.parametrize(
    ("content", "args", "code", "says"),
    [
        ("{not json", (), 2, "is not JSON"),
        ('{"content": []}', (), 4, "carries no receipt"),
        ('{"signature": "x", "key": "y"}', (), 2, "the receipt has no"),
        ("{}", ("--key", "ed25519:nope"), 4, "carries no receipt"),
    ],
)
def test_bad_input_is_one_line_with_its_exit_code(
    cli: Any, tmp_path: Path, content: str, args: tuple[str, ...], code: int, says: str
) -> None:
    path = tmp_path / "in.json"
    path.write_text(content)
    result = cli("billing", "verify-receipt", str(path), *args)
    assert result.exit_code == code, result.stderr
    assert says in result.stderr and result.stderr.count("\n") == 1


def test_a_missing_file_and_a_bad_key_text(cli: Any, tmp_path: Path) -> None:
    missing = cli("billing", "verify-receipt", str(tmp_path / "nope.json"))
    assert missing.exit_code == 5 and "no such file" in missing.stderr
    path = _write(tmp_path / "r.json", _signed(b"\x05" * 32, "http://127.0.0.1:9").to_dict())
    bad_key = cli("billing", "verify-receipt", path, "--key", "ed25519:nope")
    assert bad_key.exit_code == 2 and "is not an Ed25519 public key" in bad_key.stderr
    both = cli("billing", "verify-receipt", "-", "--request", "-", input="{}")
    assert both.exit_code == 2 and "stdin" in both.stderr
