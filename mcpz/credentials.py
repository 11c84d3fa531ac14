"""The one credential store every command uses, and the list of registries logged into.

Order: `MCPZ_TOKEN`, then the OS keyring (service "mcpz", user = registry URL), then, only
where no keyring backend exists, a 0600 file in the user config folder (with a one-time
warning). Tokens are never printed or logged.

Each registry keeps its own token, so logging in to a second registry leaves the first logged in.
`logins.toml` in the user config folder (no secrets) lists the registries logged into, the
account of each, and the default: the registry of the latest `mcpz login`, which commands use
when neither `--registry` nor `MCPZ_REGISTRY` names one (`mcpz.config.Settings`).
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from mcpz.atomic import write_atomic
from mcpz.config import config_dir, ensure_config_dir

SERVICE = "mcpz"
FILE_NAME = "credentials.toml"
LOGINS_FILE = "logins.toml"
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


@dataclass(frozen=True)
class Login:
    """A registry logged into: its URL, the account, when, and whether it is the default."""

    registry: str
    account: str
    logged_in_at: str
    default: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "account": self.account,
            "logged_in_at": self.logged_in_at,
            "default": self.default,
        }


def _logins_file(env: Mapping[str, str]) -> Path:
    return config_dir(env) / LOGINS_FILE


def _read_logins(env: Mapping[str, str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(_logins_file(env).read_text(encoding="utf-8"))
    except (FileNotFoundError, tomllib.TOMLDecodeError):
        return {}
    return data


def logins(env: Mapping[str, str] | None = None) -> list[Login]:
    """Every registry logged into, the default first, then by URL."""
    env = os.environ if env is None else env
    data = _read_logins(env)
    default = data.get("default")
    found: list[Login] = []
    for url, entry in (data.get("registries") or {}).items():
        if isinstance(entry, dict):
            found.append(
                Login(
                    registry=str(url),
                    account=str(entry.get("account", "")),
                    logged_in_at=str(entry.get("logged_in_at", "")),
                    default=url == default,
                )
            )
    return sorted(found, key=lambda login: (not login.default, login.registry))


def default_registry(env: Mapping[str, str] | None = None) -> str | None:
    """The registry of the latest `mcpz login` (still logged into), or None."""
    env = os.environ if env is None else env
    default = _read_logins(env).get("default")
    return default if isinstance(default, str) and default else None


def remember_login(registry: str, account: str, env: Mapping[str, str] | None = None) -> Login:
    """Record a login to `registry` as `account` and make it the default registry."""
    from datetime import UTC, datetime

    env = os.environ if env is None else env
    data = _read_logins(env)
    registries = {k: v for k, v in (data.get("registries") or {}).items() if isinstance(v, dict)}
    moment = datetime.now(UTC).replace(microsecond=0).isoformat()
    registries[registry] = {"account": account, "logged_in_at": moment}
    _write_logins(env, registry, registries)
    return Login(registry, account, moment, True)


def forget_login(registry: str, env: Mapping[str, str] | None = None) -> bool:
    """Drop `registry` from the logins; if it was the default, no registry is the default now."""
    env = os.environ if env is None else env
    data = _read_logins(env)
    registries = {k: v for k, v in (data.get("registries") or {}).items() if isinstance(v, dict)}
    known = registries.pop(registry, None) is not None
    default = data.get("default")
    if known or default == registry:
        _write_logins(env, None if default == registry else default, registries)
    return known


def _write_logins(env: Mapping[str, str], default: str | None, registries: dict[str, Any]) -> None:
    ensure_config_dir(env)
    body: dict[str, Any] = {"default": default} if default else {}
    body["registries"] = dict(sorted(registries.items()))
    write_atomic(_logins_file(env), tomli_w.dumps(body), mode=0o600)
