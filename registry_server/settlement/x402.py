"""x402 payments, with the registry as its own facilitator: the requirements a paid call answers
with, the payment's verification, its settlement on chain, and its entry in the ledger.

The payer signs an EIP-3009 `transferWithAuthorization` of exactly the call's price to the
settlement contract (pay-to): the money lands where payout batches pay creators from, and
`unallocated()` counts it at once. The relayer's key submits it and pays the gas. The ledger takes
it from `chain:x402` (negative by what x402 brought into the contract), splits it as any charge
(platform fee, co-authors' shares) and credits the creators' *available* earnings: a settled x402
payment is final on chain, so it has no refund window, and its charge rows are written matured.

Verification before the agent runs (`verify`): the payload's shape and version, the accepted
requirement is the one offered (scheme, network, asset, pay-to, amount == price), the signature
recovers to `from`, the validity window covers now plus the settlement's time, the nonce is unused on
chain, the balance covers the price, and an `eth_call` of the transfer succeeds. Only chain.py
speaks to the chain; this module calls it from worker threads (its calls block). The relayer's key
(never the operator's) signs the transfers and pays their gas; x402_desk.py allocates its nonces.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from mcpz.errors import UsageError
from mcpz.keys import eip3009
from mcpz.keys.ethkeys import LocalAccount
from registry_server.billing import ledger, service
from registry_server.billing.models import Charge
from registry_server.settlement.chain import SettlementChain, Signed

X402_VERSION = 2
SCHEME = "exact"
PAYMENT_META = "x402/payment"
RESPONSE_META = "x402/payment-response"
PAYMENT_IDENTIFIER = "payment-identifier"  # x402's extension: the client's idempotency key
PLAN = "x402"
MAX_TIMEOUT = 300  # seconds the payer's authorization should stay valid: the call runs, then settles
SETTLE_MARGIN = 6  # seconds an authorization must still be valid when verified: time to settle
SETTLE_WAIT = 30.0  # seconds the gateway waits for the settlement's receipt before calling it unknown

# x402_payments.state
VERIFIED = "verified"  # admitted; the agent runs
SETTLING = "settling"  # the agent answered; the transfer is sent (tx_hash) and not yet mined
SETTLED = "settled"  # mined, in the ledger; `response` is the answer given
FAILED = "failed"  # the settlement failed: nothing was charged; `response` says why
STATES = (VERIFIED, SETTLING, SETTLED, FAILED)


@dataclass(frozen=True)
class Offer:
    """What a paid call of one tool asks: the token, its domain, the price, where to pay."""

    network: str  # eip155:<chain id>
    chain_id: int
    asset: str
    name: str  # the token's EIP-712 domain
    version: str
    pay_to: str
    amount: int

    def requirement(self) -> dict[str, Any]:
        return {
            "scheme": SCHEME,
            "network": self.network,
            "asset": self.asset,
            "amount": str(self.amount),
            "payTo": self.pay_to,
            "maxTimeoutSeconds": MAX_TIMEOUT,
            "extra": {"name": self.name, "version": self.version, "assetTransferMethod": "eip3009"},
        }

    def payment_required(self, url: str, description: str, error: str = "") -> dict[str, Any]:
        """x402 v2's PaymentRequired, for a tool result's structuredContent."""
        body: dict[str, Any] = {
            "x402Version": X402_VERSION,
            "resource": {"url": url, "description": description, "mimeType": "application/json"},
            "accepts": [self.requirement()],
            "extensions": {PAYMENT_IDENTIFIER: {"info": {"required": False}}},
        }
        if error:
            body["error"] = error
        return body

    @property
    def domain(self) -> eip3009.Domain:
        return eip3009.Domain(self.name, self.version, self.chain_id, self.asset)


@dataclass(frozen=True)
class Payment:
    auth: eip3009.Authorization
    signature: str
    accepted: dict[str, Any]
    payment_id: str | None
    digest: str  # sha256 hex of the payload's canonical JSON

    @property
    def key(self) -> str:
        """The payment's record: its identifier when it has one, else its authorization."""
        if self.payment_id:
            return f"id:{self.payment_id}"
        return f"auth:{self.auth.sender.lower()}:{self.auth.nonce}"

    @property
    def charge_key(self) -> str:
        """The ledger's key (and the charge's event id, at most 64 characters): one per authorization,
        which the token takes once, so that no retry can post it twice."""
        raw = f"{self.auth.sender.lower()}:{self.auth.nonce}".encode()
        return "x402:" + hashlib.sha256(raw).hexdigest()[:48]


class PaymentRefused(UsageError):
    """The payment cannot pay for this call; `reason` is x402's error code (invalidReason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def digest(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def parse(payload: object) -> Payment:
    """A PaymentPayload (x402 v2, scheme exact, EIP-3009) from `_meta["x402/payment"]`."""
    if not isinstance(payload, dict):
        raise PaymentRefused("invalid_payload", "the x402 payment is not an object")
    if payload.get("x402Version") != X402_VERSION:
        raise PaymentRefused("invalid_x402_version", f"only x402 version {X402_VERSION} is taken")
    accepted = payload.get("accepted")
    inner = payload.get("payload")
    if not isinstance(accepted, dict) or not isinstance(inner, dict):
        raise PaymentRefused("invalid_payload", "the x402 payment lacks `accepted` or `payload`")
    signature = inner.get("signature")
    if not isinstance(signature, str):
        raise PaymentRefused("invalid_payload", "the x402 payment lacks a signature")
    try:
        auth = eip3009.Authorization.from_json(inner.get("authorization"))
    except UsageError as e:
        raise PaymentRefused("invalid_payload", e.message) from None
    payment_id: str | None = None
    extensions = payload.get("extensions")
    if isinstance(extensions, dict):
        ext = extensions.get(PAYMENT_IDENTIFIER)
        info = ext.get("info") if isinstance(ext, dict) else None
        raw = info.get("id") if isinstance(info, dict) else None
        if raw is not None:
            if not (
                isinstance(raw, str) and 16 <= len(raw) <= 128 and all(c.isalnum() or c in "-_" for c in raw)
            ):
                raise PaymentRefused(
                    "invalid_payload", "the payment identifier must be 16-128 of [A-Za-z0-9_-]"
                )
            payment_id = raw
    return Payment(auth, signature, accepted, payment_id, digest(payload))


def check_terms(offer: Offer, payment: Payment, now: int) -> None:
    """The checks that need no chain: the requirement accepted, the amount, the window, the signature."""
    a = payment.accepted
    if a.get("scheme") != SCHEME or a.get("network") != offer.network:
        raise PaymentRefused("unsupported_scheme", f"this call is paid with {SCHEME} on {offer.network}")
    if str(a.get("asset", "")).lower() != offer.asset.lower():
        raise PaymentRefused(
            "invalid_exact_evm_payload_asset", f"this call is paid in the token {offer.asset}"
        )
    auth = payment.auth
    if auth.to.lower() != offer.pay_to.lower() or str(a.get("payTo", "")).lower() != offer.pay_to.lower():
        raise PaymentRefused("invalid_exact_evm_payload_recipient_mismatch", f"pay to {offer.pay_to}")
    if auth.value != offer.amount:
        raise PaymentRefused(
            "invalid_exact_evm_payload_authorization_value",
            f"the authorization is for {auth.value} and the price is {offer.amount} (base units)",
        )
    if auth.valid_after >= now:
        raise PaymentRefused(
            "invalid_exact_evm_payload_authorization_valid_after", "the authorization is not valid yet"
        )
    if auth.valid_before < now + SETTLE_MARGIN:
        raise PaymentRefused(
            "invalid_exact_evm_payload_authorization_valid_before",
            "the authorization expires before it can settle",
        )
    if eip3009.recover(offer.domain, auth, payment.signature) != auth.sender:
        raise PaymentRefused("invalid_exact_evm_payload_signature", "the signature is not the payer's")


class Facilitator:
    """Verifies on chain and signs settlements with the relayer's key (an account of its own, never
    the operator's: the payout job takes the operator's nonces). Which nonce a settlement takes is
    the desk's to say: it allocates them under a database row lock that every replica shares."""

    def __init__(self, chain: SettlementChain, relayer: LocalAccount) -> None:
        self.chain = chain
        self.relayer = relayer
        self._offer: tuple[str, str, str] | None = None

    def token(self) -> tuple[str, str, str]:
        """(name, version, address) of the token's domain, read once."""
        if self._offer is None:
            self._offer = self.chain.token_domain()
        return self._offer

    def offer(self, amount: int) -> Offer:
        name, version, asset = self.token()
        return Offer(
            network=f"eip155:{self.chain.chain_id}",
            chain_id=self.chain.chain_id,
            asset=asset,
            name=name,
            version=version,
            pay_to=self.chain.address,
            amount=amount,
        )

    def _fields(self, auth: eip3009.Authorization) -> tuple[str, str, int, int, int, str]:
        return (auth.sender, auth.to, auth.value, auth.valid_after, auth.valid_before, auth.nonce)

    def verify(self, offer: Offer, payment: Payment) -> None:
        """PaymentRefused unless the payment will settle if sent now (blocking: a worker thread)."""
        check_terms(offer, payment, int(time.time()))
        auth = payment.auth
        if self.chain.authorization_used(offer.asset, auth.sender, auth.nonce):
            raise PaymentRefused(
                "invalid_exact_evm_payload_authorization_nonce", "this authorization was used"
            )
        if self.chain.balance_of(offer.asset, auth.sender) < auth.value:
            raise PaymentRefused("insufficient_funds", "the payer's balance does not cover the price")
        v, r, s = eip3009.split(payment.signature)
        why = self.chain.simulate_transfer(offer.asset, self.relayer.address, self._fields(auth), v, r, s)
        if why is not None:
            raise PaymentRefused("invalid_transaction_state", f"the transfer would fail: {why}")

    def sign(self, offer: Offer, payment: Payment, nonce: int) -> Signed:
        """The transfer signed by the relayer at `nonce` (gas estimated first: a transfer the token
        would refuse now is never signed)."""
        v, r, s = eip3009.split(payment.signature)
        max_fee, tip = self.chain.fees()
        return self.chain.sign_transfer(
            self.relayer, offer.asset, self._fields(payment.auth), v, r, s,
            nonce=nonce, max_fee=max_fee, priority_fee=tip,
        )  # fmt: skip

    def outcome(self, tx_hash: str, wait: float = SETTLE_WAIT) -> bool | None:
        """True mined and successful, False reverted, None not mined within `wait` seconds."""
        deadline = time.monotonic() + wait
        while True:
            receipt = self.chain.receipt(tx_hash)
            if receipt is not None:
                return receipt.status == 1
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def settle_response(
    offer: Offer, payment: Payment, tx_hash: str, success: bool, reason: str = ""
) -> dict[str, Any]:
    """x402's SettleResponse, for `result._meta["x402/payment-response"]`."""
    body: dict[str, Any] = {
        "success": success,
        "transaction": tx_hash,
        "network": offer.network,
        "payer": payment.auth.sender,
        "amount": str(offer.amount),
    }
    if reason:
        body["errorReason"] = reason
    return body


def post_payment(
    session: Session,
    *,
    key: str,
    consumer_id: int,
    agent: str,
    version: str,
    tool: str,
    price: int,
    fee_bps: int,
    at_us: int,
) -> bool:
    """The settled payment as revenue: from chain:x402 to the platform fee and the creators' available
    earnings, split as any charge; False when `key` was posted already (a retry)."""
    platform, parts = ledger.split(price, fee_bps, service.splits_of(session, [agent])[agent])
    legs = [(ledger.CHAIN_X402, -price), (ledger.PLATFORM_FEES, platform)]
    legs += [(ledger.creator_available(creator), v) for creator, v in parts]
    if not service.post(session, ledger.transaction(key, "x402", legs, f"{agent} {tool}"), at_us):
        return False
    session.execute(
        insert(Charge),
        [
            {
                "event_id": key,
                "seq": seq,
                "consumer_id": consumer_id,
                "token_id": 0,
                "creator_id": creator,
                "agent": agent,
                "version": version,
                "tool": tool[:256],
                "plan": PLAN,
                "started_us": at_us,
                "price": price if seq == 0 else 0,
                "fee": platform if seq == 0 else 0,
                "earning": earning,
                "txn": key,
                "settled": key,  # final on chain: never pending, never refunded from the ledger
            }
            for seq, (creator, earning) in enumerate(parts)
        ],
    )
    return True
