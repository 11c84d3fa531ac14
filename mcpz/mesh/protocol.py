"""The mesh protocol on the wire and in time: the msgpack envelope, the connection's state machine,
and the reconnect backoff. Pure: bytes and frames in, bytes and frames out, no sockets.

`encode` and `decode` wrap a frame in the envelope `{"v": 1, "type": "<name>", "id": <int>, ...}`.
`decode` trusts nothing: whatever arrives, it returns a valid frame or raises `ProtocolError`,
whose `close_code` and `reason` are ready for the WebSocket close. `encode` checks the same rules
on the way out, so a frame that encodes is a frame the peer accepts. The checks are compiled once,
at import, from the annotations of the frame dataclasses in `mcpz.mesh.frames`.

    connecting --hello--> hello-sent --welcome--> welcomed --(close)--> closed

Both ends keep a `ConnectionState` with their own role: each calls `on_send` for every frame it
sends and `on_receive` for every frame it receives, so both agree on the phase. A frame the peer
may not send now raises ProtocolError (close code 1002).
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import types
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import msgpack

from mcpz.mesh.frames import (
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    FRAME_TYPES,
    MAX_FRAME_SIZE,
    VERSION,
    Ack,
    Call,
    Cancel,
    Deploy,
    EndSession,
    Error,
    Frame,
    Heartbeat,
    Hello,
    Items,
    Log,
    Notify,
    ProtocolError,
    Range,
    Result,
    Status,
    Stop,
    Text,
    Tools,
    Welcome,
)

# ---------------------------------------------------------------------------------------------
# The envelope


def encode(frame: Frame, *, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """The wire bytes of `frame`; raises ProtocolError if the frame breaks a rule or `max_size`."""
    cls = type(frame)
    if FRAME_TYPES.get(cls.TYPE) is not cls:
        raise ProtocolError(f"{cls.__name__} is not a frame type of the mesh protocol")
    wire: dict[str, object] = {"v": VERSION, "type": cls.TYPE}
    wire.update(_struct_codec(cls).dump(frame, cls.TYPE))
    try:
        data: bytes = msgpack.packb(wire, use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a lone surrogate in a string
        raise ProtocolError(f"cannot encode {cls.TYPE} frame: {e}") from e
    if len(data) > max_size:
        raise ProtocolError(
            f"{cls.TYPE} frame of {len(data)} bytes is over the limit of {max_size}", close_code=CLOSE_TOO_BIG
        )
    return data


def decode(data: bytes | bytearray | memoryview | str, *, max_size: int = MAX_FRAME_SIZE) -> Frame:
    """The frame in `data`, checked field by field. Raises ProtocolError, and nothing else.

    Fields this version does not know are ignored (forward compatibility); an unknown `type` or
    `v` is refused with close code 1003, an oversize frame with 1009, anything else with 1002.
    """
    if isinstance(data, str):
        raise ProtocolError("text message: mesh frames are binary msgpack", close_code=CLOSE_UNSUPPORTED)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"not a binary message: {type(data).__name__}", close_code=CLOSE_UNSUPPORTED)
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_size:
        raise ProtocolError(
            f"frame of {size} bytes is over the limit of {max_size}", close_code=CLOSE_TOO_BIG
        )
    obj = _unpack(data.tobytes() if isinstance(data, memoryview) else data, size)
    if type(obj) is not dict:
        raise ProtocolError(f"a frame must be a msgpack map, got {_kind(obj)}")
    version = obj.get("v")
    if type(version) is not int:
        raise ProtocolError(f"envelope: v must be an integer, got {_kind(version)}")
    if version != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version}; this side speaks {VERSION}",
            close_code=CLOSE_UNSUPPORTED,
        )
    name = obj.get("type")
    if type(name) is not str:
        raise ProtocolError(f"envelope: type must be a string, got {_kind(name)}")
    cls = FRAME_TYPES.get(name)
    if cls is None:
        raise ProtocolError(f"unknown frame type {name[:40]!r}", close_code=CLOSE_UNSUPPORTED)
    frame: Frame = _struct_codec(cls).load(obj, name)
    return frame


class _Budget:
    """Counts the maps and arrays msgpack builds; refuses a frame that holds too many for its size."""

    def __init__(self, containers: int) -> None:
        self.left = containers

    def map(self, value: dict[str, object]) -> dict[str, object]:
        self.left -= 1
        if self.left < 0:
            raise ProtocolError("frame holds too many maps and arrays for its size", close_code=CLOSE_TOO_BIG)
        return value

    def list(self, value: list[object]) -> list[object]:
        self.left -= 1
        if self.left < 0:
            raise ProtocolError("frame holds too many maps and arrays for its size", close_code=CLOSE_TOO_BIG)
        return value


def _unpack(data: bytes | bytearray, size: int) -> object:
    # unpackb has no max_buffer_size (that is the streaming Unpacker's); the size check above is it.
    # The hooks count containers, so a small frame cannot unpack into millions of dicts and lists.
    budget = _Budget(size // 16 + 16)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            timestamp=0,
            object_hook=budget.map,
            list_hook=budget.list,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=0,  # extension types (timestamps included) have no place in a frame
        )
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as e:
        # ValueError covers truncated input, ExtraData, FormatError, StackError (nesting deeper
        # than msgpack's stack), invalid UTF-8 and every max_*_len refusal.
        detail = str(e) or type(e).__name__
        raise ProtocolError(f"not a valid msgpack frame: {detail}") from e


_KINDS: dict[type[Any], str] = {
    type(None): "nothing",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    bytes: "binary",
    list: "an array",
    dict: "a map",
}


def _kind(value: object) -> str:
    """How a wire value is named in error messages: "a string", "an array", ..."""
    return _KINDS.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# Converters: one per field type, compiled from the dataclasses' annotations. They take no path
# argument, so the success path builds no strings; a failure collects where it happened on its
# way up through the containers.


class _Invalid(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.where: list[str] = []  # innermost first


class _Conv:
    def decode(self, value: object) -> Any:
        raise NotImplementedError

    def encode(self, value: object) -> object:
        raise NotImplementedError


class _Str(_Conv):
    def __init__(self, spec: Text) -> None:
        self.max_len = spec.max_len
        self.pattern = spec.pattern
        self.match = re.compile(spec.pattern, re.DOTALL).fullmatch if spec.pattern else None

    def valid(self, value: str) -> str:
        if len(value) > self.max_len:
            raise _Invalid(f"longer than {self.max_len} characters")
        if self.match is not None and self.match(value) is None:
            raise _Invalid(f"{value[:40]!r} does not match {self.pattern}")
        return value

    def decode(self, value: object) -> str:
        # The hot path of decoding: the common case is checked inline, `valid` explains failures.
        if type(value) is not str:
            raise _Invalid(f"expected a string, got {_kind(value)}")
        if len(value) > self.max_len or (self.match is not None and self.match(value) is None):
            return self.valid(value)
        return value

    def encode(self, value: object) -> object:
        if not isinstance(value, str):
            raise _Invalid(f"expected a string, got {_kind(value)}")
        return self.valid(str(value))


class _Int(_Conv):
    def __init__(self, spec: Range) -> None:
        self.low = spec.low
        self.high = spec.high

    def decode(self, value: object) -> int:
        if type(value) is not int:
            raise _Invalid(f"expected an integer, got {_kind(value)}")
        if not self.low <= value <= self.high:
            raise _Invalid(f"{value} is outside {self.low:g}..{self.high:g}")
        return value

    def encode(self, value: object) -> object:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(f"expected an integer, got {_kind(value)}")
        return self.decode(int(value))


class _Float(_Conv):
    """A float on the wire; an integer is accepted too (other encoders write 5.0 as 5)."""

    def __init__(self, spec: Range) -> None:
        self.low = spec.low
        self.high = spec.high

    def decode(self, value: object) -> float:
        if type(value) is float:
            number = value
        elif type(value) is int:
            number = float(value)  # wire integers are at most 64 bits: no overflow
        else:
            raise _Invalid(f"expected a number, got {_kind(value)}")
        # NaN fails both comparisons, infinities the range: only finite numbers pass.
        if not self.low <= number <= self.high:
            raise _Invalid(f"{number} is outside {self.low:g}..{self.high:g}")
        return number

    def encode(self, value: object) -> object:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Invalid(f"expected a number, got {_kind(value)}")
        try:
            return self.decode(float(value))
        except OverflowError:
            raise _Invalid(f"{value} is outside {self.low:g}..{self.high:g}") from None


class _Bool(_Conv):
    """A msgpack boolean; 0 and 1 are integers, not booleans."""

    def decode(self, value: object) -> bool:
        if type(value) is not bool:
            raise _Invalid(f"expected a boolean, got {_kind(value)}")
        return value

    def encode(self, value: object) -> object:
        return self.decode(value)


class _Bin(_Conv):
    def decode(self, value: object) -> bytes:
        if type(value) is not bytes:
            raise _Invalid(f"expected binary, got {_kind(value)}")
        return value

    def encode(self, value: object) -> object:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise _Invalid(f"expected bytes, got {_kind(value)}")
        return bytes(value)


class _Enum(_Conv):
    def __init__(self, enum: type[StrEnum]) -> None:
        self.members = {member.value: member for member in enum}

    def decode(self, value: object) -> StrEnum:
        member = self.members.get(value) if type(value) is str else None
        if member is None:
            shown = repr(value)[:40] if isinstance(value, str | int | float) else _kind(value)
            raise _Invalid(f"{shown} is not one of {', '.join(self.members)}")
        return member

    def encode(self, value: object) -> object:
        return self.decode(str(value) if isinstance(value, str) else value).value


class _Optional(_Conv):
    def __init__(self, inner: _Conv) -> None:
        self.inner = inner

    def decode(self, value: object) -> Any:
        return None if value is None else self.inner.decode(value)

    def encode(self, value: object) -> object:
        return None if value is None else self.inner.encode(value)


def _count(n: int, items: Items, what: str) -> None:
    if not items.min_items <= n <= items.max_items:
        raise _Invalid(f"{n} {what}, expected {items.min_items}..{items.max_items}")


class _Tuple(_Conv):
    def __init__(self, inner: _Conv, items: Items) -> None:
        self.inner = inner
        self.items = items

    def decode(self, value: object) -> tuple[Any, ...]:
        if type(value) is not list:
            raise _Invalid(f"expected an array, got {_kind(value)}")
        return tuple(self.each(value, self.inner.decode))

    def encode(self, value: object) -> object:
        if not isinstance(value, list | tuple):
            raise _Invalid(f"expected a tuple, got {_kind(value)}")
        return self.each(value, self.inner.encode)

    def each(self, value: list[Any] | tuple[Any, ...], convert: Callable[[object], Any]) -> list[Any]:
        _count(len(value), self.items, "items")
        i = 0
        try:
            out = []
            for i, item in enumerate(value):  # noqa: B007 (i is read on failure)
                out.append(convert(item))
            return out
        except _Invalid as e:
            e.where.append(f"[{i}]")
            raise


class _Map(_Conv):
    def __init__(self, key: _Str, value: _Conv, items: Items) -> None:
        self.key = key
        self.value = value
        self.items = items

    def decode(self, value: object) -> dict[str, Any]:
        if type(value) is not dict:
            raise _Invalid(f"expected a map, got {_kind(value)}")
        return self.each(value, self.key.decode, self.value.decode)

    def encode(self, value: object) -> object:
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected a map, got {_kind(value)}")
        return self.each(value, self.key.encode, self.value.encode)

    def each(
        self, value: Mapping[Any, Any], key: Callable[[object], Any], convert: Callable[[object], Any]
    ) -> dict[str, Any]:
        _count(len(value), self.items, "entries")
        out: dict[str, Any] = {}
        for k, v in value.items():
            try:
                name = key(k)
            except _Invalid as e:
                e.where.append(" (a key)")
                raise
            try:
                out[name] = convert(v)
            except _Invalid as e:
                e.where.append(f"[{name[:40]!r}]")
                raise
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    conv: _Conv
    required: bool
    factory: Callable[[], object] | None


class StructCodec(_Conv):
    """Converts a frame or nested dataclass from and to its wire map, checking every field."""

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls
        hints = get_type_hints(cls, include_extras=True)
        self.fields: list[_FieldSpec] = []
        for f in dataclasses.fields(cls):
            if f.name in ("v", "type"):
                raise TypeError(f"{cls.__name__}.{f.name}: the envelope owns that key")
            factory = None if f.default_factory is dataclasses.MISSING else f.default_factory
            required = f.default is dataclasses.MISSING and factory is None
            self.fields.append(_FieldSpec(f.name, _converter(hints[f.name]), required, factory))
        self.decoders = [(f.name, f.conv.decode, f.required, f.factory) for f in self.fields]

    def load(self, value: object, path: str) -> Any:
        """The dataclass in wire map `value`; ProtocolError naming the field (`path.field`) if not."""
        try:
            return self.decode(value)
        except _Invalid as e:
            raise _protocol_error(path, e) from None

    def dump(self, value: object, path: str) -> dict[str, object]:
        """The wire map of dataclass `value`; ProtocolError naming the field if it breaks a rule."""
        try:
            return self.encode(value)
        except _Invalid as e:
            raise _protocol_error(path, e) from None

    def decode(self, value: object) -> Any:
        if type(value) is not dict:
            raise _Invalid(f"expected a map, got {_kind(value)}")
        kwargs: dict[str, object] = {}
        name = ""
        try:
            for name, decode, required, factory in self.decoders:
                item = value.get(name, _ABSENT)
                if item is not _ABSENT:
                    kwargs[name] = decode(item)
                elif factory is not None:
                    kwargs[name] = factory()
                elif required:
                    raise _Invalid("missing")
                # else: the dataclass default applies
        except _Invalid as e:
            e.where.append(f".{name}")
            raise
        return self.cls(**kwargs)

    def encode(self, value: object) -> dict[str, object]:
        if not isinstance(value, self.cls):
            raise _Invalid(f"expected {self.cls.__name__}, got {_kind(value)}")
        out: dict[str, object] = {}
        for spec in self.fields:
            try:
                out[spec.name] = spec.conv.encode(getattr(value, spec.name))
            except _Invalid as e:
                e.where.append(f".{spec.name}")
                raise
        return out


_ABSENT = object()


def _protocol_error(path: str, e: _Invalid) -> ProtocolError:
    return ProtocolError(f"{path}{''.join(reversed(e.where))}: {e.problem}")


_CODECS: dict[type[Any], StructCodec] = {}


def _struct_codec(cls: type[Any]) -> StructCodec:
    """The converter of a frame or nested dataclass, compiled once from its annotations."""
    conv = _CODECS.get(cls)
    if conv is None:
        conv = _CODECS[cls] = StructCodec(cls)
    return conv


def _converter(hint: Any) -> _Conv:
    meta: tuple[Any, ...] = ()
    if get_origin(hint) is Annotated:
        hint, *rest = get_args(hint)
        meta = tuple(rest)
    origin = get_origin(hint)
    args = get_args(hint)

    def need(kind: type[Any]) -> Any:
        found = [m for m in meta if isinstance(m, kind)]
        if len(found) != 1:
            raise TypeError(f"{hint!r} needs exactly one {kind.__name__}(...) limit")
        return found[0]

    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"only `X | None` unions are supported, not {hint!r}")
        return _Optional(_converter(inner[0]))
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"only tuple[X, ...] is supported, not {hint!r}")
        return _Tuple(_converter(args[0]), need(Items))
    if origin is Mapping:
        key = _converter(args[0])
        if not isinstance(key, _Str):
            raise TypeError(f"map keys must be strings: {hint!r}")
        return _Map(key, _converter(args[1]), need(Items))
    if hint is bool:
        return _Bool()
    if hint is str:
        return _Str(need(Text))
    if hint is int:
        return _Int(need(Range))
    if hint is float:
        return _Float(need(Range))
    if hint is bytes:
        return _Bin()
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return _Enum(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _struct_codec(hint)
    raise TypeError(f"the mesh codec cannot handle {hint!r}")


for _cls in FRAME_TYPES.values():
    _struct_codec(_cls)  # compile at import, so a field type the codec cannot handle fails loudly


# ---------------------------------------------------------------------------------------------
# The state machine


class Role(StrEnum):
    NODE = "node"
    HUB = "hub"

    @property
    def peer(self) -> Role:
        return Role.HUB if self is Role.NODE else Role.NODE


class Phase(StrEnum):
    CONNECTING = "connecting"  # socket open, no hello yet
    HELLO_SENT = "hello-sent"  # the node's hello is on its way or arrived; no welcome yet
    WELCOMED = "welcomed"  # the working phase
    CLOSED = "closed"


_FrameKind = type[Frame]

# Which frames each sender may send in each phase. Everything else is illegal.
_BOTH_WAYS: frozenset[_FrameKind] = frozenset({Ack, Error, Notify})
LEGAL: Mapping[Phase, Mapping[Role, frozenset[_FrameKind]]] = {
    Phase.CONNECTING: {Role.NODE: frozenset({Hello}), Role.HUB: frozenset()},
    Phase.HELLO_SENT: {Role.NODE: frozenset(), Role.HUB: frozenset({Welcome, Error})},
    Phase.WELCOMED: {
        Role.NODE: frozenset({Heartbeat, Status, Log, Result, Tools}) | _BOTH_WAYS,
        Role.HUB: frozenset({Deploy, Stop, Call, Cancel, EndSession}) | _BOTH_WAYS,
    },
    Phase.CLOSED: {Role.NODE: frozenset(), Role.HUB: frozenset()},
}
"""LEGAL[phase][sender]: the frame classes `sender` may send while the connection is in `phase`."""

_NEXT: Mapping[tuple[Phase, _FrameKind], Phase] = {
    (Phase.CONNECTING, Hello): Phase.HELLO_SENT,
    (Phase.HELLO_SENT, Welcome): Phase.WELCOMED,
}


class ConnectionState:
    """The phase of one connection, seen from `role`'s end. Pure: it never does I/O."""

    def __init__(self, role: Role | str) -> None:
        self.role = Role(role)
        self.phase = Phase.CONNECTING

    def __repr__(self) -> str:
        return f"ConnectionState(role={self.role.value!r}, phase={self.phase.value!r})"

    def may_send(self, frame: Frame | type[Frame]) -> bool:
        """Whether this end may send `frame` (an instance or a frame class) now."""
        return _frame_class(frame) in LEGAL[self.phase][self.role]

    def may_receive(self, frame: Frame | type[Frame]) -> bool:
        """Whether the peer may send `frame` now."""
        return _frame_class(frame) in LEGAL[self.phase][self.role.peer]

    def on_send(self, frame: Frame | type[Frame]) -> None:
        """Record that this end sends `frame`; ProtocolError if it may not (a bug on this side)."""
        self._advance(frame, self.role)

    def on_receive(self, frame: Frame | type[Frame]) -> None:
        """Record that `frame` arrived; ProtocolError (close 1002) if the peer may not send it now."""
        self._advance(frame, self.role.peer)

    def close(self) -> None:
        """The connection is over: nothing is legal any more (drop what still arrives)."""
        self.phase = Phase.CLOSED

    @property
    def is_open(self) -> bool:
        """Welcomed: the working phase, in which deploy, status, calls and the rest flow."""
        return self.phase is Phase.WELCOMED

    def _advance(self, frame: Frame | type[Frame], sender: Role) -> None:
        kind = _frame_class(frame)
        if kind not in LEGAL[self.phase][sender]:
            raise ProtocolError(
                f"{kind.TYPE or kind.__name__} from the {sender.value} is not allowed when {self.phase.value}"
            )
        self.phase = _NEXT.get((self.phase, kind), self.phase)


def _frame_class(frame: Frame | type[Frame]) -> type[Frame]:
    return frame if isinstance(frame, type) else type(frame)


# ---------------------------------------------------------------------------------------------
# Reconnecting


DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_CAP = 30.0


def backoff(
    attempt: int,
    base: float = DEFAULT_BACKOFF_BASE,
    cap: float = DEFAULT_BACKOFF_CAP,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0 for the first after a drop).

    Capped exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)),
    so a registry restart does not bring every node back in the same instant. `rand` returns a
    float in [0, 1); pass a seeded one for determinism. Reset `attempt` to 0 once a connection
    has been welcomed.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if not (0 < base < math.inf and 0 <= cap < math.inf):
        raise ValueError(f"need finite base > 0 and cap >= 0, got base={base}, cap={cap}")
    ceiling = cap if attempt >= 64 else min(cap, base * 2.0**attempt)
    fraction = rand()
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"rand() must return a float in [0, 1), got {fraction}")
    return fraction * ceiling
