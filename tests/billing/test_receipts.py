"""Receipts of paid calls: signed and verified offline, broken by any changed field, a wrong key, or
a result or request other than the one signed for; malformed ones refused in one line."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpz import exit_codes
from mcpz.keys import receipts
from mcpz.keys.receipts import (
    MalformedReceipt,
    MissingReceipt,
    Receipt,
    ReceiptError,
    ReceiptMismatch,
    UnexpectedReceiptKey,
)

KEY = receipts.private_key_from_seed(b"\x07" * 32)
OTHER = receipts.private_key_from_seed(b"\x08" * 32)
PUBLIC = receipts.public_key_text(KEY)
OTHER_PUBLIC = receipts.public_key_text(OTHER)

PARAMS = {"name": "forecast", "arguments": {"city": "Oslo", "days": 3}, "_meta": {"progressToken": 7}}
RESULT = {"content": [{"type": "text", "text": "Sunny, 21 °C"}], "isError": False}


def _sign(result: dict[str, Any] = RESULT, params: Any = PARAMS, **change: Any) -> Receipt:
    fields: dict[str, Any] = {
        "event": "ev-0001",
        "agent": "acme/weather",
        "version": "1.2.0",
        "tool": "forecast",
        "price": 1500,
        "currency": "USDC",
        "decimals": 6,
        "time": 1_764_876_161_000_000,
        "request": receipts.request_digest(params),
        "response": receipts.response_digest(result),
        "registry": "https://registry.example.com",
        "private_key": KEY,
    }
    fields.update(change)
    return receipts.sign(**fields)


RECEIPT = _sign()


def test_a_receipt_survives_json_and_verifies_against_its_key() -> None:
    data = json.loads(json.dumps(RECEIPT.to_dict()))
    back = Receipt.from_dict(data)
    assert back == RECEIPT
    receipts.verify(back, PUBLIC)
    assert back.key == PUBLIC and PUBLIC.startswith("ed25519:") and len(PUBLIC) == 8 + 43
    assert len(back.signature) == 86


def test_the_signature_is_over_the_canonical_json_of_every_other_field() -> None:
    # A fixed seed gives fixed bytes (Ed25519 is deterministic): what another language's verifier
    # must reproduce, byte for byte (docs/receipts.md).
    fields = {k: v for k, v in RECEIPT.to_dict().items() if k != "signature"}
    expected = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert RECEIPT.signed_bytes() == expected
    signature = receipts.decode_b64url(RECEIPT.signature, 64)
    assert signature is not None
    KEY.public_key().verify(signature, expected)  # raises if not


def test_the_example_of_docs_receipts_md_verifies() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "receipts.md").read_text(encoding="utf-8")
    example = json.loads(re.findall(r"```json\n(.*?)```", doc, re.S)[0])
    receipt = receipts.verify_result(example, PUBLIC, {"name": "forecast", "arguments": {"city": "Oslo"}})
    assert receipt.key == PUBLIC and receipt.price == 1500


def test_digests_are_sha256_of_canonical_json() -> None:
    assert receipts.digest_json({"b": 1, "a": "é"}) == hashlib.sha256('{"a":"é","b":1}'.encode()).hexdigest()
    # The request's _meta (a progress token) is no part of what was asked.
    without_meta = {k: v for k, v in PARAMS.items() if k != "_meta"}
    assert receipts.request_digest(PARAMS) == receipts.digest_json(without_meta)
    assert receipts.response_digest(RESULT) == receipts.digest_json(RESULT)


TAMPERED: dict[str, Any] = {
    "event": "ev-0002",
    "agent": "acme/other",
    "version": "1.2.1",
    "tool": "alerts",
    "price": 1499,
    "currency": "USDT",
    "decimals": 5,
    "time": 1_764_876_161_000_001,
    "request": "0" * 64,
    "response": "f" * 64,
    "registry": "https://evil.example.com",
}


@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_any_changed_field_breaks_the_signature(field: str) -> None:
    data = RECEIPT.to_dict() | {field: TAMPERED[field]}
    with pytest.raises(ReceiptError, match="does not match its fields") as caught:
        receipts.verify(Receipt.from_dict(data), PUBLIC)
    assert caught.value.exit_code == exit_codes.AUTH == 4
    assert type(caught.value) is ReceiptError


def test_a_changed_key_is_refused_whichever_key_is_trusted() -> None:
    swapped = Receipt.from_dict(RECEIPT.to_dict() | {"key": OTHER_PUBLIC})
    with pytest.raises(UnexpectedReceiptKey, match="not by the trusted key"):
        receipts.verify(swapped, PUBLIC)
    with pytest.raises(ReceiptError, match="does not match its fields"):
        receipts.verify(swapped, OTHER_PUBLIC)


@pytest.mark.parametrize(
    "signature",
    [
        "A" * 86,  # well formed, but not this receipt's
        RECEIPT.signature[:-2] + ("AA" if RECEIPT.signature[-2:] != "AA" else "BA"),
        "not base64!",
        RECEIPT.signature[:40],
        RECEIPT.signature + "==",
        "",
    ],
)
def test_a_changed_or_malformed_signature_fails_verification(signature: str) -> None:
    changed = Receipt.from_dict(RECEIPT.to_dict() | {"signature": signature})
    with pytest.raises(ReceiptError) as caught:
        receipts.verify(changed, PUBLIC)
    assert caught.value.exit_code == 4
    assert "\n" not in str(caught.value)


def test_a_receipt_signed_by_another_key_fails() -> None:
    stranger = _sign(private_key=OTHER)
    receipts.verify(stranger, OTHER_PUBLIC)
    with pytest.raises(UnexpectedReceiptKey) as caught:
        receipts.verify(stranger, PUBLIC)
    assert caught.value.signer == OTHER_PUBLIC
    # Another key's signature under our key's name.
    forged = Receipt.from_dict(stranger.to_dict() | {"key": PUBLIC})
    with pytest.raises(ReceiptError, match="does not match"):
        receipts.verify(forged, PUBLIC)


def test_a_trusted_key_that_is_no_key_is_a_usage_error() -> None:
    from mcpz.errors import UsageError

    for bad in ("ed25519:short", "secp256k1:" + PUBLIC[8:], PUBLIC + "A", ""):
        with pytest.raises(UsageError):
            receipts.verify(RECEIPT, bad)


# --- in a tool result --------------------------------------------------------------------------


def test_attach_then_detach_gives_back_the_result_as_the_agent_returned_it() -> None:
    held = receipts.attach(RESULT, RECEIPT)
    assert held["_meta"]["mcpz/receipt"] == RECEIPT.to_dict()
    assert "_meta" not in RESULT, "attach copies: the agent's result is not changed"
    result, receipt = receipts.detach(held)
    assert result == RESULT and receipt == RECEIPT
    assert receipts.response_digest(held) == receipts.response_digest(RESULT) == RECEIPT.response
    assert receipts.verify_result(held, PUBLIC, PARAMS) == RECEIPT
    assert receipts.detach(RESULT) == (RESULT, None)


@pytest.mark.parametrize("meta", [{}, {"trace": "abc"}, {"mcpz/receipt": {"forged": True}, "x": 1}])
def test_the_agents_own_meta_is_kept_and_covered(meta: dict[str, Any]) -> None:
    result = RESULT | {"_meta": meta}
    receipt = _sign(result=result)
    held = receipts.attach(result, receipt)
    kept = {k: v for k, v in meta.items() if k != "mcpz/receipt"}
    assert {k: v for k, v in held["_meta"].items() if k != "mcpz/receipt"} == kept
    assert receipts.verify_result(held, PUBLIC) == receipt
    if kept:
        changed = held | {"_meta": {**held["_meta"], "trace": "other"}}
        with pytest.raises(ReceiptMismatch):
            receipts.verify_result(changed, PUBLIC)


@pytest.mark.parametrize("meta", [None, [1, 2], "text"])
def test_a_meta_that_is_no_object_is_replaced_and_not_covered(meta: Any) -> None:
    result = RESULT | {"_meta": meta}
    receipt = _sign(result=result)
    assert receipt.response == receipts.response_digest(RESULT)
    held = receipts.attach(result, receipt)
    assert held["_meta"] == {"mcpz/receipt": receipt.to_dict()}
    assert receipts.detach(held) == (RESULT, receipt)
    assert receipts.verify_result(held, PUBLIC) == receipt


def test_a_changed_result_or_a_moved_receipt_is_a_mismatch() -> None:
    held = receipts.attach(RESULT, RECEIPT)
    changed = held | {"content": [{"type": "text", "text": "Rain, 3 °C"}]}
    with pytest.raises(ReceiptMismatch, match="not signed for this result") as caught:
        receipts.verify_result(changed, PUBLIC)
    assert caught.value.exit_code == 4
    other_call = receipts.attach({"content": [], "isError": False}, RECEIPT)
    with pytest.raises(ReceiptMismatch):
        receipts.verify_result(other_call, PUBLIC)


def test_the_request_is_checked_when_its_params_are_given() -> None:
    held = receipts.attach(RESULT, RECEIPT)
    other_meta = PARAMS | {"_meta": {"progressToken": 99}}
    receipts.verify_result(held, PUBLIC, other_meta)
    receipts.verify_result(held, PUBLIC, {k: v for k, v in PARAMS.items() if k != "_meta"})
    with pytest.raises(ReceiptMismatch, match="not signed for this request"):
        receipts.verify_result(held, PUBLIC, PARAMS | {"arguments": {"city": "Bergen", "days": 3}})


def test_a_document_is_a_receipt_a_tool_result_or_a_json_rpc_response() -> None:
    held = receipts.attach(RESULT, RECEIPT)
    bare = receipts.read_document(RECEIPT.to_dict())
    assert bare.receipt == RECEIPT and bare.result is None
    assert receipts.read_document(held).result == held
    response = {"jsonrpc": "2.0", "id": 3, "result": held}
    found = receipts.read_document(response)
    assert found.receipt == RECEIPT
    receipts.verify_document(found, PUBLIC, PARAMS)
    with pytest.raises(MissingReceipt, match="no result"):
        receipts.read_document({"jsonrpc": "2.0", "id": 3, "error": {"code": -32000, "message": "boom"}})
    with pytest.raises(MissingReceipt, match="carries no receipt") as caught:
        receipts.read_document({"jsonrpc": "2.0", "id": 3, "result": RESULT})
    assert caught.value.exit_code == 4
    with pytest.raises(MalformedReceipt):
        receipts.read_document([1, 2])


# --- malformed receipts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"price": -1}, "price"),
        ({"price": 1.5}, "price"),
        ({"price": True}, "price"),
        ({"price": "1500"}, "price"),
        ({"decimals": 99}, "decimals"),
        ({"time": None}, "time"),
        ({"agent": "Acme/Weather"}, "agent"),
        ({"agent": "weather"}, "agent"),
        ({"event": ""}, "event"),
        ({"tool": "a\nb"}, "tool"),
        ({"request": "AB" * 32}, "request"),
        ({"response": "abc"}, "response"),
        ({"registry": "ftp://x"}, "registry"),
        ({"key": "ed25519:xyz"}, "key"),
        ({"key": PUBLIC[8:]}, "key"),
        ({"signature": 5}, "signature"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_malformed_receipt_is_refused_naming_its_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedReceipt) as caught:
        Receipt.from_dict(RECEIPT.to_dict() | change)
    assert caught.value.field == field
    assert caught.value.exit_code == exit_codes.USAGE == 2
    assert field in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_field_or_a_non_object_is_refused() -> None:
    data = RECEIPT.to_dict()
    del data["price"]
    with pytest.raises(MalformedReceipt, match="has no price"):
        Receipt.from_dict(data)
    with pytest.raises(MalformedReceipt, match="JSON object"):
        Receipt.from_dict("receipt")
    with pytest.raises(MalformedReceipt):
        receipts.detach(RESULT | {"_meta": {"mcpz/receipt": {"event": "x"}}})


def test_sign_refuses_to_sign_a_malformed_receipt() -> None:
    with pytest.raises(MalformedReceipt, match="price"):
        _sign(price=-5)
    with pytest.raises(MalformedReceipt, match="request"):
        _sign(request="not a digest")


def test_a_lone_surrogate_in_a_result_still_digests() -> None:
    result = {"content": [{"type": "text", "text": json.loads('"\\ud800"')}]}
    receipt = _sign(result=result)
    assert receipts.verify_result(receipts.attach(result, receipt), PUBLIC) == receipt


# Any JSON a tool may return: the receipt rides along and comes off without a trace.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(result=st.dictionaries(st.text(max_size=6), _json, max_size=4))
def test_any_result_round_trips_through_attach_and_detach(result: dict[str, Any]) -> None:
    receipt = _sign(result=result)
    held = json.loads(json.dumps(receipts.attach(result, receipt)))
    assert receipts.verify_result(held, PUBLIC) == receipt
    without, found = receipts.detach(held)
    assert found == receipt
    assert receipts.digest_json(without) == receipt.response
