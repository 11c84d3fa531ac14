"""One usage event: what the gateway records for each `tools/call` it relays.

An event is immutable and identified by `id`. Recording the same event twice counts it once;
an event that reuses an id with any other field changed is a conflict, refused loudly. `digest`
is what tells the two apart: the sha256 of the event's canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any


class Outcome:
    """How a call ended. Strings, so new outcomes need no migration."""

    OK = "ok"  # a result that is not a tool error
    TOOL_ERROR = "tool-error"  # a result with isError: the tool ran and failed
    RPC_ERROR = "rpc-error"  # a JSON-RPC error response from the agent (unknown tool, bad arguments)
    TIMEOUT = "timeout"  # no answer within the call timeout; the agent was told to cancel
    CANCELLED = "cancelled"  # the client cancelled or went away
    REPLICA_LOST = "replica-lost"  # the replica or its node went away mid-call
    SHUTDOWN = "shutdown"  # the registry stopped mid-call

    ALL = (OK, TOOL_ERROR, RPC_ERROR, TIMEOUT, CANCELLED, REPLICA_LOST, SHUTDOWN)


@dataclass(frozen=True, slots=True)
class UsageEvent:
    id: str  # unique; the gateway makes it from a random 128-bit value
    account_id: int  # who called
    token_id: int | None  # with which key
    agent: str  # namespace/name
    version: str
    tool: str
    deployment: str
    replica_id: str
    node_id: str
    started_us: int  # Unix time of the call's start, in microseconds
    duration_us: int
    outcome: str  # one of Outcome.ALL
    bytes_in: int  # the request's JSON-RPC message, as received
    bytes_out: int  # the response's JSON-RPC message, as sent
    # Billing (registry_server.billing): what the call is charged, in base units, under which plan,
    # from which hold. A free call keeps the defaults, which `to_dict` leaves out so that events
    # journaled before billing keep their digests.
    price: int = 0
    plan: str = ""
    hold: str = ""

    def to_dict(self) -> dict[str, Any]:
        # Every field is a scalar, so this equals `asdict(self)` at a tenth of its cost (it runs on
        # the gateway's call path, inside `canonical()`).
        data = {name: getattr(self, name) for name in _FIELDS}
        if not self.price and not self.plan and not self.hold:
            del data["price"], data["plan"], data["hold"]
        return data

    def canonical(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageEvent:
        return cls(
            **{name: data[name] for name in cls.__dataclass_fields__ if name in data or name not in _BILLING}
        )


_BILLING = frozenset({"price", "plan", "hold"})
_FIELDS = tuple(f.name for f in fields(UsageEvent))
