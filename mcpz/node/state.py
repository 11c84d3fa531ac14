"""What a node holds, kept in its data folder so that a restarted node knows its replicas.

`DATA/node.json` (written atomically: a temporary file, fsync, rename) records the node id the
hub gave it, every assignment it holds (the deploy frame's content, its status), and the
*fences*: for each replica id it stopped, the epoch of that stop. The fences keep the epoch
rules honest across restarts: a deploy older than what the node last held or stopped for that
replica is refused, even after the assignment itself is gone.

The data folder's layout:

    node.json              this state
    node.lock              held (flock) by the running node: one node process per data folder
    objects.git/           the object cache shared by all replicas (mcpz.node.fetch)
    replicas/{id}/e{epoch} the checkout a replica runs in, dependencies in .mcpz/deps/
    trust.json             pinned keys, highest deployment revisions, revocations (mcpz.keys.trust)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mcpz.errors import McpzError, UsageError
from mcpz.mesh import Deploy, ReplicaReport, ReplicaStatus

STATE_FILE = "node.json"
LOCK_FILE = "node.lock"
FORMAT = 1
MAX_FENCES = 100_000


@dataclass(frozen=True, slots=True)
class Dependency:
    name: str
    version: str
    commit: str


@dataclass(frozen=True, slots=True)
class Assignment:
    """One replica the node holds: what the hub's deploy asked for, and how it is doing."""

    deployment: str
    replica_id: str
    epoch: int
    agent: str
    version: str
    commit: str
    registry_url: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    memory_bytes: int | None = None
    open_files: int | None = None
    dependencies: tuple[Dependency, ...] = ()
    signatures: tuple[tuple[str, str], ...] = ()  # (signer, signature) as the registry keeps them
    namespace_keys: str = ""  # the JSON of GET /v1/namespaces/{ns}/keys, "" when the hub sent none
    deployment_statement: str = ""  # the deployer's signed DeploymentStatement, "" when unsigned
    deployment_signatures: tuple[tuple[str, str], ...] = ()  # (signer, signature) over it
    tools_digest: str = ""  # digest of the tools signed with the release, "" when none were
    report_tools: bool = False  # the hub asked for the first healthy tools/list (none recorded yet)
    sessions: str = "shared"  # "isolated": one agent process per gateway session (mcpz.node.sessions)
    max_sessions: int = 16  # isolated: session processes at once
    session_idle: float = 300.0  # isolated: seconds unused before a session's process ends
    status: ReplicaStatus = ReplicaStatus.PENDING
    detail: str = ""

    @classmethod
    def from_deploy(cls, frame: Deploy) -> Assignment:
        return cls(
            deployment=frame.deployment,
            replica_id=frame.replica_id,
            epoch=frame.epoch,
            agent=frame.agent,
            version=frame.version,
            commit=frame.commit,
            registry_url=frame.registry_url,
            command=tuple(frame.command),
            env=dict(frame.env),
            memory_bytes=frame.limits.memory_bytes,
            open_files=frame.limits.open_files,
            dependencies=tuple(Dependency(d.name, d.version, d.commit) for d in frame.dependencies),
            signatures=tuple((s.signer, s.signature) for s in frame.signatures),
            namespace_keys=frame.namespace_keys,
            deployment_statement=frame.deployment_statement,
            deployment_signatures=tuple((s.signer, s.signature) for s in frame.deployment_signatures),
            tools_digest=frame.tools_digest,
            report_tools=frame.report_tools,
            sessions=frame.sessions.mode,
            max_sessions=frame.sessions.max_processes,
            session_idle=frame.sessions.idle,
        )

    def with_status(self, status: ReplicaStatus, detail: str) -> Assignment:
        return replace(self, status=status, detail=detail)

    def report(self) -> ReplicaReport:
        return ReplicaReport(
            deployment=self.deployment,
            replica_id=self.replica_id,
            epoch=self.epoch,
            commit=self.commit,
            status=self.status,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["env"] = dict(self.env)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Assignment:
        return cls(
            deployment=str(data["deployment"]),
            replica_id=str(data["replica_id"]),
            epoch=int(data["epoch"]),
            agent=str(data["agent"]),
            version=str(data["version"]),
            commit=str(data["commit"]),
            registry_url=str(data["registry_url"]),
            command=tuple(str(a) for a in data["command"]),
            env={str(k): str(v) for k, v in dict(data.get("env") or {}).items()},
            memory_bytes=_opt_int(data.get("memory_bytes")),
            open_files=_opt_int(data.get("open_files")),
            dependencies=tuple(
                Dependency(str(d["name"]), str(d["version"]), str(d["commit"]))
                for d in data.get("dependencies") or ()
            ),
            signatures=tuple((str(s[0]), str(s[1])) for s in data.get("signatures") or ()),
            namespace_keys=str(data.get("namespace_keys") or ""),
            deployment_statement=str(data.get("deployment_statement") or ""),
            deployment_signatures=tuple(
                (str(s[0]), str(s[1])) for s in data.get("deployment_signatures") or ()
            ),
            tools_digest=str(data.get("tools_digest") or ""),
            report_tools=bool(data.get("report_tools", False)),
            sessions="isolated" if data.get("sessions") == "isolated" else "shared",
            max_sessions=int(data.get("max_sessions", 16)),
            session_idle=float(data.get("session_idle", 300.0)),
            status=ReplicaStatus(data.get("status", "pending")),
            detail=str(data.get("detail", "")),
        )


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


@dataclass
class NodeState:
    """The node's id, the assignments it holds by replica id, and the fences of stopped replicas."""

    path: Path
    node_id: str | None = None
    replicas: dict[str, Assignment] = field(default_factory=dict)
    fences: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: Path) -> NodeState:
        path = data_dir / STATE_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as e:
            raise McpzError(
                f"cannot read the node's state in {path}: {e}",
                hint="move the file away to start this node afresh (it forgets its replicas)",
            ) from e
        try:
            if raw.get("format") != FORMAT:
                raise ValueError(f"unknown format {raw.get('format')!r}")
            return cls(
                path,
                node_id=raw.get("node_id"),
                replicas={
                    a.replica_id: a for a in (Assignment.from_json(item) for item in raw.get("replicas", []))
                },
                fences={str(k): int(v) for k, v in dict(raw.get("fences", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise McpzError(
                f"the node's state in {path} is not valid: {e}",
                hint="move the file away to start this node afresh (it forgets its replicas)",
            ) from e

    def save(self) -> None:
        if len(self.fences) > MAX_FENCES:  # the oldest fences go first (dicts keep insertion order)
            for key in list(self.fences)[: len(self.fences) - MAX_FENCES]:
                del self.fences[key]
        data = {
            "format": FORMAT,
            "node_id": self.node_id,
            "replicas": [a.to_json() for a in sorted(self.replicas.values(), key=lambda a: a.replica_id)],
            "fences": self.fences,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def fence(self, replica_id: str) -> int:
        """The highest epoch the node holds or stopped for `replica_id` (0: never seen)."""
        held = self.replicas.get(replica_id)
        return max(held.epoch if held is not None else 0, self.fences.get(replica_id, 0))

    def reports(self) -> tuple[ReplicaReport, ...]:
        return tuple(a.report() for a in sorted(self.replicas.values(), key=lambda a: a.replica_id))


def replica_folder(data_dir: Path, replica_id: str, epoch: int) -> Path:
    """Where the replica `replica_id` at `epoch` is checked out (an ident is a safe file name)."""
    return data_dir / "replicas" / replica_id / f"e{epoch}"


@contextlib.contextmanager
def lock_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold the data folder for this process; UsageError if another node process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"another node is running with the data folder {data_dir}",
                hint="stop it, or give this one its own --data folder",
            ) from None
        yield
    finally:
        os.close(fd)
