"""Client ID metadata documents (draft-ietf-oauth-client-id-metadata-document, the MCP spec's
preferred client registration): a client whose `client_id` is an https URL is described by the
JSON document at that URL, fetched here when the client shows up and cached as its Cache-Control
allows.

The fetch is a request this registry makes to a URL anyone may name, so it is bounded: https only,
no redirects, 5 seconds, 64 KiB, and a host that resolves to a loopback, private, link-local or
otherwise non-global address is refused, unless the registry itself is on such an address (a
development registry on loopback may serve clients on loopback). What the document says is checked
as a registration is (`rules.document_client`).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections import OrderedDict
from urllib.parse import urlsplit

import httpx2

from registry_server.oauth import rules
from registry_server.oauth.rules import OAuthError

TIMEOUT = 5.0
MAX_ENTRIES = 1000


class ClientDocuments:
    """Fetches and caches client ID metadata documents: client_id -> (name, redirect URIs, grants)."""

    def __init__(self, *, allow_private: bool, timeout: float = TIMEOUT) -> None:
        self.allow_private = allow_private
        self.timeout = timeout
        self._cache: OrderedDict[str, tuple[tuple[str, list[str], list[str]], float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, client_id: str) -> tuple[str, list[str], list[str]]:
        """The client the document at `client_id` describes; OAuthError invalid_client when it
        cannot be fetched or is not usable."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(client_id)
            if hit is not None and hit[1] > now:
                self._cache.move_to_end(client_id)
                return hit[0]
        document, keep = self._fetch(client_id)
        found = rules.document_client(client_id, document)
        if keep:
            with self._lock:
                self._cache[client_id] = (found, now + keep)
                while len(self._cache) > MAX_ENTRIES:
                    self._cache.popitem(last=False)
        return found

    def _check_address(self, host: str, port: int) -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise OAuthError(
                "invalid_client", f"the client metadata host {host} does not resolve: {e}"
            ) from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global and not self.allow_private:
                raise OAuthError(
                    "invalid_client",
                    f"the client metadata host {host} is on a non-public address ({address})",
                )

    def _fetch(self, url: str) -> tuple[object, int]:
        parts = urlsplit(url)
        assert parts.hostname is not None  # rules.is_document_client_id said so
        self._check_address(parts.hostname, parts.port or 443)
        try:
            with (
                httpx2.Client(timeout=self.timeout, follow_redirects=False) as http,
                http.stream("GET", url, headers={"Accept": "application/json"}) as answer,
            ):
                if answer.status_code != 200:
                    raise OAuthError(
                        "invalid_client", f"the client metadata document answered HTTP {answer.status_code}"
                    )
                body = b""
                for chunk in answer.iter_bytes():
                    body += chunk
                    if len(body) > rules.MAX_DOCUMENT:
                        raise OAuthError(
                            "invalid_client",
                            f"the client metadata document is over {rules.MAX_DOCUMENT} bytes",
                        )
                keep = rules.cache_seconds(answer.headers.get("cache-control"))
        except httpx2.HTTPError as e:
            raise OAuthError("invalid_client", f"cannot fetch the client metadata document: {e}") from None
        try:
            return json.loads(body), keep
        except ValueError:
            raise OAuthError("invalid_client", "the client metadata document is not JSON") from None
