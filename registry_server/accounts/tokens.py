"""API tokens: random secrets shown once, stored only as a hash, with scopes and expiry."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

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
