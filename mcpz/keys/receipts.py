"""Signed receipts for paid calls: what one call cost, signed by the registry with Ed25519.

The gateway puts a receipt into the tool result it answers, at `result["_meta"]["mcpz/receipt"]`:

    {"event": "01J...",                     the usage event's id
     "agent": "acme/weather", "version": "1.2.0", "tool": "forecast",
     "price": 1500, "currency": "USDC", "decimals": 6,      1500 base units = 0.0015 USDC
     "time": 1764876161000000,              Unix microseconds of the call's start
     "request": "9f86...",                  sha256 hex, see `request_digest`
     "response": "2c26...",                 sha256 hex, see `response_digest`
     "registry": "https://registry.example.com",
     "key": "ed25519:<43 base64url characters>",
     "signature": "<86 base64url characters>"}

`signature` is the Ed25519 signature over `canonical_json` of every other field (a JSON object, keys
sorted). Anyone holding the receipt and the registry's public key (`GET /v1/billing/receipt-key`)
can check it offline; anyone holding the whole tool result can also check that the receipt was
signed for that result (`verify_result`). docs/receipts.md describes the format for other languages.

Ed25519 (the `cryptography` package) rather than the wallets' secp256k1: signing runs on the
gateway's call path, and eth-account's pure-Python signature takes milliseconds where this takes
tens of microseconds. The key signs receipts only, so a receipt needs no domain-separation header.

Errors (all in `mcpz.errors`' tree):

    UsageError
    └── MalformedReceipt         exit 2: not a receipt (a field missing, unknown or of the wrong form)
    AuthError
    └── ReceiptError             exit 4: the receipt does not prove what it claims (code "bad_signature")
        ├── MissingReceipt           (code "unsigned")          the result carries no receipt
        ├── UnexpectedReceiptKey     (code "unexpected_signer") signed, but not by the trusted key
        └── ReceiptMismatch          (code "receipt_mismatch")  signed for another result or request

They mirror `mcpz.keys.signing`'s SignatureError family (a release whose signature fails is exit 4
too) without importing it: that module brings eth-account, half a second of start-up.

Everything here is pure: no I/O, no clock, no randomness (Ed25519 signatures are deterministic).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mcpz.errors import AuthError, UsageError
from mcpz.names import name_problem

__all__ = [
    "META_KEY",
    "MalformedReceipt",
    "MissingReceipt",
    "Receipt",
    "ReceiptDocument",
    "ReceiptError",
    "ReceiptMismatch",
    "UnexpectedReceiptKey",
    "as_returned",
    "attach",
    "canonical_json",
    "decode_b64url",
    "detach",
    "digest_json",
    "encode_b64url",
    "parse_public_key",
    "private_key_from_seed",
    "public_key_text",
    "read_document",
    "request_digest",
    "response_digest",
    "sign",
    "verify",
    "verify_document",
    "verify_result",
]

META_KEY = "mcpz/receipt"
"""Where a receipt sits in a tool result's `_meta`."""

KEY_PREFIX = "ed25519:"
SEED_BYTES = 32
SIGNATURE_BYTES = 64


# ----------------------------------------------------------------------------------------- errors


class MalformedReceipt(UsageError):
    """Not a receipt: a field is missing, unknown, or not of its form."""

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


class ReceiptError(AuthError):
    """A receipt does not prove what it claims. `code` is stable, for APIs and logs."""

    code: ClassVar[str] = "bad_signature"


class MissingReceipt(ReceiptError):
    code = "unsigned"


class UnexpectedReceiptKey(ReceiptError):
    """The receipt is signed by a key other than the one trusted."""

    code = "unexpected_signer"

    def __init__(self, message: str, *, signer: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.signer = signer


class ReceiptMismatch(ReceiptError):
    """The receipt is genuine, but was signed for another result (or request) than the one given."""

    code = "receipt_mismatch"


# ------------------------------------------------------------------------------ canonical bytes


def canonical_json(obj: Any) -> bytes:
    """The one byte string of a JSON value: keys sorted, no spaces, UTF-8.

    `surrogatepass`: a lone surrogate (JSON may carry one as an escape) encodes instead of raising,
    so no agent result can make signing fail; every valid string encodes as plain UTF-8.
    """
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise MalformedReceipt(f"not a JSON value: {e}") from e
    return text.encode("utf-8", "surrogatepass")


def digest_json(obj: Any) -> str:
    """The sha256 (lower-case hex) of `canonical_json(obj)`."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def request_digest(params: Any) -> str:
    """The `request` digest of a call: its JSON-RPC `params` without their `_meta` (a progress
    token and the like, which the client may vary without changing what it asked for)."""
    if isinstance(params, Mapping) and "_meta" in params:
        params = {key: value for key, value in params.items() if key != "_meta"}
    return digest_json(params)


def as_returned(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """`result` as the agent returned it, as far as a receipt covers it: without
    `_meta["mcpz/receipt"]`, and without a `_meta` left empty or that is no object (MCP wants one;
    `attach` replaces it). `result` itself when nothing is to take out: the gateway's call path
    pays for no copy."""
    if "_meta" not in result:
        return result
    meta = result["_meta"]
    if isinstance(meta, Mapping) and meta and META_KEY not in meta:
        return result
    out = {key: value for key, value in result.items() if key != "_meta"}
    if isinstance(meta, Mapping):
        rest = {key: value for key, value in meta.items() if key != META_KEY}
        if rest:
            out["_meta"] = rest
    return out


def response_digest(result: Mapping[str, Any]) -> str:
    """The `response` digest of a call: its tool result as the agent returned it (`as_returned`)."""
    return digest_json(as_returned(result))


# -------------------------------------------------------------------------------------- base64url


def encode_b64url(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5, as JWS writes it)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def decode_b64url(text: str, size: int) -> bytes | None:
    """`size` bytes from their canonical unpadded base64url text; None for anything else."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Re-encoding refuses a second spelling of the same bytes (set trailing bits).
    if len(data) != size or encode_b64url(data) != text:
        return None
    return data


# ------------------------------------------------------------------------------------------ keys


def private_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """The Ed25519 key of a 32-byte seed (the key itself is never shown in an error)."""
    if len(seed) != SEED_BYTES:
        raise UsageError(f"an Ed25519 private key is a {SEED_BYTES}-byte seed, not {len(seed)} bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """`ed25519:` and the base64url of the 32-byte public key: the form receipts and the API use."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return KEY_PREFIX + encode_b64url(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


def _key_bytes(text: object) -> bytes | None:
    if not isinstance(text, str) or not text.startswith(KEY_PREFIX):
        return None
    return decode_b64url(text[len(KEY_PREFIX) :], 32)


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The public key of its `ed25519:...` text; UsageError for anything else."""
    raw = _key_bytes(text)
    if raw is None:
        raise UsageError(
            f"{text!r} is not an Ed25519 public key",
            hint='give it as the registry publishes it: "ed25519:" and 43 base64url characters',
        )
    return Ed25519PublicKey.from_public_bytes(raw)


# --------------------------------------------------------------------------------------- receipt

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Receipt:
    """One paid call, as the registry signed it. `from_dict` checks every field; a Receipt built
    directly is trusted to be well formed (a wrong one fails `verify`, never passes it)."""

    event: str
    agent: str
    version: str
    tool: str
    price: int
    currency: str
    decimals: int
    time: int
    request: str
    response: str
    registry: str
    key: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        # Every field is a str or an int: no need for asdict's recursive copy (the call path's cost).
        return {name: getattr(self, name) for name in _ORDER}

    def signed_bytes(self) -> bytes:
        """What `signature` signs: the canonical JSON of every other field."""
        return canonical_json({name: getattr(self, name) for name in _SIGNED})

    @classmethod
    def from_dict(cls, data: Any) -> Receipt:
        """A receipt from its JSON object, every field checked; MalformedReceipt otherwise."""
        if not isinstance(data, Mapping):
            raise MalformedReceipt(f"a receipt is a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise MalformedReceipt(
                f"the receipt has unknown fields: {', '.join(map(str, unknown))}",
                field=str(unknown[0]),
                hint="a newer mcpz may know them: `pip install -U mcpz`",
            )
        missing = [name for name in _ORDER if name not in data]
        if missing:
            raise MalformedReceipt(f"the receipt has no {', '.join(missing)}", field=missing[0])
        _check(data)
        return cls(**{name: data[name] for name in _ORDER})


_ORDER = tuple(f.name for f in fields(Receipt))
_FIELDS = frozenset(_ORDER)
_SIGNED = tuple(name for name in _ORDER if name != "signature")


def _text(data: Mapping[str, Any], name: str, longest: int = 256) -> None:
    value = data[name]
    if not isinstance(value, str) or not value or len(value) > longest or not value.isprintable():
        raise MalformedReceipt(
            f"the receipt's {name} must be printable text of 1 to {longest} characters, not {value!r}",
            field=name,
        )


def _whole(data: Mapping[str, Any], name: str, low: int, high: int | None = None) -> None:
    value = data[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"{low} to {high}" if high is not None else f">= {low}"
        raise MalformedReceipt(f"the receipt's {name} must be an integer {bound}, not {value!r}", field=name)


def _check(data: Mapping[str, Any]) -> None:
    for name in ("event", "version", "tool", "currency"):
        _text(data, name)
    agent = data["agent"]
    problem = name_problem(agent) if isinstance(agent, str) else "is not text"
    if problem:
        raise MalformedReceipt(f"the receipt's agent {agent!r} {problem}", field="agent")
    _whole(data, "price", 0)
    _whole(data, "decimals", 0, 36)
    _whole(data, "time", 0)
    for name in ("request", "response"):
        if not isinstance(data[name], str) or not _HEX64.fullmatch(data[name]):
            raise MalformedReceipt(
                f"the receipt's {name} must be a sha256 in 64 lower-case hex digits", field=name
            )
    registry = data["registry"]
    _text(data, "registry", 2048)
    if not registry.startswith(("https://", "http://")):
        raise MalformedReceipt(f"the receipt's registry {registry!r} is not an http(s) URL", field="registry")
    if _key_bytes(data["key"]) is None:
        raise MalformedReceipt(
            f'the receipt\'s key must be "ed25519:" and 43 base64url characters, not {data["key"]!r}',
            field="key",
        )
    if not isinstance(data.get("signature", ""), str):
        raise MalformedReceipt("the receipt's signature must be text", field="signature")


def sign(
    *,
    event: str,
    agent: str,
    version: str,
    tool: str,
    price: int,
    currency: str,
    decimals: int,
    time: int,
    request: str,
    response: str,
    registry: str,
    private_key: Ed25519PrivateKey,
    key: str | None = None,
) -> Receipt:
    """Sign a receipt. `request` and `response` are digests (`request_digest`, `response_digest`);
    `key` is `public_key_text(private_key)`, passed by a signer that computed it once."""
    data: dict[str, Any] = {
        "event": event,
        "agent": agent,
        "version": version,
        "tool": tool,
        "price": price,
        "currency": currency,
        "decimals": decimals,
        "time": time,
        "request": request,
        "response": response,
        "registry": registry,
        "key": key or public_key_text(private_key),
    }
    _check(data)
    data["signature"] = encode_b64url(private_key.sign(canonical_json(data)))
    return Receipt(**data)


def verify(receipt: Receipt, trusted_key: str) -> None:
    """Check that `trusted_key` signed `receipt` as it is; ReceiptError (exit 4) otherwise."""
    public = parse_public_key(trusted_key)
    if receipt.key != trusted_key:
        raise UnexpectedReceiptKey(
            f"the receipt is signed by {receipt.key}, not by the trusted key {trusted_key}",
            signer=receipt.key,
            hint="check which registry issued it: `mcpz billing verify-receipt FILE --registry URL`",
        )
    signature = decode_b64url(receipt.signature, SIGNATURE_BYTES)
    if signature is None:
        raise ReceiptError("the receipt's signature is not an Ed25519 signature in base64url")
    try:
        public.verify(signature, receipt.signed_bytes())
    except InvalidSignature:
        raise ReceiptError(
            f"the receipt's signature does not match its fields: it was changed after {receipt.key} signed it"
        ) from None


# ---------------------------------------------------------------------------- in a tool result


def attach(result: Mapping[str, Any], receipt: Receipt) -> dict[str, Any]:
    """A copy of `result` with `receipt` at `_meta["mcpz/receipt"]` (other `_meta` keys kept)."""
    out = dict(result)
    meta = out.get("_meta")
    out["_meta"] = (
        {**meta, META_KEY: receipt.to_dict()} if isinstance(meta, Mapping) else {META_KEY: receipt.to_dict()}
    )
    return out


def detach(result: Mapping[str, Any]) -> tuple[dict[str, Any], Receipt | None]:
    """`result` without its receipt (as the agent returned it), and the receipt, if it held one."""
    meta = result.get("_meta")
    receipt = Receipt.from_dict(meta[META_KEY]) if isinstance(meta, Mapping) and META_KEY in meta else None
    return dict(as_returned(result)), receipt


def verify_result(result: Mapping[str, Any], trusted_key: str, request_params: Any | None = None) -> Receipt:
    """Check the receipt inside a tool result: signed by `trusted_key`, for this very result, and
    (with `request_params`, the call's JSON-RPC params) for this request. Returns the receipt."""
    document = read_document(result)
    verify_document(document, trusted_key, request_params)
    return document.receipt


@dataclass(frozen=True, slots=True)
class ReceiptDocument:
    """A receipt as found in a JSON document, with the tool result it came in (None when the
    document held the receipt alone, so only its signature can be checked)."""

    receipt: Receipt
    result: dict[str, Any] | None


def read_document(document: Any) -> ReceiptDocument:
    """The receipt in a bare receipt object, a tool result, or a whole JSON-RPC response."""
    if isinstance(document, Mapping) and "signature" in document and "key" in document:
        return ReceiptDocument(Receipt.from_dict(document), None)
    # A JSON-RPC response, or `mcpz call --json`'s output: the receipt is in its `result`.
    if isinstance(document, Mapping) and (
        "jsonrpc" in document or ("tool" in document and "result" in document)
    ):
        if not isinstance(document.get("result"), Mapping):
            raise MissingReceipt("the JSON-RPC response has no result, so no receipt (an error?)")
        document = document["result"]
    if not isinstance(document, Mapping):
        raise MalformedReceipt("expected a receipt, a tool result or a JSON-RPC response: a JSON object")
    _without, receipt = detach(document)
    if receipt is None:
        raise MissingReceipt(f'the tool result carries no receipt (no _meta["{META_KEY}"])')
    return ReceiptDocument(receipt, dict(document))


def verify_document(document: ReceiptDocument, trusted_key: str, request_params: Any | None = None) -> None:
    """The signature, then the result's digest (when the document holds the result), then the
    request's (when `request_params` are given)."""
    receipt = document.receipt
    verify(receipt, trusted_key)
    if document.result is not None and response_digest(document.result) != receipt.response:
        raise ReceiptMismatch(
            "the receipt was not signed for this result: the result was changed, or the receipt "
            "moved from another call"
        )
    if request_params is not None and request_digest(request_params) != receipt.request:
        raise ReceiptMismatch("the receipt was not signed for this request: its params differ")
