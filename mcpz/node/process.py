"""One replica's operating-system process: started with its limits, its pipes, stopped with escalation.

`start_process` is an async context manager around one child process. The node owns the
parent ends of three pipes: stdin and stdout carry the agent's MCP stdio channel (see
`mcpz.node.channel`), stderr its log lines. The pipes are non-blocking descriptors read and
written through anyio (`wait_readable`/`wait_writable`), and the exit is observed through a
pidfd where Linux has one (a worker thread's `wait()` elsewhere), so nothing depends on asyncio's
child watchers and one process's pipes held open by a stray grandchild never hide its exit.

The child runs in its own session (`setsid`): a stop signals the whole process group, so the
agent's own children go too, and the terminal's Ctrl-C reaches the node alone, which stops its
replicas in order. Resource limits are set in the child before `exec` (`preexec_fn`), soft and
hard alike, so the agent cannot raise them again: `RLIMIT_AS` for memory, `RLIMIT_NOFILE` for
open files. On Linux the child also asks to be killed when the node dies (`PR_SET_PDEATHSIG`), so
a node killed with -9 leaves no agent behind.

POSIX only: a node does not run on Windows.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from mcpz.node.errors import StartError

logger = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of a replica's process; None: no limit."""

    memory_bytes: int | None = None
    open_files: int | None = None


@dataclass(frozen=True)
class ProcessSpec:
    """Exactly what to start: the resolved program and arguments, its folder, its environment."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(repr=False)
    limits: Limits = Limits()


class PipeReader:
    """The parent's non-blocking read end of one of the child's output pipes."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd

    async def read(self, size: int = READ_CHUNK) -> bytes:
        """Up to `size` bytes; b"" at end of file (the child and its children closed the pipe)."""
        while self.fd is not None:
            try:
                return os.read(self.fd, size)
            except BlockingIOError:
                await anyio.wait_readable(self.fd)
        return b""

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            anyio.notify_closing(fd)
            os.close(fd)


class PipeWriter:
    """The parent's non-blocking write end of the child's stdin."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self._lock = anyio.Lock()

    async def write(self, data: bytes) -> None:
        """Write all of `data`, in order with other writers; BrokenPipeError once the child is gone."""
        async with self._lock:
            view = memoryview(data)
            while view:
                if self.fd is None:
                    raise BrokenPipeError("the agent's stdin is closed")
                try:
                    view = view[os.write(self.fd, view) :]
                except BlockingIOError:
                    await anyio.wait_writable(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            anyio.notify_closing(fd)
            os.close(fd)


class ReplicaProcess:
    """A started child: its pid, its pipes, its exit. Made by `start_process`."""

    def __init__(self, popen: subprocess.Popen[bytes], stdin: int, stdout: int, stderr: int) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdin = PipeWriter(stdin)
        self.stdout = PipeReader(stdout)
        self.stderr = PipeReader(stderr)
        self.returncode: int | None = None
        self._exited = anyio.Event()

    @property
    def running(self) -> bool:
        return self.returncode is None

    async def wait(self) -> int:
        """The exit code once the process has exited (negative: killed by that signal)."""
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def signal(self, signum: int) -> None:
        """Send `signum` to the process's whole group (it leads its own session)."""
        if self.returncode is not None:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def stop(self, grace: float) -> int:
        """SIGTERM to the group, SIGKILL after `grace` seconds if it is still running; the exit code."""
        if self.returncode is None:
            self.signal(signal.SIGTERM)
            with anyio.move_on_after(max(grace, 0.0)):
                return await self.wait()
            logger.info("process %d ignored SIGTERM for %gs: killing it", self.pid, grace)
            self.signal(signal.SIGKILL)
        return await self.wait()

    async def _reap(self) -> None:
        pidfd = _pidfd(self.pid)
        try:
            if pidfd is not None:
                await anyio.wait_readable(pidfd)
                code = self._popen.wait()
            else:
                code = await anyio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)
        finally:
            if pidfd is not None:
                anyio.notify_closing(pidfd)
                os.close(pidfd)
        self.returncode = code
        self._exited.set()
        # The group may outlive its leader (a daemonised child): it goes with it.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def _close_pipes(self) -> None:
        self.stdin.close()
        self.stdout.close()
        self.stderr.close()


@asynccontextmanager
async def start_process(spec: ProcessSpec) -> AsyncIterator[ReplicaProcess]:
    """Start `spec`'s process; on leaving the block it is killed (if still running) and reaped.

    Raises StartError when the program cannot be started or a limit cannot be applied.
    """
    child_setup = _child_setup(spec.limits)
    pipes = [os.pipe() for _ in range(3)]
    (in_r, in_w), (out_r, out_w), (err_r, err_w) = pipes
    try:
        popen = subprocess.Popen(
            list(spec.argv),
            cwd=spec.cwd,
            env=dict(spec.env),
            stdin=in_r,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,
            preexec_fn=child_setup,  # limits are set in the child, between fork and exec
            close_fds=True,
        )
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise StartError(
            f"cannot start {' '.join(spec.argv)[:200]}: {detail}",
            hint="check [run].command in the release's mcpz.toml and the deployment's limits",
        ) from e
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    process = ReplicaProcess(popen, in_w, out_r, err_r)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(process._reap)
            try:
                yield process
            finally:
                with anyio.CancelScope(shield=True):
                    if process.running:
                        process.signal(signal.SIGKILL)
                    with anyio.move_on_after(10):
                        await process.wait()
                tg.cancel_scope.cancel()
    finally:
        process._close_pipes()


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
        return fd
    except OSError:
        return None


def _child_setup(limits: Limits) -> Callable[[], None]:
    """The function the child runs between fork and exec: limits, and death with its parent.

    Everything is computed here, in the parent; the child only makes system calls (it must not
    take locks another thread of the parent may have held at fork time).
    """
    import resource

    settings: list[tuple[int, tuple[int, int]]] = []
    if limits.memory_bytes is not None:
        settings.append((resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)))
    if limits.open_files is not None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = limits.open_files
        if hard != resource.RLIM_INFINITY and wanted > hard:
            logger.warning("open files limit %d is over the node's own %d: using %d", wanted, hard, hard)
            wanted = hard
        settings.append((resource.RLIMIT_NOFILE, (wanted, wanted)))
    prctl = _prctl()
    parent = os.getpid()
    setrlimit = resource.setrlimit
    sigkill = int(signal.SIGKILL)

    def setup() -> None:
        if prctl is not None:
            prctl(1, sigkill, 0, 0, 0)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the node died before the line above
                os.kill(os.getpid(), sigkill)
        for which, value in settings:
            setrlimit(which, value)

    return setup


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    # The running program's own symbols include the C library's (no `find_library`: it spawns
    # `ldconfig`, which costs a second on the event loop).
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl  # noqa: B018 (a missing symbol raises here, not in the child)
    except (OSError, AttributeError):
        return None
    function: Callable[..., int] = libc.prctl
    return function


async def read_lines(pipe: PipeReader, max_len: int) -> AsyncIterator[tuple[bytes, bool]]:
    """The lines `pipe` carries, without their end of line, until end of file.

    A line longer than `max_len` bytes is yielded once, cut to `max_len`, with True beside it;
    the rest of it is skipped. Memory stays bounded by `max_len` plus one read, whatever the
    child writes.
    """
    buffer = bytearray()
    skipping = False
    while True:
        chunk = await pipe.read()
        if not chunk:
            if buffer and not skipping:
                yield bytes(buffer).removesuffix(b"\r"), False
            return
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end]).removesuffix(b"\r")
            del buffer[: end + 1]
            if skipping:
                skipping = False
            elif len(line) > max_len:
                yield line[:max_len], True
            else:
                yield line, False
        if len(buffer) > max_len:
            if not skipping:
                yield bytes(buffer[:max_len]), True
                skipping = True
            buffer.clear()
