"""`mcpz registry serve` as its own process, for tests that kill it and start it again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from conftest import LiveRegistry
from meshutil import until


@dataclass
class RegistryProcess:
    """The registry on `data_dir`, logging to `log`. `port` 0 takes a free port at each start;
    another keeps that port across restarts (nodes reconnect to it). `env` is added to the
    environment; `database` is a PostgreSQL URL (SQLite in the data folder when None)."""

    data_dir: Path
    log: Path
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    database: str | None = None
    args: list[str] = field(default_factory=list)  # more options for `mcpz registry serve`
    proc: subprocess.Popen[bytes] | None = None
    fixed_port: bool = field(init=False)

    def __post_init__(self) -> None:
        self.fixed_port = self.port != 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'registry.db'}"

    def git_url(self, name: str, token: str | None = None) -> str:
        base = self.url if token is None else self.url.replace("http://", f"http://mcpz:{token}@")
        return f"{base}/git/{name}.git"

    def start(self, crash_at: str | None = None) -> None:
        """Start, and wait until /healthz answers (after start-up recovery and journal replay)."""
        from registry_server.serve import free_port

        if not self.fixed_port:
            self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "MCPZ_TEST_CRASH_AT"} | self.env
        if self.database:
            env["MCPZ_DATABASE_URL"] = self.database
        if crash_at:
            env["MCPZ_TEST_CRASH_AT"] = crash_at
        argv = [sys.executable, "-m", "mcpz", "registry", "serve", "--data", str(self.data_dir)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--port", str(self.port), *self.args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        until(self._ready, 60, f"the registry to serve on {self.port}; log:\n{self.tail()}")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the registry exited with {self.proc.returncode}:\n{self.tail()}")
        # /healthz, not a TCP connect: the port listens before start-up recovery has run.
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def interrupt(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def start_restartable(tmp: Path, env: dict[str, str]) -> tuple[RegistryProcess, LiveRegistry]:
    """A registry process on `tmp`/registry (SQLite) with `env`, started on a port it keeps across
    restarts (nodes reconnect to it), and the LiveRegistry that drives it."""
    from registry_server.serve import free_port

    data = tmp / "registry"
    data.mkdir()
    registry = RegistryProcess(data.resolve(), tmp / "registry.log", port=free_port(), env=env)
    registry.start()
    return registry, LiveRegistry(registry.url, registry.data_dir, registry.database_url, registry)
