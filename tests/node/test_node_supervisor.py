"""The node's supervisor on real processes: a real agent (the python template) started and checked
over MCP, its stdio shared by several clients, restarts with backoff, a crash loop given up on,
SIGTERM escalated to SIGKILL, resource limits read back from /proc."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from meshutil import node_config

from mcpz.mesh import LogStream, ReplicaStatus
from mcpz.node import Limits, ProcessSpec, StdioChannel, Supervisor, SupervisorSettings
from mcpz.repo.templates import render_template

Event = tuple[ReplicaStatus, str, "int | None"]

FAST = SupervisorSettings(
    max_restarts=2,
    restart_base=0.05,
    restart_cap=0.2,
    health_timeout=30,
    liveness_interval=0,
    unhealthy_grace=1,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("agent")
    render_template("python", folder, "acme/tiny")
    return folder


def env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/")}


def agent_spec(folder: Path, limits: Limits | None = None) -> ProcessSpec:
    return ProcessSpec(argv=(sys.executable, "server.py"), cwd=folder, env=env(), limits=limits or Limits())


def script_spec(folder: Path, source: str) -> ProcessSpec:
    path = folder / "script.py"
    path.write_text(textwrap.dedent(source))
    return ProcessSpec(argv=(sys.executable, str(path)), cwd=folder, env=env())


class Recorder:
    """Statuses and log lines as the supervisor reports them, and a bounded wait on either."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.logs: list[tuple[LogStream, str]] = []
        self._changed = anyio.Event()

    def status(self, status: ReplicaStatus, detail: str, exit_code: int | None) -> None:
        self.events.append((status, detail, exit_code))
        self._wake()

    def log(self, stream: LogStream, line: str) -> None:
        self.logs.append((stream, line))
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def statuses(self) -> list[ReplicaStatus]:
        return [event[0] for event in self.events]

    async def until(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    def count(self, status: ReplicaStatus) -> int:
        return self.statuses.count(status)


def supervise(spec: ProcessSpec, settings: SupervisorSettings = FAST) -> tuple[Supervisor, Recorder]:
    recorder = Recorder()
    return Supervisor(spec, settings=settings, on_status=recorder.status, on_log=recorder.log), recorder


def limits_of(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits as {name: (soft, hard)}."""
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    found = {}
    for line in lines:
        name = line[:26].strip()
        soft, hard = line[26:].split()[:2]
        found[name] = (soft, hard)
    return found


@pytest.mark.anyio
async def test_a_real_agent_starts_passes_its_health_check_and_stops(agent_dir: Path) -> None:
    supervisor, recorder = supervise(agent_spec(agent_dir))
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await recorder.until(lambda: ReplicaStatus.RUNNING in recorder.statuses)
        assert supervisor.health is not None
        assert supervisor.health.tools == ("echo", "add", "divide")
        assert supervisor.health.server_name == "acme/tiny"
        assert recorder.events[-1] == (ReplicaStatus.RUNNING, "3 tools", None)
        assert supervisor.start_to_healthy is not None
        print(
            f"\nagent start to healthy: {supervisor.start_to_healthy * 1000:.0f} ms "
            f"(health check itself: {supervisor.health.seconds * 1000:.0f} ms)"
        )
        assert supervisor.channel is not None and supervisor.channel.initialize_result is not None
        assert supervisor.channel.initialize_result["serverInfo"]["name"] == "acme/tiny"
        pid = supervisor.pid
        assert pid is not None
        await supervisor.stop(grace=5)
    assert recorder.statuses == [ReplicaStatus.STARTING, ReplicaStatus.RUNNING, ReplicaStatus.STOPPED]
    assert recorder.events[-1][2] == -signal.SIGTERM  # the template exits on SIGTERM
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.anyio
async def test_one_stdio_serves_the_mcp_client_and_raw_requests_at_once(agent_dir: Path) -> None:
    from mcp import Client

    supervisor, recorder = supervise(agent_spec(agent_dir))
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await recorder.until(lambda: ReplicaStatus.RUNNING in recorder.statuses)
        channel = supervisor.channel
        assert isinstance(channel, StdioChannel)
        raw: dict[int, object] = {}
        via_client: dict[int, object] = {}

        async def raw_call(n: int) -> None:
            # Every raw caller uses id 1: the channel keeps them apart.
            request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
            request["params"] = {"name": "add", "arguments": {"a": n, "b": 1000}}
            response = await channel.request(request, timeout=20)
            assert response["id"] == 1
            raw[n] = response["result"]["structuredContent"]["result"]

        async with Client(channel.transport(), mode="legacy", cache=None) as client:

            async def client_call(n: int) -> None:
                result = await client.call_tool("add", {"a": n, "b": 1})
                via_client[n] = result.structured_content["result"] if result.structured_content else None

            with anyio.fail_after(30):
                async with anyio.create_task_group() as calls:
                    for n in range(20):
                        calls.start_soon(raw_call, n)
                        calls.start_soon(client_call, n)
        assert raw == {n: n + 1000 for n in range(20)}
        assert via_client == {n: n + 1 for n in range(20)}
        await supervisor.stop(grace=5)


@pytest.mark.anyio
async def test_a_killed_agent_is_restarted_after_a_backoff(agent_dir: Path) -> None:
    supervisor, recorder = supervise(agent_spec(agent_dir))
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await recorder.until(lambda: recorder.count(ReplicaStatus.RUNNING) == 1)
        first = supervisor.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await recorder.until(lambda: recorder.count(ReplicaStatus.RUNNING) == 2)
        assert supervisor.pid not in (None, first)
        restart = recorder.events[-2]
        assert restart[0] is ReplicaStatus.STARTING
        assert restart[1] == "killed by SIGKILL; restarting in 0.05s (restart 1 of 2)"
        assert restart[2] == -signal.SIGKILL
        assert supervisor.restarts == 1
        await supervisor.stop(grace=5)


@pytest.mark.anyio
async def test_a_crash_looping_command_is_reported_failed_after_the_limit(tmp_path: Path) -> None:
    spec = script_spec(tmp_path, "import sys\nsys.stderr.write('no config found\\n')\nsys.exit(3)\n")
    supervisor, recorder = supervise(spec)
    with anyio.fail_after(30):
        final = await supervisor.run()
    assert final is ReplicaStatus.FAILED
    assert recorder.statuses == [ReplicaStatus.STARTING] * 3 + [ReplicaStatus.FAILED]
    assert [event[1] for event in recorder.events[1:]] == [
        "health check failed: the agent exited before it answered (exited with code 3: no config found); "
        "restarting in 0.05s (restart 1 of 2)",
        "health check failed: the agent exited before it answered (exited with code 3: no config found); "
        "restarting in 0.1s (restart 2 of 2)",
        "health check failed: the agent exited before it answered (exited with code 3: no config found); "
        "gave up after 2 restarts",
    ]
    assert recorder.events[-1][2] == 3
    assert recorder.logs.count((LogStream.STDERR, "no config found")) == 3


@pytest.mark.anyio
async def test_stop_escalates_to_sigkill_for_an_agent_that_ignores_sigterm(agent_dir: Path) -> None:
    stubborn = agent_dir / "stubborn.py"
    stubborn.write_text(
        "import signal, runpy\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "runpy.run_path('server.py', run_name='__main__')\n"
    )
    spec = ProcessSpec(argv=(sys.executable, str(stubborn)), cwd=agent_dir, env=env())
    supervisor, recorder = supervise(spec)
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await recorder.until(lambda: ReplicaStatus.RUNNING in recorder.statuses)
        started = anyio.current_time()
        with anyio.fail_after(20):
            await supervisor.stop(grace=0.5)
        waited = anyio.current_time() - started
    assert recorder.events[-1] == (ReplicaStatus.STOPPED, "stopped", -signal.SIGKILL)
    assert 0.5 <= waited < 10


@pytest.mark.anyio
async def test_resource_limits_are_applied_to_the_process(agent_dir: Path) -> None:
    limits = Limits(memory_bytes=8 * 1024**3, open_files=64)
    supervisor, recorder = supervise(agent_spec(agent_dir, limits))
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await recorder.until(lambda: ReplicaStatus.RUNNING in recorder.statuses)
        assert supervisor.pid is not None
        found = limits_of(supervisor.pid)
        assert found["Max open files"] == ("64", "64")
        assert found["Max address space"] == (str(8 * 1024**3), str(8 * 1024**3))
        await supervisor.stop(grace=5)


@pytest.mark.anyio
async def test_open_files_limit_bites(tmp_path: Path) -> None:
    spec = script_spec(
        tmp_path,
        """
        import sys
        held = []
        try:
            for _ in range(100):
                held.append(open(__file__))
        except OSError as e:
            sys.stderr.write(f"opened {len(held)}: {e.strerror}\\n")
            sys.exit(4)
        """,
    )
    spec = ProcessSpec(spec.argv, spec.cwd, spec.env, Limits(open_files=20))
    supervisor, recorder = supervise(spec, SupervisorSettings(max_restarts=0, health_timeout=30))
    with anyio.fail_after(30):
        assert await supervisor.run() is ReplicaStatus.FAILED
    assert recorder.events[-1][2] == 4
    assert any(line.startswith("opened 1") and "Too many open files" in line for _s, line in recorder.logs)


@pytest.mark.anyio
async def test_an_agent_that_does_not_speak_mcp_fails_its_health_check(tmp_path: Path) -> None:
    spec = script_spec(
        tmp_path,
        """
        import sys, time
        print("hello, I am not MCP", flush=True)
        time.sleep(60)
        """,
    )
    settings = SupervisorSettings(max_restarts=0, health_timeout=1, unhealthy_grace=1)
    supervisor, recorder = supervise(spec, settings)
    with anyio.fail_after(30):
        assert await supervisor.run() is ReplicaStatus.FAILED
    detail = recorder.events[-1][1]
    assert detail.startswith("health check failed: no answer to initialize and tools/list within 1s")
    assert (LogStream.STDOUT, "hello, I am not MCP") in recorder.logs


@pytest.mark.anyio
async def test_a_program_that_cannot_start_fails(tmp_path: Path) -> None:
    spec = ProcessSpec(argv=(str(tmp_path / "missing"),), cwd=tmp_path, env=env())
    supervisor, recorder = supervise(spec, SupervisorSettings(max_restarts=1, restart_base=0.01))
    with anyio.fail_after(30):
        assert await supervisor.run() is ReplicaStatus.FAILED
    assert "cannot start" in recorder.events[-1][1] and "No such file" in recorder.events[-1][1]


@pytest.mark.anyio
async def test_a_running_agent_that_stops_answering_is_restarted(tmp_path: Path, agent_dir: Path) -> None:
    spec = ProcessSpec(argv=(sys.executable, "server.py"), cwd=agent_dir, env=env())
    settings = SupervisorSettings(
        max_restarts=1,
        restart_base=0.05,
        liveness_interval=0.2,
        liveness_timeout=0.3,
        liveness_failures=2,
        unhealthy_grace=0.2,
    )
    supervisor, recorder = supervise(spec, settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.run)
        await recorder.until(lambda: ReplicaStatus.RUNNING in recorder.statuses)
        # Healthy; now stop the world: the process lives but answers nothing.
        assert supervisor.pid is not None
        os.kill(supervisor.pid, signal.SIGSTOP)
        await recorder.until(lambda: recorder.count(ReplicaStatus.STARTING) == 2)
        assert recorder.events[-1][1].startswith("liveness check failed: no answer to ping within 0.3s")
        assert recorder.events[-1][2] == -signal.SIGKILL  # stopped processes ignore SIGTERM until killed
        await supervisor.stop(grace=1)


# ---------------------------------------------------------------------------------------------
# The node around its supervisors: a kill -9'd node leaves no agent behind.


@pytest.mark.anyio
async def test_an_agent_dies_with_a_node_killed_by_sigkill(tmp_path: Path) -> None:
    import subprocess

    holder = tmp_path / "holder.py"
    holder.write_text(
        textwrap.dedent(
            """
            import sys, anyio
            from pathlib import Path
            from mcpz.node import ProcessSpec, start_process

            async def main():
                spec = ProcessSpec((sys.executable, "-c", "import time; time.sleep(600)"), Path("."), {})
                async with start_process(spec) as process:
                    print(process.pid, flush=True)
                    await anyio.sleep_forever()

            anyio.run(main)
            """
        )
    )
    node = subprocess.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert node.stdout is not None
        child = int(node.stdout.readline())
        pidfd = os.pidfd_open(child)  # readable once the agent has exited, whoever reaps it
        try:
            node.kill()
            with anyio.fail_after(10):
                await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)
    finally:
        node.kill()
        node.wait()


# ---------------------------------------------------------------------------------------------
# The node's connection loop and epoch rules, against a scripted hub: a loopback WebSocket server
# speaking the real protocol (mcpz.mesh encode/decode) from the hub's side, one frame at a time.
# Releases come from a live registry over git, as in production.


class HubConnection:
    def __init__(self, ws: object, hello: object) -> None:
        self.ws = ws
        self.hello = hello
        self.ids = 100
        self.seen: list[object] = []  # every frame received, in order
        self._unread: list[object] = []  # received, not yet returned by `expect`

    async def send(self, frame: object) -> None:
        from mcpz.mesh import encode

        await self.ws.send(encode(frame))  # type: ignore[attr-defined,arg-type]

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    async def expect(
        self, kind: type, timeout: float = 30, where: Callable[[object], bool] = lambda f: True
    ) -> object:
        """The oldest frame not returned yet of `kind` (matching `where`), waiting for it if need be."""
        from mcpz.mesh import decode

        for i, frame in enumerate(self._unread):
            if isinstance(frame, kind) and where(frame):
                del self._unread[i]
                return frame
        with anyio.fail_after(timeout):
            while True:
                frame = decode(await self.ws.recv())  # type: ignore[attr-defined]
                self.seen.append(frame)
                if isinstance(frame, kind) and where(frame):
                    return frame
                self._unread.append(frame)

    async def statuses_until(self, replica_id: str, epoch: int, final: ReplicaStatus) -> list[ReplicaStatus]:
        from mcpz.mesh import Status

        found: list[ReplicaStatus] = []
        while not found or found[-1] is not final:
            frame = await self.expect(Status, where=lambda f: (f.replica_id, f.epoch) == (replica_id, epoch))  # type: ignore[attr-defined]
            found.append(frame.status)  # type: ignore[attr-defined]
        return found


class ScriptedHub:
    """Accepts node connections at ws://127.0.0.1:PORT/v1/mesh; `refuse` answers the upgrade instead."""

    def __init__(self, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.port = 0
        self.authorization: list[str | None] = []
        self._send, self._accepted = anyio.create_memory_object_stream[HubConnection](10)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _handler(self, ws: object) -> None:
        from mcpz.mesh import decode

        hello = decode(await ws.recv())  # type: ignore[attr-defined]
        conn = HubConnection(ws, hello)
        await self._send.send(conn)
        await ws.wait_closed()  # type: ignore[attr-defined]

    def _process_request(self, connection: Any, request: Any) -> Any:
        self.authorization.append(request.headers.get("Authorization"))  # type: ignore[attr-defined]
        if self.refuse is not None:
            return connection.respond(self.refuse, '{"error": {"message": "token revoked"}}\n')  # type: ignore[attr-defined]
        return None

    async def accept(self, timeout: float = 30) -> HubConnection:
        with anyio.fail_after(timeout):
            return await self._accepted.receive()

    def serve(self) -> object:
        from websockets.asyncio.server import serve

        return serve(self._handler, "127.0.0.1", 0, process_request=self._process_request, compression=None)


@pytest.fixture
async def scripted_hub() -> object:
    hub = ScriptedHub()
    async with hub.serve() as server:  # type: ignore[attr-defined]
        hub.port = server.sockets[0].getsockname()[1]
        yield hub


@pytest.fixture
def release(sqlite_registry: object, tmp_path: Path) -> dict[str, str]:
    """The python template published as acme/tiny 0.1.0 to a live registry (git over HTTP)."""
    from gitutil import git

    registry = sqlite_registry
    token = registry.account("acme")  # type: ignore[attr-defined]
    work = tmp_path / "tiny"
    work.mkdir()
    render_template("python", work, "acme/tiny")
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "tiny", cwd=work)
    git("tag", "v0.1.0", cwd=work)
    git("push", "-q", registry.git_url("acme/tiny", token), "main", "v0.1.0", cwd=work)  # type: ignore[attr-defined]
    commit = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    return {"url": f"{registry.url}/git/acme/tiny.git", "commit": commit}  # type: ignore[attr-defined]


def deploy_frame(release: dict[str, str], frame_id: int, replica: str, epoch: int, **extra: object) -> object:
    from mcpz.mesh import Deploy

    fields: dict[str, object] = dict(
        id=frame_id,
        deployment="acme/tiny",
        replica_id=replica,
        epoch=epoch,
        agent="acme/tiny",
        version="0.1.0",
        commit=release["commit"],
        registry_url=release["url"],
        command=("python", "server.py"),
    )
    fields.update(extra)
    return Deploy(**fields)  # type: ignore[arg-type]


def welcome(frame_id: int = 1, interval: float = 0.2) -> object:
    import time

    from mcpz.mesh import Welcome

    return Welcome(
        id=frame_id, node_id="node-1", heartbeat_interval=interval, grace=5, server_time=time.time()
    )


@pytest.mark.anyio
async def test_the_node_obeys_the_epoch_rules(
    scripted_hub: ScriptedHub, release: dict[str, str], tmp_path: Path
) -> None:
    from mcpz.mesh import Ack, Error, Heartbeat, Hello, Log, ReplicaReport, Stop
    from mcpz.node import Node
    from mcpz.node.state import NodeState

    hub = scripted_hub
    node = Node(node_config(hub.url, tmp_path / "node"))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(node.run)
        conn = await hub.accept()
        hello = conn.hello
        assert isinstance(hello, Hello)
        assert (hello.node_name, hello.node_id, hello.labels, hello.capacity, hello.replicas) == (
            "test-node",
            None,
            {"zone": "a"},
            2,
            (),
        )
        assert hub.authorization == ["Bearer node-token"]
        await conn.send(welcome())

        # A new replica: acked at once, then pending -> pulling -> starting -> running.
        await conn.send(
            deploy_frame(
                release,
                2,
                "r1",
                5,
                command=(
                    "python",
                    "-c",
                    "import sys, runpy; print('booting', file=sys.stderr, flush=True); "
                    "runpy.run_path('server.py', run_name='__main__')",
                ),
            )
        )
        assert (await conn.expect(Ack)).ref == 2  # type: ignore[attr-defined]
        assert await conn.statuses_until("r1", 5, ReplicaStatus.RUNNING) == [
            ReplicaStatus.PENDING,
            ReplicaStatus.PULLING,
            ReplicaStatus.STARTING,
            ReplicaStatus.RUNNING,
        ]
        log = await conn.expect(Log, where=lambda f: "booting" in f.lines)  # type: ignore[attr-defined]
        assert (log.replica_id, log.epoch, log.stream) == ("r1", 5, LogStream.STDERR)  # type: ignore[attr-defined]
        running = ReplicaReport(
            deployment="acme/tiny",
            replica_id="r1",
            epoch=5,
            commit=release["commit"],
            status=ReplicaStatus.RUNNING,
        )
        beat = await conn.expect(Heartbeat, where=lambda f: f.replicas == (running,))  # type: ignore[attr-defined]
        assert beat.memory_total >= beat.memory_used > 0  # type: ignore[attr-defined]
        assert 0 <= beat.cpu_percent <= 100  # type: ignore[attr-defined]
        pid = node.manager.live["r1"].supervisor.pid  # type: ignore[union-attr]

        # The same epoch again (a re-sent deploy): acked, nothing restarts.
        await conn.send(deploy_frame(release, 3, "r1", 5))
        assert (await conn.expect(Ack)).ref == 3  # type: ignore[attr-defined]
        # An older epoch: refused.
        await conn.send(deploy_frame(release, 4, "r1", 4))
        refused = await conn.expect(Error)
        assert (refused.ref, refused.code) == (4, "stale-epoch")  # type: ignore[attr-defined]
        # A stop for an older epoch: acked and ignored.
        await conn.send(Stop(id=5, deployment="acme/tiny", replica_id="r1", epoch=4, grace=5))
        assert (await conn.expect(Ack)).ref == 5  # type: ignore[attr-defined]
        await conn.expect(Heartbeat)
        assert node.manager.live["r1"].supervisor.pid == pid  # type: ignore[union-attr]
        count = len(conn.seen)

        # A newer epoch replaces the assignment: the old one stops, the new one starts.
        await conn.send(deploy_frame(release, 6, "r1", 7))
        assert (await conn.expect(Ack)).ref == 6  # type: ignore[attr-defined]
        assert await conn.statuses_until("r1", 7, ReplicaStatus.RUNNING) == [
            ReplicaStatus.PENDING,
            ReplicaStatus.PULLING,
            ReplicaStatus.STARTING,
            ReplicaStatus.RUNNING,
        ]
        assert node.manager.live["r1"].pulled_bytes == 0  # type: ignore[union-attr]  # a new checkout, no fetch
        from mcpz.mesh import Status

        old = [f for f in conn.seen[count:] if isinstance(f, Status) and f.epoch == 5]
        assert [f.status for f in old] == [ReplicaStatus.STOPPED]
        assert node.manager.live["r1"].supervisor.pid != pid  # type: ignore[union-attr]
        assert not (tmp_path / "node" / "replicas" / "r1" / "e5").exists()

        # Stop it; then a deploy at the stopped epoch is stale.
        await conn.send(
            Stop(id=7, deployment="acme/tiny", replica_id="r1", epoch=7, grace=5, reason="scaled-down")
        )
        assert (await conn.expect(Ack)).ref == 7  # type: ignore[attr-defined]
        assert await conn.statuses_until("r1", 7, ReplicaStatus.STOPPED) == [ReplicaStatus.STOPPED]
        await conn.send(deploy_frame(release, 8, "r1", 7))
        assert (await conn.expect(Error)).code == "stale-epoch"  # type: ignore[attr-defined]
        # A stop for a replica the node does not hold is acked too.
        await conn.send(Stop(id=9, deployment="acme/tiny", replica_id="nobody", epoch=1, grace=0))
        assert (await conn.expect(Ack)).ref == 9  # type: ignore[attr-defined]

        # Capacity 2: a third live replica is refused.
        await conn.send(deploy_frame(release, 10, "r2", 1))
        await conn.send(deploy_frame(release, 11, "r3", 1))
        await conn.send(deploy_frame(release, 12, "r4", 1))
        assert (await conn.expect(Error)).code == "no-capacity"  # type: ignore[attr-defined]
        await conn.statuses_until("r2", 1, ReplicaStatus.RUNNING)

        state = NodeState.load(tmp_path / "node")
        assert state.node_id == "node-1"
        assert state.fences["r1"] == 7 and set(state.replicas) == {"r2", "r3"}

        # Shutdown: replicas stopped (and reported), the socket closed with 1001.
        node.shutdown()
        from websockets.exceptions import ConnectionClosed

        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await conn.expect(Status, timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        stopped = {(f.replica_id, f.status) for f in conn.seen if isinstance(f, Status)}
        assert {("r2", ReplicaStatus.STOPPED), ("r3", ReplicaStatus.STOPPED)} <= stopped
    # The assignments survive the shutdown, for the next start.
    assert set(NodeState.load(tmp_path / "node").replicas) == {"r2", "r3"}


@pytest.mark.anyio
async def test_the_node_reconnects_reports_what_it_runs_and_exits_when_replaced(
    scripted_hub: ScriptedHub, release: dict[str, str], tmp_path: Path
) -> None:
    from mcpz.mesh import Ack, Hello
    from mcpz.node import Node, NodeReplaced

    hub = scripted_hub
    node = Node(node_config(hub.url, tmp_path / "node", welcome_timeout=0.5))  # type: ignore[arg-type]

    async def script() -> None:
        first = await hub.accept()
        await first.send(welcome())
        await first.send(deploy_frame(release, 2, "r1", 3))
        assert (await first.expect(Ack)).ref == 2  # type: ignore[attr-defined]
        await first.statuses_until("r1", 3, ReplicaStatus.RUNNING)
        pid = node.manager.live["r1"].supervisor.pid  # type: ignore[union-attr]

        # The hub goes away: the node comes back, with its id and what it runs.
        await first.ws.close(1011, "internal error")  # type: ignore[attr-defined]
        second = await hub.accept()
        hello = second.hello
        assert isinstance(hello, Hello) and hello.node_id == "node-1"
        assert [(r.replica_id, r.epoch, r.status) for r in hello.replicas] == [
            ("r1", 3, ReplicaStatus.RUNNING)
        ]
        assert node.manager.live["r1"].supervisor.pid == pid  # type: ignore[union-attr]  # it kept running

        # No welcome within the timeout: a fresh connection, another hello.
        third = await hub.accept()
        assert isinstance(third.hello, Hello)
        await third.send(welcome())
        with anyio.fail_after(30):
            await node.connected.wait()
        # Another process took the node id: the node stops its replicas and exits.
        await third.ws.close(4000, "replaced")  # type: ignore[attr-defined]

    async with anyio.create_task_group() as tg:
        tg.start_soon(script)
        with anyio.fail_after(60), pytest.raises(NodeReplaced, match="4000 replaced"):
            await node.run()
    assert node.manager.live["r1"].supervisor.status is ReplicaStatus.STOPPED  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_restarted_node_resumes_its_replicas(
    scripted_hub: ScriptedHub, release: dict[str, str], tmp_path: Path
) -> None:
    from mcpz.mesh import Ack, Hello
    from mcpz.node import Node

    hub = scripted_hub
    node = Node(node_config(hub.url, tmp_path / "node"))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(node.run)
        conn = await hub.accept()
        await conn.send(welcome())
        await conn.send(deploy_frame(release, 2, "r1", 9))
        assert (await conn.expect(Ack)).ref == 2  # type: ignore[attr-defined]
        await conn.statuses_until("r1", 9, ReplicaStatus.RUNNING)
        node.shutdown()

    again = Node(node_config(hub.url, tmp_path / "node"))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(again.run)
        conn = await hub.accept()
        hello = conn.hello
        assert isinstance(hello, Hello) and hello.node_id == "node-1"
        assert [(r.replica_id, r.epoch) for r in hello.replicas] == [("r1", 9)]
        await conn.send(welcome())
        await conn.statuses_until("r1", 9, ReplicaStatus.RUNNING)  # from its checkout: no pulling
        assert again.manager.live["r1"].pulled_bytes == 0  # type: ignore[union-attr]
        again.shutdown()


@pytest.mark.anyio
async def test_a_refused_token_ends_the_node_with_one_error(tmp_path: Path) -> None:
    from mcpz.errors import AuthError
    from mcpz.node import Node

    hub = ScriptedHub(refuse=401)
    async with hub.serve() as server:  # type: ignore[attr-defined]
        hub.port = server.sockets[0].getsockname()[1]
        node = Node(node_config(hub.url, tmp_path / "node"))  # type: ignore[arg-type]
        with anyio.fail_after(30), pytest.raises(AuthError, match=r"HTTP 401\): token revoked"):
            await node.run()
        assert len(hub.authorization) == 1  # no retry


@pytest.mark.anyio
async def test_wss_with_a_self_signed_certificate_and_a_ca_file(tmp_path: Path) -> None:
    import shutil
    import ssl
    import subprocess

    from mcpz.mesh import Hello
    from mcpz.node import Node

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl program to make a certificate with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    hub = ScriptedHub()
    from websockets.asyncio.server import serve

    async with serve(
        hub._handler, "127.0.0.1", 0, ssl=server_tls, process_request=hub._process_request
    ) as server:
        port = server.sockets[0].getsockname()[1]
        node = Node(node_config(f"wss://127.0.0.1:{port}", tmp_path / "node", ca_file=cert))  # type: ignore[arg-type]
        assert node.url == f"wss://127.0.0.1:{port}/v1/mesh"
        assert node.access.base_url == f"https://127.0.0.1:{port}"
        async with anyio.create_task_group() as tg:
            tg.start_soon(node.run)
            conn = await hub.accept()
            assert isinstance(conn.hello, Hello)
            await conn.send(welcome())
            with anyio.fail_after(30):
                await node.connected.wait()
            node.shutdown()


# ---------------------------------------------------------------------------------------------
# The node against the registry's own hub (registry_server.mesh.hub): deployed through the API.


@pytest.mark.anyio
async def test_a_deployment_through_the_live_hub_runs_scales_and_is_removed(tmp_path: Path) -> None:
    import httpx2
    from conftest import start_registry
    from gitutil import git

    from mcpz.node import Node

    registry = start_registry(tmp_path / "registry", heartbeat_interval=0.3, heartbeat_grace=5)
    try:
        token = registry.account("acme")
        node_token = registry.account("acme", "node")
        work = tmp_path / "tiny"
        work.mkdir()
        render_template("python", work, "acme/tiny")
        git("init", "-q", "-b", "main", cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "-qm", "tiny", cwd=work)
        git("tag", "v0.1.0", cwd=work)
        git("push", "-q", registry.git_url("acme/tiny", token), "main", "v0.1.0", cwd=work)

        node = Node(node_config(registry.url, tmp_path / "node", token=node_token, capacity=4))  # type: ignore[arg-type]
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            anyio.create_task_group() as tg,
            httpx2.AsyncClient(base_url=registry.url, headers=headers) as http,
        ):
            tg.start_soon(node.run)
            with anyio.fail_after(30):
                await node.connected.wait()

            async def view() -> dict[str, object]:
                response = await http.get("/v1/deployments/acme/tiny")
                assert response.status_code == 200, response.text
                return response.json()  # type: ignore[no-any-return]

            async def until(predicate: Callable[[dict[str, object]], bool]) -> dict[str, object]:
                # The API has no change feed to wait on: poll it, bounded.
                with anyio.fail_after(60):
                    while not predicate(current := await view()):
                        await anyio.sleep(0.05)
                return current

            def folders() -> list[Path]:
                return list((tmp_path / "node" / "replicas").iterdir())

            started = anyio.current_time()
            created = await http.post(
                "/v1/deployments", json={"agent": "acme/tiny", "version": "0.1.0", "replicas": 2}
            )
            assert created.status_code == 201, created.text
            ready = await until(lambda d: d["state"] == "ready")
            print(f"\nlive hub: deploy to 2 replicas running: {anyio.current_time() - started:.2f}s")
            instances: Any = ready["instances"]
            assert {i["status"] for i in instances} == {"running"}  # type: ignore[union-attr]
            assert {i["id"] for i in instances} == set(node.manager.live)  # type: ignore[union-attr]
            nodes = (await http.get("/v1/nodes")).json()
            assert [(n["name"], n["connected"], n["replicas"]) for n in nodes] == [("test-node", True, 2)]

            scaled = await http.post("/v1/deployments/acme/tiny/scale", json={"replicas": 1})
            assert scaled.status_code == 200, scaled.text
            await until(lambda d: d["state"] == "ready" and len(d["instances"]) == 1)  # type: ignore[arg-type]
            assert node.manager is not None
            with anyio.fail_after(30):
                await node.manager.wait_until(lambda: len(node.state.replicas) == 1 and len(folders()) == 1)
            (kept,) = node.state.replicas
            gone = [r for r in node.state.fences if r != kept]
            assert len(gone) == 1
            assert not (tmp_path / "node" / "replicas" / gone[0]).exists()

            removed = await http.delete("/v1/deployments/acme/tiny")
            assert removed.status_code in (200, 202, 204), removed.text
            with anyio.fail_after(30):
                await node.manager.wait_until(lambda: not node.state.replicas and not folders())
            node.shutdown()
    finally:
        registry.stop()


# ---------------------------------------------------------------------------------------------
# Pure parts: the epoch rules, URLs and close codes, the outbox.


def _state(tmp_path: Path, **held: tuple[int, ReplicaStatus]) -> object:
    from mcpz.node.state import Assignment, NodeState

    state = NodeState(tmp_path / "node.json")
    for rid, (epoch, status) in held.items():
        state.replicas[rid] = Assignment(
            deployment="d",
            replica_id=rid,
            epoch=epoch,
            agent="acme/x",
            version="1",
            commit="a" * 40,
            registry_url="http://r/git/acme/x.git",
            command=("python",),
            status=status,
        )
    return state


@pytest.mark.parametrize(
    ("replica", "epoch", "expected"),
    [
        ("r1", 5, "repeat"),
        ("r1", 6, "replace"),
        ("r1", 4, "stale"),
        ("gone", 3, "stale"),  # stopped at 3
        ("gone", 4, "start"),
        ("new", 1, "no-capacity"),  # r1 and r2 take both slots; the failed one does not count
    ],
)
def test_deploy_rules(replica: str, epoch: int, expected: str, tmp_path: Path) -> None:
    from mcpz.mesh import Deploy
    from mcpz.node import decide_deploy

    state = _state(
        tmp_path, r1=(5, ReplicaStatus.RUNNING), r2=(1, ReplicaStatus.PULLING), r3=(2, ReplicaStatus.FAILED)
    )
    state.fences["gone"] = 3  # type: ignore[attr-defined]
    capacity = 3 if replica == "gone" else 2
    frame = Deploy(
        id=1,
        deployment="d",
        replica_id=replica,
        epoch=epoch,
        agent="acme/x",
        version="1",
        commit="b" * 40,
        registry_url="http://r/git/acme/x.git",
        command=("python",),
    )
    decision = decide_deploy(state, frame, capacity)  # type: ignore[arg-type]
    assert decision.action.value == expected
    assert (decision.error_code is not None) == (expected in ("stale", "no-capacity"))


@pytest.mark.parametrize(
    ("replica", "epoch", "expected"),
    [("r1", 4, "older"), ("r1", 5, "stop"), ("r1", 9, "stop"), ("x", 1, "not-held")],
)
def test_stop_rules(replica: str, epoch: int, expected: str, tmp_path: Path) -> None:
    from mcpz.mesh import Stop
    from mcpz.node import decide_stop

    state = _state(tmp_path, r1=(5, ReplicaStatus.RUNNING))
    frame = Stop(id=1, deployment="d", replica_id=replica, epoch=epoch, grace=1)
    assert decide_stop(state, frame).value == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "mesh", "http"),
    [
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/mesh", "http://127.0.0.1:8080"),
        ("https://registry.example/", "wss://registry.example/v1/mesh", "https://registry.example"),
        (
            "wss://registry.example/prefix/v1/mesh",
            "wss://registry.example/prefix/v1/mesh",
            "https://registry.example/prefix",
        ),
        ("ws://h:1/base", "ws://h:1/base/v1/mesh", "http://h:1/base"),
    ],
)
def test_registry_urls(given: str, mesh: str, http: str) -> None:
    from mcpz.node import http_base, mesh_url

    assert (mesh_url(given), http_base(given)) == (mesh, http)


def test_a_registry_url_that_is_none_is_a_usage_error() -> None:
    from mcpz.errors import UsageError
    from mcpz.node import mesh_url

    for bad in ("registry.example", "ftp://registry.example", "http://"):
        with pytest.raises(UsageError, match="is not a registry URL"):
            mesh_url(bad)


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (1000, "exit"),
        (4000, "replaced"),
        (1001, "reconnect"),
        (1002, "reconnect"),
        (1008, "reconnect"),
        (1011, "reconnect"),
        (1013, "reconnect"),
        (4001, "reconnect"),
        (4002, "reconnect"),
        (None, "reconnect"),
    ],
)
def test_close_codes(code: int | None, action: str) -> None:
    from mcpz.node import close_action

    assert close_action(code).value == action


def test_backoff_schedule_is_capped_full_jitter() -> None:
    from mcpz.mesh import backoff

    ceilings = [backoff(n, 0.5, 30, rand=lambda: 0.999999) for n in range(10)]
    assert [round(c, 2) for c in ceilings] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert all(backoff(n, 0.5, 30, rand=lambda: 0.0) == 0.0 for n in range(10))


def test_outbox_keeps_replies_in_order_and_drops_them_with_the_connection() -> None:
    from mcpz.node.outbox import AckItem, ErrorItem, Outbox, StatusItem

    box = Outbox()
    box.put(AckItem(7))
    box.put(StatusItem("r1", 2, ReplicaStatus.PENDING))
    box.put(ErrorItem(8, "stale-epoch", "older"))
    frames = [item.frame(i) for i, item in enumerate(box.take_control(), 1)]
    assert [f.TYPE for f in frames] == ["ack", "status", "error"]
    box.put(AckItem(9))
    box.reset()
    assert box.take_control() == []


def test_outbox_bounds_log_rate_and_memory_and_batches() -> None:
    from itertools import count

    from mcpz.node.outbox import Outbox

    now = [0.0]
    box = Outbox(
        max_lines=50, rate=10, burst=20, batch_lines=8, linger=0.2, clock=lambda: now[0], wall=lambda: 1e9
    )
    for i in range(30):  # a burst of 30 lines at one instant: 20 pass, 10 are throttled
        box.log("r1", 1, LogStream.STDERR, f"line {i}")
    assert box.log_delay() == 0  # a full batch waits no longer
    ids = count(1)
    frames = list(box.take_logs(lambda: next(ids)))
    assert [len(f.lines) for f in frames] == [8, 8, 4]
    assert frames[0].lines[0] == "line 0" and frames[-1].lines[-1] == "line 19"
    now[0] = 1.0  # ten more tokens
    box.log("r1", 1, LogStream.STDERR, "after")
    assert box.log_delay() == pytest.approx(0.2)
    (frame,) = box.take_logs(lambda: next(ids))
    assert frame.lines == ("[mcpz node] dropped 10 lines over 10 lines/s", "after")

    now[0] = 100.0  # memory bound: 50 lines at most, the oldest go
    for i in range(60):
        now[0] += 1
        box.log("r2", 1, LogStream.STDOUT, "x" * 20_000 if i == 59 else f"l{i}")
    assert box.overflowed == 10
    lines = [line for f in box.take_logs(lambda: next(ids)) for line in f.lines]
    assert lines[0] == "l10" and len(lines) == 50
    assert lines[-1].endswith(" [line cut]") and len(lines[-1]) == 8192 + len(" [line cut]")


def test_mcpz_node_run_without_a_token_or_with_a_refused_one(cli: object, tmp_path: Path) -> None:
    import threading

    from websockets.sync.server import serve

    result = cli("node", "run", "--registry", "http://127.0.0.1:9", "--data", str(tmp_path / "n"))  # type: ignore[operator]
    assert result.exit_code == 4
    assert result.stderr.startswith("error: a node needs a token with scope node")

    def refuse(connection: Any, request: Any) -> Any:
        return connection.respond(403, '{"error": {"message": "this token lacks the \\"node\\" scope"}}')  # type: ignore[attr-defined]

    with serve(lambda ws: None, "127.0.0.1", 0, process_request=refuse) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        result = cli(  # type: ignore[operator]
            "node",
            "run",
            "--registry",
            f"http://127.0.0.1:{port}",
            "--token",
            "t",
            "--data",
            str(tmp_path / "n"),
            "-q",
        )
        server.shutdown()
    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        'error: the registry refused the node\'s token (HTTP 403): this token lacks the "node" scope '
        "(a node needs a token with scope node: mcpz keys create --scope node)"
    ]


def test_mcpz_node_run_refuses_a_bad_label(cli: object, tmp_path: Path) -> None:
    result = cli("node", "run", "--registry", "http://r", "--token", "t", "--label", "novalue")  # type: ignore[operator]
    assert result.exit_code == 2
    assert '--label "novalue" is not key=value' in result.stderr
    result = cli("node", "run", "--registry", "http://r", "--token", "t", "--label", "-bad=x")  # type: ignore[operator]
    assert result.exit_code == 2
    assert "invalid node setting: hello.labels" in result.stderr
