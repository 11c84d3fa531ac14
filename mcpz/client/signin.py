"""`mcpz login --wallet`: Sign-In with Ethereum (EIP-4361) against a registry, client side.

The registry issues a nonce (POST /v1/auth/nonce); the client builds the message for the
registry URL *it* was told to use (so a registry cannot have a wallet sign in to another site),
signs it with EIP-191 `personal_sign`, and trades it for a session token (POST /v1/auth/login).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from mcpz.client.models import Challenge, SessionToken
from mcpz.client.registry import RegistryClient
from mcpz.errors import UsageError
from mcpz.keys import siwe
from mcpz.keys.ethkeys import LocalAccount

STATEMENT = "Sign in to the mcpz registry"
MESSAGE_LIFETIME = timedelta(minutes=5)


def login_message(registry_url: str, address: str, challenge: Challenge, now: datetime) -> siwe.SiweMessage:
    """The EIP-4361 message for `challenge` (the nonce response), bound to `registry_url`. Pure."""
    parts = urlsplit(registry_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"registry URL {registry_url!r} is not an http(s) URL")
    return siwe.SiweMessage.create(
        scheme=parts.scheme,
        domain=parts.netloc.rpartition("@")[2],
        address=address,
        statement=STATEMENT,
        uri=challenge.uri,
        chain_id=challenge.chain_id,
        nonce=challenge.nonce,
        issued_at=now,
        expiration_time=now + MESSAGE_LIFETIME,
    )


async def sign_in(client: RegistryClient, account: LocalAccount) -> SessionToken:
    """Sign in with `account`; returns the registry's answer, whose `token` is the session token."""
    challenge = await client.auth_nonce(str(account.address))
    message = login_message(client.url, str(account.address), challenge, datetime.now(UTC))
    signature = siwe.sign(message, account)
    return await client.auth_login(message.to_text(), signature)


def finish_login(
    registry_url: str, token: str, account: str, warn: Callable[[str], None] | None = None
) -> str:
    """Keep `token` for `registry_url` and make it the default registry; return where the token went."""
    from mcpz.credentials import remember_login, store_token

    where = store_token(registry_url, token, warn=warn)
    remember_login(registry_url, account)
    return where


def logout(registry_url: str) -> bool:
    """Forget the token of `registry_url` and its login; True when there was something to forget."""
    from mcpz.credentials import delete_token, forget_login

    removed = delete_token(registry_url)
    return forget_login(registry_url) or removed
