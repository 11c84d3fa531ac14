"""The registry's JSON API: the index (one and batch, with ETags), health, OpenAPI, scopes, keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry
from gitutil import api, commit, git, init_agent, isolated_git, set_version
from sqlalchemy import text

from registry_server.accounts import service as accounts
from registry_server.accounts import tokens
from registry_server.db import Database


@dataclass
class World:
    """One registry for the module, with agents published through git."""

    reg: LiveRegistry
    token: str  # acme, every scope
    commits: dict[str, str]  # "name@version" -> commit id


def _publish(reg: LiveRegistry, token: str, work: Path, name: str, version: str, **kw: Any) -> str:
    if (work / ".git").exists():
        head = set_version(work, version, name, **kw)
    else:
        head = init_agent(work, name, version, **kw)
    git("tag", f"v{version}", cwd=work)
    git("push", reg.git_url(name, token), "main", f"v{version}", cwd=work)
    return head


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        with isolated_git(tmp_path_factory.mktemp("home")):
            token = reg.account("acme")
            reg.account("other")
            root = tmp_path_factory.mktemp("agents")
            commits = {}
            commits["acme/y@1.0.0"] = _publish(reg, token, root / "y", "acme/y", "1.0.0")
            x = root / "x"
            desc = {"description": "the x agent"}
            commits["acme/x@0.1.0"] = _publish(reg, token, x, "acme/x", "0.1.0", **desc)
            commits["acme/x@0.2.0"] = _publish(
                reg, token, x, "acme/x", "0.2.0", deps={"acme/y": ">=1.0"}, **desc
            )
            commits["acme/x@0.3.0rc1"] = _publish(
                reg, token, x, "acme/x", "0.3.0rc1", deps={"acme/y": ">=1.0,<2"}, **desc
            )
            yanked = api(reg, "/v1/agents/acme/x/0.1.0/yank", token, method="POST", json={"reason": "broken"})
            assert yanked.status_code == 200, yanked.text
            commits["acme/matrix@0.1.0"] = _publish(reg, token, root / "matrix", "acme/matrix", "0.1.0")
        yield World(reg, token, commits)
    finally:
        reg.stop()


# --- the index -----------------------------------------------------------------------------------


def test_get_agent(world: World) -> None:
    response = api(world.reg, "/v1/agents/acme/x")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "acme/x"
    assert body["description"] == "the x agent"
    # 0.1.0 is yanked and 0.3.0rc1 is a pre-release: neither is "latest".
    assert body["latest"] == "0.2.0"
    rows = [
        (v["version"], v["commit"], v["yanked"], v["yank_reason"], v["dependencies"])
        for v in body["versions"]
    ]
    assert rows == [
        ("0.1.0", world.commits["acme/x@0.1.0"], True, "broken", {}),
        ("0.2.0", world.commits["acme/x@0.2.0"], False, "", {"acme/y": ">=1.0"}),
        ("0.3.0rc1", world.commits["acme/x@0.3.0rc1"], False, "", {"acme/y": ">=1.0,<2"}),
    ]
    for version in body["versions"]:
        assert version["publisher"] == "acme"
        published = datetime.fromisoformat(version["published_at"].replace("Z", "+00:00"))
        assert abs(datetime.now(UTC) - published) < timedelta(hours=1)


def test_get_release(world: World) -> None:
    response = api(world.reg, "/v1/agents/acme/x/0.2.0")
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["version"], body["commit"]) == (
        "acme/x",
        "0.2.0",
        world.commits["acme/x@0.2.0"],
    )
    assert body["dependencies"] == {"acme/y": ">=1.0"}
    assert body["yanked"] is False


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/agents/acme/nope", 404),
        ("/v1/agents/acme/x/9.9.9", 404),
        ("/v1/agents/nobody/x", 404),
        ("/v1/agents/ACME/x", 400),
        ("/v1/agents/acme/x_y", 400),
    ],
)
def test_index_errors_are_json_with_a_request_id(world: World, path: str, status: int) -> None:
    response = api(world.reg, path, headers={"X-Request-Id": "req-123"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"]
    assert error["request_id"] == "req-123"
    assert response.headers["x-request-id"] == "req-123"


def test_batch_index(world: World) -> None:
    names = ["acme/x", "acme/y", "acme/nope"]
    response = api(world.reg, "/v1/index", params=[("name", n) for n in names])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["missing"] == ["acme/nope"]
    assert set(body["agents"]) == {"acme/x", "acme/y"}
    assert body["agents"]["acme/x"] == [
        {"version": "0.1.0", "commit": world.commits["acme/x@0.1.0"], "yanked": True, "dependencies": {}},
        {
            "version": "0.2.0",
            "commit": world.commits["acme/x@0.2.0"],
            "yanked": False,
            "dependencies": {"acme/y": ">=1.0"},
        },
        {
            "version": "0.3.0rc1",
            "commit": world.commits["acme/x@0.3.0rc1"],
            "yanked": False,
            "dependencies": {"acme/y": ">=1.0,<2"},
        },
    ]
    assert body["agents"]["acme/y"] == [
        {"version": "1.0.0", "commit": world.commits["acme/y@1.0.0"], "yanked": False, "dependencies": {}}
    ]

    etag = response.headers["etag"]
    again = api(world.reg, "/v1/index", params=[("name", n) for n in names], headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    # The same names in another order (and repeated) are the same index.
    shuffled = api(
        world.reg,
        "/v1/index",
        params=[("name", n) for n in ["acme/y", "acme/nope", "acme/x", "acme/x"]],
        headers={"If-None-Match": etag},
    )
    assert shuffled.status_code == 304
    # Another set of names is another index.
    other = api(world.reg, "/v1/index", params=[("name", "acme/x")], headers={"If-None-Match": etag})
    assert other.status_code == 200
    assert other.headers["etag"] != etag
    stale = api(
        world.reg, "/v1/index", params=[("name", n) for n in names], headers={"If-None-Match": '"old"'}
    )
    assert stale.status_code == 200
    assert stale.json() == body


def test_batch_index_refuses_bad_names(world: World) -> None:
    response = api(world.reg, "/v1/index", params=[("name", "not a name")])
    assert response.status_code == 400
    assert "not a name" in response.json()["error"]["message"]
    assert api(world.reg, "/v1/index").status_code == 422


def test_the_etag_changes_with_a_yank_and_a_release(world: World, tmp_path: Path) -> None:
    reg, token, name = world.reg, world.token, "acme/etag"
    work = tmp_path / "etag"
    _publish(reg, token, work, name, "1.0.0")

    def index() -> tuple[str, list[dict[str, object]]]:
        response = api(reg, "/v1/index", params={"name": name})
        assert response.status_code == 200, response.text
        return response.headers["etag"], response.json()["agents"][name]

    first, versions = index()
    assert [v["yanked"] for v in versions] == [False]

    assert api(reg, f"/v1/agents/{name}/1.0.0/yank", token, method="POST", json={}).status_code == 200
    after_yank, versions = index()
    assert after_yank != first
    assert [v["yanked"] for v in versions] == [True]
    assert api(reg, "/v1/index", params={"name": name}, headers={"If-None-Match": first}).status_code == 200

    assert api(reg, f"/v1/agents/{name}/1.0.0/yank", token, method="DELETE").status_code == 200
    after_unyank, versions = index()
    assert after_unyank not in (first, after_yank)
    assert [v["yanked"] for v in versions] == [False]

    _publish(reg, token, work, name, "1.1.0")
    after_release, versions = index()
    assert after_release not in (first, after_yank, after_unyank)
    assert [v["version"] for v in versions] == ["1.0.0", "1.1.0"]
    assert (
        api(reg, "/v1/index", params={"name": name}, headers={"If-None-Match": after_release}).status_code
        == 304
    )

    # A push that publishes nothing (a branch commit) leaves the index's ETag alone.
    commit(work, {"server.py": "print('unreleased work')\n"})
    git("push", reg.git_url(name, token), "main", cwd=work)
    assert index()[0] == after_release


def test_healthz_and_openapi(world: World) -> None:
    health = api(world.reg, "/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    spec = api(world.reg, "/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/index",
        "/v1/agents/{namespace}/{name}",
        "/v1/agents/{namespace}/{name}/{version}",
        "/v1/keys",
        "/v1/whoami",
        "/git/{namespace}/{name}/git-receive-pack",
    ):
        assert path in paths, path
    assert "etag" in (paths["/v1/index"]["get"].get("description", "") + "").lower()


# --- the scope matrix ----------------------------------------------------------------------------

# Every mutating route: the scope it needs, and whether it acts in a namespace.
SCOPES: dict[tuple[str, str], tuple[str, bool]] = {
    ("POST", "/git/{namespace}/{name}/git-receive-pack"): ("publish", True),
    ("POST", "/v1/agents/{namespace}/{name}/{version}/yank"): ("publish", True),
    ("DELETE", "/v1/agents/{namespace}/{name}/{version}/yank"): ("publish", True),
    ("POST", "/v1/keys"): ("admin", False),
    ("DELETE", "/v1/keys/{key_id}"): ("admin", False),
    ("POST", "/v1/namespaces"): ("admin", False),
    ("PUT", "/v1/namespaces/{namespace}/members/{account}"): ("admin", True),
    ("DELETE", "/v1/namespaces/{namespace}/members/{account}"): ("admin", True),
    ("POST", "/v1/namespaces/{namespace}/transfer"): ("admin", True),
    ("POST", "/v1/account/rotate-key"): ("admin", False),
    ("POST", "/v1/agents/{namespace}/{name}/{version}/signature"): ("publish", True),
    ("POST", "/v1/deployments"): ("deploy", True),
    ("POST", "/v1/deployments/{namespace}/{name}/scale"): ("deploy", True),
    ("POST", "/v1/deployments/{namespace}/{name}/rollback"): ("deploy", True),
    ("DELETE", "/v1/deployments/{namespace}/{name}"): ("deploy", True),
    ("POST", "/v1/deployments/{namespace}/{name}/restart"): ("deploy", True),
    ("POST", "/v1/market/agents/{namespace}/{name}/list"): ("publish", True),
    ("POST", "/v1/market/agents/{namespace}/{name}/unlist"): ("publish", True),
    # Any account that called the agent may review it; a review's reply is its agent's publishers'.
    ("PUT", "/v1/market/agents/{namespace}/{name}/review"): ("call", False),
    ("POST", "/v1/market/reviews/{review_id}/reply"): ("publish", False),
    ("POST", "/v1/market/reviews/{review_id}/report"): ("read", False),
    ("POST", "/v1/market/reviews/{review_id}/moderate"): ("admin", False),
    # Prices and splits are the namespace owner's; subscribing spends the caller's own balance;
    # spend caps need `admin`, so that a key that may only call cannot lift its own cap.
    ("PUT", "/v1/billing/plans/{namespace}/{name}"): ("publish", True),
    ("PUT", "/v1/billing/splits/{namespace}/{name}"): ("publish", True),
    ("POST", "/v1/billing/subscriptions"): ("call", False),
    ("DELETE", "/v1/billing/subscriptions/{namespace}/{name}"): ("call", False),
    ("PUT", "/v1/billing/caps"): ("admin", False),
    ("DELETE", "/v1/billing/caps/{cap_id}"): ("admin", False),
    # A withdrawal voucher spends the caller's own balance, like a call.
    ("POST", "/v1/billing/withdrawals"): ("call", False),
}
# Routes whose success needs a wallet's signature or changes who owns what: refusals are checked
# here, success in tests/accounts/test_login.py and tests/signing/test_signed_releases.py.
SUCCESS_ELSEWHERE = {
    ("POST", "/v1/namespaces"),
    ("PUT", "/v1/namespaces/{namespace}/members/{account}"),
    ("DELETE", "/v1/namespaces/{namespace}/members/{account}"),
    ("POST", "/v1/namespaces/{namespace}/transfer"),
    ("POST", "/v1/account/rotate-key"),
    ("POST", "/v1/agents/{namespace}/{name}/{version}/signature"),
    # These need a deployment to exist: tests/mesh/test_mesh_hub.py drives them end to end.
    ("POST", "/v1/deployments/{namespace}/{name}/scale"),
    ("POST", "/v1/deployments/{namespace}/{name}/rollback"),
    ("DELETE", "/v1/deployments/{namespace}/{name}"),
    ("POST", "/v1/deployments/{namespace}/{name}/restart"),
    # A review needs a metered call first, the others a review: tests/market/test_market_api.py.
    ("PUT", "/v1/market/agents/{namespace}/{name}/review"),
    ("POST", "/v1/market/reviews/{review_id}/reply"),
    ("POST", "/v1/market/reviews/{review_id}/report"),
    ("POST", "/v1/market/reviews/{review_id}/moderate"),
    # A subscription needs a monthly plan and a balance, its end a subscription, a cap's removal a
    # cap: tests/billing/test_billing_api.py.
    ("POST", "/v1/billing/subscriptions"),
    ("DELETE", "/v1/billing/subscriptions/{namespace}/{name}"),
    ("DELETE", "/v1/billing/caps/{cap_id}"),
    # A voucher needs settlement on chain, a wallet and a balance: tests/settlement/test_withdraw_cli.py.
    ("POST", "/v1/billing/withdrawals"),
}
# POST routes that only read: a fetch negotiates with a POST.
READ_ONLY_POSTS = {("POST", "/git/{namespace}/{name}/git-upload-pack")}
# Sign-in: anyone may ask for a nonce and present a signed message (tests/accounts/test_login.py).
SIGN_IN_POSTS = {("POST", "/v1/auth/nonce"), ("POST", "/v1/auth/login")}
# The OAuth authorization server's POSTs are public by their RFCs (a client registers before it has
# anything; the token endpoint checks the code's client, PKCE verifier and redirect URI instead of a
# token) and stay out of the OpenAPI document; tests/oauth/test_oauth_server.py checks their refusals,
# and POST /oauth/authorize is a signed-in web page with a CSRF token.
OAUTH_POSTS = {("POST", "/oauth/register"), ("POST", "/oauth/token"), ("POST", "/oauth/authorize")}
MUTATING = {"post", "put", "patch", "delete"}


def _request(world: World, method: str, path: str, token: str | None, key_id: int):  # type: ignore[no-untyped-def]
    """One call of a route, with real values for its parameters and a valid body."""
    name = "matrix.git" if path.startswith("/git/") else "matrix"
    url = path.format(
        namespace="acme", name=name, version="0.1.0", key_id=key_id, account="other", review_id=1, cap_id=1
    )
    kw: dict[str, object] = {}
    bodies: dict[str, object] = {
        "/v1/namespaces": {"name": "matrix-ns"},
        "/v1/namespaces/{namespace}/members/{account}": {"role": "publisher"},
        "/v1/namespaces/{namespace}/transfer": {"account": "other"},
        "/v1/account/rotate-key": {"new_address": "0x" + "11" * 20, "rotations": {}},
        "/v1/agents/{namespace}/{name}/{version}/signature": {"signature": "0x00"},
        # The version is explicit: the matrix yanks 0.1.0 earlier in the same test.
        "/v1/deployments": {"agent": "acme/matrix", "version": "0.1.0", "replicas": 0},
        "/v1/deployments/{namespace}/{name}/scale": {"replicas": 0},
        "/v1/market/agents/{namespace}/{name}/review": {"stars": 5, "text": "matrix"},
        "/v1/market/reviews/{review_id}/reply": {"text": "matrix"},
        "/v1/market/reviews/{review_id}/report": {"reason": "matrix"},
        "/v1/market/reviews/{review_id}/moderate": {"decision": "keep"},
        "/v1/billing/plans/{namespace}/{name}": {"per_call": 1000},
        "/v1/billing/splits/{namespace}/{name}": {"shares": [{"account": "acme", "bps": 10000}]},
        "/v1/billing/subscriptions": {"agent": "acme/matrix", "plan": "monthly"},
        "/v1/billing/caps": {"period": "day", "amount": 1000},
        "/v1/billing/withdrawals": {"amount": 1000},
    }
    if path in bodies and method != "DELETE":
        kw["json"] = bodies[path]
    elif path == "/v1/keys":
        kw["json"] = {"scopes": ["admin"], "name": "matrix"}
    elif path.endswith("/yank") and method == "POST":
        kw["json"] = {"reason": "matrix"}
    elif path.endswith("git-receive-pack"):
        kw["content"] = b"0000"
        kw["headers"] = {"Content-Type": "application/x-git-receive-pack-request"}
    return api(world.reg, url, token, method=method, **kw)


def test_scope_matrix(world: World) -> None:
    spec = api(world.reg, "/openapi.json").json()
    routes = {
        (method.upper(), path) for path, ops in spec["paths"].items() for method in ops if method in MUTATING
    }
    # The only exclusion is the fetch negotiation, and it is a real route.
    assert READ_ONLY_POSTS <= routes
    assert len(READ_ONLY_POSTS) == 1
    assert not OAUTH_POSTS & routes
    mutating = routes - READ_ONLY_POSTS - SIGN_IN_POSTS
    assert mutating == set(SCOPES), "a mutating route is missing from the scope matrix (or gone)"

    reg = world.reg
    key_id = api(reg, "/v1/keys", world.token, method="POST", json={"scopes": ["read"]}).json()["id"]
    foreign = reg.account("other")
    before_release = api(reg, "/v1/agents/acme/matrix/0.1.0").json()

    for (method, path), (scope, namespaced) in sorted(SCOPES.items()):
        where = f"{method} {path}"
        response = _request(world, method, path, None, key_id)
        assert response.status_code == 401, f"{where} without a token: {response.status_code}"
        assert response.headers.get("www-authenticate"), f"{where}: a 401 says how to authenticate"
        response = _request(world, method, path, "mcpz_not-a-token", key_id)
        assert response.status_code == 401, f"{where} with an unknown token: {response.status_code}"
        lacking = reg.account("acme", ",".join(s for s in tokens.SCOPES if s != scope))
        response = _request(world, method, path, lacking, key_id)
        assert response.status_code == 403, f"{where} without the {scope} scope: {response.status_code}"
        if namespaced:
            response = _request(world, method, path, foreign, key_id)
            assert response.status_code == 403, f"{where} in a foreign namespace: {response.status_code}"

    # None of that changed anything...
    assert api(reg, "/v1/agents/acme/matrix/0.1.0").json() == before_release
    keys = {k["id"]: k for k in api(reg, "/v1/keys", world.token).json()}
    assert keys[key_id]["revoked"] is False
    assert [k for k in keys.values() if k["name"] == "matrix"] == []

    # ...and a token with just the right scope gets through every route.
    for (method, path), (scope, _namespaced) in sorted(SCOPES.items()):
        if (method, path) in SUCCESS_ELSEWHERE:
            continue
        response = _request(world, method, path, reg.account("acme", scope), key_id)
        assert response.status_code < 400, f"{method} {path} with the {scope} scope: {response.text}"


def test_receive_pack_advertisement_needs_publish_and_ownership(world: World) -> None:
    reg = world.reg
    url = "/git/acme/matrix.git/info/refs"
    params = {"service": "git-receive-pack"}
    assert api(reg, url, params=params).status_code == 401
    assert api(reg, url, reg.account("acme", "read,admin"), params=params).status_code == 403
    assert api(reg, url, reg.account("other"), params=params).status_code == 403
    assert api(reg, url, reg.account("acme", "publish"), params=params).status_code == 200
    # Reading is public.
    assert api(reg, url, params={"service": "git-upload-pack"}).status_code == 200


# --- keys ----------------------------------------------------------------------------------------


def _token_rows(reg: LiveRegistry) -> list[dict[str, object]]:
    db = Database(reg.database_url)
    try:
        with db.session() as session:
            return [dict(row._mapping) for row in session.execute(text("SELECT * FROM tokens"))]
    finally:
        db.dispose()


def test_keys_create_list_revoke(world: World) -> None:
    reg = world.reg
    admin = reg.account("acme", "read,publish,admin")
    created = api(reg, "/v1/keys", admin, method="POST", json={"scopes": ["read", "publish"], "name": "ci"})
    assert created.status_code == 201, created.text
    key = created.json()
    secret = key["token"]
    assert secret.startswith("mcpz_")
    assert len(secret) >= 40
    assert secret.startswith(key["prefix"]) and len(key["prefix"]) < len(secret) // 2
    assert key["scopes"] == ["read", "publish"]
    assert key["name"] == "ci"
    assert key["revoked"] is False
    expires = datetime.fromisoformat(key["expires_at"].replace("Z", "+00:00"))
    assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)

    who = api(reg, "/v1/whoami", secret)
    assert who.status_code == 200
    assert who.json()["account"] == "acme"
    assert who.json()["scopes"] == ["read", "publish"]

    listed = api(reg, "/v1/keys", admin)
    assert listed.status_code == 200
    assert secret not in listed.text
    entry = next(k for k in listed.json() if k["id"] == key["id"])
    assert "token" not in entry
    assert entry["prefix"] == key["prefix"]
    assert entry["last_used_at"] is not None  # it was used for whoami just now

    revoked = api(reg, f"/v1/keys/{key['id']}", admin, method="DELETE")
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    refused = api(reg, "/v1/whoami", secret)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]
    assert next(k for k in api(reg, "/v1/keys", admin).json() if k["id"] == key["id"])["revoked"] is True


def test_a_key_cannot_have_more_scopes_than_its_creator(world: World) -> None:
    reg = world.reg
    limited = reg.account("acme", "read,admin")
    response = api(reg, "/v1/keys", limited, method="POST", json={"scopes": ["read", "publish"]})
    assert response.status_code == 403
    assert "publish" in response.json()["error"]["message"]
    assert api(reg, "/v1/keys", limited, method="POST", json={"scopes": ["read"]}).status_code == 201
    unknown = api(reg, "/v1/keys", limited, method="POST", json={"scopes": ["root"]})
    assert unknown.status_code in (400, 422)


def test_keys_of_another_account_cannot_be_revoked(world: World) -> None:
    reg = world.reg
    theirs = api(reg, "/v1/keys", reg.account("other"), method="POST", json={"scopes": ["read"]}).json()
    response = api(reg, f"/v1/keys/{theirs['id']}", reg.account("acme", "admin"), method="DELETE")
    assert response.status_code in (403, 404)
    assert api(reg, "/v1/whoami", theirs["token"]).status_code == 200
    # And keys are listed per account.
    assert theirs["id"] not in {k["id"] for k in api(reg, "/v1/keys", world.token).json()}


def test_an_expired_token_is_refused(world: World) -> None:
    reg = world.reg
    db = Database(reg.database_url)
    try:
        with db.session() as session:
            account = accounts.account_by_name(session, "acme")
            _row, expired = accounts.create_token(
                session, account, ("read", "admin"), expires_in=timedelta(seconds=-1)
            )
            row, soon = accounts.create_token(session, account, ("read",), expires_in=timedelta(days=1))
            soon_id = row.id
        assert api(reg, "/v1/whoami", soon).status_code == 200
        with db.session() as session:
            session.execute(
                text("UPDATE tokens SET expires_at = :t WHERE id = :id"),
                {"t": datetime.now(UTC) - timedelta(minutes=1), "id": soon_id},
            )
    finally:
        db.dispose()
    for secret in (expired, soon):
        response = api(reg, "/v1/whoami", secret)
        assert response.status_code == 401
        assert "expired" in response.json()["error"]["message"]
        assert api(reg, "/v1/keys", secret).status_code == 401


def test_tokens_are_stored_only_as_hashes(world: World) -> None:
    reg = world.reg
    secrets = [reg.account("acme", "read")]
    created = api(
        reg, "/v1/keys", world.token, method="POST", json={"scopes": ["read"], "name": "hash-check"}
    )
    secrets.append(created.json()["token"])
    rows = _token_rows(reg)
    assert len(rows) >= 2
    stored = "\n".join(str(value) for row in rows for value in row.values())
    for secret in secrets:
        assert secret not in stored
        assert secret[len("mcpz_") :] not in stored
        assert tokens.hash_secret(secret) in stored
    for row in rows:
        assert str(row["secret_hash"]) != "" and not str(row["secret_hash"]).startswith("mcpz_")


def test_whoami_needs_a_token(world: World) -> None:
    response = api(world.reg, "/v1/whoami")
    assert response.status_code == 401
    assert response.json()["error"]["message"]
