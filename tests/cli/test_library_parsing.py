"""The parsing the CLI used to do itself, now in the library (sizes, selectors, `--since`, operator
token requests), the typed answers of the registry client, and the `tree`/`why` JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from packaging.version import Version

from mcpz.client.deploy import parse_selector, parse_size
from mcpz.client.models import AgentInfo, Deployment, Usage, WhoAmI, from_json
from mcpz.deps.report import TreeReport
from mcpz.errors import RemoteError, UsageError
from mcpz.instants import parse_since
from mcpz.resolve import TreeLine


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("64k", 64 * 1024), ("1024", 1024), (" 3 GiB ", 3 * 2**30)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "0M", "", "M", "1.5G", "12X", "-1G", "1 Gb s"])
def test_what_is_not_a_size_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="is not a size") as caught:
        parse_size(text)
    assert caught.value.exit_code == 2


def test_selectors() -> None:
    assert parse_selector(["region=eu", "gpu=", "region=us"]) == {"region": "us", "gpu": ""}
    assert parse_selector([]) == {}
    for bad in ("region", "=eu"):
        with pytest.raises(UsageError, match="is not k=v"):
            parse_selector([bad])


def test_since_is_an_instant_in_utc() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_since("1h", now) == (now - timedelta(hours=1)).isoformat()
    assert parse_since("2026-02-01T00:00Z", now) == "2026-02-01T00:00:00+00:00"
    with pytest.raises(UsageError):
        parse_since("yesterday", now)


def test_operator_token_requests() -> None:
    # Imported here: loading the registry at collection would add its error classes to the ones
    # test_error_contract checks against docs/errors.md.
    from registry_server.accounts.service import TokenRequest

    request = TokenRequest.parse("publish, read", "30d", None)
    assert (request.scopes, request.lifetime) == (("read", "publish"), timedelta(days=30))
    assert TokenRequest.parse("read", None, 90).lifetime == timedelta(days=90)
    assert TokenRequest.parse("read", "never", 90).lifetime is None
    assert TokenRequest.parse("read", None, None).lifetime is None
    with pytest.raises(UsageError, match="unknown scope"):
        TokenRequest.parse("read,root", None, None)
    with pytest.raises(UsageError, match="is not a duration"):
        TokenRequest.parse("read", "soon", None)


def test_answers_are_typed_and_keep_the_json_as_served() -> None:
    body = {
        "name": "acme/weather",
        "description": "",
        "latest": "1.0.0",
        "versions": [
            {
                "name": "acme/weather",
                "version": v,
                "commit": "c" * 40,
                "yanked": v == "1.1.0",
                "dependencies": {"acme/geo": ">=1"},
                "published_at": "2026-01-02T03:04:05Z",
                "publisher": "acme",
                "future_field": [1, 2],
            }
            for v in ("1.0.0", "1.1.0")
        ],
    }
    info = AgentInfo.from_json(body)
    assert [r.version for r in info.versions] == ["1.0.0", "1.1.0"]
    assert info.versions[0].published_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert info.release() is info.versions[0] and info.release("9.9.9") is None
    assert info.to_dict() == body  # unknown fields kept for --json, ignored by the types
    with pytest.raises(AttributeError):
        info.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"account": "a", "namespaces": "a", "scopes": [], "expires_at": None}, "whoami.namespaces"),
        ({"account": "a", "namespaces": [], "scopes": [], "expires_at": "tomorrow"}, "whoami.expires_at"),
        ({"account": 7, "namespaces": [], "scopes": [], "expires_at": None}, "whoami.account"),
        ({"namespaces": [], "scopes": [], "expires_at": None}, 'a field "account"'),
        (["not", "an", "object"], "whoami"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_one_remote_error(body: object, where: str) -> None:
    with pytest.raises(RemoteError, match="unexpected") as caught:
        from_json(WhoAmI, body)
    assert where in caught.value.message and "\n" not in caught.value.message


def test_numbers_are_checked_not_coerced() -> None:
    row = {"agent": "a/b", "tool": "t", "calls": True, "ok": 1, "errors": 0}
    row |= {"duration_ms_total": 3, "bytes_in": 1, "bytes_out": 1}
    usage = {"scope": "account", "agent": None, "since": None, "until": None, "summary": [row]}
    with pytest.raises(RemoteError, match=r"usage.summary\[0\].calls: expected an integer"):
        Usage.from_json(usage)
    row["calls"] = 1
    assert Usage.from_json(usage).summary[0].duration_ms_total == 3.0
    with pytest.raises(RemoteError, match="deployment"):
        Deployment.from_json({"name": "a/b", "state": "deleted"})


def test_tree_json_nests_each_agent_under_the_one_that_pulled_it_in() -> None:
    lines = [
        TreeLine(0, "a/one", Version("1.0"), "^1", None, ""),
        TreeLine(1, "a/two", Version("2.0"), ">=2", "a/one", ""),
        TreeLine(2, "a/one", Version("1.0"), "^1", "a/two", "cycle"),
        TreeLine(0, "a/two", Version("2.0"), ">=2", None, "seen"),
    ]
    report = TreeReport("a/app", "0.1.0", lines, [["a/one", "a/two"]], [])
    payload = report.to_dict()
    assert payload["name"] == "a/app" and payload["cycles"] == [["a/one", "a/two"]]
    [one, two] = payload["dependencies"]
    assert (one["name"], two["mark"], two["dependencies"]) == ("a/one", "seen", [])
    [inner] = one["dependencies"]
    assert (inner["name"], inner["version"], inner["dependencies"][0]["mark"]) == ("a/two", "2.0", "cycle")
