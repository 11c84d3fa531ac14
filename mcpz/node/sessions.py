"""Isolated session mode: one agent process per gateway client session, from a bounded pool.

A replica whose manifest says `[run] sessions = "isolated"` keeps its supervised warm process
(health checks, tool pinning, liveness: `mcpz.node.supervisor`) and, beside it, a `SessionPool`:

- **One process per session.** The client's `initialize` takes a process from the pool and is
  relayed to it as the client sent it (its protocol version, its capabilities: sampling,
  elicitation, roots), so the agent holds exactly one client's conversation, as over its own
  stdio. Every later message of that session goes to that process and no other.
- **Warm spare.** One process is started ahead (not initialized), so a session's start costs an
  `initialize`, not the agent's start-up; the next spare starts as soon as one is taken.
- **Bounded.** At most `max_processes` processes at once (the spare counts while there is room).
  Past that `open()` raises `PoolExhausted`, which the relay answers at once with a JSON-RPC
  error naming the limit: a client never waits for a process to free up.
- **Ended** by the hub's `end_session` (the client's DELETE, or the gateway forgetting the
  session), after `idle` seconds without a call, when the process exits, or when the replica
  stops. A session whose process is gone is answered "session-gone", and the client initializes
  again.

What a session's agent sends that answers nothing (log messages, list changes, resource updates)
and its requests to the client (sampling, elicitation, roots, ping) go to `on_message` with the
session's id: the relay sends them to the gateway for that session alone.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from mcpz.mesh import LogStream
from mcpz.node.channel import JSON, StdioChannel
from mcpz.node.errors import StartError
from mcpz.node.process import ProcessSpec, ReplicaProcess, read_lines, start_process

logger = logging.getLogger(__name__)

STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a session's process
MAX_LOG_LINE = 8192

SessionSink = Callable[[str, JSON], None]
"""(session id, a message from that session's agent that answers no call of the relay's)."""
LogFn = Callable[[LogStream, str], None]


class PoolExhausted(Exception):
    """Every process the replica may run is serving another session."""


class SessionGone(Exception):
    """No process serves this session (never opened here, ended, or exited)."""


@dataclass(eq=False)
class SessionProcess:
    """One session's agent process (or the spare, whose `session_id` is "")."""

    session_id: str
    channel: StdioChannel | None = None
    process: ReplicaProcess | None = None
    last_used: float = 0.0
    calls: set[int] = field(default_factory=set)  # the relay's call ids in flight on it
    ready: anyio.Event = field(default_factory=anyio.Event)
    ended: anyio.Event = field(default_factory=anyio.Event)
    failure: str = ""
    ending: bool = False


class SessionPool:
    """The session processes of one replica. Run `run()` in a task for as long as the replica runs."""

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        max_processes: int,
        idle: float,
        on_message: SessionSink | None = None,
        on_log: LogFn | None = None,
        name: str = "",
        spare: bool = True,
    ) -> None:
        self.spec = spec
        self.max_processes = max_processes
        self.idle = idle
        self.on_message = on_message
        self.on_log = on_log
        self.name = name
        self.keep_spare = spare
        self.sessions: dict[str, SessionProcess] = {}
        self.started = 0  # processes started, the spares included
        self._spare: SessionProcess | None = None
        self._tg: TaskGroup | None = None
        self._started = anyio.Event()  # run() holds the task group
        self._closed = False

    @property
    def running(self) -> int:
        """Processes alive or starting: the sessions' and the spare."""
        return len(self.sessions) + (1 if self._spare is not None else 0)

    async def run(self) -> None:
        """Hold the processes until cancelled; then end every one of them."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._started.set()
                self._start_spare()
                while True:
                    await anyio.sleep(max(0.05, min(self.idle / 4, 5.0)))
                    self._sweep()
        finally:
            self._tg = None
            self._closed = True
            self.sessions.clear()
            self._spare = None

    async def open(self, session_id: str) -> StdioChannel:
        """The process for a new session: the spare, else a fresh one. PoolExhausted past the
        limit; SessionGone if the process could not start."""
        if not self._closed:
            await self._started.wait()
        if self._tg is None:
            raise SessionGone("the replica is stopping")
        if session_id in self.sessions:
            raise SessionGone("this session has a process already")
        spare = self._spare
        if spare is not None and not spare.ended.is_set():
            self._spare = None
            sp = spare
            sp.session_id = session_id
        else:
            self._spare = None
            if self.running >= self.max_processes:
                raise PoolExhausted(
                    f"all {self.max_processes} agent processes of this replica serve other sessions"
                )
            sp = self._start(session_id)
        sp.last_used = anyio.current_time()
        self.sessions[session_id] = sp
        self._start_spare()
        await sp.ready.wait()
        if sp.channel is None or sp.ended.is_set():
            self.sessions.pop(session_id, None)
            raise SessionGone(f"the agent's process did not start: {sp.failure or 'it exited'}")
        return sp.channel

    def get(self, session_id: str) -> SessionProcess | None:
        sp = self.sessions.get(session_id)
        if sp is None or sp.ended.is_set() or sp.channel is None:
            return None
        sp.last_used = anyio.current_time()
        return sp

    def end(self, session_id: str, why: str) -> None:
        """End a session's process (in the background); nothing if it has none."""
        sp = self.sessions.pop(session_id, None)
        if sp is not None and self._tg is not None:
            logger.info("%s: ending the process of a session: %s", self.name, why)
            self._tg.start_soon(self._stop, sp)
        if self._tg is not None:
            self._start_spare()

    # -----------------------------------------------------------------------------------------

    def _start_spare(self) -> None:
        if not self.keep_spare or self._tg is None:
            return
        if self._spare is not None and not self._spare.ended.is_set():
            return
        self._spare = None
        if self.running < self.max_processes:
            self._spare = self._start("")

    def _start(self, session_id: str) -> SessionProcess:
        assert self._tg is not None
        sp = SessionProcess(session_id)
        self.started += 1
        self._tg.start_soon(self._run_one, sp)
        return sp

    def _sweep(self) -> None:
        now = anyio.current_time()
        for session_id, sp in list(self.sessions.items()):
            if sp.ended.is_set():
                self.sessions.pop(session_id, None)
            elif not sp.calls and now - sp.last_used > self.idle:
                self.end(session_id, f"unused for {self.idle:g}s")
        self._start_spare()

    async def _stop(self, sp: SessionProcess) -> None:
        sp.ending = True
        if sp.process is not None:
            await sp.process.stop(STOP_GRACE)

    async def _run_one(self, sp: SessionProcess) -> None:
        tag = secrets.token_hex(3)  # tells the sessions' lines apart in the replica's log
        try:
            async with start_process(self.spec) as process:
                sp.process = process

                def to_session(message: JSON) -> None:
                    if sp.session_id and self.on_message is not None and not sp.ending:
                        self.on_message(sp.session_id, message)

                channel = StdioChannel(
                    process,
                    on_stray=lambda line: self._log(LogStream.STDOUT, tag, line),
                    on_message=to_session,
                    on_request=to_session,
                )
                sp.channel = channel
                sp.ready.set()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(channel.run)
                    tg.start_soon(self._pump_stderr, process, tag)
                    code = await process.wait()
                    tg.cancel_scope.cancel()
                if not sp.ending:
                    logger.info("%s: a session's process exited with code %d", self.name, code)
        except StartError as e:
            sp.failure = e.message
            logger.warning("%s: cannot start a session's process: %s", self.name, e.message)
        finally:
            sp.ended.set()
            sp.ready.set()
            sp.channel = None
            if sp.session_id and self.sessions.get(sp.session_id) is sp:
                del self.sessions[sp.session_id]

    async def _pump_stderr(self, process: ReplicaProcess, tag: str) -> None:
        async for raw, cut in read_lines(process.stderr, MAX_LOG_LINE):
            line = raw.decode("utf-8", "replace") + (" [line cut]" if cut else "")
            self._log(LogStream.STDERR, tag, line)

    def _log(self, stream: LogStream, tag: str, line: str) -> None:
        if self.on_log is not None:
            self.on_log(stream, f"[session {tag}] {line}")
