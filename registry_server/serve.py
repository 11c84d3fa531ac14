"""Running the registry under uvicorn, in the foreground or in a background thread."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

import uvicorn

from mcpz.mesh import MAX_FRAME_SIZE
from registry_server.app import create_app
from registry_server.header_timeout import with_header_timeout
from registry_server.logs import configure
from registry_server.settings import RegistrySettings


def serve(settings: RegistrySettings, *, log_level: str = "info") -> None:
    configure()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=log_level,
        timeout_keep_alive=30,
        **uvicorn_limits(settings),
    )


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
