"""The authorization server's HTTP helpers for routes (its own and the web's authorization page)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from fastapi import Request

from registry_server.http import state_of
from registry_server.oauth.documents import ClientDocuments
from registry_server.settings import public_url


def client_documents(request: Request) -> ClientDocuments:
    """The app's fetcher of client ID metadata documents, made on first use. A registry on a
    loopback or private address (development) may fetch documents from such addresses too."""
    found: ClientDocuments | None = getattr(request.app.state, "client_documents", None)
    if found is None:
        host = urlsplit(public_url(state_of(request).settings)).hostname or ""
        try:
            private = not ipaddress.ip_address(host).is_global
        except ValueError:
            private = host == "localhost"
        found = request.app.state.client_documents = ClientDocuments(allow_private=private)
    return found
