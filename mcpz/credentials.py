"""The one credential store every command uses.

Order: `MCPZ_TOKEN`, then the OS keyring (service "mcpz", user = registry URL), then, only
where no keyring backend exists, a 0600 file in the user config folder (with a one-time
warning). Tokens are never printed or logged.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

import tomli_w

from mcpz.atomic import write_atomic
from mcpz.config import config_dir, ensure_config_dir

SERVICE = "mcpz"
FILE_NAME = "credentials.toml"
log = logging.getLogger(__name__)


def _keyring_usable() -> bool:
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return False
    backend = keyring.get_keyring()
    return not isinstance(backend, fail.Keyring) and getattr(backend, "priority", 1) > 0


def _file(env: Mapping[str, str]) -> Path:
    return config_dir(env) / FILE_NAME


def _read_file(env: Mapping[str, str]) -> dict[str, str]:
    try:
        data = tomllib.loads(_file(env).read_text(encoding="utf-8"))
    except (FileNotFoundError, tomllib.TOMLDecodeError):
        return {}
    tokens = data.get("tokens", {})
    return {k: v for k, v in tokens.items() if isinstance(v, str)}


def _write_file(env: Mapping[str, str], tokens: dict[str, str]) -> Path:
    path = _file(env)
    ensure_config_dir(env)
    write_atomic(path, tomli_w.dumps({"tokens": dict(sorted(tokens.items()))}), mode=0o600)
    return path


def get_token(registry: str, env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    if env.get("MCPZ_TOKEN"):
        return env["MCPZ_TOKEN"]
    if _keyring_usable():
        import keyring
        from keyring.errors import KeyringError

        try:
            token = keyring.get_password(SERVICE, registry)
        except KeyringError as e:
            log.info("keyring lookup failed: %s", e)
        else:
            if token:
                return token
    return _read_file(env).get(registry)


def store_token(
    registry: str,
    token: str,
    env: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> str:
    """Keep `token` for `registry`; return where it went ("keyring" or the file's path)."""
    env = os.environ if env is None else env
    if _keyring_usable():
        import keyring
        from keyring.errors import KeyringError

        try:
            keyring.set_password(SERVICE, registry, token)
            return "keyring"
        except KeyringError as e:
            log.info("keyring store failed: %s", e)
    tokens = _read_file(env)
    tokens[registry] = token
    path = _write_file(env, tokens)
    if warn is not None:
        warn(f"no OS keyring is available; the token is kept in {path} (mode 0600)")
    return str(path)


def delete_token(registry: str, env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    removed = False
    if _keyring_usable():
        import keyring
        from keyring.errors import KeyringError, PasswordDeleteError

        try:
            keyring.delete_password(SERVICE, registry)
            removed = True
        except (PasswordDeleteError, KeyringError):
            pass
    tokens = _read_file(env)
    if registry in tokens:
        del tokens[registry]
        _write_file(env, tokens)
        removed = True
    return removed
