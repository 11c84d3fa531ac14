"""EIP-3009 `TransferWithAuthorization`: the EIP-712 typed data a payer signs, and its recovery.

x402's `exact` scheme on EVM chains pays with these: the payer signs once, off chain, that `value`
base units may move from `from` to `to` between `validAfter` and `validBefore` (seconds, both
exclusive), once (`nonce`: 32 random bytes, not a counter). Whoever holds the signature submits it
(the registry, as its own facilitator). The field names and their JSON spelling are x402's
(`ExactEIP3009Authorization`), so payloads of the official SDK and ours are the same objects.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from mcpz.errors import UsageError
from mcpz.keys.ethkeys import Account, LocalAccount, encode_typed_data

__all__ = ["Authorization", "Domain", "encode_typed_data", "new_nonce", "recover", "sign", "split"]

PRIMARY_TYPE = "TransferWithAuthorization"
TYPES: dict[str, list[dict[str, str]]] = {
    PRIMARY_TYPE: [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


@dataclass(frozen=True)
class Domain:
    """The token's EIP-712 domain: what x402 puts in a requirement's `extra` (name, version)."""

    name: str
    version: str
    chain_id: int
    token: str  # the verifying contract

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": self.token,
        }


@dataclass(frozen=True)
class Authorization:
    sender: str  # `from`
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: str  # 0x and 64 hex digits

    def message(self) -> dict[str, Any]:
        return {
            "from": self.sender,
            "to": self.to,
            "value": self.value,
            "validAfter": self.valid_after,
            "validBefore": self.valid_before,
            "nonce": bytes.fromhex(self.nonce.removeprefix("0x")),
        }

    def to_json(self) -> dict[str, str]:
        """x402's wire form: every number a decimal string."""
        return {
            "from": self.sender,
            "to": self.to,
            "value": str(self.value),
            "validAfter": str(self.valid_after),
            "validBefore": str(self.valid_before),
            "nonce": self.nonce,
        }

    @classmethod
    def from_json(cls, data: object) -> Authorization:
        """Parse x402's wire form; a UsageError naming the first bad field."""
        if not isinstance(data, dict):
            raise UsageError("the payment's authorization is not an object")

        def number(key: str) -> int:
            raw = data.get(key)
            if isinstance(raw, bool) or not isinstance(raw, str | int):
                raise UsageError(f"the payment's authorization.{key} is missing or not a number")
            try:
                value = int(raw)
            except ValueError:
                raise UsageError(f"the payment's authorization.{key} is not a number") from None
            if not 0 <= value < 2**256:
                raise UsageError(f"the payment's authorization.{key} is out of range")
            return value

        def address(key: str) -> str:
            raw = data.get(key)
            if not isinstance(raw, str) or len(raw) != 42 or not raw.startswith("0x") or not _hex(raw[2:]):
                raise UsageError(f"the payment's authorization.{key} is not an address")
            return raw

        nonce = data.get("nonce")
        if (
            not isinstance(nonce, str)
            or len(nonce) != 66
            or not nonce.startswith("0x")
            or not _hex(nonce[2:])
        ):
            raise UsageError("the payment's authorization.nonce is not 32 bytes of hex")
        return cls(
            sender=address("from"),
            to=address("to"),
            value=number("value"),
            valid_after=number("validAfter"),
            valid_before=number("validBefore"),
            nonce=nonce.lower(),
        )


def _hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def new_nonce() -> str:
    return "0x" + secrets.token_hex(32)


def _encoded(domain: Domain, auth: Authorization) -> Any:
    return encode_typed_data(domain.as_dict(), TYPES, auth.message())


def sign(key: LocalAccount, domain: Domain, auth: Authorization) -> str:
    """The 65-byte signature (r, s, v), 0x-prefixed hex, as x402 carries it."""
    signed = key.sign_message(_encoded(domain, auth))
    return "0x" + bytes(signed.signature).hex()


def recover(domain: Domain, auth: Authorization, signature: str) -> str | None:
    """The address that signed `auth` under `domain`; None for a signature that is no signature."""
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
    except ValueError:
        return None
    if len(raw) != 65:  # smart-wallet (EIP-1271/6492) signatures are not taken: the token checks ECDSA only
        return None
    try:
        return str(Account.recover_message(_encoded(domain, auth), signature=raw))
    except Exception:  # eth_keys' BadSignature, a v out of range, a high s
        return None


def split(signature: str) -> tuple[int, bytes, bytes]:
    """(v, r, s) of a 65-byte signature, as transferWithAuthorization takes them."""
    raw = bytes.fromhex(signature.removeprefix("0x"))
    v = raw[64] if raw[64] >= 27 else raw[64] + 27
    return v, raw[:32], raw[32:64]
