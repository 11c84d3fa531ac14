"""Keeping one replica's agent running: start, check health, restart with backoff, give up, stop.

    starting --healthy--> running --exits--> starting ("restarting in 2s") --> ... --> failed
        \\                                                                        (after the limit)
         `-- stop() at any point --> stopped

`Supervisor.run()` owns the process from start to end. Each start is checked with an MCP
`initialize` + `tools/list` (`mcpz.node.health`); a running agent is then probed with `ping`
every `liveness_interval`. When the agent exits, or fails its checks, it is restarted after
`restart_base * 2**(n-1)` seconds (capped at `restart_cap`), and after `max_restarts` consecutive
failures it is reported `failed` and left stopped. A run that stayed healthy for `reset_after`
seconds resets the count. `stop(grace)` sends SIGTERM to the process group, then SIGKILL after
`grace` seconds.

Pinned tools: with `check_tools`, every `tools/list` the supervisor makes (the health check of each
start, and then the liveness probe, which lists tools instead of pinging) goes through it; an
answer it calls changed fails the replica at once (no restart: the code would answer the same).
`on_tools` gets each healthy start's tools (for a release with none recorded yet).

Stdio: the process's stdin and stdout belong to its `StdioChannel`, exposed as `channel` while
the replica is running; the health check and, later, relayed gateway calls all go through it.
Stderr lines go to `on_log`, as do stray non-MCP lines on stdout. Every status change goes to
`on_status` with a detail for people and, when a process ended, its exit code.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from mcpz.mesh import LogStream, ReplicaStatus
from mcpz.node.channel import StdioChannel
from mcpz.node.errors import StartError
from mcpz.node.health import HealthError, HealthReport, check_health, list_tools, ping
from mcpz.node.process import ProcessSpec, ReplicaProcess, read_lines, start_process

logger = logging.getLogger(__name__)

StatusFn = Callable[[ReplicaStatus, str, "int | None"], None]
LogFn = Callable[[LogStream, str], None]
ToolsCheck = Callable[[list[dict[str, Any]]], Awaitable[str | None]]
"""Given a tools/list answer, why it may not run (e.g. "tools-changed: ..."), or None."""
ToolsSink = Callable[[list[dict[str, Any]]], None]


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    """How a supervisor restarts, checks and logs. Times in seconds."""

    max_restarts: int = 5
    restart_base: float = 1.0
    restart_cap: float = 60.0
    reset_after: float = 60.0
    health_timeout: float = 30.0
    liveness_interval: float = 30.0  # 0: no liveness probes
    liveness_timeout: float = 10.0
    liveness_failures: int = 3
    unhealthy_grace: float = 5.0  # SIGTERM -> SIGKILL for an agent that failed its checks
    max_log_line: int = 8192  # bytes; longer stderr lines are cut

    def restart_delay(self, failures: int) -> float:
        """Seconds before restart number `failures` (1, 2, ...) of a run of consecutive failures."""
        return min(self.restart_cap, self.restart_base * 2.0 ** min(max(failures - 1, 0), 64))


@dataclass(frozen=True, slots=True)
class _Outcome:
    exit_code: int | None
    healthy_for: float | None
    reason: str
    fatal: bool = False  # no restart: fail the replica now


class Supervisor:
    """One replica's process, kept running. Call `run()` in a task and `stop()` to end it."""

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        settings: SupervisorSettings | None = None,
        on_status: StatusFn | None = None,
        on_log: LogFn | None = None,
        name: str = "",
        check_tools: ToolsCheck | None = None,
        on_tools: ToolsSink | None = None,
    ) -> None:
        self.spec = spec
        self.name = name or Path(spec.argv[0]).name
        self.settings = settings or SupervisorSettings()
        self.on_status = on_status
        self.on_log = on_log
        self.check_tools = check_tools
        self.on_tools = on_tools
        self.status = ReplicaStatus.PENDING
        self.detail = ""
        self.exit_code: int | None = None
        self.restarts = 0
        self.process: ReplicaProcess | None = None
        self.channel: StdioChannel | None = None
        self.health: HealthReport | None = None
        self.start_to_healthy: float | None = None  # seconds, of the last healthy start
        self._stopping = False
        self._grace = 10.0
        self._stop_reason = "stopped"
        self._wake = anyio.Event()
        self._started = False
        self._done = anyio.Event()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._reason = ""  # why the current run is being ended by the supervisor, if it is

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def run(self) -> ReplicaStatus:
        """Supervise until stopped (returns `stopped`) or given up on (returns `failed`)."""
        self._started = True
        failures = 0
        try:
            while not self._stopping:
                outcome = await self._run_once()
                if self._stopping:
                    self.exit_code = outcome.exit_code
                    break
                if outcome.fatal:
                    self._set(ReplicaStatus.FAILED, outcome.reason, outcome.exit_code)
                    return ReplicaStatus.FAILED
                if outcome.healthy_for is not None and outcome.healthy_for >= self.settings.reset_after:
                    failures = 0
                failures += 1
                limit = self.settings.max_restarts
                if failures > limit:
                    self._set(
                        ReplicaStatus.FAILED,
                        f"{outcome.reason}; gave up after {limit} restart{'s' if limit != 1 else ''}",
                        outcome.exit_code,
                    )
                    return ReplicaStatus.FAILED
                delay = self.settings.restart_delay(failures)
                self.restarts += 1
                self._set(
                    ReplicaStatus.STARTING,
                    f"{outcome.reason}; restarting in {delay:g}s (restart {failures} of {limit})",
                    outcome.exit_code,
                )
                with anyio.move_on_after(delay):
                    await self._wake.wait()
            self._set(ReplicaStatus.STOPPED, self._stop_reason, self.exit_code)
            return ReplicaStatus.STOPPED
        finally:
            self._done.set()

    async def stop(self, grace: float = 10.0, reason: str = "stopped") -> None:
        """Stop the agent (SIGTERM, SIGKILL after `grace` seconds) and wait until `run()` ends."""
        self._stopping = True
        self._grace = grace
        self._stop_reason = reason
        self._wake.set()
        if not self._started:
            self._set(ReplicaStatus.STOPPED, reason, None)
            return
        process = self.process
        if process is not None:
            self.exit_code = await process.stop(grace)
        await self._done.wait()

    # -----------------------------------------------------------------------------------------

    def _set(self, status: ReplicaStatus, detail: str, exit_code: int | None) -> None:
        if (status, detail) == (self.status, self.detail):
            return
        self.status, self.detail = status, detail
        if exit_code is not None:
            self.exit_code = exit_code
        logger.info("%s: %s%s", self.name, status.value, f" ({detail})" if detail else "")
        if self.on_status is not None:
            self.on_status(status, detail, exit_code)

    def _log(self, stream: LogStream, line: str) -> None:
        if self.on_log is not None:
            self.on_log(stream, line)

    async def _run_once(self) -> _Outcome:
        if self.status is not ReplicaStatus.STARTING:
            self._set(ReplicaStatus.STARTING, "", None)
        self._stderr_tail.clear()
        spawned = anyio.current_time()
        healthy_at: float | None = None
        self._reason = ""
        self._fatal = False
        try:
            async with start_process(self.spec) as process:
                self.process = process
                channel = StdioChannel(process, on_stray=lambda line: self._log(LogStream.STDOUT, line))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(channel.run)
                    tg.start_soon(self._pump_stderr, process)
                    if self._stopping:
                        await process.stop(self._grace)
                    else:
                        healthy = False
                        try:
                            self.health = await check_health(channel, timeout=self.settings.health_timeout)
                        except HealthError as e:
                            self._reason = e.message
                            if process.running and not self._stopping:
                                await process.stop(self.settings.unhealthy_grace)
                        else:
                            await self._check_tools(process, list(self.health.definitions))
                            healthy = not self._fatal
                        if healthy and self.health is not None:
                            healthy_at = anyio.current_time()
                            self.start_to_healthy = healthy_at - spawned
                            self.channel = channel
                            tools = len(self.health.tools)
                            self._set(ReplicaStatus.RUNNING, f"{tools} tool{'s' if tools != 1 else ''}", None)
                            if self.settings.liveness_interval > 0:
                                tg.start_soon(self._liveness, channel, process)
                    code = await process.wait()
                    self.channel = None
                    tg.cancel_scope.cancel()
        except StartError as e:
            return _Outcome(None, None, e.message)
        finally:
            self.process = None
            self.channel = None
        if self._fatal:
            return _Outcome(code, None, self._reason, fatal=True)
        ended = self._describe_exit(code)
        if self._reason:
            ended = f"{self._reason} ({ended})"
        healthy_for = anyio.current_time() - healthy_at if healthy_at is not None else None
        return _Outcome(code, healthy_for, ended)

    def _describe_exit(self, code: int) -> str:
        if code < 0:
            try:
                text = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                text = f"killed by signal {-code}"
        else:
            text = f"exited with code {code}"
        last = next((line for line in reversed(self._stderr_tail) if line.strip()), "")
        return f"{text}: {last.strip()[:300]}" if last else text

    async def _pump_stderr(self, process: ReplicaProcess) -> None:
        async for raw, cut in read_lines(process.stderr, self.settings.max_log_line):
            line = raw.decode("utf-8", "replace") + (" [line cut]" if cut else "")
            self._stderr_tail.append(line)
            self._log(LogStream.STDERR, line)

    async def _check_tools(self, process: ReplicaProcess, definitions: list[dict[str, Any]]) -> None:
        """Hand a tools/list answer to `check_tools`; one it refuses ends the process for good."""
        if self.check_tools is not None:
            changed = await self.check_tools(definitions)
            if changed:
                self._reason, self._fatal = changed, True
                logger.warning("%s: %s", self.name, changed)
                if process.running and not self._stopping:
                    await process.stop(self.settings.unhealthy_grace)
                return
        if self.on_tools is not None:
            self.on_tools(definitions)

    async def _liveness(self, channel: StdioChannel, process: ReplicaProcess) -> None:
        failed = 0
        settings = self.settings
        while process.running:
            await anyio.sleep(settings.liveness_interval)
            try:
                if self.check_tools is not None:
                    definitions = await list_tools(channel, timeout=settings.liveness_timeout)
                    changed = await self.check_tools(definitions)
                    if changed:
                        self._reason, self._fatal = changed, True
                        logger.warning("%s: %s", self.name, changed)
                        if process.running and not self._stopping:
                            await process.stop(settings.unhealthy_grace)
                        return
                else:
                    await ping(channel, timeout=settings.liveness_timeout)
                failed = 0
            except HealthError as e:
                failed += 1
                logger.warning(
                    "agent %d: %s (%d of %d)", process.pid, e.message, failed, settings.liveness_failures
                )
                if failed >= settings.liveness_failures and process.running and not self._stopping:
                    self._reason = e.message
                    await process.stop(settings.unhealthy_grace)
                    return
