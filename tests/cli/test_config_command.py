"""`mcpz config`, and the settings every command reads: typed, checked once, unknown keys refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mcpz.config import Settings, registry_url
from mcpz.errors import UsageError


def test_set_get_list_unset_path_round_trip(cli: Any, isolated_env: Path) -> None:
    where = cli("config", "path")
    assert where.exit_code == 0
    path = Path(where.stdout.strip())
    assert path == isolated_env / "config" / "config.toml" and not path.exists()
    assert cli("config", "set", "registry", "https://r.example/").exit_code == 0
    assert cli("config", "set", "call_timeout", "60").exit_code == 0
    assert 'registry = "https://r.example"' in path.read_text()
    got = json.loads(cli("config", "get", "call_timeout", "--json").stdout)
    assert got == {"key": "call_timeout", "value": 60.0, "source": "user config"}
    listed = {row["key"]: row for row in json.loads(cli("config", "list", "--json").stdout)}
    assert listed["registry"]["value"] == "https://r.example" and listed["author"]["source"] == "default"
    assert Settings.load().call_timeout == 60.0
    unset = cli("config", "unset", "call_timeout", "--json")
    assert json.loads(unset.stdout) == {"key": "call_timeout", "removed": True}
    assert Settings.load().call_timeout == 30.0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["set", "registy", "http://x"],
            "unknown setting 'registy' in the command (did you mean 'registry'?",
        ),
        (["get", "call_timout"], "did you mean 'call_timeout'?"),
        (["set", "registry", "http://x:99999"], "Port out of range"),
        (["set", "registry", "ftp://x"], "is not http(s):// or ws(s)://"),
        (["set", "call_timeout", "soon"], "is not a number of seconds above 0"),
        (["set", "call_timeout", "--", "-1"], "is not a number of seconds above 0"),
    ],
)
def test_bad_keys_and_values_are_refused_with_what_to_do(
    cli: Any, isolated_env: Path, args: list[str], says: str
) -> None:
    result = cli("--json", "config", *args)
    assert result.exit_code == 2, result.stderr
    assert says in result.stderr and result.stderr.count("\n") == 1
    assert json.loads(result.stdout)["error"]["exit_code"] == 2
    assert not (isolated_env / "config" / "config.toml").exists()


def test_an_unknown_key_in_the_user_config_is_refused_and_unset_repairs_it(
    cli: Any, isolated_env: Path
) -> None:
    path = isolated_env / "config" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('regstry = "http://x"\n')
    with pytest.raises(UsageError, match="unknown setting 'regstry'") as caught:
        Settings.load()
    assert caught.value.hint is not None and "did you mean 'registry'?" in caught.value.hint
    refused = cli("whoami")
    assert refused.exit_code == 2 and "regstry" in refused.stderr
    assert cli("config", "unset", "regstry").exit_code == 0
    assert Settings.load().registry == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    "url",
    [
        "http://h:99999",
        "http://h:abc",
        "http://[::1",
        "ftp://h",
        "http://",
        "http://h:0",
        "h:8080",
        "http://h/?x=1",
    ],
)
def test_every_bad_registry_url_is_one_usage_error_where_settings_are_read(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError, match="registry URL"):
        registry_url(url)
    monkeypatch.setenv("MCPZ_REGISTRY", url)
    with pytest.raises(UsageError, match="from MCPZ_REGISTRY"):
        Settings.load()


@pytest.mark.parametrize(
    "args",
    [
        ["whoami"],
        ["info", "acme/x"],
        ["push"],
        ["connect", "."],
        ["node", "run"],
        ["versions", "acme/x"],
        ["call", "acme/x", "t"],
    ],
)
def test_commands_refuse_a_bad_registry_url_at_once(cli: Any, tmp_path: Path, args: list[str]) -> None:
    result = cli(*args, "--registry", "http://127.0.0.1:99999", "--json", cwd=tmp_path)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("error: registry URL 'http://127.0.0.1:99999' (from --registry)")
    assert result.stderr.count("\n") == 1
    assert json.loads(result.stdout)["error"]["exit_code"] == 2


def test_good_registry_urls_are_kept_without_the_trailing_slash() -> None:
    assert registry_url("https://r.example/") == "https://r.example"
    assert registry_url("http://[::1]:8080/base/") == "http://[::1]:8080/base"
