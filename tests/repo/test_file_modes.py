"""What holds secrets is the owner's alone, whatever the umask: the registry's database and the
client's config folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import start_registry
from gitutil import api

UMASKS = [0o022, 0o000]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_the_registry_database_is_0600_in_a_0700_folder(tmp_path: Path, mask: int) -> None:
    data = tmp_path / "registry"
    with umask(mask):
        live = start_registry(data)
        try:
            token = live.account("alice")
            assert api(live, "/v1/whoami", token).status_code == 200
            assert mode(data) == 0o700
            for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
                assert mode(data / name) == 0o600, name
        finally:
            live.stop()


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_the_cli_creates_its_config_folder_0700(tmp_path: Path, mask: int) -> None:
    live = start_registry(tmp_path / "registry")
    try:
        token = live.account("alice")
        config = tmp_path / "fresh" / "config"
        env = {
            **os.environ,
            "MCPZ_CONFIG_DIR": str(config),
            "MCPZ_REGISTRY": live.url,
            # No OS keyring, so the token goes to the credentials file in the config folder.
            "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        }
        result = subprocess.run(
            [sys.executable, "-m", "mcpz", "login", "--token"],
            input=token + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            umask=mask,
        )
        assert result.returncode == 0, result.stderr
        assert mode(config) == 0o700
        files = list(config.iterdir())
        assert files and all(mode(f) == 0o600 for f in files)
    finally:
        live.stop()
