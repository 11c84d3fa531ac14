"""Paying for one tool call with x402: the payer's side of docs/x402.md.

A gateway that wants payment answers a `tools/call` with a tool result whose `structuredContent` is
x402's PaymentRequired. `Payer.authorize` picks the `exact` EVM requirement, refuses it when it
asks more than the caller's maximum price or than the spend policy leaves for today, and signs an
EIP-3009 authorization of exactly the price with the wallet's key (mcpz.keys.eip3009). The caller
sends it back in `params._meta["x402/payment"]` with a payment identifier, so a retry of the same
payment is answered alike and never pays twice.

The spend policy is the user's config (`x402_max_per_day`, `x402_max_per_agent_per_day`, base units
of the token; 0 = no limit), checked against a journal of what was signed (data folder,
`x402/spent.json`): signed counts as spent, whether or not the call then settles, so the policy is
never exceeded.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mcpz import exit_codes
from mcpz.atomic import write_atomic
from mcpz.errors import McpzError, UsageError
from mcpz.keys import eip3009
from mcpz.keys.ethkeys import LocalAccount

PAYMENT_META = "x402/payment"
RESPONSE_META = "x402/payment-response"
KEEP_DAYS = 35  # days of the spend journal kept


class PaymentRefused(McpzError):
    """The payer will not sign: the price is above the maximum, or the spend policy is used up."""

    exit_code = exit_codes.REFUSED


@dataclass(frozen=True)
class SpendPolicy:
    per_day: int = 0  # over every agent; 0: no limit
    per_agent_per_day: int = 0  # per agent; 0: no limit

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> SpendPolicy:
        return cls(
            per_day=int(values.get("x402_max_per_day") or 0),
            per_agent_per_day=int(values.get("x402_max_per_agent_per_day") or 0),
        )


def required_of(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The PaymentRequired a tool result asks for, if it is one."""
    if not result.get("isError"):
        return None
    structured = result.get("structuredContent")
    if isinstance(structured, dict) and isinstance(structured.get("accepts"), list):
        return structured
    return None


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


@dataclass
class Payer:
    key: LocalAccount | None = None  # None: `unlock` gives it when a payment is first signed
    max_price: int | None = None  # base units; None: whatever the requirement asks (the policy still holds)
    policy: SpendPolicy = field(default_factory=SpendPolicy)
    journal: Path | None = None  # None: nothing remembered between processes
    # The wallet, unlocked only when an agent asks for payment within the limits: a free call never
    # asks for the passphrase.
    unlock: Callable[[], LocalAccount] | None = None
    _spent: dict[str, dict[str, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def account(self) -> LocalAccount:
        """The signing key, unlocked now if it was not yet."""
        if self.key is None:
            if self.unlock is None:
                raise UsageError("the x402 payer has no key to sign with")
            self.key = self.unlock()
        return self.key

    def choose(self, required: Mapping[str, Any]) -> dict[str, Any]:
        """The requirement this payer can pay: scheme exact on an eip155 chain, EIP-3009."""
        for accepted in required.get("accepts") or []:
            if not isinstance(accepted, dict):
                continue
            network = str(accepted.get("network", ""))
            method = (accepted.get("extra") or {}).get("assetTransferMethod", "eip3009")
            if accepted.get("scheme") == "exact" and network.startswith("eip155:") and method == "eip3009":
                return accepted
        raise PaymentRefused(
            "the agent asks for a payment mcpz cannot make",
            hint="mcpz pays with x402's exact scheme by EIP-3009 on EVM chains only",
        )

    def authorize(
        self, agent: str, required: Mapping[str, Any], payment_id: str | None = None
    ) -> dict[str, Any]:
        """The signed PaymentPayload for `agent`'s PaymentRequired; PaymentRefused before signing when
        it asks too much."""
        accepted = self.choose(required)
        try:
            amount = int(accepted["amount"])
            chain_id = int(str(accepted["network"]).split(":", 1)[1])
            extra = accepted.get("extra") or {}
            domain = eip3009.Domain(
                str(extra["name"]), str(extra.get("version", "1")), chain_id, str(accepted["asset"])
            )
            timeout = int(accepted.get("maxTimeoutSeconds") or 300)
            pay_to = str(accepted["payTo"])
        except (KeyError, ValueError, IndexError, TypeError):
            raise PaymentRefused(f"{agent} asked for payment with a malformed requirement") from None
        if self.max_price is not None and amount > self.max_price:
            raise PaymentRefused(
                f"{agent} asks {amount} base units of {accepted['asset']} per call, above your maximum "
                f"of {self.max_price}: nothing was signed",
                hint="raise --max-price (base units of the token) to pay it",
            )
        with self._lock:
            self._reserve(agent, amount, record=False)  # refused before the wallet is unlocked
        key = self.account()
        with self._lock:
            self._reserve(agent, amount)
        auth = eip3009.Authorization(
            sender=key.address,
            to=pay_to,
            value=amount,
            valid_after=0,
            valid_before=int(time.time()) + timeout,
            nonce=eip3009.new_nonce(),
        )
        return {
            "x402Version": 2,
            "accepted": dict(accepted),
            "payload": {"authorization": auth.to_json(), "signature": eip3009.sign(key, domain, auth)},
            "extensions": {
                "payment-identifier": {
                    "info": {"required": False, "id": payment_id or f"mcpz_{secrets.token_hex(16)}"}
                }
            },
        }

    # -- the spend policy

    def _load(self) -> dict[str, dict[str, int]]:
        if self.journal is None:
            return self._spent
        try:
            data = json.loads(self.journal.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            raise UsageError(
                f"the x402 spend journal {self.journal} is unreadable", hint="remove it"
            ) from None
        return {
            day: {a: int(v) for a, v in per.items()} for day, per in data.items() if isinstance(per, dict)
        }

    def _reserve(self, agent: str, amount: int, record: bool = True) -> None:
        spent = self._load()
        today = spent.setdefault(_today(), {})
        policy = self.policy
        if policy.per_agent_per_day and today.get(agent, 0) + amount > policy.per_agent_per_day:
            raise PaymentRefused(
                f"paying {amount} base units to {agent} would pass your x402 limit of "
                f"{policy.per_agent_per_day} per agent per day: nothing was signed",
                hint="raise `mcpz config set x402_max_per_agent_per_day UNITS`, or wait for tomorrow (UTC)",
            )
        if policy.per_day and sum(today.values()) + amount > policy.per_day:
            raise PaymentRefused(
                f"paying {amount} base units would pass your x402 limit of "
                f"{policy.per_day} per day: nothing was signed",
                hint="raise it with `mcpz config set x402_max_per_day UNITS`, or wait for tomorrow (UTC)",
            )
        if not record:
            return
        today[agent] = today.get(agent, 0) + amount
        kept = dict(sorted(spent.items())[-KEEP_DAYS:])
        self._spent = kept
        if self.journal is not None:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.journal, json.dumps(kept, sort_keys=True) + "\n")


def journal_path(data: Path) -> Path:
    return data / "x402" / "spent.json"


def user_payer(
    unlock: Callable[[], LocalAccount], max_price: str | None = None, env: Mapping[str, str] | None = None
) -> Payer:
    """The payer `mcpz call --pay` uses: the user's spend policy and journal, the wallet unlocked by
    `unlock` only when an agent asks for payment; `max_price` in base units of the token the agent
    asks for (an integer: 50000 is 0.05 of a 6-decimal token such as USDC), since only the token
    knows its decimals."""
    from mcpz.config import Settings, data_dir

    config = Settings.load(env=env)
    policy = SpendPolicy(config.x402_max_per_day, config.x402_max_per_agent_per_day)
    limit = parse_base_units(max_price, "--max-price") if max_price is not None else None
    return Payer(max_price=limit, policy=policy, journal=journal_path(data_dir(env)), unlock=unlock)


def parse_base_units(text: str, what: str) -> int:
    """A whole number of the token's base units; a decimal amount is refused (its decimals are the
    token's, unknown until an agent names the token)."""
    cleaned = text.strip().replace("_", "")
    if not cleaned.isdigit():
        raise UsageError(
            f'{what} "{text}" is not a whole number of base units',
            hint=f"{what} is in the token's base units: 0.05 of a 6-decimal token (USDC) is 50000",
        )
    return int(cleaned)
