"""The replicas a node runs: accepting deploys and stops under the epoch rules, and carrying
each replica from `pending` through `pulling` and `starting` to `running` (or `failed`).

    deploy ─► pending ─► pulling ─► starting ─► running ⇄ starting (restarts) ─► failed
                                                       stop (any time) ─► stopped

`ReplicaManager.deploy()` and `.stop()` decide at once (see `mcpz.node.rules`) and return, so
the connection can ack before any work is done; the work runs in the manager's task group, one
task per replica. Every status change is written to the node's state (when it concerns the
assignment the node holds) and handed to `on_status` for the hub. A stopped replica is
forgotten (its folder removed, its epoch kept as a fence); a failed one stays held, and
reported, until the hub stops it. On start, `restore()` brings back what the state file says
the node held, so a restarted node resumes its replicas before the hub even reconnects.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from mcpz.errors import McpzError
from mcpz.keys.trust import Verifier
from mcpz.mesh import Deploy, LogStream, ReplicaReport, ReplicaStatus, Stop
from mcpz.node.channel import StdioChannel
from mcpz.node.errors import FetchError
from mcpz.node.fetch import ObjectCache
from mcpz.node.pull import RegistryAccess, process_spec, pull_release
from mcpz.node.replicalogs import ReplicaLogs
from mcpz.node.rules import DeployAction, DeployDecision, StopAction, decide_deploy, decide_stop
from mcpz.node.sessions import SessionPool
from mcpz.node.state import Assignment, NodeState, replica_folder
from mcpz.node.supervisor import Supervisor, SupervisorSettings, ToolsCheck, ToolsSink
from mcpz.node.toolpin import fetch_pinned_tools, pin_for, tools_changed
from mcpz.repo.checkout import ReleaseError

logger = logging.getLogger(__name__)

StatusSink = Callable[[Assignment, "int | None"], None]
LogSink = Callable[[str, int, LogStream, str], None]
ToolsReport = Callable[[Assignment, "list[dict[str, Any]]"], None]


class Replica:
    """One assignment being carried out: its task, and its supervisor once it has a process."""

    def __init__(self, assignment: Assignment) -> None:
        self.assignment = assignment
        self.supervisor: Supervisor | None = None
        self.pool: SessionPool | None = None  # isolated session mode: a process per client session
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.stopping = False
        self.pulled_objects = 0
        self.pulled_bytes = 0

    @property
    def key(self) -> tuple[str, int]:
        return self.assignment.replica_id, self.assignment.epoch


class ReplicaManager:
    """Every replica of the node. Enter `run()` in a task before deploying anything."""

    def __init__(
        self,
        *,
        data_dir: Path,
        state: NodeState,
        cache: ObjectCache,
        access: RegistryAccess,
        capacity: int,
        base_env: Mapping[str, str],
        supervisor_settings: SupervisorSettings | None = None,
        replace_grace: float = 10.0,
        on_status: StatusSink | None = None,
        on_log: LogSink | None = None,
        verifier: Verifier | None = None,
        on_tools: ToolsReport | None = None,
        replica_logs: ReplicaLogs | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.state = state
        self.cache = cache
        self.access = access
        self.capacity = capacity
        self.base_env = dict(base_env)
        self.supervisor_settings = supervisor_settings or SupervisorSettings()
        self.replace_grace = replace_grace
        self.on_status = on_status
        self.on_log = on_log
        # Every line also on disk (mcpz.node.replicalogs); default: 3 files of 1 MiB per replica.
        self.replica_logs = replica_logs if replica_logs is not None else ReplicaLogs(data_dir / "logs")
        self.on_tools = on_tools  # a healthy tools/list of a release the hub has none recorded of
        self.verifier = verifier  # None: releases are not checked for signatures (tests only)
        self.live: dict[str, Replica] = {}
        self.fetched_bytes = 0  # release bytes fetched from the registry since the node started
        self.fetches = 0
        self._tg: TaskGroup | None = None
        self._ready = anyio.Event()
        self._changed = anyio.Event()

    # -- the task group -------------------------------------------------------------------------

    async def run(self, *, restore: bool = True) -> None:
        """Hold the replicas' tasks until cancelled; with `restore`, resume the saved assignments."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if restore:
                self.restore()
            self._ready.set()
            try:
                await anyio.sleep_forever()
            finally:
                self.replica_logs.close_all()

    async def ready(self) -> None:
        await self._ready.wait()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Until `predicate()` holds, checked after every change of what the node holds (unbounded:
        put a deadline around it)."""
        while not predicate():
            await self._changed.wait()

    def _touch(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def restore(self) -> None:
        """Resume every assignment in the state file that had not failed; remove stray folders
        and the log files of replicas gone a while."""
        self._remove_strays()
        self.replica_logs.prune(self.state.replicas)
        for assignment in list(self.state.replicas.values()):
            if assignment.status is ReplicaStatus.FAILED:
                continue
            self._launch(Replica(assignment.with_status(ReplicaStatus.PENDING, "node restarted")), None)

    # -- commands from the hub --------------------------------------------------------------------

    def deploy(self, frame: Deploy) -> DeployDecision:
        """Accept or refuse `frame` now; the work starts in the background. Never blocks."""
        decision = decide_deploy(self.state, frame, self.capacity)
        if decision.action not in (DeployAction.START, DeployAction.REPLACE):
            logger.info(
                "deploy %s@%d: %s %s", frame.replica_id, frame.epoch, decision.action.value, decision.message
            )
            return decision
        previous = self.live.get(frame.replica_id)
        held = self.state.replicas.get(frame.replica_id)
        if previous is None and held is not None:  # replacing one that is not running: only its folder
            shutil.rmtree(replica_folder(self.data_dir, held.replica_id, held.epoch), ignore_errors=True)
        replica = Replica(Assignment.from_deploy(frame))
        logger.info(
            "deploy %s@%d: %s %s %s",
            frame.replica_id,
            frame.epoch,
            decision.action.value,
            frame.agent,
            frame.version,
        )
        self._launch(replica, previous)
        return decision

    def stop(self, frame: Stop) -> StopAction:
        """Accept `frame` now (stop is always acked); the replica stops in the background."""
        action = decide_stop(self.state, frame)
        logger.info(
            "stop %s@%d (%s): %s", frame.replica_id, frame.epoch, frame.reason or "no reason", action.value
        )
        if action is StopAction.NOT_HELD:
            self._fence(frame.replica_id, frame.epoch)
            self.state.save()
        elif action is StopAction.STOP:
            held = self.state.replicas.pop(frame.replica_id)
            self._fence(frame.replica_id, max(held.epoch, frame.epoch))
            self.state.save()
            replica = self.live.pop(frame.replica_id, None)
            if replica is not None:
                self._spawn(self._stop_and_forget, replica, frame.grace, frame.reason or "stopped")
            else:  # held but not running (it had failed before the node restarted)
                shutil.rmtree(replica_folder(self.data_dir, held.replica_id, held.epoch), ignore_errors=True)
                self._emit(held.with_status(ReplicaStatus.STOPPED, frame.reason or "stopped"), None)
        return action

    async def shutdown(self, grace: float) -> None:
        """Stop every process (the node is going away) but keep the assignments for the next start."""
        async with anyio.create_task_group() as tg:
            for replica in list(self.live.values()):
                tg.start_soon(self._stop, replica, grace, "the node is shutting down")

    # -- what the node reports ------------------------------------------------------------------

    def reports(self) -> tuple[ReplicaReport, ...]:
        return self.state.reports()

    def replica(self, replica_id: str) -> Replica | None:
        return self.live.get(replica_id)

    def channel(self, replica_id: str, epoch: int) -> StdioChannel | None:
        """The stdio channel of `replica_id` if it is running at exactly `epoch` (for relayed calls)."""
        replica = self.live.get(replica_id)
        if replica is None or replica.assignment.epoch != epoch or replica.supervisor is None:
            return None
        return replica.supervisor.channel

    def pool(self, replica_id: str, epoch: int) -> SessionPool | None:
        """The session processes of `replica_id` at exactly `epoch`, when it runs in isolated
        session mode. They outlive a restart of its warm process: the sessions keep their state."""
        replica = self.live.get(replica_id)
        if replica is None or replica.assignment.epoch != epoch:
            return None
        return replica.pool

    # -- one replica's life ---------------------------------------------------------------------

    def _launch(self, replica: Replica, previous: Replica | None) -> None:
        self.live[replica.assignment.replica_id] = replica
        self.state.replicas[replica.assignment.replica_id] = replica.assignment
        self.state.save()
        self._spawn(self._lifecycle, replica, previous)

    def _spawn(self, fn: Callable[..., object], *args: object) -> None:
        if self._tg is None:
            raise RuntimeError("ReplicaManager.run() is not running")
        self._tg.start_soon(fn, *args)  # type: ignore[arg-type]

    async def _lifecycle(self, replica: Replica, previous: Replica | None) -> None:
        try:
            with replica.scope:
                self._set(replica, ReplicaStatus.PENDING, replica.assignment.detail, None)
                if previous is not None:
                    with anyio.CancelScope(shield=True):  # an old process is never left half-stopped
                        await self._stop(
                            previous, self.replace_grace, f"replaced by epoch {replica.assignment.epoch}"
                        )
                        self._remove_folder(previous)
                await self._carry_out(replica)
        finally:
            replica.done.set()

    async def _carry_out(self, replica: Replica) -> None:
        assignment = replica.assignment
        folder = replica_folder(self.data_dir, assignment.replica_id, assignment.epoch)
        if not folder.is_dir():
            self._set(replica, ReplicaStatus.PULLING, "", None)
            try:
                pulled = await anyio.to_thread.run_sync(
                    pull_release,
                    self.cache,
                    assignment,
                    folder,
                    self.access,
                    self.verifier,
                    abandon_on_cancel=True,
                )
            except (FetchError, ReleaseError) as e:
                self._set(replica, ReplicaStatus.FAILED, f"{e.code.value}: {e.message}", None)
                return
            replica.pulled_objects, replica.pulled_bytes = pulled.objects, pulled.bytes
            self.fetches += 1
            self.fetched_bytes += pulled.bytes
        try:
            spec = process_spec(assignment, folder, self.base_env)
        except McpzError as e:
            self._set(replica, ReplicaStatus.FAILED, e.message, None)
            return
        if replica.stopping:
            return
        supervisor = Supervisor(
            spec,
            settings=self.supervisor_settings,
            on_status=lambda status, detail, code: self._set(replica, status, detail, code),
            on_log=lambda stream, line: self._log(replica, stream, line),
            name=f"{assignment.replica_id}@{assignment.epoch}",
            check_tools=self._tools_check(assignment),
            on_tools=self._tools_sink(replica),
        )
        replica.supervisor = supervisor
        if assignment.sessions != "isolated":
            await supervisor.run()
            return
        pool = SessionPool(
            spec,
            max_processes=assignment.max_sessions,
            idle=assignment.session_idle,
            on_log=lambda stream, line: self._log(replica, stream, line),
            name=f"{assignment.replica_id}@{assignment.epoch}",
        )
        replica.pool = pool
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.run)
                await supervisor.run()
                tg.cancel_scope.cancel()  # the sessions' processes end with the replica
        finally:
            replica.pool = None

    def _tools_check(self, assignment: Assignment) -> ToolsCheck | None:
        """The check of a replica's tools/list against those signed with its release, if any."""
        pin = pin_for(assignment)
        if pin is None:
            return None
        if pin.allow_drift:
            logger.info(
                "%s: tool drift allowed by the deployment; tools are not checked", assignment.deployment
            )
            return None
        access = self.access

        async def check(answered: list[dict[str, Any]]) -> str | None:
            if tools_changed(pin, answered) is None:
                return None
            pinned = await anyio.to_thread.run_sync(
                fetch_pinned_tools,
                access.base_url,
                access.token_for(access.base_url),
                access.ca_file,
                assignment.agent,
                assignment.version,
                pin.digest,
            )
            return tools_changed(pin, answered, pinned)

        return check

    def _tools_sink(self, replica: Replica) -> ToolsSink | None:
        if not replica.assignment.report_tools or self.on_tools is None:
            return None
        sink = self.on_tools
        return lambda answered: sink(replica.assignment, answered)

    async def _stop(self, replica: Replica, grace: float, reason: str) -> None:
        replica.stopping = True
        if replica.supervisor is not None:
            await replica.supervisor.stop(grace, reason)
        else:
            replica.scope.cancel()
        await replica.done.wait()
        if replica.assignment.status is not ReplicaStatus.STOPPED:  # it had no process, or had failed
            self._set(replica, ReplicaStatus.STOPPED, reason, None)

    async def _stop_and_forget(self, replica: Replica, grace: float, reason: str) -> None:
        await self._stop(replica, grace, reason)
        self._remove_folder(replica)
        if replica.assignment.replica_id not in self.state.replicas:  # not replaced by a newer epoch
            self.replica_logs.close(replica.assignment.replica_id)
        self._touch()

    # -- bookkeeping ----------------------------------------------------------------------------

    def _set(self, replica: Replica, status: ReplicaStatus, detail: str, exit_code: int | None) -> None:
        replica.assignment = replica.assignment.with_status(status, detail)
        held = self.state.replicas.get(replica.assignment.replica_id)
        if held is not None and held.epoch == replica.assignment.epoch:
            self.state.replicas[held.replica_id] = replica.assignment
            self.state.save()
        self._emit(replica.assignment, exit_code)

    def _emit(self, assignment: Assignment, exit_code: int | None) -> None:
        if self.on_status is not None:
            self.on_status(assignment, exit_code)
        self._touch()

    def _log(self, replica: Replica, stream: LogStream, line: str) -> None:
        self.replica_logs.write(replica.assignment.replica_id, replica.assignment.epoch, stream.value, line)
        if self.on_log is not None:
            self.on_log(replica.assignment.replica_id, replica.assignment.epoch, stream, line)

    def _fence(self, replica_id: str, epoch: int) -> None:
        fence = max(epoch, self.state.fence(replica_id))
        self.state.fences.pop(replica_id, None)  # re-inserted last: the newest fence is kept longest
        self.state.fences[replica_id] = fence

    def _remove_folder(self, replica: Replica) -> None:
        folder = replica_folder(self.data_dir, replica.assignment.replica_id, replica.assignment.epoch)
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # the replica's folder, once it holds no epoch any more
        except OSError:
            pass

    def _remove_strays(self) -> None:
        """Folders of replicas or epochs the node does not hold, and unfinished checkouts."""
        root = self.data_dir / "replicas"
        if not root.is_dir():
            return
        for replica_dir in root.iterdir():
            held = self.state.replicas.get(replica_dir.name)
            keep = f"e{held.epoch}" if held is not None else None
            for epoch_dir in replica_dir.iterdir():
                if epoch_dir.name != keep:
                    logger.info("removing %s: no replica of the node runs there", epoch_dir)
                    shutil.rmtree(epoch_dir, ignore_errors=True)
            if keep is None:
                shutil.rmtree(replica_dir, ignore_errors=True)
