"""x402 on the caller's side, for the gateway's x402 tests: an MCP session with no token, and a
PaymentPayload built as an x402 client builds it."""

from __future__ import annotations

import time
from typing import Any

import httpx2

from mcpz.keys import eip3009
from mcpz.keys.ethkeys import LocalAccount


class Anonymous:
    """An MCP session with no token at all."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx2.Client(headers={"Accept": "application/json, text/event-stream"}, timeout=60)
        init = {
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}},
        }  # fmt: skip
        answer = self.http.post(url, json=init)
        assert answer.status_code == 200, answer.text
        self.http.headers["Mcp-Session-Id"] = answer.headers["mcp-session-id"]
        self.next = 1

    def call(self, tool: str, meta: dict[str, Any] | None = None, **arguments: Any) -> dict[str, Any]:
        self.next += 1
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if meta is not None:
            params["_meta"] = meta
        answer = self.http.post(
            self.url, json={"jsonrpc": "2.0", "id": self.next, "method": "tools/call", "params": params}
        )
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


def pay(
    required: dict[str, Any], key: LocalAccount, *, amount: int | None = None, payment_id: str | None = None
) -> dict[str, Any]:
    """A PaymentPayload for the first requirement, as an x402 client builds it (amount: to lie)."""
    [accepted] = required["accepts"]
    chain_id = int(accepted["network"].split(":")[1])
    domain = eip3009.Domain(
        accepted["extra"]["name"], accepted["extra"]["version"], chain_id, accepted["asset"]
    )
    auth = eip3009.Authorization(
        sender=key.address, to=accepted["payTo"], value=int(accepted["amount"]) if amount is None else amount,
        valid_after=0, valid_before=int(time.time()) + accepted["maxTimeoutSeconds"],
        nonce=eip3009.new_nonce(),
    )  # fmt: skip
    payload: dict[str, Any] = {
        "x402Version": 2,
        "accepted": accepted,
        "payload": {"authorization": auth.to_json(), "signature": eip3009.sign(key, domain, auth)},
    }
    if payment_id is not None:
        payload["extensions"] = {"payment-identifier": {"info": {"required": False, "id": payment_id}}}
    return payload
