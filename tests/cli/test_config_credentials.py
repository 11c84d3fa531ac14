from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mcpz import credentials
from mcpz.config import Settings
from mcpz.errors import UsageError


def test_flag_beats_env_beats_user_config_beats_defaults(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.load().registry == "http://127.0.0.1:8080"
    assert Settings.load().sources["registry"] == "default"
    config = isolated_env / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('registry = "https://user.example"\n')
    assert Settings.load().registry == "https://user.example"
    monkeypatch.setenv("MCPZ_REGISTRY", "https://env.example/")
    assert Settings.load().registry == "https://env.example"
    assert Settings.load({"registry": "https://flag.example"}).registry == "https://flag.example"
    assert Settings.load({"registry": "https://flag.example"}).sources["registry"] == "flag"


def test_broken_user_config_is_a_usage_error(isolated_env: Path) -> None:
    config = isolated_env / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("registry = \n")
    with pytest.raises(UsageError, match=r"config\.toml: not valid TOML"):
        Settings.load()


def test_token_file_fallback_is_private_and_env_wins(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    warnings: list[str] = []
    where = credentials.store_token("http://r.example", "mcpz_secret", warn=warnings.append)
    path = Path(where)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert warnings and "mcpz_secret" not in warnings[0]
    assert credentials.get_token("http://r.example") == "mcpz_secret"
    monkeypatch.setenv("MCPZ_TOKEN", "mcpz_from_env")
    assert credentials.get_token("http://r.example") == "mcpz_from_env"
    monkeypatch.delenv("MCPZ_TOKEN")
    assert credentials.delete_token("http://r.example")
    assert credentials.get_token("http://r.example") is None
