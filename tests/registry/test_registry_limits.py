"""Hostile requests against a registry process: they get a 4xx and the process keeps serving.

The registry runs as `mcpz registry serve` in a subprocess (a crash here must not take pytest with
it), spoken to over raw sockets where a well-behaved client library would not send what an
attacker does: half a header, a body that never ends, a gzip bomb. Each test waits on the answer
with a bound; on the code before these limits the registry answered nothing (it waited for the
rest of the body) or died.
"""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import msgpack
import pytest
from conftest import LiveRegistry
from meshutil import until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from mcpz.mesh import CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, MAX_FRAME_SIZE
from registry_server.serve import free_port

SETTINGS = {
    "MCPZ_REGISTRY_HEADER_TIMEOUT": "2",
    "MCPZ_REGISTRY_MAX_PUSH_BYTES": "3000000",
}
DEEP = b"[" * 100_000
WAIT = 20.0  # seconds any answer may take on a loaded machine; the old code never answered


@dataclass
class Registry:
    proc: subprocess.Popen[bytes]
    port: int
    live: LiveRegistry
    log: Path
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> None:
        """The process still runs and answers /healthz."""
        assert self.proc.poll() is None, f"the registry died ({self.proc.returncode}): {self.tail()}"
        assert httpx2.get(f"{self.url}/healthz", timeout=WAIT).status_code == 200

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    tmp = tmp_path_factory.mktemp("limits")
    data, log, port = tmp / "data", tmp / "registry.log", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPZ_")}
    env.update(SETTINGS, HOME=str(tmp), MCPZ_CONFIG_DIR=str(tmp / "config"))
    argv = [sys.executable, "-m", "mcpz", "registry", "serve", "--data", str(data), "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the registry exited: {log.read_text(errors='replace')}")
        try:
            return httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        except httpx2.TransportError:
            return False

    try:
        until(listening, 60, "the registry to answer /healthz")
        live = LiveRegistry(f"http://127.0.0.1:{port}", data, f"sqlite:///{data / 'registry.db'}", None)
        token = live.account("acme", "read,publish,call,node")
        yield Registry(proc, port, live, log, token)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raw(registry: Registry, head: str, body: bytes = b"") -> socket.socket:
    """A connection that has sent `head` (request line and headers, as given) and `body`."""
    sock = socket.create_connection(("127.0.0.1", registry.port), timeout=WAIT)
    sock.sendall(head.encode("latin-1") + body)
    return sock


def status_of(sock: socket.socket) -> int:
    """The status of the answer on `sock`, read with the socket's bound."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"the connection closed without an answer: {data!r}")
        data += chunk
    return int(data.split(b" ", 2)[1])


def post(path: str, headers: dict[str, str]) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines) + "\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# --- nesting --------------------------------------------------------------------------------------


def test_deeply_nested_json_to_the_nonce_route_is_a_400_and_the_registry_lives(registry: Registry) -> None:
    response = httpx2.post(
        f"{registry.url}/v1/auth/nonce",
        content=DEEP,
        headers={"Content-Type": "application/json"},
        timeout=WAIT,
    )
    assert response.status_code == 400, response.text
    assert "nested deeper" in response.json()["error"]["message"]
    registry.alive()


def test_deeply_nested_json_to_the_gateway_is_a_400_and_the_registry_lives(registry: Registry) -> None:
    headers = {
        "Authorization": f"Bearer {registry.token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    response = httpx2.post(f"{registry.url}/mcp/acme/echo", content=DEEP, headers=headers, timeout=WAIT)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == -32700
    registry.alive()


def test_a_deeply_nested_msgpack_frame_closes_that_socket_and_the_hub_lives(registry: Registry) -> None:
    frame = msgpack.packb({"v": 1, "type": "hello"})[:-1]  # an envelope to nest the rest in
    frame = b"\x83" + frame[1:] + b"\xa1x" + b"\x91" * 100_000 + b"\xc0"
    url = f"ws://127.0.0.1:{registry.port}/v1/mesh"
    with connect(url, additional_headers={"Authorization": f"Bearer {registry.token}"}) as ws:
        ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_PROTOCOL_ERROR
    registry.alive()


def test_a_websocket_message_over_the_frame_size_is_refused_by_the_websocket_layer(
    registry: Registry,
) -> None:
    url = f"ws://127.0.0.1:{registry.port}/v1/mesh"
    headers = {"Authorization": f"Bearer {registry.token}"}
    with connect(url, additional_headers=headers, max_size=None) as ws:
        ws.send(b"\0" * (MAX_FRAME_SIZE + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_TOO_BIG
    registry.alive()


# --- sizes ----------------------------------------------------------------------------------------


def test_a_json_body_over_the_limit_is_refused_by_its_content_length_before_it_is_sent(
    registry: Registry,
) -> None:
    head = post("/v1/auth/nonce", {"Content-Type": "application/json", "Content-Length": str(50 << 20)})
    with raw(registry, head) as sock:
        assert status_of(sock) == 413
    registry.alive()


def test_a_chunked_json_body_is_refused_once_it_passes_the_limit(registry: Registry) -> None:
    head = post("/v1/auth/nonce", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    # 1.5 MiB of a body that never ends: the answer comes at the limit, not at the end.
    with raw(registry, head, b"".join(chunk(b" " * 65536) for _ in range(24))) as sock:
        assert status_of(sock) == 413
    registry.alive()


def test_a_gzip_bomb_to_git_is_refused_at_the_limit_while_the_registry_serves(registry: Registry) -> None:
    bomb = gzip.compress(b"\0" * (200 << 20), compresslevel=9)  # 200 MB of zeros in ~200 KB
    head = post(
        "/git/acme/bomb.git/git-receive-pack",
        {
            "Authorization": f"Bearer {registry.token}",
            "Content-Type": "application/x-git-receive-pack-request",
            "Content-Encoding": "gzip",
            "Transfer-Encoding": "chunked",
        },
    )
    # All but the end of the bomb: the registry must stop inflating at its limit and answer.
    body = b"".join(chunk(bomb[i : i + 16384]) for i in range(0, len(bomb) - 16384, 16384))
    with raw(registry, head, body) as sock:
        registry.alive()
        assert status_of(sock) == 413
    registry.alive()
    assert not (registry.live.data_dir / "repos" / "acme" / "bomb.git").exists()


# --- slow clients ---------------------------------------------------------------------------------


def test_a_client_that_never_finishes_its_headers_is_disconnected_while_others_are_served(
    registry: Registry,
) -> None:
    with raw(registry, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ") as slow:
        registry.alive()
        assert slow.recv(4096) == b"", "the registry answered a request whose headers never ended"
    registry.alive()


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["MAX_JSON_BYTES", "HEADER_TIMEOUT", "MAX_SESSIONS_PER_ACCOUNT"])
def test_a_limit_of_zero_is_a_clear_setting_error(key: str, tmp_path: Path) -> None:
    from mcpz.errors import UsageError
    from registry_server.settings import RegistrySettings

    with pytest.raises(UsageError, match=key.lower()):
        RegistrySettings.load(data_dir=tmp_path, env={f"MCPZ_REGISTRY_{key}": "0"})


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("PLATFORM_FEE_BPS", "10001", "platform_fee_bps"),
        ("PLATFORM_FEE_BPS", "-1", "platform_fee_bps"),
        ("PRICE_NOTICE_DAYS", "-1", "price_notice_days"),
        ("REFUND_WINDOW_DAYS", "-2", "refund_window_days"),
    ],
)
def test_billing_settings_out_of_range_are_clear_setting_errors(
    key: str, value: str, said: str, tmp_path: Path
) -> None:
    from mcpz.errors import UsageError
    from registry_server.settings import RegistrySettings

    with pytest.raises(UsageError, match=said):
        RegistrySettings.load(data_dir=tmp_path, env={f"MCPZ_REGISTRY_{key}": value})
    fine = RegistrySettings.load(data_dir=tmp_path, env={f"MCPZ_REGISTRY_{key}": "0"})
    assert getattr(fine, said) == 0
