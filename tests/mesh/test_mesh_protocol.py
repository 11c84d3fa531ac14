"""The mesh wire protocol: frames round-trip, the decoder survives anything, the state machine and
the backoff keep their promises. Pure: no sockets."""

from __future__ import annotations

import dataclasses
import math
import random
import string
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpz.mesh import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    FRAME_TYPES,
    LEGAL,
    MAX_FRAME_SIZE,
    VERSION,
    Ack,
    Call,
    Cancel,
    ConnectionState,
    Deploy,
    EndSession,
    Error,
    Frame,
    Heartbeat,
    Hello,
    LockedDependency,
    Log,
    LogStream,
    Notify,
    Phase,
    ProtocolError,
    ReplicaReport,
    ReplicaStatus,
    ResourceLimits,
    Result,
    Role,
    SessionPolicy,
    Status,
    Stop,
    Tools,
    Welcome,
    backoff,
    decode,
    encode,
    truncate_reason,
)

# Hypothesis may take its time on a loaded CI machine; correctness is what these tests are about.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# Strategies: valid values of every field, written from the documented rules (not from the code)

ALNUM = string.ascii_letters + string.digits


def _word(first: str, rest: str, max_size: int) -> st.SearchStrategy[str]:
    """A string of one character from `first`, then up to `max_size` from `rest` (faster than from_regex)."""
    return st.builds(lambda a, b: a + b, st.sampled_from(first), st.text(alphabet=rest, max_size=max_size))


ids = st.integers(1, 2**63 - 1)
idents = _word(ALNUM, ALNUM + "._-", 40)
visible = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation, min_size=1, max_size=40)
printable = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="".join(map(chr, range(32))) + "\x7f"),
    min_size=1,
    max_size=40,
)
any_text = st.text(max_size=60)
commits = st.sampled_from([20, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(bytes.hex)
_parts = _word(
    string.ascii_lowercase + string.digits, string.ascii_lowercase + string.digits + "-", 10
).filter(lambda part: not part.endswith("-"))
agent_names = st.builds(lambda a, b: f"{a}/{b}", _parts, _parts)
statuses = st.sampled_from(ReplicaStatus)
payloads = st.binary(max_size=300)
seconds = st.floats(0.001, 3600, allow_nan=False)
timestamps = st.floats(0, 4e9, allow_nan=False)
no_nul = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


replica_reports = st.builds(
    ReplicaReport,
    deployment=visible,
    replica_id=idents,
    epoch=ids,
    commit=commits,
    status=statuses,
)
features = st.lists(_word(string.ascii_lowercase, string.ascii_lowercase + "._-", 20), max_size=4).map(tuple)

STRATEGIES: dict[str, st.SearchStrategy[Frame]] = {
    "hello": st.builds(
        Hello,
        id=ids,
        node_name=printable,
        node_id=_maybe(idents),
        labels=st.dictionaries(_word(ALNUM, ALNUM + "._/-", 30), st.text(max_size=30), max_size=5),
        capacity=st.integers(0, 1_000_000),
        replicas=st.lists(replica_reports, max_size=5).map(tuple),
        software_version=visible,
        features=features,
        shared=st.booleans(),
    ),
    "welcome": st.builds(
        Welcome,
        id=ids,
        node_id=idents,
        heartbeat_interval=seconds,
        grace=seconds,
        server_time=timestamps,
        features=features,
    ),
    "heartbeat": st.builds(
        Heartbeat,
        id=ids,
        cpu_percent=st.floats(0, 6400, allow_nan=False),
        memory_used=st.integers(0, 2**63 - 1),
        memory_total=st.integers(0, 2**63 - 1),
        load=st.floats(0, 512, allow_nan=False) | st.integers(0, 512),
        replicas=st.lists(replica_reports, max_size=5).map(tuple),
    ),
    "deploy": st.builds(
        Deploy,
        id=ids,
        deployment=visible,
        replica_id=idents,
        epoch=ids,
        agent=agent_names,
        version=visible,
        commit=commits,
        registry_url=st.sampled_from(["http", "https"]).flatmap(
            lambda scheme: visible.map(lambda rest: f"{scheme}://{rest}")
        ),
        command=st.lists(no_nul.filter(bool), min_size=1, max_size=4).map(tuple),
        env=st.dictionaries(
            st.text(alphabet=st.characters(codec="utf-8", exclude_characters="=\x00"), min_size=1),
            no_nul,
            max_size=4,
        ),
        limits=st.builds(
            ResourceLimits,
            memory_bytes=_maybe(st.integers(1, 2**40)),
            open_files=_maybe(st.integers(1, 65536)),
        ),
        dependencies=st.lists(
            st.builds(LockedDependency, name=agent_names, version=visible, commit=commits), max_size=3
        ).map(tuple),
        tools_digest=st.just("") | st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
        report_tools=st.booleans(),
        sessions=st.builds(
            SessionPolicy,
            mode=st.sampled_from(["shared", "isolated"]),
            max_processes=st.integers(1, 100_000),
            idle=st.floats(1, 86_400, allow_nan=False),
        ),
    ),
    "stop": st.builds(
        Stop,
        id=ids,
        deployment=visible,
        replica_id=idents,
        epoch=ids,
        grace=st.floats(0, 600, allow_nan=False),
        reason=any_text,
    ),
    "status": st.builds(
        Status,
        id=ids,
        replica_id=idents,
        epoch=ids,
        status=statuses,
        detail=any_text,
        exit_code=_maybe(st.integers(-(2**31), 2**31 - 1)),
    ),
    "log": st.builds(
        Log,
        id=ids,
        replica_id=idents,
        epoch=ids,
        stream=st.sampled_from(LogStream),
        lines=st.lists(any_text, min_size=1, max_size=5).map(tuple),
        timestamp=timestamps,
    ),
    "tools": st.builds(Tools, id=ids, replica_id=idents, epoch=ids, payload=payloads),
    "ack": st.builds(Ack, id=ids, ref=ids),
    "error": st.builds(
        Error,
        id=ids,
        code=_word(string.ascii_lowercase, string.ascii_lowercase + string.digits + "-", 30),
        message=any_text,
        ref=_maybe(ids),
    ),
    "call": st.builds(
        Call, id=ids, call_id=ids, replica_id=idents, epoch=ids, session_id=_maybe(visible), payload=payloads
    ),
    "result": st.builds(Result, id=ids, call_id=ids, payload=payloads),
    "cancel": st.builds(Cancel, id=ids, call_id=ids, reason=any_text),
    "end_session": st.builds(EndSession, id=ids, replica_id=idents, epoch=ids, session_id=visible),
    "notify": st.builds(
        Notify, id=ids, session_id=_maybe(visible), replica_id=idents, epoch=ids, payload=payloads
    ),
}
frames = st.one_of(*STRATEGIES.values())


def test_every_frame_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(FRAME_TYPES)


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@relaxed
@given(data=st.data())
def test_every_frame_round_trips(name: str, data: st.DataObject) -> None:
    frame = data.draw(STRATEGIES[name])
    wire = encode(frame)
    back = decode(wire)
    assert back == frame
    assert type(back) is FRAME_TYPES[name]
    assert encode(back) == wire


def test_the_envelope_is_a_flat_map() -> None:
    frame = Ack(id=7, ref=3)
    assert msgpack.unpackb(encode(frame)) == {"v": VERSION, "type": "ack", "id": 7, "ref": 3}


def test_decoded_values_have_their_declared_types() -> None:
    RUNNING: Any = "running"  # a plain string where the enum is expected
    hello = Hello(
        id=1,
        node_name="n",
        capacity=2,
        software_version="0.1.0",
        replicas=(
            ReplicaReport(deployment="acme/w", replica_id="r1", epoch=1, commit="a" * 40, status=RUNNING),
        ),
    )
    back = decode(encode(hello))
    assert isinstance(back, Hello)
    assert back.replicas[0].status is ReplicaStatus.RUNNING
    assert isinstance(back.replicas, tuple)
    welcome = decode(encode(Welcome(id=2, node_id="n1", heartbeat_interval=5, grace=15, server_time=0)))
    assert isinstance(welcome, Welcome)
    assert type(welcome.heartbeat_interval) is float


def test_unknown_fields_are_ignored_and_absent_optional_fields_take_defaults() -> None:
    wire = {
        "v": 1,
        "type": "hello",
        "id": 1,
        "node_name": "n",
        "capacity": 1,
        "software_version": "1.0",
        "from_the_future": {"nested": [1, 2, {"x": b"y"}]},
    }
    frame = decode(msgpack.packb(wire))
    assert frame == Hello(id=1, node_name="n", capacity=1, software_version="1.0")
    assert isinstance(frame, Hello)
    assert frame.labels == {} and frame.replicas == () and frame.node_id is None
    assert frame.shared is False  # a node from before --shared serves only its owner
    assert decode(encode(dataclasses.replace(frame, shared=True))) == dataclasses.replace(frame, shared=True)


def test_bytearray_and_memoryview_are_accepted() -> None:
    wire = encode(Ack(id=1, ref=1))
    assert decode(bytearray(wire)) == decode(memoryview(wire)) == Ack(id=1, ref=1)


# ---------------------------------------------------------------------------------------------
# The decoder never raises anything but ProtocolError


def _decode_or_refuse(data: Any, max_size: int = MAX_FRAME_SIZE) -> None:
    try:
        frame = decode(data, max_size=max_size)
    except ProtocolError as e:
        assert e.close_code in (CLOSE_PROTOCOL_ERROR, CLOSE_UNSUPPORTED, CLOSE_TOO_BIG)
        assert len(e.reason.encode()) <= 123
    else:
        assert isinstance(frame, Frame)
        assert decode(encode(frame)) == frame  # what decodes also re-encodes


@relaxed
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    _decode_or_refuse(data)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34), st.integers(0, 999_999_999)),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.binary(max_size=4), children, max_size=5)
    ),
    max_leaves=30,
)


@relaxed
@given(msgpack_values)
def test_random_msgpack_objects(value: Any) -> None:
    _decode_or_refuse(msgpack.packb(value, use_bin_type=True))


@relaxed
@given(
    st.sampled_from(sorted(FRAME_TYPES)),
    st.one_of(st.just(VERSION), msgpack_values),
    st.dictionaries(st.text(max_size=12), msgpack_values, max_size=8),
)
def test_random_fields_in_a_real_envelope(name: str, version: Any, fields: dict[str, Any]) -> None:
    _decode_or_refuse(msgpack.packb({"v": version, "type": name, **fields}, use_bin_type=True))


@relaxed
@given(
    st.sampled_from(sorted(FRAME_TYPES)),
    st.sampled_from([*sorted({f.name for t in FRAME_TYPES.values() for f in dataclasses.fields(t)}), "x"]),
    st.lists(st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01"]), min_size=1, max_size=4),
    st.integers(1, 200_000),
)
def test_deeply_nested_fields_are_refused(name: str, field: str, openers: list[bytes], depth: int) -> None:
    """Arrays and maps nested up to 200,000 deep in any field: refused, never a RecursionError."""
    envelope = msgpack.packb({"v": VERSION, "type": name}, use_bin_type=True)
    key = msgpack.packb(field, use_bin_type=True)
    nesting = b"".join(openers[i % len(openers)] for i in range(depth)) + b"\xc0"
    _decode_or_refuse(bytes([envelope[0] + 1]) + envelope[1:] + key + nesting)


@relaxed
@given(frames, st.data())
def test_mutated_valid_frames(frame: Frame, data: st.DataObject) -> None:
    wire = bytearray(encode(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, max(len(wire) - 1, 0)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and wire:
            wire[where] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "insert":
            wire[where:where] = data.draw(st.binary(min_size=1, max_size=9))
        elif action == "delete" and wire:
            del wire[where]
        elif action == "truncate":
            del wire[where:]
    _decode_or_refuse(bytes(wire))


@relaxed
@given(frames, st.data())
def test_frames_with_one_field_replaced(frame: Frame, data: st.DataObject) -> None:
    wire = msgpack.unpackb(encode(frame))
    key = data.draw(st.sampled_from(sorted(wire)))
    if data.draw(st.booleans()):
        wire[key] = data.draw(msgpack_values)
    else:
        del wire[key]
    _decode_or_refuse(msgpack.packb(wire, use_bin_type=True))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x91" * 100_000 + b"\xc0",  # nested far deeper than any frame
        b"\x81\xa1v" + b"\x81\xa1v" * 50_000 + b"\x01",
        b"\xdd\xff\xff\xff\xff",  # an array that claims 4 billion items
        b"\xdf\xff\xff\xff\xff",  # a map that claims 4 billion entries
        b"\xdb\xff\xff\xff\xff",  # a string that claims 4 GiB
        b"\xc6\xff\xff\xff\xff",  # binary that claims 4 GiB
        b"\xcf" + b"\xff" * 8,  # the largest unsigned 64-bit integer
        b"\xd6\xff\x00\x00\x00\x01",  # a timestamp extension
        b"\xc7\x05\x01abcde",  # some other extension
        b"\xa1\xff",  # invalid UTF-8
        b"\x81\x91\x01\x01",  # a map with an array as key
        msgpack.packb({"v": 1, "type": "ack", "id": 1, "ref": 1}) + b"\x00",  # trailing bytes
        msgpack.packb({"v": 1, "type": "ack", "id": 1, "ref": 1})[:-1],  # truncated
        "a text message",
        12345,
    ],
)
def test_hostile_messages_are_refused(data: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


# ---------------------------------------------------------------------------------------------
# Refusals and their close codes


def _refusal(wire: Any, **kwargs: Any) -> ProtocolError:
    data = wire if isinstance(wire, bytes) else msgpack.packb(wire, use_bin_type=True)
    with pytest.raises(ProtocolError) as info:
        decode(data, **kwargs)
    return info.value


ACK = {"v": 1, "type": "ack", "id": 1, "ref": 1}


def test_oversize_frames_are_refused_with_1009() -> None:
    big = encode(Result(id=1, call_id=1, payload=b"x" * 2000))
    assert _refusal(big, max_size=1000).close_code == CLOSE_TOO_BIG
    assert decode(big, max_size=len(big)) == Result(id=1, call_id=1, payload=b"x" * 2000)
    with pytest.raises(ProtocolError) as info:
        encode(Result(id=1, call_id=1, payload=b"x" * 2000), max_size=1000)
    assert info.value.close_code == CLOSE_TOO_BIG


def test_a_container_bomb_is_refused_with_1009() -> None:
    # 64 KiB of empty maps would unpack into about 4 MB of dicts.
    bomb = b"\xdd" + (65536).to_bytes(4, "big") + b"\x80" * 65536
    assert _refusal(bomb).close_code == CLOSE_TOO_BIG


def test_unknown_type_and_version_are_refused_with_1003() -> None:
    assert _refusal({**ACK, "type": "teleport"}).close_code == CLOSE_UNSUPPORTED
    error = _refusal({**ACK, "v": 2})
    assert error.close_code == CLOSE_UNSUPPORTED
    assert "version 2" in error.reason
    assert _refusal(b"\xa4text").close_code == CLOSE_PROTOCOL_ERROR
    with pytest.raises(ProtocolError) as info:
        decode("text")
    assert info.value.close_code == CLOSE_UNSUPPORTED


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"v": None}, "v must be an integer"),
        ({"v": "1"}, "v must be an integer"),
        ({"v": True}, "v must be an integer"),
        ({"type": 3}, "type must be a string"),
        ({"id": 0}, "ack.id"),
        ({"id": True}, "ack.id"),
        ({"id": 2**63}, "ack.id"),
        ({"ref": 1.0}, "ack.ref"),
        ({"ref": "1"}, "ack.ref"),
    ],
)
def test_malformed_envelopes_are_refused_with_1002(change: dict[str, Any], where: str) -> None:
    wire = {k: v for k, v in {**ACK, **change}.items() if v is not None}
    error = _refusal(wire)
    assert error.close_code == CLOSE_PROTOCOL_ERROR
    assert where in error.message


DEPLOY = Deploy(
    id=1,
    deployment="acme/weather",
    replica_id="acme-weather-0",
    epoch=4,
    agent="acme/weather",
    version="0.1.0",
    commit="0" * 40,
    registry_url="https://registry.example/acme/weather.git",
    command=("python", "-m", "weather"),
    env={"LOG_LEVEL": "info"},
    limits=ResourceLimits(memory_bytes=256 * 2**20, open_files=1024),
    dependencies=(LockedDependency(name="acme/geo", version="1.2.0", commit="1" * 64),),
)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("replica_id",), "../escape"),
        (("replica_id",), ".hidden"),
        (("replica_id",), "a/b"),
        (("replica_id",), ""),
        (("epoch",), 0),
        (("epoch",), -1),
        (("epoch",), 2**64 - 1),
        (("agent",), "Acme/Weather"),
        (("agent",), "weather"),
        (("commit",), "0" * 39),
        (("commit",), "G" * 40),
        (("registry_url",), "ext::sh -c touch% /tmp/pwned"),
        (("registry_url",), "file:///etc"),
        (("registry_url",), "https://"),
        (("command",), []),
        (("command",), ["python", "a\x00b"]),
        (("command",), "python -m weather"),
        (("env",), {"A=B": "c"}),
        (("env",), {"A": "b\x00"}),
        (("env",), {"A": 1}),
        (("env",), [["A", "b"]]),
        (("limits", "memory_bytes"), 0),
        (("limits", "open_files"), 2**31),
        (("limits",), None),
        (("dependencies",), [{"name": "acme/geo", "version": "1"}]),
        (("version",), "1 .0"),
    ],
)
def test_invalid_deploy_fields_are_refused(path: tuple[str, ...], value: Any) -> None:
    wire = msgpack.unpackb(encode(DEPLOY))
    target = wire
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    error = _refusal(wire)
    assert error.close_code == CLOSE_PROTOCOL_ERROR
    assert error.message.startswith("deploy." + ".".join(path))


@pytest.mark.parametrize(
    ("frame", "field", "value"),
    [
        (Status(id=1, replica_id="r", epoch=1, status=ReplicaStatus.RUNNING), "status", "runing"),
        (Status(id=1, replica_id="r", epoch=1, status=ReplicaStatus.RUNNING), "status", None),
        (
            Log(id=1, replica_id="r", epoch=1, stream=LogStream.STDOUT, lines=("x",), timestamp=1),
            "stream",
            "stdin",
        ),
        (Log(id=1, replica_id="r", epoch=1, stream=LogStream.STDOUT, lines=("x",), timestamp=1), "lines", []),
        (
            Log(id=1, replica_id="r", epoch=1, stream=LogStream.STDOUT, lines=("x",), timestamp=1),
            "lines",
            [b"x"],
        ),
        (Welcome(id=1, node_id="n", heartbeat_interval=5, grace=15, server_time=1), "grace", math.nan),
        (Welcome(id=1, node_id="n", heartbeat_interval=5, grace=15, server_time=1), "grace", math.inf),
        (Welcome(id=1, node_id="n", heartbeat_interval=5, grace=15, server_time=1), "heartbeat_interval", 0),
        (Welcome(id=1, node_id="n", heartbeat_interval=5, grace=15, server_time=1), "grace", False),
        (Call(id=1, call_id=1, replica_id="r", epoch=1, payload=b"{}"), "payload", "{}"),
        (Call(id=1, call_id=1, replica_id="r", epoch=1, payload=b"{}"), "payload", {"jsonrpc": "2.0"}),
        (Hello(id=1, node_name="n", capacity=1, software_version="1"), "labels", {"k": "v" * 254}),
        (Hello(id=1, node_name="n", capacity=1, software_version="1"), "node_name", "a\nb"),
        (Hello(id=1, node_name="n", capacity=1, software_version="1"), "shared", 1),
        (Hello(id=1, node_name="n", capacity=1, software_version="1"), "shared", "true"),
        (Error(id=1, code="stale-epoch", message="m"), "code", "Stale Epoch"),
    ],
)
def test_invalid_fields_are_refused(frame: Frame, field: str, value: Any) -> None:
    wire = msgpack.unpackb(encode(frame))
    wire[field] = value
    error = _refusal(wire)
    assert error.close_code == CLOSE_PROTOCOL_ERROR
    assert error.message.startswith(f"{frame.TYPE}.{field}")


def test_errors_name_the_nested_field() -> None:
    report = {"deployment": "d", "replica_id": "r", "epoch": 1, "commit": "a" * 40, "status": "lost"}
    wire = {**msgpack.unpackb(encode(Heartbeat(id=1, cpu_percent=1, memory_used=1, memory_total=2, load=0)))}
    wire["replicas"] = [{**report, "status": "running"}, report]
    assert _refusal(wire).message.startswith("heartbeat.replicas[1].status: 'lost' is not one of")
    del wire["replicas"][1]["epoch"]
    assert _refusal(wire).message == "heartbeat.replicas[1].epoch: missing"


def test_close_reasons_fit_a_close_frame() -> None:
    assert truncate_reason("short") == "short"
    long = "é" * 200
    cut = truncate_reason(long)
    assert len(cut.encode()) <= 123 and cut.endswith("...")
    error = ProtocolError("x" * 1000)
    assert len(error.reason.encode()) <= 123 and len(error.message) == 1000


# ---------------------------------------------------------------------------------------------
# Encoding checks the same rules


def test_encode_refuses_what_decode_would_refuse() -> None:
    with pytest.raises(ProtocolError, match=r"deploy\.epoch"):
        encode(dataclasses.replace(DEPLOY, epoch=0))
    with pytest.raises(ProtocolError, match=r"log.lines\[0\]"):
        encode(
            Log(
                id=1,
                replica_id="r",
                epoch=1,
                stream=LogStream.STDERR,
                lines=("x" * (2**16 + 1),),
                timestamp=1,
            )
        )
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode(Log(id=1, replica_id="r", epoch=1, stream=LogStream.STDERR, lines=("\ud800",), timestamp=1))
    with pytest.raises(ProtocolError, match="not a frame type"):
        encode(Frame(id=1))
    with pytest.raises(ProtocolError, match="status"):
        encode(Status(id=1, replica_id="r", epoch=1, status="lost"))  # type: ignore[arg-type]


def test_encode_accepts_plain_values_for_enums_and_sequences() -> None:
    status = Status(id=1, replica_id="r", epoch=1, status="running")  # type: ignore[arg-type]
    assert decode(encode(status)) == Status(id=1, replica_id="r", epoch=1, status=ReplicaStatus.RUNNING)
    log = Log(id=1, replica_id="r", epoch=1, stream=LogStream.STDOUT, lines=["a", "b"], timestamp=2)  # type: ignore[arg-type]
    back = decode(encode(log))
    assert isinstance(back, Log) and back.lines == ("a", "b")


# ---------------------------------------------------------------------------------------------
# The state machine


def _hello() -> Hello:
    return Hello(id=1, node_name="n", capacity=1, software_version="1")


def _welcome() -> Welcome:
    return Welcome(id=1, node_id="n1", heartbeat_interval=5, grace=15, server_time=0)


def test_a_connection_from_both_ends() -> None:
    node, hub = ConnectionState(Role.NODE), ConnectionState("hub")
    assert {node.phase, hub.phase} == {Phase.CONNECTING}
    assert node.may_send(Hello) and not node.may_send(Heartbeat)
    assert not hub.may_send(Welcome) and not hub.may_send(Deploy)

    node.on_send(_hello())
    hub.on_receive(_hello())
    assert {node.phase, hub.phase} == {Phase.HELLO_SENT}
    assert not node.may_send(Heartbeat)
    assert hub.may_send(Welcome) and hub.may_send(Error) and not hub.may_send(Deploy)

    hub.on_send(_welcome())
    node.on_receive(_welcome())
    assert {node.phase, hub.phase} == {Phase.WELCOMED}
    assert node.is_open and hub.is_open

    from_node: list[type[Frame]] = [Heartbeat, Status, Log, Result, Tools, Ack, Error, Notify]
    from_hub: list[type[Frame]] = [Deploy, Stop, Call, Cancel, EndSession, Ack, Error, Notify]
    for cls in FRAME_TYPES.values():
        assert node.may_send(cls) == hub.may_receive(cls) == (cls in from_node)
        assert hub.may_send(cls) == node.may_receive(cls) == (cls in from_hub)

    node.close()
    assert node.phase is Phase.CLOSED
    assert not any(node.may_send(c) or node.may_receive(c) for c in FRAME_TYPES.values())


@pytest.mark.parametrize(
    ("role", "before", "frame", "receiving"),
    [
        (Role.HUB, [], Heartbeat, True),  # a heartbeat before hello
        (Role.HUB, [], Welcome, True),  # the node cannot welcome
        (Role.HUB, ["hello"], Hello, True),  # a second hello
        (Role.HUB, ["hello"], Status, True),  # status before welcome
        (Role.HUB, ["hello", "welcome"], Hello, True),  # hello again, once welcomed
        (Role.HUB, ["hello", "welcome"], Deploy, True),  # deploy flows the other way
        (Role.HUB, ["hello", "welcome"], Call, True),
        (Role.NODE, [], Welcome, True),  # welcome before hello
        (Role.NODE, ["hello"], Deploy, True),  # deploy before welcome
        (Role.NODE, ["hello", "welcome"], Welcome, True),
        (Role.NODE, ["hello", "welcome"], Heartbeat, True),  # the hub does not beat
        (Role.NODE, ["hello", "welcome"], Result, True),
        (Role.NODE, [], Heartbeat, False),  # this end's own mistakes are caught too
        (Role.NODE, ["hello"], Hello, False),
        (Role.HUB, ["hello"], Deploy, False),
    ],
)
def test_illegal_frames_raise_protocol_error(
    role: Role, before: list[str], frame: type[Frame], receiving: bool
) -> None:
    state = ConnectionState(role)
    for name in before:
        step = {"hello": _hello(), "welcome": _welcome()}[name]
        sender = Role.NODE if name == "hello" else Role.HUB
        (state.on_send if sender is role else state.on_receive)(step)
    check: Callable[[type[Frame]], None] = state.on_receive if receiving else state.on_send
    phase = state.phase
    with pytest.raises(ProtocolError) as info:
        check(frame)
    assert info.value.close_code == CLOSE_PROTOCOL_ERROR
    assert state.phase is phase  # an illegal frame changes nothing


@relaxed
@given(st.lists(st.tuples(st.sampled_from(Role), st.sampled_from(sorted(FRAME_TYPES))), max_size=30))
def test_both_ends_always_agree(steps: list[tuple[Role, str]]) -> None:
    ends = {Role.NODE: ConnectionState(Role.NODE), Role.HUB: ConnectionState(Role.HUB)}
    for sender, name in steps:
        frame_class = FRAME_TYPES[name]
        mine, theirs = ends[sender], ends[sender.peer]
        assert mine.may_send(frame_class) == theirs.may_receive(frame_class)
        if mine.may_send(frame_class):
            mine.on_send(frame_class)
            theirs.on_receive(frame_class)
        assert mine.phase is theirs.phase


def test_every_frame_is_legal_somewhere() -> None:
    legal = {cls for by_role in LEGAL.values() for classes in by_role.values() for cls in classes}
    assert legal == set(FRAME_TYPES.values())


# ---------------------------------------------------------------------------------------------
# Reconnect backoff


@given(
    attempt=st.integers(0, 10_000),
    base=st.floats(0.001, 10),
    cap=st.floats(0, 600),
    fraction=st.floats(0, 1, exclude_max=True),
)
def test_backoff_stays_within_bounds(attempt: int, base: float, cap: float, fraction: float) -> None:
    delay = backoff(attempt, base, cap, lambda: fraction)
    assert 0 <= delay <= min(cap, base * 2.0 ** min(attempt, 1000))


def test_backoff_grows_then_caps() -> None:
    top = [backoff(n, 0.5, 30, lambda: 1.0) for n in range(10)]
    assert top == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert backoff(0, 0.5, 30, lambda: 0.0) == 0
    assert backoff(10**9, 0.5, 30, lambda: 0.5) == 15
    rng = random.Random(7)
    delays = [backoff(5, 1, 60, rng.random) for _ in range(1000)]
    assert 0 <= min(delays) < 2 and 30 < max(delays) <= 32  # full jitter spreads over [0, 32)


@pytest.mark.parametrize(
    "args",
    [(-1, 0.5, 30), (0, 0, 30), (0, -1, 30), (0, 0.5, -1), (0, math.nan, 30), (0, 0.5, math.inf)],
)
def test_backoff_refuses_nonsense(args: tuple[int, float, float]) -> None:
    with pytest.raises(ValueError):
        backoff(*args)
    with pytest.raises(ValueError):
        backoff(0, 0.5, 30, lambda: 1.5)
