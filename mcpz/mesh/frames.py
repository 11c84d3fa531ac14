"""The frames of the mesh protocol: typed, frozen dataclasses, one per frame type, and their limits.

A frame's dataclass is its schema: each field's type carries its limits as `Annotated` metadata
(`Text`, `Range`, `Items`), which `mcpz.mesh.protocol` compiles into the checks of `encode` and
`decode`. Declarations only: nothing here does any work. `docs/mesh-protocol.md` is the reference
for every frame and field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, ClassVar, TypeVar

from mcpz.errors import McpzError

VERSION = 1
"""The envelope version this code speaks; a frame with any other `v` is refused (close 1003)."""

MAX_FRAME_SIZE = 4 * 1024 * 1024
"""Default largest encoded frame, in bytes. Set the WebSocket library's `max_size` to the same."""

# WebSocket close codes (RFC 6455 section 7.4, and 4000-4999 for this application).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_REPLACED = 4000
CLOSE_HEARTBEAT_TIMEOUT = 4001
CLOSE_HELLO_TIMEOUT = 4002

# `error.data.reason` of a relayed call's JSON-RPC error, in isolated session mode (SessionPolicy):
SESSION_GONE = "session-gone"  # no agent process serves the call's session any more: initialize again
SESSIONS_EXHAUSTED = "sessions-exhausted"  # every process the replica may run serves another session

MAX_CLOSE_REASON = 123  # bytes of UTF-8: what fits in a WebSocket close frame

# Limits on single fields (sizes of strings are in characters).
MAX_ID = 2**63 - 1
MAX_TEXT = 4096
MAX_REPLICAS = 10_000
MAX_LABELS = 64
MAX_FEATURES = 64
MAX_ARGS = 256
MAX_ARG = 32 * 1024
MAX_ENV = 256
MAX_ENV_VALUE = 32 * 1024
MAX_DEPENDENCIES = 1000
MAX_SIGNATURES = 64
MAX_SIGNATURE = 1024
MAX_NAMESPACE_KEYS = 1024 * 1024
MAX_LOG_LINES = 1000
MAX_LOG_LINE = 64 * 1024


class ProtocolError(McpzError):
    """A frame broke the protocol: undecodable, invalid, unknown, too big, or illegal right now.

    `close_code` and `reason` (at most 123 bytes of UTF-8) are what to close the WebSocket with;
    `message` keeps the whole story for the log.
    """

    def __init__(
        self, message: str, *, close_code: int = CLOSE_PROTOCOL_ERROR, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.close_code = close_code

    @property
    def reason(self) -> str:
        return truncate_reason(self.message)


def truncate_reason(text: str) -> str:
    """`text` cut to what a WebSocket close frame can carry, on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_CLOSE_REASON:
        return text
    return data[: MAX_CLOSE_REASON - 3].decode("utf-8", "ignore") + "..."


class ReplicaStatus(StrEnum):
    PENDING = "pending"
    PULLING = "pulling"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"


class LogStream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


class ErrorCode(StrEnum):
    """The codes of error frames this version sends. On the wire `code` is any lower-case word, so a
    newer peer may send codes not listed here: treat an unknown one like `invalid`."""

    INVALID = "invalid"  # well-formed, but cannot be carried out as asked
    STALE_EPOCH = "stale-epoch"  # older than the epoch the receiver holds for that replica
    UNKNOWN_REPLICA = "unknown-replica"
    NO_CAPACITY = "no-capacity"
    FETCH_FAILED = "fetch-failed"  # the release's objects could not be fetched
    VERIFY_FAILED = "verify-failed"  # commit id, signature or checkout paths did not check out
    TOOLS_CHANGED = "tools-changed"  # a replica's tools/list differs from the tools signed with the release
    INTERNAL = "internal"


# ---------------------------------------------------------------------------------------------
# Field constraints, attached to types with Annotated


@dataclass(frozen=True, slots=True)
class Text:
    """A string of at most `max_len` characters, all of it matching `pattern` when one is given."""

    max_len: int
    pattern: str | None = None


@dataclass(frozen=True, slots=True)
class Range:
    """An int or float field's bounds, both included."""

    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Items:
    """How many items a list, or entries a map, may hold."""

    max_items: int
    min_items: int = 0


_VISIBLE = r"[\x21-\x7e]+"
_PRINTABLE = r"[^\x00-\x1f\x7f]+"

FrameId = Annotated[int, Range(1, MAX_ID)]
Epoch = Annotated[int, Range(1, MAX_ID)]
CallId = Annotated[int, Range(1, MAX_ID)]
Ident = Annotated[str, Text(128, r"[A-Za-z0-9][A-Za-z0-9._-]*")]  # safe as one path component
SessionId = Annotated[str, Text(256, _VISIBLE)]
DeploymentName = Annotated[str, Text(256, _VISIBLE)]
_NAME_PART = r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?"
AgentName = Annotated[str, Text(129, rf"{_NAME_PART}/{_NAME_PART}")]  # as mcpz.names, by one regex
VersionText = Annotated[str, Text(128, _VISIBLE)]
CommitId = Annotated[str, Text(64, r"[0-9a-f]{40}(?:[0-9a-f]{24})?")]
Message = Annotated[str, Text(MAX_TEXT)]
Seconds = Annotated[float, Range(0, 86_400)]
Bytes = Annotated[int, Range(0, MAX_ID)]
Payload = bytes  # the UTF-8 JSON text of one JSON-RPC message; bounded by the frame size
Features = Annotated[tuple[Annotated[str, Text(64, r"[a-z0-9][a-z0-9._-]*")], ...], Items(MAX_FEATURES)]


# ---------------------------------------------------------------------------------------------
# Structures nested in frames


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplicaReport:
    """One replica a node runs, as it reports it in hello and heartbeat."""

    deployment: DeploymentName
    replica_id: Ident
    epoch: Epoch
    commit: CommitId
    status: ReplicaStatus


@dataclass(frozen=True, kw_only=True, slots=True)
class ResourceLimits:
    """Limits a node applies to a replica's process; None means no limit."""

    memory_bytes: Annotated[int, Range(1, MAX_ID)] | None = None
    open_files: Annotated[int, Range(1, 2**31 - 1)] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionPolicy:
    """How a replica maps the gateway's client sessions to agent processes: `shared` (one warm process
    for every session) or `isolated` (one process per session, at most `max_processes` at once, each
    ended after `idle` seconds without a call)."""

    mode: Annotated[str, Text(16, r"shared|isolated")] = "shared"
    max_processes: Annotated[int, Range(1, 100_000)] = 16
    idle: Annotated[float, Range(1, 86_400)] = 300.0


@dataclass(frozen=True, kw_only=True, slots=True)
class LockedDependency:
    name: AgentName
    version: VersionText
    commit: CommitId


@dataclass(frozen=True, kw_only=True, slots=True)
class ReleaseSignature:
    """A signature the registry keeps for the release: who it recovers to, and the signature."""

    signer: Annotated[str, Text(42, r"0x[0-9a-fA-F]{40}")]
    signature: Annotated[str, Text(MAX_SIGNATURE, _VISIBLE)]


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True, kw_only=True, slots=True)
class Frame:
    """Base of every frame. `id` is unique per sender and connection (a counter from 1 will do)."""

    TYPE: ClassVar[str] = ""
    id: FrameId


FRAME_TYPES: dict[str, type[Frame]] = {}
"""Every frame class by its wire `type`."""

_F = TypeVar("_F", bound=type[Frame])


def _frame(cls: _F) -> _F:
    FRAME_TYPES[cls.TYPE] = cls
    return cls


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Hello(Frame):
    """node -> hub, first frame on a connection: who I am and what I already run."""

    TYPE: ClassVar[str] = "hello"
    node_name: Annotated[str, Text(253, _PRINTABLE)]
    node_id: Ident | None = None
    labels: Annotated[
        Mapping[Annotated[str, Text(253, r"[A-Za-z0-9][A-Za-z0-9._/-]*")], Annotated[str, Text(253)]],
        Items(MAX_LABELS),
    ] = field(default_factory=dict)
    capacity: Annotated[int, Range(0, 1_000_000)]
    replicas: Annotated[tuple[ReplicaReport, ...], Items(MAX_REPLICAS)] = ()
    software_version: VersionText
    features: Features = ()
    # Opted in to run any account's deployments, not only those of its owner's namespaces.
    shared: bool = False


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Welcome(Frame):
    """hub -> node, answer to hello: the node's id and how often to beat."""

    TYPE: ClassVar[str] = "welcome"
    node_id: Ident
    heartbeat_interval: Annotated[float, Range(0.001, 3600)]
    grace: Annotated[float, Range(0.001, 86_400)]
    server_time: Annotated[float, Range(0, 1e11)]
    features: Features = ()


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Heartbeat(Frame):
    """node -> hub, every `heartbeat_interval`: resource figures and every replica's state."""

    TYPE: ClassVar[str] = "heartbeat"
    cpu_percent: Annotated[float, Range(0, 1e6)]
    memory_used: Bytes
    memory_total: Bytes
    load: Annotated[float, Range(0, 1e9)]
    replicas: Annotated[tuple[ReplicaReport, ...], Items(MAX_REPLICAS)] = ()


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Deploy(Frame):
    """hub -> node: run this release as this replica, at this epoch."""

    TYPE: ClassVar[str] = "deploy"
    deployment: DeploymentName
    replica_id: Ident
    epoch: Epoch
    agent: AgentName
    version: VersionText
    commit: CommitId
    registry_url: Annotated[str, Text(2048, r"https?://[\x21-\x7e]+")]
    command: Annotated[tuple[Annotated[str, Text(MAX_ARG, r"[^\x00]+")], ...], Items(MAX_ARGS, 1)]
    env: Annotated[
        Mapping[Annotated[str, Text(1024, r"[^=\x00]+")], Annotated[str, Text(MAX_ENV_VALUE, r"[^\x00]*")]],
        Items(MAX_ENV),
    ] = field(default_factory=dict)
    limits: ResourceLimits = ResourceLimits()
    dependencies: Annotated[tuple[LockedDependency, ...], Items(MAX_DEPENDENCIES)] = ()
    signatures: Annotated[tuple[ReleaseSignature, ...], Items(MAX_SIGNATURES)] = ()
    namespace_keys: Annotated[str, Text(MAX_NAMESPACE_KEYS)] = ""  # GET /v1/namespaces/{ns}/keys's JSON
    # The deployer's signed statement (mcpz.keys.signing.DeploymentStatement) of the revision this runs,
    # and the signatures over it (the same shape as a release's); "" and () when unsigned.
    deployment_statement: Annotated[str, Text(MAX_TEXT, r"[\n -~]*")] = ""
    deployment_signatures: Annotated[tuple[ReleaseSignature, ...], Items(MAX_SIGNATURES)] = ()
    # The digest of the tool definitions signed with the release (the `tools` line of its signed
    # statement, which the node checks it against), "" when none were signed. A replica whose
    # `tools/list` has another digest fails (`tools-changed`), unless the deployment statement
    # allows tool drift.
    tools_digest: Annotated[str, Text(71, r"(?:sha256:[0-9a-f]{64})?")] = ""
    # The release has no tool definitions recorded yet: send the first healthy `tools/list` (Tools).
    report_tools: bool = False
    # The manifest's `[run] sessions`: shared (the default, what older nodes do) or isolated.
    sessions: SessionPolicy = SessionPolicy()


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Stop(Frame):
    """hub -> node: stop this replica (SIGTERM, then SIGKILL after `grace` seconds)."""

    TYPE: ClassVar[str] = "stop"
    deployment: DeploymentName
    replica_id: Ident
    epoch: Epoch
    grace: Seconds
    reason: Message = ""


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Status(Frame):
    """node -> hub: a replica changed status."""

    TYPE: ClassVar[str] = "status"
    replica_id: Ident
    epoch: Epoch
    status: ReplicaStatus
    detail: Message = ""
    exit_code: Annotated[int, Range(-(2**31), 2**31 - 1)] | None = None


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Tools(Frame):
    """node -> hub, when a deploy asked (`report_tools`): the tools a replica listed at its first
    healthy start, as the UTF-8 JSON array of its `tools/list` entries. Observed, never signed."""

    TYPE: ClassVar[str] = "tools"
    replica_id: Ident
    epoch: Epoch
    payload: Payload


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Log(Frame):
    """node -> hub: lines a replica wrote, oldest first; `timestamp` is when the first was read."""

    TYPE: ClassVar[str] = "log"
    replica_id: Ident
    epoch: Epoch
    stream: LogStream
    lines: Annotated[tuple[Annotated[str, Text(MAX_LOG_LINE)], ...], Items(MAX_LOG_LINES, 1)]
    timestamp: Annotated[float, Range(0, 1e11)]


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Ack(Frame):
    """either way: the frame `ref` was accepted (deploy and stop are always acked)."""

    TYPE: ClassVar[str] = "ack"
    ref: FrameId


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Error(Frame):
    """either way: a frame (`ref`, when there is one) could not be carried out. Not fatal."""

    TYPE: ClassVar[str] = "error"
    code: Annotated[str, Text(64, r"[a-z0-9][a-z0-9-]*")]
    message: Message
    ref: FrameId | None = None


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Call(Frame):
    """hub -> node, for the gateway: deliver one JSON-RPC message to a replica, expect a result."""

    TYPE: ClassVar[str] = "call"
    call_id: CallId
    replica_id: Ident
    epoch: Epoch
    session_id: SessionId | None = None
    payload: Payload


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Result(Frame):
    """node -> hub: the JSON-RPC response to call `call_id` (an error response included)."""

    TYPE: ClassVar[str] = "result"
    call_id: CallId
    payload: Payload


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Cancel(Frame):
    """hub -> node: the client gave up on call `call_id`; no result is expected any more."""

    TYPE: ClassVar[str] = "cancel"
    call_id: CallId
    reason: Message = ""


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class Notify(Frame):
    """either way: a JSON-RPC message of a session that is no call's answer (notifications, and
    server-to-client requests with their responses). From a node, `call_id` names the call a
    message belongs to (progress of that call); without it, the message concerns every session
    of the replica (a list changed)."""

    TYPE: ClassVar[str] = "notify"
    session_id: SessionId | None = None
    replica_id: Ident
    epoch: Epoch
    payload: Payload
    call_id: CallId | None = None


@_frame
@dataclass(frozen=True, kw_only=True, slots=True)
class EndSession(Frame):
    """hub -> node, feature `sessions`: the client's session ended (DELETE, idle, evicted); the
    replica ends the agent process it runs for that session, if any. Never answered."""

    TYPE: ClassVar[str] = "end_session"
    replica_id: Ident
    epoch: Epoch
    session_id: SessionId
