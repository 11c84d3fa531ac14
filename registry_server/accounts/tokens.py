"""API tokens: random secrets shown once, stored only as a hash, with scopes and expiry."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

PREFIX = "mcpz_"
SCOPES = ("read", "publish", "deploy", "call", "node", "admin")


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    # The secret carries 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[: len(PREFIX) + 6]


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    """Scopes from "a,b" or a list; raise ValueError naming an unknown one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = {s.strip() for s in items if s.strip()}
    for scope in scopes:
        if scope not in SCOPES:
            raise ValueError(f'unknown scope "{scope}" (known: {", ".join(SCOPES)})')
    if not scopes:
        raise ValueError(f"no scopes given (known: {', '.join(SCOPES)})")
    return tuple(s for s in SCOPES if s in scopes)


def beyond_grant(caller: Iterable[str], requested: Iterable[str]) -> set[str]:
    """The scopes of `requested` a caller with scopes `caller` may not put on a new key. Pure.

    A key never has a scope its creator lacks, with one exception: a caller with `admin` may mint
    `node` keys. A node acts only for its token's account (it runs deployments of namespaces that
    account owns or is a member of, unless its owner offers it with --shared), so a node key gives
    nothing the account could not already do; this is how a wallet session, which carries no `node`
    scope itself, starts its own nodes without an operator.
    """
    held = set(caller)
    if "admin" in held:
        held.add("node")
    return set(requested) - held


def canonical_resource(url: str) -> str:
    """The one spelling of a resource URL a token is bound to (RFC 8707 2): lower-case scheme and
    host, no default port, no trailing slash; ValueError for one with a fragment, a query, user
    info, or no http(s) scheme and host."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an absolute http(s) URL")
    if parts.fragment or "#" in url:
        raise ValueError("a resource has no fragment")
    if parts.query:
        raise ValueError("a resource has no query")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a resource carries no user name or password")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}"


def audience_covers(resource: str, url: str) -> bool:
    """Whether a token bound to `resource` may be used at `url`: the same resource, one under it
    (a token for the gateway `/mcp` serves every deployment), or the same deployment at a pinned
    version (`/mcp/ns/name@1.2.0` for a token bound to `/mcp/ns/name`). Pure."""
    try:
        bound, target = canonical_resource(resource), canonical_resource(url)
    except ValueError:
        return False
    if target == bound or target.startswith(bound + "/"):
        return True
    head, at, _version = target.rpartition("@")
    return bool(at) and "/" not in _version and head == bound
