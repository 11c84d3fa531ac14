"""W3C Trace Context (`traceparent`), pure: one call through the gateway is one trace, from the
client's request through the registry and the node into the agent's request `_meta`.

    00-<trace id: 32 hex>-<parent span id: 16 hex>-<flags: 2 hex>

A client that sends a valid `traceparent` keeps its trace id; each hop makes a child (same trace,
its own span id). An invalid header is ignored and a new trace begins, as the specification asks.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

HEADER = "traceparent"
_FORMAT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class TraceParent:
    trace_id: str
    span_id: str
    flags: int = SAMPLED

    @property
    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child(self) -> TraceParent:
        """The next hop: the same trace, a span of its own."""
        return TraceParent(self.trace_id, _span_id(), self.flags)


def _span_id() -> str:
    while True:
        value = secrets.token_hex(8)
        if value != "0" * 16:
            return value


def new_trace() -> TraceParent:
    while True:
        trace = secrets.token_hex(16)
        if trace != "0" * 32:
            return TraceParent(trace, _span_id())


def parse(value: str | None) -> TraceParent | None:
    """The traceparent `value` carries, or None when it is absent or malformed (version ff, all-zero
    ids and upper-case hex are malformed)."""
    if not value:
        return None
    found = _FORMAT.fullmatch(value.strip()[:55]) if len(value.strip()) >= 55 else None
    if found is None:
        return None
    version, trace_id, span_id, flags = found.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    if version == "00" and len(value.strip()) != 55:
        return None
    return TraceParent(trace_id, span_id, int(flags, 16))


def continue_or_start(value: str | None) -> TraceParent:
    """A child of the trace `value` names, or the root of a new trace. A new trace is not sampled:
    the caller who sends a sampled `traceparent` decides what is logged along the way."""
    parent = parse(value)
    if parent is not None:
        return parent.child()
    root = new_trace()
    return TraceParent(root.trace_id, root.span_id, 0)


def of_message(message: dict[str, object]) -> TraceParent | None:
    """The traceparent in a JSON-RPC request's `params._meta`, if any."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    value = meta.get(HEADER) if isinstance(meta, dict) else None
    return parse(value) if isinstance(value, str) else None


def into_message(message: dict[str, object], trace: TraceParent) -> None:
    """Put `trace` in the request's `params._meta.traceparent` (made when missing)."""
    params = message.get("params")
    if not isinstance(params, dict):
        params = {}
        message["params"] = params
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        meta = {}
        params["_meta"] = meta
    meta[HEADER] = trace.header
