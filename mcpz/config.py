"""Settings, resolved as flag > `MCPZ_*` variable > the latest `mcpz login` (registry only) > user
config file > bundled `configs/` defaults.

Paths come from platformdirs and may each be moved by a variable (`MCPZ_CONFIG_DIR`,
`MCPZ_DATA_DIR`, `MCPZ_CACHE_DIR`), which is also how tests keep to their own folders.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Settings:
    registry: str
    call_timeout: float
    author: str
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
            ("user config", _read_toml(config_dir(env) / CONFIG_FILE)),
            # The registry of the latest `mcpz login`: the user's most recent word on where to go.
            ("login", {"registry": remembered} if remembered else {}),
            ("environment", {k: env[f"MCPZ_{k.upper()}"] for k in _KEYS if f"MCPZ_{k.upper()}" in env}),
            ("flag", {k: v for k, v in (flags or {}).items() if v is not None}),
        ]
        for source, layer in layers:
            for key, value in layer.items():
                if key in _KEYS:
                    values[key] = value
                    sources[key] = source
        try:
            return cls(
                registry=str(values.get("registry", "http://127.0.0.1:8080")).rstrip("/"),
                call_timeout=float(values.get("call_timeout", 30)),
                author=str(values.get("author", "")),
                sources=sources,
            )
        except ValueError as e:
            raise UsageError(f"invalid setting: {e}", hint="check MCPZ_* variables and config.toml") from e


_KEYS = ("registry", "call_timeout", "author")
