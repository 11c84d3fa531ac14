"""The registry as an OAuth authorization server, endpoint by endpoint, over HTTP on a live registry:
metadata, registration, the authorization page (a signed-in browser session), the token endpoint,
and the gateway's answers to missing, foreign and bound tokens."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from conftest import LiveRegistry, isolate, start_registry
from tlsutil import https_files, self_signed

from registry_server.accounts import namespaces
from registry_server.accounts.models import Token
from registry_server.db import Database
from registry_server.oauth import rules
from registry_server.web import service as web

ADDRESS = "0x" + "ab" * 20
REDIRECT = "http://127.0.0.1:53117/callback"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRegistry]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, home)
        live = start_registry(home / "registry")
        try:
            yield live
        finally:
            live.stop()


@pytest.fixture
def http(reg: LiveRegistry) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=reg.url, timeout=30, follow_redirects=False) as client:
        yield client


def browser_session(reg: LiveRegistry) -> str:
    """The cookie of a wallet's browser session, as the sign-in page would set it."""
    db = Database(reg.database_url)
    try:
        with db.session() as session:
            account = namespaces.account_for_address(session, namespaces.checksum(ADDRESS))
            return web.start_session(session, account, namespaces.checksum(ADDRESS))
    finally:
        db.dispose()


@dataclass
class Flow:
    """One client's authorization request, carried through the page to a code."""

    reg: LiveRegistry
    http: httpx2.Client
    client_id: str
    verifier: str
    resource: str
    state: str

    def params(self, **override: str) -> dict[str, str]:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT,
            "code_challenge": rules.challenge_of(self.verifier),
            "code_challenge_method": "S256",
            "scope": "call",
            "resource": self.resource,
            "state": self.state,
        }
        params.update(override)
        return {k: v for k, v in params.items() if v != "-"}

    def consent(self, cookie: str, **override: str) -> httpx2.Response:
        return self.http.get(
            rules.AUTHORIZE_PATH, params=self.params(**override), headers={"Cookie": f"mcpz_session={cookie}"}
        )

    def decide(self, cookie: str, decision: str = "allow", **override: str) -> dict[str, list[str]]:
        page = self.consent(cookie, **override)
        assert page.status_code == 200, page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        answer = self.http.post(
            rules.AUTHORIZE_PATH,
            data={**self.params(**override), "csrf": csrf.group(1), "decision": decision},
            headers={"Cookie": f"mcpz_session={cookie}"},
        )
        assert answer.status_code == 303, answer.text
        location = answer.headers["location"]
        assert location.startswith(REDIRECT + "?")
        return parse_qs(urlsplit(location).query)

    def code(self, cookie: str) -> str:
        answer = self.decide(cookie)
        assert answer["state"] == [self.state]
        assert answer["iss"] == [self.reg.url]
        return answer["code"][0]

    def exchange(self, code: str, **override: str) -> httpx2.Response:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": self.client_id,
            "redirect_uri": REDIRECT,
            "code_verifier": self.verifier,
            "resource": self.resource,
        }
        form.update(override)
        return self.http.post(rules.TOKEN_PATH, data={k: v for k, v in form.items() if v != "-"})


def register(http: httpx2.Client, *uris: str) -> httpx2.Response:
    return http.post(
        rules.REGISTER_PATH, json={"redirect_uris": list(uris or [REDIRECT]), "client_name": "Test Client"}
    )


def new_flow(reg: LiveRegistry, http: httpx2.Client, agent: str = "acme/tiny") -> Flow:
    client_id = register(http).json()["client_id"]
    return Flow(
        reg, http, client_id, secrets.token_urlsafe(48), f"{reg.url}/mcp/{agent}", secrets.token_hex(8)
    )


def gateway(http: httpx2.Client, path: str, token: str | None) -> httpx2.Response:
    headers = dict(ACCEPT)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http.post(path, json=INIT, headers=headers)


def revoked(reg: LiveRegistry, secret: str) -> bool:
    from registry_server.accounts.tokens import hash_secret

    db = Database(reg.database_url)
    try:
        with db.session() as session:
            row = session.query(Token).filter(Token.secret_hash == hash_secret(secret)).one()
            return row.revoked_at is not None
    finally:
        db.dispose()


# --- discovery -------------------------------------------------------------------------------


def test_the_gateway_answers_401_with_where_its_metadata_is(reg: LiveRegistry, http: httpx2.Client) -> None:
    answer = gateway(http, "/mcp/acme/tiny", None)
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{reg.url}/.well-known/oauth-protected-resource/mcp/acme/tiny"' in challenge
    assert 'scope="call"' in challenge
    assert "error=" not in challenge  # no token sent: no error (RFC 6750 3.1)

    bad = gateway(http, "/mcp/acme/tiny", "mcpz_not-a-token")
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]

    no_call = gateway(http, "/mcp/acme/tiny", reg.account("reader", "read"))
    assert no_call.status_code == 403
    assert 'error="insufficient_scope"' in no_call.headers["www-authenticate"]
    assert 'scope="call"' in no_call.headers["www-authenticate"]


def test_protected_resource_and_authorization_server_metadata(reg: LiveRegistry, http: httpx2.Client) -> None:
    deployment = http.get("/.well-known/oauth-protected-resource/mcp/acme/tiny").json()
    assert deployment["resource"] == f"{reg.url}/mcp/acme/tiny"
    assert deployment["authorization_servers"] == [reg.url]
    assert deployment["scopes_supported"] == ["call"]
    assert deployment["bearer_methods_supported"] == ["header"]
    whole = http.get("/.well-known/oauth-protected-resource").json()
    assert whole["resource"] == f"{reg.url}/mcp"
    assert http.get("/.well-known/oauth-protected-resource/mcp/acme").status_code == 404

    server = http.get("/.well-known/oauth-authorization-server").json()
    assert server["issuer"] == reg.url
    assert server["authorization_endpoint"] == reg.url + "/oauth/authorize"
    assert server["token_endpoint"] == reg.url + "/oauth/token"
    assert server["registration_endpoint"] == reg.url + "/oauth/register"
    assert server["code_challenge_methods_supported"] == ["S256"]
    assert server["response_types_supported"] == ["code"]
    assert server["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert server["token_endpoint_auth_methods_supported"] == ["none"]
    assert server["authorization_response_iss_parameter_supported"] is True


def test_browser_based_clients_may_read_the_metadata_and_call_the_endpoints(http: httpx2.Client) -> None:
    origin = {"Origin": "http://localhost:6274"}  # the MCP Inspector's web UI, say
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/oauth-protected-resource/mcp/a/b"):
        assert http.get(path, headers=origin).headers["access-control-allow-origin"] == "*"
    for path in (rules.TOKEN_PATH, rules.REGISTER_PATH):
        preflight = http.options(
            path,
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "Content-Type" in preflight.headers["access-control-allow-headers"]
    refused = http.post(rules.TOKEN_PATH, data={"grant_type": "x"}, headers=origin)
    assert refused.headers["access-control-allow-origin"] == "*"  # the client can read why


# --- registration ----------------------------------------------------------------------------


def test_registration_makes_public_clients_with_checked_redirect_uris(http: httpx2.Client) -> None:
    made = register(http, REDIRECT, "https://client.example/cb")
    assert made.status_code == 201
    body = made.json()
    assert body["client_id"].startswith("mcpzc_")
    assert body["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in body
    assert body["redirect_uris"] == [REDIRECT, "https://client.example/cb"]

    for uris in (["http://client.example/cb"], ["javascript:alert(1)"], ["https://client.example/cb#f"]):
        refused = register(http, *uris)
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_redirect_uri", uris
    not_json = http.post(rules.REGISTER_PATH, content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"] == "invalid_client_metadata"


# --- the authorization page ------------------------------------------------------------------


def test_the_page_sends_a_stranger_to_the_wallet_sign_in_and_back(
    reg: LiveRegistry, http: httpx2.Client
) -> None:
    flow = new_flow(reg, http)
    answer = http.get(rules.AUTHORIZE_PATH, params=flow.params())
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith("/sign-in?next=%2Foauth%2Fauthorize%3F")
    page = http.get(location)
    assert page.status_code == 200 and "Sign in with your wallet" in page.text

    cookie = browser_session(reg)
    consent = flow.consent(cookie)
    assert consent.status_code == 200
    assert "Allow Test Client to use your agents?" in consent.text
    assert f"{reg.url}/mcp/acme/tiny" in consent.text
    # The consent form's answer redirects to the client: the page's CSP allows that origin.
    assert "form-action 'self' http://127.0.0.1:53117" in consent.headers["content-security-policy"]


def test_a_bad_client_or_redirect_uri_is_shown_never_redirected(
    reg: LiveRegistry, http: httpx2.Client
) -> None:
    flow = new_flow(reg, http)
    for override in (
        {"client_id": "mcpzc_nobody"},
        {"redirect_uri": "http://127.0.0.1:9/elsewhere"},
        {"redirect_uri": "-"},
    ):
        answer = http.get(rules.AUTHORIZE_PATH, params=flow.params(**override))
        assert answer.status_code == 400, override
        assert "location" not in answer.headers
        assert "this authorization request cannot go on" in answer.text


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"code_challenge": "-"}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "admin"}, "invalid_scope"),
        ({"resource": "https://elsewhere.example/mcp"}, "invalid_target"),
        ({"resource": "-"}, "invalid_target"),
    ],
)
def test_other_bad_requests_go_back_to_the_client_as_errors(
    reg: LiveRegistry, http: httpx2.Client, override: dict[str, str], error: str
) -> None:
    flow = new_flow(reg, http)
    answer = http.get(rules.AUTHORIZE_PATH, params=flow.params(**override))
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == [error]
    assert query["state"] == [flow.state]
    assert query["iss"] == [reg.url]


def test_a_person_who_denies_sends_access_denied(reg: LiveRegistry, http: httpx2.Client) -> None:
    flow = new_flow(reg, http)
    answer = flow.decide(browser_session(reg), "deny")
    assert answer["error"] == ["access_denied"] and answer["state"] == [flow.state]
    assert "code" not in answer


def test_the_consent_form_needs_its_csrf_token(reg: LiveRegistry, http: httpx2.Client) -> None:
    flow = new_flow(reg, http)
    cookie = browser_session(reg)
    answer = http.post(
        rules.AUTHORIZE_PATH,
        data={**flow.params(), "csrf": "forged", "decision": "allow"},
        headers={"Cookie": f"mcpz_session={cookie}"},
    )
    assert answer.status_code == 403
    assert "location" not in answer.headers


# --- the token endpoint ----------------------------------------------------------------------


def test_a_code_earns_a_token_bound_to_its_resource(reg: LiveRegistry, http: httpx2.Client) -> None:
    flow = new_flow(reg, http)
    answer = flow.exchange(flow.code(browser_session(reg)))
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    grant = answer.json()
    assert grant["token_type"] == "Bearer"
    assert grant["scope"] == "call"
    assert grant["expires_in"] == 3600
    assert grant["access_token"].startswith("mcpz_")
    assert grant["refresh_token"].startswith("mcpzrt_")
    token = grant["access_token"]

    # At its resource the gateway takes it (no deployment runs there: past auth, no replica).
    assert gateway(http, "/mcp/acme/tiny", token).status_code not in (401, 403)
    assert gateway(http, "/mcp/acme/tiny@1.0.0", token).status_code not in (401, 403)
    # Anywhere else it is refused: another deployment, the registry's API.
    elsewhere = gateway(http, "/mcp/acme/other", token)
    assert elsewhere.status_code == 401
    assert 'error="invalid_token"' in elsewhere.headers["www-authenticate"]
    assert "this token is for" in elsewhere.json()["error"]["message"]
    api = http.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 401 and "only" in api.json()["error"]["message"]
    # A plain key keeps working at the gateway.
    assert gateway(http, "/mcp/acme/other", reg.account("plain", "call")).status_code not in (401, 403)


def test_a_bad_pkce_verifier_is_refused(reg: LiveRegistry, http: httpx2.Client) -> None:
    flow = new_flow(reg, http)
    code = flow.code(browser_session(reg))
    for verifier in (secrets.token_urlsafe(48), "-"):
        answer = flow.exchange(code, code_verifier=verifier)
        assert answer.status_code == 400
        assert answer.json()["error"] == "invalid_grant"
        assert "PKCE" in answer.json()["error_description"]


def test_a_code_is_single_use_and_its_reuse_revokes_its_tokens(
    reg: LiveRegistry, http: httpx2.Client
) -> None:
    flow = new_flow(reg, http)
    code = flow.code(browser_session(reg))
    first = flow.exchange(code)
    assert first.status_code == 200
    again = flow.exchange(code)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert "used already" in again.json()["error_description"]
    assert revoked(reg, first.json()["access_token"])
    refreshed = http.post(
        rules.TOKEN_PATH,
        data={
            "grant_type": "refresh_token",
            "refresh_token": first.json()["refresh_token"],
            "client_id": flow.client_id,
        },
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("override", "status", "error"),
    [
        ({"redirect_uri": "http://127.0.0.1:53117/other"}, 400, "invalid_grant"),
        ({"redirect_uri": "-"}, 400, "invalid_grant"),
        ({"resource": "http://127.0.0.1:1/mcp/acme/other"}, 400, "invalid_target"),
        ({"client_id": "mcpzc_nobody"}, 401, "invalid_client"),
        ({"code": "mcpzac_forged"}, 400, "invalid_grant"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"client_secret": "x"}, 401, "invalid_client"),
    ],
)
def test_the_token_endpoint_refuses_what_does_not_match_the_code(
    reg: LiveRegistry, http: httpx2.Client, override: dict[str, str], status: int, error: str
) -> None:
    flow = new_flow(reg, http)
    code = flow.code(browser_session(reg))
    fields = dict(override)
    answer = flow.exchange(fields.pop("code", code), **fields)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error
    assert flow.exchange(code).status_code == 200  # a refused exchange did not use the code up


def test_another_clients_code_is_refused(reg: LiveRegistry, http: httpx2.Client) -> None:
    flow = new_flow(reg, http)
    code = flow.code(browser_session(reg))
    other = register(http).json()["client_id"]
    answer = flow.exchange(code, client_id=other)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_refresh_tokens_rotate_and_a_replayed_one_ends_the_grant(
    reg: LiveRegistry, http: httpx2.Client
) -> None:
    flow = new_flow(reg, http)
    grant = flow.exchange(flow.code(browser_session(reg))).json()

    def refresh(token: str, **extra: str) -> httpx2.Response:
        form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": flow.client_id, **extra}
        return http.post(rules.TOKEN_PATH, data=form)

    wrong_resource = refresh(grant["refresh_token"], resource=f"{reg.url}/mcp/acme/other")
    assert wrong_resource.status_code == 400 and wrong_resource.json()["error"] == "invalid_target"
    wider = refresh(grant["refresh_token"], scope="call admin")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"

    second = refresh(grant["refresh_token"], resource=flow.resource)
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != grant["refresh_token"]
    assert rotated["access_token"] != grant["access_token"]
    assert gateway(http, "/mcp/acme/tiny", rotated["access_token"]).status_code not in (401, 403)

    replay = refresh(grant["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # The replay ended the whole grant: the rotated refresh token and its access token too.
    assert revoked(reg, rotated["access_token"])
    assert refresh(rotated["refresh_token"]).json()["error"] == "invalid_grant"


def test_revoking_the_key_ends_the_grant(reg: LiveRegistry, http: httpx2.Client) -> None:
    flow = new_flow(reg, http)
    cookie = browser_session(reg)
    grant = flow.exchange(flow.code(cookie)).json()
    db = Database(reg.database_url)
    try:
        from registry_server.accounts.tokens import hash_secret

        with db.session() as session:
            row = session.query(Token).filter(Token.secret_hash == hash_secret(grant["access_token"])).one()
            assert row.name == "oauth: Test Client" and row.resource == flow.resource
            from registry_server.accounts import service as accounts

            accounts.revoke_token(session, row.account_id, row.id)
    finally:
        db.dispose()
    form = {
        "grant_type": "refresh_token",
        "refresh_token": grant["refresh_token"],
        "client_id": flow.client_id,
    }
    answer = http.post(rules.TOKEN_PATH, data=form)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_secrets_are_stored_only_as_hashes(reg: LiveRegistry, http: httpx2.Client) -> None:
    flow = new_flow(reg, http)
    code = flow.code(browser_session(reg))
    grant = flow.exchange(code).json()
    dump = b"".join(p.read_bytes() for p in reg.data_dir.rglob("*.db*") if p.is_file())
    for secret in (code, grant["access_token"], grant["refresh_token"]):
        assert secret.encode() not in dump


def test_a_whole_grant_on_sqlite_and_postgresql(registry: LiveRegistry) -> None:
    """Code, token, refresh, replay: the tables of migration 0016 on both databases."""
    with httpx2.Client(base_url=registry.url, timeout=30, follow_redirects=False) as http:
        flow = new_flow(registry, http)
        grant = flow.exchange(flow.code(browser_session(registry))).json()
        assert gateway(http, "/mcp/acme/tiny", grant["access_token"]).status_code not in (401, 403)
        form = {
            "grant_type": "refresh_token",
            "refresh_token": grant["refresh_token"],
            "client_id": flow.client_id,
        }
        assert http.post(rules.TOKEN_PATH, data=form).status_code == 200
        replay = http.post(rules.TOKEN_PATH, data=form)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        assert revoked(registry, grant["access_token"])


# --- client ID metadata documents ------------------------------------------------------------


@pytest.fixture
def documents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, bytes]]]:
    """An HTTPS server on loopback for client metadata documents, its certificate trusted by the
    registry's fetches (SSL_CERT_FILE; the registry runs in this process). A registry on loopback
    may fetch from loopback."""
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    files: dict[str, bytes] = {}
    with https_files(files, cert, key) as base:
        yield base, files


def test_a_client_described_by_its_metadata_document_needs_no_registration(
    reg: LiveRegistry, http: httpx2.Client, documents: tuple[str, dict[str, bytes]]
) -> None:
    assert http.get("/.well-known/oauth-authorization-server").json()["client_id_metadata_document_supported"]
    base, files = documents
    client_id = f"{base}/oauth/client.json"
    files["/oauth/client.json"] = json.dumps(
        {"client_id": client_id, "client_name": "Document Client", "redirect_uris": [REDIRECT]}
    ).encode()
    flow = Flow(reg, http, client_id, secrets.token_urlsafe(48), f"{reg.url}/mcp/acme/tiny", "s1")
    cookie = browser_session(reg)
    assert "Allow Document Client to use your agents?" in flow.consent(cookie).text
    grant = flow.exchange(flow.code(cookie))
    assert grant.status_code == 200, grant.text
    assert gateway(http, "/mcp/acme/tiny", grant.json()["access_token"]).status_code not in (401, 403)

    # A document that names another client, or a redirect URI it does not list: shown, not redirected.
    files["/oauth/client.json"] = json.dumps(
        {"client_id": f"{base}/other.json", "client_name": "Liar", "redirect_uris": [REDIRECT]}
    ).encode()
    refused = flow.consent(cookie)
    assert refused.status_code == 400 and "client_id is not its own URL" in refused.text
    files["/oauth/client.json"] = json.dumps(
        {"client_id": client_id, "client_name": "Document Client", "redirect_uris": ["http://127.0.0.1:9/x"]}
    ).encode()
    refused = flow.consent(cookie)
    assert refused.status_code == 400 and "redirect_uri is not one this client registered" in refused.text
    gone = Flow(reg, http, f"{base}/missing.json", flow.verifier, flow.resource, "s2").consent(cookie)
    assert gone.status_code == 400 and "HTTP 404" in gone.text
