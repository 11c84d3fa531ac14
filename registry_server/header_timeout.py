"""A deadline for a request's headers, which uvicorn does not have.

uvicorn times out idle keep-alive connections, but a client that opens a connection and then sends
its request line and headers a byte at a time (or never) holds a socket and a slot forever. The
protocol class made here closes a connection whose next request's headers are not complete
`timeout` seconds after the connection opened or, on keep-alive, after its first byte arrived.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("registry_server.http")


def with_header_timeout(base: Any, timeout: float) -> Any:
    """A subclass of uvicorn's HTTP protocol class `base` with the header deadline."""

    class HeaderTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_header_timer(None)

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a request's headers are complete
                self._stop_header_timer()
            elif self._header_timer is None and (before is None or before.response_complete):
                self._start_header_timer(before)  # the first bytes of the next request

        def handle_websocket_upgrade(self, *args: Any) -> None:
            self._stop_header_timer()
            super().handle_websocket_upgrade(*args)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        def _start_header_timer(self, cycle: object) -> None:
            self._header_timer = self.loop.call_later(timeout, self._header_deadline, cycle)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_deadline(self, cycle: object) -> None:
            self._header_timer = None
            transport = self.transport
            if self.cycle is cycle and transport.get_protocol() is self and not transport.is_closing():
                log.info("closed a connection whose request headers took over %ss", timeout)
                transport.close()

    return HeaderTimeoutProtocol
