"""Pieces several commands share: the --registry/--token options and the event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from mcpz.config import Settings

if TYPE_CHECKING:
    from mcpz.client.registry import RegistryClient

T = TypeVar("T")

RegistryOpt = Annotated[
    str | None, typer.Option("--registry", help="Registry URL (else MCPZ_REGISTRY, else the user config).")
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", help="API token (else MCPZ_TOKEN, else what `mcpz login` stored).", show_default=False
    ),
]


def settings(registry: str | None = None) -> Settings:
    return Settings.load({"registry": registry})


def token_for(registry: str, token: str | None) -> str | None:
    if token:
        return token
    from mcpz.credentials import get_token

    return get_token(registry)


def run(fn: Callable[..., Awaitable[T]], *args: Any, fast_loop: bool = False) -> T:
    """Enter the event loop once for a command; with `fast_loop`, uvloop's where installed (the
    long-running commands that relay calls: a node, a connector)."""
    import anyio

    options: dict[str, Any] = {}
    if fast_loop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            options["use_uvloop"] = True
    return anyio.run(fn, *args, backend_options=options)


def with_client(
    registry: str | None,
    token: str | None,
    fn: Callable[[RegistryClient], Awaitable[T]],
    *,
    need_token: bool = False,
) -> T:
    """`fn(client)` with a registry client for the resolved URL and token, in one event loop."""
    from mcpz.client.registry import connect
    from mcpz.errors import AuthError

    url = settings(registry).registry
    secret = token_for(url, token)
    if need_token and secret is None:
        raise AuthError(f"no token for {url}", hint="run `mcpz login` or set MCPZ_TOKEN")

    async def call() -> T:
        async with connect(url, secret) as client:
            return await fn(client)

    return run(call)
