"""Settings, resolved as flag > `MCPZ_*` variable > the latest `mcpz login` (registry only) > user
config file > bundled `configs/` defaults.

Paths come from platformdirs and may each be moved by a variable (`MCPZ_CONFIG_DIR`,
`MCPZ_DATA_DIR`, `MCPZ_CACHE_DIR`), which is also how tests keep to their own folders.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mcpz.bundled import bundled_path
from mcpz.errors import UsageError

CONFIG_FILE = "config.toml"


def _dir(env: Mapping[str, str], var: str, kind: str) -> Path:
    if env.get(var):
        return Path(env[var])
    import platformdirs

    getter = {
        "config": platformdirs.user_config_dir,
        "data": platformdirs.user_data_dir,
        "cache": platformdirs.user_cache_dir,
    }[kind]
    return Path(getter("mcpz", appauthor=False))


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    return _dir(os.environ if env is None else env, "MCPZ_CONFIG_DIR", "config")


def ensure_config_dir(env: Mapping[str, str] | None = None) -> Path:
    """The config folder, created 0700 whatever the umask: it holds credentials."""
    from mcpz.private import private_dir

    return private_dir(config_dir(env))


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    return _dir(os.environ if env is None else env, "MCPZ_DATA_DIR", "data")


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    return _dir(os.environ if env is None else env, "MCPZ_CACHE_DIR", "cache")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}", hint="fix or remove that file") from e


def registry_url(value: object, source: str = "setting") -> str:
    """`value` as a registry URL (http(s), or ws(s) as nodes take it; a host; a port in range),
    without a trailing slash.

    The one check of a registry URL: every setting passes here when it is read, so no client,
    connector or git transport ever meets a URL it cannot parse (a port of 99999 used to escape as
    OverflowError, LocationParseError or InvalidURL, one per library)."""
    from urllib.parse import urlsplit

    text = str(value).strip()
    hint = (
        "e.g. http://127.0.0.1:8080; set it with --registry, MCPZ_REGISTRY or `mcpz config set registry URL`"
    )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise UsageError(f"registry URL {text!r} ({source}): {e}", hint=hint) from e
    if parts.scheme not in ("http", "https", "ws", "wss"):  # a node may be given the mesh's wss://
        raise UsageError(f"registry URL {text!r} ({source}) is not http(s):// or ws(s)://", hint=hint)
    if not parts.hostname:
        raise UsageError(f"registry URL {text!r} ({source}) has no host", hint=hint)
    if port == 0:
        raise UsageError(f"registry URL {text!r} ({source}): port 0 cannot be connected to", hint=hint)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(
            f"registry URL {text!r} ({source}) carries a query, fragment or credentials",
            hint="give the bare URL; tokens go through `mcpz login` or MCPZ_TOKEN",
        )
    return text.rstrip("/")


def _timeout(value: object, source: str = "setting") -> float:
    try:
        seconds = float(str(value))
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(
            f"call_timeout {value!r} ({source}) is not a number of seconds above 0",
            hint="e.g. `mcpz config set call_timeout 60`",
        )
    return seconds


def _author(value: object, source: str = "setting") -> str:
    if not isinstance(value, str):
        raise UsageError(f"author {value!r} ({source}) is not text", hint='write it as "Name <email>"')
    return value


def _chain_rpc(value: object, source: str = "setting") -> str:
    text = value.strip() if isinstance(value, str) else ""
    if text and not text.startswith(("http://", "https://")):
        raise UsageError(
            f"chain_rpc ({source}) is not an http(s) URL",
            hint="e.g. `mcpz config set chain_rpc https://rpc.example/...` (your node or provider)",
        )
    return text


def _units(value: object, source: str = "setting") -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UsageError(f"{source} is not a whole number of base units")
    try:
        units = int(value)
    except ValueError:
        raise UsageError(
            f"{source} is not a whole number of base units", hint="e.g. 500000 (0.5 USDC)"
        ) from None
    if units < 0:
        raise UsageError(f"{source} must not be negative", hint="0 means no limit")
    return units


class Key(NamedTuple):
    """A setting: how its text is read (and checked), and what it means."""

    parse: Callable[[object, str], object]
    about: str


KEYS: dict[str, Key] = {
    "registry": Key(registry_url, "Registry URL commands talk to."),
    "call_timeout": Key(_timeout, "Seconds to wait for an agent to answer one request."),
    "author": Key(_author, 'Commit author, "Name <email>" (empty: git\'s own).'),
    "chain_rpc": Key(_chain_rpc, "JSON-RPC URL of the settlement chain, for `mcpz billing deposit`."),
    "x402_max_per_day": Key(_units, "Most `mcpz call --pay` signs per UTC day, base units (0: no limit)."),
    "x402_max_per_agent_per_day": Key(
        _units, "Most `--pay` signs per agent per UTC day, base units (0: none)."
    ),
}


def unknown_key(key: str, where: str) -> UsageError:
    """The error for a setting no one reads, with the nearest known one."""
    import difflib

    close = difflib.get_close_matches(key, list(KEYS), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known settings: {', '.join(KEYS)}"
    return UsageError(f"unknown setting {key!r} in {where}", hint=f"{hint} `mcpz config list` shows them all")


def parse_value(key: str, value: object, source: str = "setting") -> object:
    """`value` of setting `key`, typed and checked (a UsageError naming `source` if it is not)."""
    if key not in KEYS:
        raise unknown_key(key, source)
    return KEYS[key].parse(value, source)


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    return config_dir(env) / CONFIG_FILE


def read_user_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The user's config file as written (every key checked to be known)."""
    path = user_config_path(env)
    values = _read_toml(path)
    for key in values:
        if key not in KEYS:
            raise unknown_key(key, str(path))
    return values


def write_user_config(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Path:
    """Replace the user's config file with `values` (atomic: a temp file, then a rename)."""
    import tomli_w

    from mcpz.atomic import write_atomic

    ensure_config_dir(env)
    path = user_config_path(env)
    write_atomic(path, tomli_w.dumps(dict(values)))
    return path


@dataclass(frozen=True)
class Settings:
    registry: str
    call_timeout: float
    author: str
    chain_rpc: str = ""
    x402_max_per_day: int = 0
    x402_max_per_agent_per_day: int = 0
    sources: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        from mcpz.credentials import default_registry

        remembered = default_registry(env)
        layers: list[tuple[str, Mapping[str, Any]]] = [
            ("default", _read_toml(bundled_path("configs") / "mcpz.toml")),
            ("user config", read_user_config(env)),
            # The registry of the latest `mcpz login`: the user's most recent word on where to go.
            ("login", {"registry": remembered} if remembered else {}),
            ("environment", {k: env[f"MCPZ_{k.upper()}"] for k in KEYS if f"MCPZ_{k.upper()}" in env}),
            ("flag", {k: v for k, v in (flags or {}).items() if v is not None}),
        ]
        for source, layer in layers:
            for key, value in layer.items():
                if key in KEYS:
                    values[key] = value
                    sources[key] = source
        typed = {
            key: parse_value(key, values[key], _describe(key, sources[key], env))
            for key in KEYS
            if key in values
        }
        return cls(
            registry=str(typed.get("registry", "http://127.0.0.1:8080")),
            call_timeout=float(typed.get("call_timeout", 30)),  # type: ignore[arg-type]
            author=str(typed.get("author", "")),
            chain_rpc=str(typed.get("chain_rpc", "")),
            x402_max_per_day=int(typed.get("x402_max_per_day", 0)),  # type: ignore[call-overload]
            x402_max_per_agent_per_day=int(typed.get("x402_max_per_agent_per_day", 0)),  # type: ignore[call-overload]
            sources=sources,
        )


def _describe(key: str, source: str, env: Mapping[str, str]) -> str:
    """Where a value came from, for an error that must say which one to fix."""
    if source == "environment":
        return f"from MCPZ_{key.upper()}"
    if source == "user config":
        return f"from {user_config_path(env)}"
    if source == "flag":
        return f"from --{key.replace('_', '-')}"
    if source == "login":
        return "remembered by the latest `mcpz login`"
    return "the default"


def set_value(key: str, text: str, env: Mapping[str, str] | None = None) -> object:
    """Write setting `key` = `text` (typed and checked) into the user config; the stored value."""
    if key not in KEYS:
        raise unknown_key(key, "the command")
    value = parse_value(key, text, "the value given")
    values = read_user_config(env)
    values[key] = value
    write_user_config(values, env)
    return value


def unset_value(key: str, env: Mapping[str, str] | None = None) -> bool:
    """Remove setting `key` from the user config; whether it was there. An unknown key that is in
    the file is removed too: that is how a refused config file is repaired."""
    values = _read_toml(user_config_path(env))
    if key not in values:
        if key not in KEYS:
            raise unknown_key(key, "the command")
        return False
    del values[key]
    write_user_config(values, env)
    return True


def effective(env: Mapping[str, str] | None = None) -> list[tuple[str, object, str]]:
    """Every setting with its value in force and where that value came from."""
    settings = Settings.load(env=env)
    return [(key, getattr(settings, key), settings.sources.get(key, "default")) for key in KEYS]
