"""Billing from the client side: the registry's receipt key, and checking a paid call's receipt.

    key = await receipt_key("https://registry.example.com")          # "ed25519:..."
    checked = await verify_receipt(json.load(f), key=key)            # offline: no request made
    print(checked.receipt.price, checked.key_from)

The format, and what its digests cover, are in `mcpz.keys.receipts` and docs/receipts.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from mcpz.client.models import Payload
from mcpz.client.registry import RegistryClient, connect
from mcpz.errors import RemoteError, UsageError
from mcpz.keys import receipts
from mcpz.keys.receipts import Receipt

__all__ = ["ReceiptKey", "VerifiedReceipt", "fetch_receipt_key", "receipt_key", "verify_receipt"]


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiptKey(Payload):
    """`GET /v1/billing/receipt-key`: the key that signs a registry's receipts."""

    WHAT: ClassVar[str] = "receipt key"
    key: str
    registry: str
    algorithm: str
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


async def fetch_receipt_key(client: RegistryClient) -> ReceiptKey:
    """The receipt key of the registry `client` talks to, its form checked."""
    answer = await client.typed(ReceiptKey, "GET", "/v1/billing/receipt-key")
    if answer.algorithm != "ed25519":
        raise RemoteError(
            f"the registry at {client.url} signs receipts with {answer.algorithm!r}, which this mcpz "
            "cannot check",
            hint="update mcpz: `pip install -U mcpz`",
        )
    try:
        receipts.parse_public_key(answer.key)
    except UsageError:
        raise RemoteError(f"the registry at {client.url} served a malformed receipt key") from None
    return answer


async def receipt_key(registry_url: str) -> str:
    """The `ed25519:...` key that signs the receipts of the registry at `registry_url` (no token)."""
    async with connect(registry_url) as client:
        return (await fetch_receipt_key(client)).key


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """A receipt that passed every check asked of it."""

    receipt: Receipt
    key_from: str
    """Where the trusted key came from: "given" (passed in), or the registry URL it was fetched from."""
    response_checked: bool
    """Whether the tool result was at hand, so that the receipt is known to be for it."""
    request_checked: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": True,
            "receipt": self.receipt.to_dict(),
            "key_from": self.key_from,
            "checked": {
                "signature": True,
                "response": self.response_checked,
                "request": self.request_checked,
            },
        }


async def verify_receipt(
    document: Any,
    *,
    key: str | None = None,
    registry: str | None = None,
    request_params: Any | None = None,
) -> VerifiedReceipt:
    """Check the receipt in `document` (a bare receipt, a tool result, or a JSON-RPC response).

    With `key` it is all offline. Without, the key is fetched from `registry`, else from the
    registry the receipt names: that proves only that the registry stands behind it; pass the key
    you got from the registry beforehand to rule out a receipt naming a registry of its forger's.
    `request_params`: the call's JSON-RPC params (or the whole request), to check the request too.
    """
    found = receipts.read_document(document)
    if key is None:
        url = (registry or found.receipt.registry).rstrip("/")
        trusted, key_from = await receipt_key(url), url
    else:
        trusted, key_from = key, "given"
    params = _params(request_params)
    receipts.verify_document(found, trusted, params)
    return VerifiedReceipt(found.receipt, key_from, found.result is not None, params is not None)


def _params(request: Any) -> Any:
    """The params of a whole JSON-RPC request; anything else is taken as the params themselves."""
    if isinstance(request, Mapping) and "jsonrpc" in request and "method" in request:
        return request.get("params")
    return request
