"""Which Host names the gateway answers (DNS rebinding): the names parsed, the setting read."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry_server.gateway.asgi import host_name
from registry_server.settings import RegistrySettings


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("registry.example", "registry.example"),
        ("Registry.Example:8443", "registry.example"),
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("localhost", "localhost"),
        (" evil.example:80 ", "evil.example"),
        ("weird:port", "weird:port"),  # not a port: the whole value, which matches no allowed name
    ],
)
def test_a_host_headers_name_is_found_without_its_port(header: str, name: str) -> None:
    assert host_name(header) == name


def test_allowed_hosts_come_from_the_environment_lower_case(tmp_path: Path) -> None:
    env = {"MCPZ_REGISTRY_ALLOWED_HOSTS": "MCP.example:443, other.example"}
    settings = RegistrySettings.load(data_dir=tmp_path, env=env)
    assert settings.allowed_hosts == ("mcp.example:443", "other.example")
    assert RegistrySettings.load(data_dir=tmp_path, env={}).allowed_hosts == ()
