"""The gateway's x402 desk: a `tools/call` paid for by an x402 payment instead of a balance.

The gateway and settlement are peers (docs/development.md's layers): the gateway knows the desk only
as its `PaymentDesk` protocol, and app.py hands it this one.

A listing whose per-call plan accepts x402 (`Pricing.x402`) is answered, when the caller cannot pay
from a balance or has no account at all, with x402's MCP answer: a tool result with `isError` and the
PaymentRequired in `structuredContent`. A call carrying `params._meta["x402/payment"]` is verified
(settlement/x402.py) before it is relayed, run, then settled on chain; the answer carries the
SettleResponse in `result._meta["x402/payment-response"]` and the signed receipt. A settlement that
fails after the run withholds the result and charges nothing; one whose outcome is unknown is kept
by its transaction hash and answered on the retry, never with a new 402 (docs/x402.md).

Settlements are signed by the relayer's key at nonces allocated under a database row lock, so that
the registry's replicas never sign two at one nonce; each is recorded before it is broadcast, so that
it can be broadcast again. A call stopped before its settlement was signed releases its record
(`release`, or a retry once the record is older than any call runs): the payer's retry is verified
afresh.

`before` runs where the gateway would ask billing for a reservation, `after` where it would capture it,
`release` where a call is stopped by the registry's shutdown.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from mcpz import jsonlimits
from mcpz.errors import McpzError, UsageError
from mcpz.jsonlimits import JSONError
from registry_server.accounts.service import Principal
from registry_server.billing import service
from registry_server.billing.pricing import Pricing
from registry_server.rate_limit import RateLimiter
from registry_server.settlement import x402
from registry_server.settlement.chain import chain_of
from registry_server.settlement.models import X402Payment, X402RelayerNonce
from registry_server.settlement.operator import load_operator, load_relayer
from registry_server.state import RegistryState
from registry_server.usage.events import Outcome

log = logging.getLogger("registry_server.settlement.x402")

PRICE_TTL = 5.0
PAYER_CALLS = 20  # paid calls per payer address per PAYER_WINDOW seconds (anonymous callers have no tier)
PAYER_WINDOW = 10.0
CONFLICT = -32022  # the payment identifier was used with another payload
PENDING = -32023  # the payment's settlement is not known yet: retry with the same identifier
LIMITED = -32029  # as the tiers' limit: too many paid calls from one payer
# Seconds past the gateway's call timeout after which a payment still `verified` (its call never
# reached settlement: the registry stopped or died) is released, so the payer's retry is verified afresh.
STALE_MARGIN = 30.0  # signing takes a few calls to the node, each bounded by its 10 s timeout
REBROADCAST_WAIT = 5.0  # seconds a retry waits for a settlement it broadcast again

Signer = Callable[[bytes, int, int], bytes]  # (answer, price, started_us): the answer with its receipt


@dataclass
class PaidCall:
    payment: x402.Payment
    offer: x402.Offer
    pricing: Pricing
    principal: Principal
    agent: str
    version: str
    tool: str


def _rpc(
    request_id: object, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None
) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
    if error is not None:
        body["error"] = error
    else:
        body["result"] = result
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _error(request_id: object, code: int, message: str, data: object = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _rpc(request_id, error=error)


class X402Desk:
    def __init__(self, state: RegistryState, facilitator: x402.Facilitator) -> None:
        self.state = state
        self.db = state.db
        self.facilitator = facilitator
        self.fee_bps = state.settings.platform_fee_bps
        self.public_url = state.settings.base_url
        self.prices: dict[str, tuple[Pricing, float]] = {}
        self.payers = RateLimiter(PAYER_CALLS, PAYER_WINDOW)
        self.stale_us = int((state.settings.call_timeout + STALE_MARGIN) * 1_000_000)

    @classmethod
    def open(cls, state: RegistryState) -> X402Desk | None:
        """The desk when settlement is configured with a relayer key (who submits settlements and pays
        their gas); never the operator's, whose nonces the payout job takes."""
        settings = state.settings
        if not settings.settlement_on:
            return None
        try:
            relayer = load_relayer(settings)
            if relayer is None:
                log.info("x402 is off: no relayer key (MCPZ_REGISTRY_SETTLEMENT_RELAYER_KEY)")
                return None
            operator = load_operator(settings)
            if operator is not None and operator.address == relayer.address:
                log.error("x402 is off: the relayer key is the operator's (give it an account of its own)")
                return None
            return cls(state, x402.Facilitator(chain_of(settings), relayer.account))
        except McpzError as e:
            log.error("x402 is off: %s", e.message)
            return None

    # -- pricing

    async def pricing(self, agent: str) -> Pricing:
        cached = self.prices.get(agent)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]

        def load() -> Pricing:
            with self.db.session() as session:
                return service.prices_of(session, agent).current

        pricing = await anyio.to_thread.run_sync(load)
        self.prices[agent] = (pricing, now + PRICE_TTL)
        return pricing

    async def accepts(self, deployment: str) -> bool:
        """The listing takes x402: anonymous callers may open sessions to it."""
        try:
            return (await self.pricing(deployment)).x402
        except Exception:  # a database hiccup: the caller is asked for a token, as without x402
            log.exception("cannot read the pricing of %s", deployment)
            return False

    async def _offer(self, agent: str, tool: str) -> tuple[Pricing, x402.Offer] | None:
        pricing = await self.pricing(agent)
        price = pricing.per_call_price(tool) if pricing.x402 else None
        if not price:
            return None
        offer = await anyio.to_thread.run_sync(lambda: self.facilitator.offer(price))
        return pricing, offer

    def _required(self, request_id: object, agent: str, tool: str, offer: x402.Offer, error: str) -> bytes:
        """x402's MCP answer: a tool result with isError and the PaymentRequired."""
        required = offer.payment_required(f"{self.public_url}/mcp/{agent}#{tool}", f"{agent} {tool}", error)
        text = error or f"payment required: {offer.amount} base units of {offer.asset} on {offer.network}"
        return _rpc(
            request_id,
            {
                "content": [{"type": "text", "text": json.dumps(required)}, {"type": "text", "text": text}],
                "structuredContent": required,
                "isError": True,
            },
        )

    async def required(self, request_id: object, agent: str, tool: str, why: str) -> bytes | None:
        """The PaymentRequired answer for a caller billing refused; None when the listing takes no x402."""
        found = await self._offer(agent, tool)
        if found is None:
            return None
        return self._required(request_id, agent, tool, found[1], why)

    # -- before the call

    async def before(
        self, principal: Principal, agent: str, version: str, message: dict[str, Any], sign: Signer
    ) -> PaidCall | bytes | None:
        """None: not paid with x402 (billing decides); bytes: the answer, the agent is not called;
        a PaidCall: verified, relay it and hand it to `after`. `sign` puts the receipt on an answer
        settled here (a retry settled by its transaction's hash)."""
        request_id = message["id"]
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        tool = str(params.get("name", ""))
        meta = params.get("_meta")
        payload = meta.get(x402.PAYMENT_META) if isinstance(meta, dict) else None
        anonymous = principal.account_id == 0
        if payload is None and not anonymous:
            return None
        found = await self._offer(agent, tool)
        if found is None:
            if anonymous:
                return _error(
                    request_id, -32020, f"{agent} takes no x402 payment for {tool}: sign in to call it"
                )
            return None  # a payment offered where none is asked: billing decides, the payment is unused
        pricing, offer = found
        if payload is None:
            return self._required(request_id, agent, tool, offer, "")
        try:
            payment = x402.parse(payload)
        except x402.PaymentRefused as e:
            return self._required(request_id, agent, tool, offer, f"{e.reason}: {e.message}")
        wait = self.payers.hit(payment.auth.sender.lower(), time.monotonic())
        if wait:
            return _error(
                request_id, LIMITED, f"too many paid calls from {payment.auth.sender}", {"retry_after": wait}
            )
        known = await anyio.to_thread.run_sync(self._load, payment.key)
        if known is not None:
            replayed = await self._replay(request_id, known, payment, offer, sign)
            if replayed is not None:
                return replayed
            # Released: the earlier attempt never sent the authorization; verify it afresh.
        try:
            await anyio.to_thread.run_sync(self.facilitator.verify, offer, payment)
        except x402.PaymentRefused as e:
            return self._required(request_id, agent, tool, offer, f"{e.reason}: {e.message}")
        except McpzError as e:
            log.error("cannot verify an x402 payment: %s", e.message)
            return _error(request_id, -32000, "the registry cannot reach its settlement chain right now")
        paid = PaidCall(payment, offer, pricing, principal, agent, version, tool)
        if not await anyio.to_thread.run_sync(self._claim, paid):
            return self._required(
                request_id,
                agent,
                tool,
                offer,
                "invalid_exact_evm_payload_authorization_nonce: this authorization is in use",
            )
        return paid

    def _load(self, key: str) -> X402Payment | None:
        with self.db.session() as session:
            row = session.get(X402Payment, key)
            if row is not None:
                session.expunge(row)
            return row

    def _claim(self, paid: PaidCall) -> bool:
        """Record the payment as taken; False when its key or its authorization is taken already."""
        now = service.now_us()
        p = paid.payment
        try:
            with self.db.session() as session:
                session.add(
                    X402Payment(
                        key=p.key, digest=p.digest, payer=p.auth.sender, nonce=p.auth.nonce, agent=paid.agent,
                        tool=paid.tool[:256], price=paid.offer.amount, account_id=paid.principal.account_id,
                        state=x402.VERIFIED, created_us=now, updated_us=now, version=paid.version[:64],
                    )
                )  # fmt: skip
        except IntegrityError:
            return False
        return True

    def _update(self, key: str, **values: Any) -> None:
        with self.db.session() as session:
            row = session.get(X402Payment, key)
            if row is not None:
                for name, value in values.items():
                    setattr(row, name, value)
                row.updated_us = service.now_us()

    def _forget(self, key: str) -> None:
        with self.db.session() as session:
            session.execute(delete(X402Payment).where(X402Payment.key == key))

    def payer_of(self, paid: PaidCall) -> str:
        """The address that pays for the call (an anonymous session counts against its cap)."""
        return paid.payment.auth.sender

    def release(self, paid: PaidCall) -> None:
        """The call stopped before its settlement was signed (the registry is shutting down): the
        authorization was never sent, so its record goes and the payer's retry is verified afresh."""
        with self.db.session() as session:
            session.execute(
                delete(X402Payment).where(
                    X402Payment.key == paid.payment.key, X402Payment.state == x402.VERIFIED
                )
            )

    def _release_stale(self, row: X402Payment) -> bool:
        """Release a record left `verified` longer than any call runs (its registry stopped or died
        before signing the settlement); False when it is younger, or another retry got to it first."""
        if service.now_us() - row.updated_us < self.stale_us:
            return False
        with self.db.session() as session:
            gone = session.execute(
                delete(X402Payment).where(
                    X402Payment.key == row.key,
                    X402Payment.state == x402.VERIFIED,
                    X402Payment.updated_us == row.updated_us,
                )
            )
            return bool(gone.rowcount)  # type: ignore[attr-defined]

    async def _replay(
        self, request_id: object, row: X402Payment, payment: x402.Payment, offer: x402.Offer, sign: Signer
    ) -> bytes | None:
        """A payment seen before: the same answer for the same payload, a conflict for another; None
        when its record was released (never sent) and the payment is to be verified afresh."""
        if row.digest != payment.digest:
            return _error(
                request_id, CONFLICT, "this payment identifier was used with another payment",
                {"reason": "payment_identifier_conflict"},
            )  # fmt: skip
        if row.state == x402.VERIFIED:
            if await anyio.to_thread.run_sync(self._release_stale, row):
                return None
            why = "this payment's call is still running: retry with the same payment identifier"
            return _error(request_id, PENDING, why, {"transaction": None})
        if row.state == x402.SETTLING and row.tx_hash:
            released = await anyio.to_thread.run_sync(self._reconcile, row, payment, offer, sign)
            if released:
                return None
            again = await anyio.to_thread.run_sync(self._load, row.key)
            row = again if again is not None else row
        if row.state in (x402.SETTLED, x402.FAILED) and row.response:
            return _with_id(row.response.encode(), request_id)
        why = "this payment is still being settled: retry with the same payment identifier"
        return _error(request_id, PENDING, why, {"transaction": row.tx_hash})

    def _reconcile(self, row: X402Payment, payment: x402.Payment, offer: x402.Offer, sign: Signer) -> bool:
        """Settle a payment left SETTLING (an unknown outcome) by its transaction's receipt; its
        signed transaction broadcast again when the node does not know it (lost before or in its
        broadcast). True when it can never mine (another transaction took its nonce): released."""
        assert row.tx_hash is not None
        chain = self.facilitator.chain
        try:
            outcome = self.facilitator.outcome(row.tx_hash, wait=0)
            if outcome is None and row.raw and not chain.in_pool(row.tx_hash):
                latest, _ = chain.nonces(self.facilitator.relayer.address)
                if row.relayer_nonce is not None and latest > row.relayer_nonce:
                    outcome = self.facilitator.outcome(row.tx_hash, wait=0)  # mined meanwhile?
                    if outcome is None:
                        return self._release_settling(row)
                else:
                    chain.broadcast(row.raw)
                    outcome = self.facilitator.outcome(row.tx_hash, wait=REBROADCAST_WAIT)
        except McpzError as e:
            log.warning("cannot settle an x402 payment by its hash: %s", e.message)
            return False
        if outcome is None or row.response is None:
            return False
        if outcome:
            self._book(row.key, payment, offer, row.agent, row.version or "", row.tool, row.account_id)
            settled = x402.settle_response(offer, payment, row.tx_hash, True)
            final = sign(_with_meta(row.response.encode(), settled), row.price, row.created_us)
            self._update(row.key, state=x402.SETTLED, response=final.decode())
        else:
            why = "the settlement transaction reverted"
            failed = _withheld(_id_of(row.response.encode()), offer, payment, row.tx_hash, why)
            self._update(row.key, state=x402.FAILED, response=failed.decode())
        return False

    def _release_settling(self, row: X402Payment) -> bool:
        with self.db.session() as session:
            gone = session.execute(
                delete(X402Payment).where(
                    X402Payment.key == row.key,
                    X402Payment.state == x402.SETTLING,
                    X402Payment.tx_hash == row.tx_hash,
                )
            )
            return bool(gone.rowcount)  # type: ignore[attr-defined]

    # -- the relayer's nonces, shared by every replica

    def _sign_and_record(self, paid: PaidCall, payload: bytes) -> tuple[str, str]:
        """Under the relayer's nonce row lock: its next nonce, the transfer signed at it, the payment
        recorded as settling (hash, signed transaction, the agent's answer) and the next nonce, all
        committed at once; (hash, signed transaction) to broadcast once the lock is let go.

        The row lock (PostgreSQL's FOR UPDATE; SQLite takes its write lock at BEGIN) makes replicas
        sign one at a time. A transaction recorded and never broadcast (a crash in between) would leave
        a gap that stalls every later one: the node's pending count tells, and it is broadcast again."""
        chain = self.facilitator.chain
        relayer = self.facilitator.relayer.address
        self._nonce_row(chain.chain_id, relayer)
        with self.db.session() as session:
            counter = session.execute(
                select(X402RelayerNonce)
                .where(X402RelayerNonce.chain_id == chain.chain_id, X402RelayerNonce.address == relayer)
                .with_for_update()
            ).scalar_one()
            _, pending = chain.nonces(relayer)
            if pending < counter.next_nonce:
                lost = session.scalars(
                    select(X402Payment.raw)
                    .where(
                        X402Payment.relayer == relayer,
                        X402Payment.relayer_nonce >= pending,
                        X402Payment.relayer_nonce < counter.next_nonce,
                        X402Payment.raw.is_not(None),
                    )
                    .order_by(X402Payment.relayer_nonce)
                )
                for raw in lost:
                    try:
                        chain.broadcast(str(raw))
                    except McpzError as e:  # its own retry sends it again; this settlement goes on
                        log.warning("cannot broadcast a recorded x402 settlement again: %s", e.message)
            nonce = max(counter.next_nonce, pending)
            signed = self.facilitator.sign(paid.offer, paid.payment, nonce)
            recorded = session.execute(
                update(X402Payment)
                .where(X402Payment.key == paid.payment.key, X402Payment.state == x402.VERIFIED)
                .values(
                    state=x402.SETTLING, tx_hash=signed.tx_hash, raw=signed.raw, relayer=relayer,
                    relayer_nonce=nonce, response=payload.decode(), updated_us=service.now_us(),
                )
            )  # fmt: skip
            if recorded.rowcount != 1:  # type: ignore[attr-defined]
                # Released meanwhile (a retry found it stale): sending it now would move money that no
                # record knows of. Nothing is committed: the nonce stays free.
                raise UsageError("this payment's record was released before its settlement was signed")
            counter.next_nonce = nonce + 1
        return signed.tx_hash, signed.raw

    def _nonce_row(self, chain_id: int, address: str) -> None:
        """The relayer's counter row, made once (by whichever replica is first)."""
        with self.db.session() as session:
            if session.get(X402RelayerNonce, (chain_id, address)) is not None:
                return
        try:
            with self.db.session() as session:
                session.add(X402RelayerNonce(chain_id=chain_id, address=address, next_nonce=0))
        except IntegrityError:
            pass  # another replica made it

    # -- after the call

    async def after(
        self, paid: PaidCall, payload: bytes, outcome: str, sign: Callable[[bytes, int], bytes]
    ) -> bytes:
        """Settle a call that ran, or forget one that may not be charged; the answer to send."""
        key = paid.payment.key
        charged = outcome == Outcome.OK or (outcome == Outcome.TOOL_ERROR and paid.pricing.charge_tool_errors)
        if not charged or not payload:
            # Nothing ran to pay for: the authorization stays unused and may be offered again.
            await anyio.to_thread.run_sync(self._forget, key)
            return payload
        request_id = _id_of(payload)
        try:
            # Signed and recorded (hash, transaction, the agent's answer) before it is broadcast: a retry
            # after a crash or a timeout finds all three and settles by the hash.
            tx_hash, raw = await anyio.to_thread.run_sync(self._sign_and_record, paid, payload)
        except McpzError as e:
            answer = _withheld(request_id, paid.offer, paid.payment, "", e.message)
            await anyio.to_thread.run_sync(
                lambda: self._update(key, state=x402.FAILED, response=answer.decode())
            )
            return answer
        try:
            await anyio.to_thread.run_sync(self.facilitator.chain.broadcast, raw)
        except McpzError as e:
            log.warning("cannot broadcast an x402 settlement: %s", e.message, extra={"tx": tx_hash})
            return _error(
                request_id, PENDING,
                "the payment's settlement could not be sent yet: retry with the same payment identifier",
                {"transaction": tx_hash},
            )  # fmt: skip
        settled = await anyio.to_thread.run_sync(self.facilitator.outcome, tx_hash)
        if settled is None:
            return _error(
                request_id, PENDING,
                "the payment's settlement is not mined yet: retry with the same payment identifier",
                {"transaction": tx_hash},
            )  # fmt: skip
        if not settled:
            answer = _withheld(
                request_id, paid.offer, paid.payment, tx_hash, "the settlement transaction reverted"
            )
            await anyio.to_thread.run_sync(
                lambda: self._update(key, state=x402.FAILED, response=answer.decode())
            )
            return answer
        await anyio.to_thread.run_sync(
            self._book,
            key,
            paid.payment,
            paid.offer,
            paid.agent,
            paid.version,
            paid.tool,
            paid.principal.account_id,
        )
        settled_meta = x402.settle_response(paid.offer, paid.payment, tx_hash, True)
        answer = sign(_with_meta(payload, settled_meta), paid.offer.amount)
        await anyio.to_thread.run_sync(
            lambda: self._update(key, state=x402.SETTLED, response=answer.decode())
        )
        return answer

    def _book(
        self,
        key: str,
        payment: x402.Payment,
        offer: x402.Offer,
        agent: str,
        version: str,
        tool: str,
        account: int,
    ) -> None:
        with self.db.session() as session:
            x402.post_payment(
                session, key=payment.charge_key, consumer_id=account, agent=agent, version=version, tool=tool,
                price=offer.amount, fee_bps=self.fee_bps, at_us=service.now_us(),
            )  # fmt: skip


def _id_of(payload: bytes) -> object:
    try:
        response = jsonlimits.loads(payload)
    except JSONError:
        return None
    return response.get("id") if isinstance(response, dict) else None


def _with_id(payload: bytes, request_id: object) -> bytes:
    response = json.loads(payload)
    response["id"] = request_id
    return json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode()


def _with_meta(payload: bytes, settled: dict[str, Any]) -> bytes:
    """The response with the SettleResponse in its result's `_meta`."""
    try:
        response = jsonlimits.loads(payload)
    except JSONError:
        return payload
    result = response.get("result") if isinstance(response, dict) else None
    if not isinstance(result, dict):
        return payload
    meta = result.get("_meta")
    result["_meta"] = {**(meta if isinstance(meta, dict) else {}), x402.RESPONSE_META: settled}
    return json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode()


def _withheld(request_id: object, offer: x402.Offer, payment: x402.Payment, tx_hash: str, why: str) -> bytes:
    """The spec's answer to a settlement that failed after the run: no result, nothing charged."""
    text = f"the payment could not be settled, so the result is withheld and nothing was charged: {why}"
    return _rpc(
        request_id,
        {
            "content": [{"type": "text", "text": text}],
            "isError": True,
            "_meta": {x402.RESPONSE_META: x402.settle_response(offer, payment, tx_hash, False, why)},
        },
    )


__all__ = ["PaidCall", "X402Desk"]
