"""The replicas' message bus: one NATS connection per registry replica (`mcpz registry serve
--replica`, `MCPZ_NATS_URL`).

Replicas tell each other things (who leads, which replica is alive) and relay requests and node
sockets to the replica that leads the mesh (`registry_server.mesh.cluster`). Messages carry their
metadata in NATS headers (strings) and their bytes as the payload, untouched.

A request to a subject nobody listens on is answered at once by the server with a status 503 (the
"no responders" message, when the connection supports headers): `no_responders(msg)` tells it
apart, so a replica learns that there is no leader right now without waiting for a timeout.

The single-process registry has no bus; nothing here is imported on its paths.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mcpz.errors import McpzError

log = logging.getLogger("registry_server.bus")

MAX_PAYLOAD = 512 * 1024
"""Bytes of payload per message we send: below NATS's default limit (1 MiB) with room to spare;
longer bodies go in several messages."""

Handler = Callable[[Msg], Awaitable[None]]


class BusUnavailable(McpzError):
    """NATS cannot be reached: a replica cannot talk to the others."""


class Bus:
    """This replica's NATS connection.

    Every `mcpz.` subject is scoped to this registry's cluster id (`mcpz.<id>.rest`), so two
    registries on one NATS server never hear each other: a request relayed to "the leader" reaches
    the leader of this registry's database, never another's.
    """

    def __init__(self, client: Client, name: str, cluster: str = "") -> None:
        self.client = client
        self.name = name
        self.prefix = f"mcpz.{cluster}." if cluster else "mcpz."

    def scoped(self, subject: str) -> str:
        """`subject` in this cluster's space (inboxes and subjects already scoped are left as they are)."""
        if subject.startswith("mcpz.") and not subject.startswith(self.prefix):
            return self.prefix + subject[len("mcpz.") :]
        return subject

    @classmethod
    async def connect(cls, url: str, name: str, cluster: str = "") -> Bus:
        """Connect to `url` as replica `name`: BusUnavailable at once when it does not answer;
        once connected, the client reconnects on its own for as long as the replica lives."""
        target = urlsplit(url)
        try:
            # nats-py retries a first connection as often as later ones (here: for ever), so a
            # replica started without NATS would hang at start-up: one plain attempt first.
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(target.hostname or "127.0.0.1", target.port or 4222), 3
            )
            writer.close()
            client = await nats.connect(
                url,
                name=f"mcpz-registry-{name}",
                connect_timeout=3,
                reconnect_time_wait=1,
                max_reconnect_attempts=-1,
                ping_interval=5,
                max_outstanding_pings=2,
                error_cb=_on_error,
                disconnected_cb=_on_disconnected,
                reconnected_cb=_on_reconnected,
            )
        except Exception as e:  # nats raises its own errors and OSError: both mean "not reachable"
            raise BusUnavailable(
                f"cannot reach NATS at {url}: {e or type(e).__name__}",
                hint="start nats-server, or point MCPZ_NATS_URL at one",
            ) from e
        return cls(client, name, cluster)

    async def close(self) -> None:
        if not self.client.is_closed:
            try:
                await self.client.drain()
            except Exception as e:  # closing: nothing left to do about it
                log.debug("closing the NATS connection: %s", e)

    def new_inbox(self) -> str:
        return self.client.new_inbox()

    async def subscribe(
        self, subject: str, handler: Handler | None = None, *, queue: str = ""
    ) -> Subscription:
        return await self.client.subscribe(self.scoped(subject), queue=queue, cb=handler)

    async def publish(
        self, subject: str, data: bytes = b"", *, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        await self.client.publish(self.scoped(subject), data, reply=self.scoped(reply), headers=headers)

    async def request(self, subject: str, data: bytes = b"", *, timeout: float) -> Msg:
        return await self.client.request(self.scoped(subject), data, timeout=timeout)


CLUSTER_FILE = "cluster-id"


def cluster_id(data_dir: Path) -> str:
    """The id the replicas sharing `data_dir` agree on: made by the first to start (written to a
    temporary file, then linked into place, which fails if another replica got there first), read
    by the others."""
    target = data_dir / CLUSTER_FILE
    if not target.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        temporary = data_dir / f".{CLUSTER_FILE}.{secrets.token_hex(8)}"
        temporary.write_text(secrets.token_hex(8) + "\n")
        try:
            os.link(temporary, target)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    value = target.read_text().strip()
    if not value.isalnum():
        raise McpzError(f"{target} is damaged", hint="stop every replica, delete the file, start them again")
    return value


def check_reachable(url: str) -> None:
    """BusUnavailable unless something listens at NATS `url` (before a replica starts serving)."""
    target = urlsplit(url)
    try:
        with socket.create_connection((target.hostname or "127.0.0.1", target.port or 4222), timeout=3):
            pass
    except OSError as e:
        raise BusUnavailable(
            f"cannot reach NATS at {url}: {e.strerror or e}",
            hint="start nats-server, or point MCPZ_NATS_URL at one (docs/scaling.md)",
        ) from e


async def _on_error(error: Exception) -> None:
    # One line, no traceback: while NATS is away every reconnect attempt reports here.
    log.warning("NATS: %s", error or type(error).__name__)


async def _on_disconnected() -> None:
    log.warning("NATS: disconnected; reconnecting")


async def _on_reconnected() -> None:
    log.warning("NATS: reconnected")


def meta(msg: Msg, key: str = "m") -> dict[str, Any]:
    """The JSON object a message carries in header `key` ({} when none)."""
    raw = (msg.headers or {}).get(key)
    if not raw:
        return {}
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


def header(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def no_responders(msg: Msg) -> bool:
    """The server's answer to a request nobody subscribes to."""
    return (msg.headers or {}).get("Status") == "503" and not msg.data
