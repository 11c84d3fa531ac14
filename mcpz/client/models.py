"""What the registry's JSON API answers, as typed values: frozen dataclasses with slots.

`mcpz.client.registry.RegistryClient` returns these, never bare dictionaries. Each is built by
`from_json`, which checks the type of every field it knows and raises `RemoteError` for an answer
of the wrong shape (a registry of another version, or not a registry at all); keys it does not know
are ignored, so a newer registry that adds fields still works. `to_dict()` gives back the JSON
exactly as the registry served it (what `--json` prints), timestamps as their ISO 8601 text.

    info = await client.agent("acme/weather")
    print(info.latest, [r.version for r in info.versions if not r.yanked])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, TypeVar, Union

from mcpz.errors import RemoteError

__all__ = [
    "AgentInfo",
    "ApiKey",
    "Challenge",
    "Deployment",
    "Limits",
    "LogLine",
    "Member",
    "NamespaceInfo",
    "NewApiKey",
    "Node",
    "PreparedChange",
    "Release",
    "Removal",
    "Replica",
    "Revision",
    "Rotation",
    "RotationResult",
    "SessionToken",
    "Signature",
    "Usage",
    "UsageEvent",
    "UsageRow",
    "WhoAmI",
    "from_json",
]

T = TypeVar("T")


class Payload:
    """The base of every answer: `from_json` builds one, `to_dict` gives its JSON back."""

    __slots__ = ()
    raw: Mapping[str, Any]
    WHAT: ClassVar[str] = "answer"

    @classmethod
    def from_json(cls: type[T], data: Any) -> T:
        return from_json(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object as the registry served it."""
        return dict(self.raw)


def raw_field() -> Any:
    """A payload's `raw` field: the JSON as served, left out of equality and repr."""
    return dataclasses.field(default_factory=dict, repr=False, compare=False)


def from_json(cls: type[T], data: Any, where: str = "") -> T:
    """`data` (parsed JSON) as a `cls`, every known field checked; RemoteError if it does not fit."""
    where = where or getattr(cls, "WHAT", cls.__name__)
    return typing.cast(T, _convert(cls, data, where))


def _bad(where: str, expected: str, value: Any) -> RemoteError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return RemoteError(
        f"the registry answered an unexpected {where}: expected {expected}, got {shown}",
        hint="is --registry / MCPZ_REGISTRY a registry of this mcpz version? (`mcpz --version`)",
    )


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, where)
        raise TypeError(f"unsupported union {tp}")  # pragma: no cover - a defect in this module
    if origin is list:
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        _key, item = typing.get_args(tp)
        return {str(k): _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        hints = _hints(tp)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(tp):
            if f.name == "raw":
                kwargs["raw"] = value
            elif f.name in value:
                kwargs[f.name] = _convert(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _bad(where, f'a field "{f.name}"', value)
        return tp(**kwargs)
    if tp is datetime:
        if not isinstance(value, str):
            raise _bad(where, "a time", value)
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise _bad(where, "an ISO 8601 time", value) from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, "a number", value)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, "an integer", value)
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise _bad(where, "a string" if tp is str else "true or false", value)
        return value
    raise TypeError(f"unsupported field type {tp}")  # pragma: no cover - a defect in this module


# --- releases and agents (GET /v1/agents/...) ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Signature(Payload):
    """One signature kept on a release."""

    signer: str
    signature: str
    signed_at: datetime
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Release(Payload):
    """A published version: its commit, dependencies, yank state and signatures."""

    WHAT: ClassVar[str] = "release"
    name: str
    version: str
    commit: str
    yanked: bool
    dependencies: dict[str, str]
    published_at: datetime
    publisher: str
    yank_reason: str = ""
    manifest_sha256: str = ""
    signature: str | None = None
    signer: str | None = None
    signatures: list[Signature] = dataclasses.field(default_factory=list)
    tools_digest: str | None = None
    """The digest of the tools signed with it (`ReleaseTools`); None when none were pinned."""
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseTools(Payload):
    """The tool definitions pinned to a release: signed at publish, or `observed` from a replica."""

    WHAT: ClassVar[str] = "release's tools"
    name: str
    version: str
    tools: list[dict[str, Any]]
    digest: str
    observed: bool
    recorded_at: datetime | None = None
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class AgentInfo(Payload):
    """An agent and every published version, oldest first; `latest` is the newest final release."""

    WHAT: ClassVar[str] = "agent"
    name: str
    description: str
    latest: str | None
    versions: list[Release]
    raw: Mapping[str, Any] = raw_field()

    def release(self, version: str | None = None) -> Release | None:
        """The release `version` (default: `latest`, else the newest one), or None."""
        wanted = version if version is not None else self.latest
        for release in self.versions:
            if release.version == wanted:
                return release
        return self.versions[-1] if version is None and self.versions else None


# --- accounts, keys, sign-in, namespaces ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class WhoAmI(Payload):
    WHAT: ClassVar[str] = "whoami"
    account: str
    namespaces: list[str]
    scopes: list[str]
    expires_at: datetime | None
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey(Payload):
    """An API key as listed: never its secret."""

    WHAT: ClassVar[str] = "API key"
    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class NewApiKey(Payload):
    """A key just created: `token` is its secret, shown this once."""

    WHAT: ClassVar[str] = "new API key"
    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    token: str
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge(Payload):
    """A sign-in nonce (POST /v1/auth/nonce) and what the EIP-4361 message must name."""

    WHAT: ClassVar[str] = "sign-in nonce"
    nonce: str
    domain: str
    uri: str
    chain_id: int
    expires_at: datetime
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class SessionToken(Payload):
    """A wallet sign-in's answer: `token` is the session token."""

    WHAT: ClassVar[str] = "sign-in"
    token: str
    account: str
    address: str
    namespaces: list[str]
    scopes: list[str]
    expires_at: datetime | None
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Member(Payload):
    account: str
    address: str | None
    role: str
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class NamespaceInfo(Payload):
    """A namespace: its owner first in `members`, and how often the owner key was rotated."""

    WHAT: ClassVar[str] = "namespace"
    name: str
    owner: str
    owner_address: str | None
    members: list[Member]
    key_sequence: int
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Rotation(Payload):
    namespace: str
    old_address: str
    new_address: str
    sequence: int
    statement: str
    signature: str
    created_at: datetime
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class RotationResult(Payload):
    WHAT: ClassVar[str] = "key rotation"
    account: str
    address: str
    rotations: list[Rotation]
    raw: Mapping[str, Any] = raw_field()


# --- deployments and nodes (/v1/deployments, /v1/nodes) -----------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Limits(Payload):
    memory_bytes: int | None = None
    open_files: int | None = None
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Replica(Payload):
    id: str
    revision: int
    version: str | None
    current: bool
    node: str | None
    node_name: str | None
    epoch: int | None
    status: str
    stopping: bool
    detail: str
    exit_code: int | None = None
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Revision(Payload):
    revision: int
    version: str
    commit: str
    created_at: datetime
    current: bool
    signers: list[str] = dataclasses.field(default_factory=list)
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Deployment(Payload):
    """A deployment: desired state (release, replicas, selector, limits) and how far it got.

    `state` is "progressing", "ready", "failed" or "deleting"; `instances` and `revisions` are
    empty in the list of all deployments.
    """

    WHAT: ClassVar[str] = "deployment"
    name: str
    namespace: str
    agent: str
    version: str
    commit: str
    revision: int
    replicas: int
    selector: dict[str, str]
    limits: Limits
    state: str
    ready: int
    updated: int
    old: int
    stopping: int
    by_status: dict[str, int]
    created_at: datetime
    updated_at: datetime
    statement: str = ""
    signers: list[str] = dataclasses.field(default_factory=list)
    allow_tool_drift: bool = False
    """Replicas may answer other tools than those signed with the release."""
    reason: str = ""
    """Why it is not ready, when the registry knows (no eligible node, ...)."""
    stuck: bool = False
    """Nodes are up, but none may take a replica."""
    restarted: int = 0
    """Replicas a restart tried again (the answer of `restart_deployment`)."""
    rollback_to: int | None = None
    """The revision `rollback` returns to by default (None: there is none)."""
    instances: list[Replica] = dataclasses.field(default_factory=list)
    revisions: list[Revision] = dataclasses.field(default_factory=list)
    raw: Mapping[str, Any] = raw_field()

    @property
    def settled(self) -> bool:
        """Whether `--wait` would stop here: every replica running, or one failed."""
        return self.state in ("ready", "failed")


@dataclasses.dataclass(frozen=True, slots=True)
class Removal(Payload):
    """What removing a deployment answers: "deleted", or "deleting" while its replicas stop."""

    WHAT: ClassVar[str] = "removal"
    name: str
    state: str
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedChange(Payload):
    """A deployment change the registry would make (`prepare`): the statement to sign."""

    WHAT: ClassVar[str] = "prepared change"
    deployment: str
    created: bool
    revision: int
    new_revision: bool
    statement: str | None
    signers: list[str] = dataclasses.field(default_factory=list)
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Node(Payload):
    """A mesh node you may deploy to: owner, state, labels, replicas and capacity, load."""

    WHAT: ClassVar[str] = "node"
    id: str
    name: str
    state: str
    connected: bool
    labels: dict[str, str]
    capacity: int
    replicas: int
    owner: str = ""
    shared: bool = False
    free: int = 0
    software_version: str = ""
    cpu_percent: float = 0.0
    memory_used: int = 0
    memory_total: int = 0
    load: float = 0.0
    stale_frames: int = 0
    created_at: datetime | None = None
    last_seen_at: datetime | None = None
    lost_at: datetime | None = None
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class LogLine(Payload):
    """One line a replica wrote; `seq` orders the lines of a deployment."""

    WHAT: ClassVar[str] = "log line"
    seq: int
    ts: float
    replica: str
    stream: str
    line: str
    raw: Mapping[str, Any] = raw_field()


# --- usage (GET /v1/usage) -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class UsageRow(Payload):
    """Calls of one tool of one agent, summed."""

    agent: str
    tool: str
    calls: int
    ok: int
    errors: int
    duration_ms_total: float
    bytes_in: int
    bytes_out: int
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class UsageEvent(Payload):
    """One call through the gateway."""

    id: str
    account: str
    agent: str
    version: str
    tool: str
    started_us: int
    duration_us: int
    outcome: str
    bytes_in: int
    bytes_out: int
    deployment: str = ""
    replica_id: str = ""
    node_id: str = ""
    account_id: int | None = None
    token_id: int | None = None
    raw: Mapping[str, Any] = raw_field()


@dataclasses.dataclass(frozen=True, slots=True)
class Usage(Payload):
    """Usage in a window: `scope` "account" (your calls) or "agent" (every caller of `agent`)."""

    WHAT: ClassVar[str] = "usage"
    scope: str
    agent: str | None
    since: datetime | None
    until: datetime | None
    summary: list[UsageRow]
    events: list[UsageEvent] = dataclasses.field(default_factory=list)
    raw: Mapping[str, Any] = raw_field()

    @property
    def calls(self) -> int:
        return sum(row.calls for row in self.summary)
