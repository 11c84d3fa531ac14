"""Running the registry under uvicorn, in the foreground or in a background thread."""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from mcpz.errors import McpzError, UsageError
from mcpz.mesh import MAX_FRAME_SIZE
from registry_server.app import create_app
from registry_server.bus import check_reachable
from registry_server.header_timeout import with_header_timeout
from registry_server.logs import configure
from registry_server.settings import RegistrySettings
from registry_server.usage.service import take_data_lock


def serve(
    settings: RegistrySettings, *, log_level: str = "info", on_ready: Callable[[], None] | None = None
) -> None:
    """Serve until interrupted.

    What can fail at start-up for a reason the operator can fix (another registry on the data
    folder, the port taken or not ours to bind) is checked here, before uvicorn starts, so that it
    ends as one McpzError line instead of uvicorn's traceback. `on_ready` runs once both passed.
    """
    if settings.replica and settings.database_url.startswith("sqlite"):
        raise UsageError(
            "--replica needs a database every replica reaches, not SQLite",
            hint="set MCPZ_DATABASE_URL to a PostgreSQL database (docs/scaling.md)",
        )
    if settings.replica:
        check_reachable(settings.nats_url)
    lock = take_data_lock(settings.usage_dir)
    try:
        sock = bind(settings.host, settings.port)
    except BaseException:
        os.close(lock)
        raise
    configure()  # before on_ready: what it says is a log line, JSON as every other
    if on_ready is not None:
        on_ready()
    config = uvicorn.Config(
        create_app(settings, usage_lock=lock),
        log_config=None,
        log_level=log_level,
        timeout_keep_alive=30,
        **uvicorn_limits(settings),
    )
    server = uvicorn.Server(config)
    with sock:
        server.run(sockets=[sock])
    if not server.started:
        raise McpzError("the registry did not start", hint="see the log lines above")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or an McpzError that says why not and what to do."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(
            f"cannot listen on {host}: {e.strerror}", hint="pass --host with an address of this machine"
        ) from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError as e:
        sock.close()
        where = f"{host}:{port}"
        if e.errno == errno.EADDRINUSE:
            raise McpzError(
                f"cannot listen on {where}: the port is in use",
                hint="stop what listens there, or pass --port with another port",
            ) from None
        if e.errno == errno.EACCES:
            raise McpzError(
                f"cannot listen on {where}: permission denied",
                hint="use a port above 1023, or run with the right to bind it",
            ) from None
        raise McpzError(f"cannot listen on {where}: {e.strerror}", hint="check --host and --port") from None
    return sock


def uvicorn_limits(settings: RegistrySettings) -> dict[str, Any]:
    """The limits uvicorn enforces for the registry: the header deadline and the WebSocket message size."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return {
        "http": with_header_timeout(AutoHTTPProtocol, settings.header_timeout),
        # No hub frame is larger than the protocol's limit: a larger message is refused by the
        # WebSocket layer before it is buffered whole.
        "ws_max_size": MAX_FRAME_SIZE,
    }


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class BackgroundRegistry:
    """A registry served from a thread of this process (the demo, tests, benchmarks)."""

    settings: RegistrySettings
    server: uvicorn.Server
    thread: threading.Thread
    tls: bool = False

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.settings.host}:{self.settings.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_in_thread(
    settings: RegistrySettings,
    *,
    timeout: float = 20.0,
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile: str | os.PathLike[str] | None = None,
) -> BackgroundRegistry:
    """Serve in a thread; with `ssl_certfile` (and `ssl_keyfile`) over TLS (https://, wss://)."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level="warning",
        lifespan="on",
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        **uvicorn_limits(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="mcpz-registry", daemon=True)
    thread.start()
    import time

    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the embedded registry did not start")
        time.sleep(0.01)
    return BackgroundRegistry(settings, server, thread, tls=ssl_certfile is not None)
