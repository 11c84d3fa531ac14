"""The authorization server's pure rules: redirect URIs, PKCE, resources and audiences, scopes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry_server.accounts.tokens import audience_covers, canonical_resource
from registry_server.oauth import rules
from registry_server.oauth.rules import NoRedirect, OAuthError

PUBLIC = "https://registry.example"


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:53117/callback",
        "http://localhost/cb",
        "http://[::1]:8080/cb",
        "http://127.8.9.10/cb",
        "https://client.example/oauth/callback?x=1",
    ],
)
def test_loopback_http_and_https_redirect_uris_are_accepted(uri: str) -> None:
    assert rules.redirect_uri_problem(uri) is None


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("http://client.example/cb", "loopback"),
        ("http://10.0.0.1/cb", "loopback"),
        ("javascript:alert(1)", "scheme"),
        ("com.example.app:/cb", "scheme"),
        ("https://client.example/cb#frag", "fragment"),
        ("https://user:pw@client.example/cb", "user name"),
        ("https:///cb", "no host"),
        ("https://client.example:99999/cb", "not a URL"),
    ],
)
def test_other_redirect_uris_are_refused_with_the_reason(uri: str, problem: str) -> None:
    found = rules.redirect_uri_problem(uri)
    assert found is not None and problem in found


def test_pkce_s256_matches_only_its_verifier() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    # RFC 7636 appendix B's example.
    assert rules.challenge_of(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert rules.verifier_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    assert not rules.verifier_matches(verifier[:-1] + "l", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    assert not rules.verifier_matches("short", rules.challenge_of("short"))  # under 43 characters
    assert (
        rules.challenge_problem(rules.challenge_of(verifier), "plain") == "code_challenge_method must be S256"
    )
    assert rules.challenge_problem(None, "S256") == "code_challenge is required (PKCE)"


@given(st.text(alphabet=sorted(rules.VERIFIER_CHARS), min_size=43, max_size=128))
def test_every_well_formed_verifier_matches_its_own_challenge(verifier: str) -> None:
    challenge = rules.challenge_of(verifier)
    assert rules.challenge_problem(challenge, "S256") is None
    assert rules.verifier_matches(verifier, challenge)


def test_resources_are_the_gateway_or_one_deployment_on_it() -> None:
    assert rules.resource_of(PUBLIC, "https://REGISTRY.example/mcp/") == "https://registry.example/mcp"
    assert rules.resource_of(PUBLIC, f"{PUBLIC}/mcp/acme/tiny") == f"{PUBLIC}/mcp/acme/tiny"
    assert rules.resource_of(PUBLIC, f"{PUBLIC}/mcp/acme/tiny@1.0.0") == f"{PUBLIC}/mcp/acme/tiny@1.0.0"
    bad_ones = [None, "", "https://elsewhere.example/mcp", f"{PUBLIC}/v1/agents", f"{PUBLIC}/mcp/acme"]
    bad_ones += [f"{PUBLIC}/mcp/a/b/c", f"{PUBLIC}/mcp/acme/tiny#x", f"{PUBLIC}/mcp/acme/tiny?x=1"]
    for bad in bad_ones:
        with pytest.raises(OAuthError) as refused:
            rules.resource_of(PUBLIC, bad)
        assert refused.value.error == "invalid_target"


def test_a_token_is_good_at_its_resource_under_it_and_at_a_pinned_version_only() -> None:
    tiny = f"{PUBLIC}/mcp/acme/tiny"
    assert audience_covers(tiny, tiny)
    assert audience_covers(tiny, "HTTPS://registry.example:443/mcp/acme/tiny/")
    assert audience_covers(tiny, tiny + "@1.2.0")
    assert audience_covers(f"{PUBLIC}/mcp", tiny)
    assert not audience_covers(tiny, f"{PUBLIC}/mcp/acme/tinyx")
    assert not audience_covers(tiny, f"{PUBLIC}/mcp/acme/other")
    assert not audience_covers(tiny + "@1.2.0", tiny)  # a pinned token is for that version only
    assert not audience_covers(tiny, tiny.replace("https://", "http://"))
    assert not audience_covers(tiny, "https://registry.example.evil/mcp/acme/tiny")
    assert canonical_resource("http://H:80/a/") == "http://h/a"


def test_scopes_map_to_mcpz_scopes() -> None:
    assert rules.parse_scope(None) == ("call",)
    assert rules.parse_scope("call") == ("call",)
    assert rules.mcpz_scopes(("call",)) == ("call",)
    with pytest.raises(OAuthError) as refused:
        rules.parse_scope("call admin")
    assert refused.value.error == "invalid_scope"


def test_an_unknown_client_or_redirect_uri_is_never_redirected_to() -> None:
    good = {
        "client_id": "c",
        "redirect_uri": "http://127.0.0.1:9/cb",
        "response_type": "code",
        "code_challenge": rules.challenge_of("v" * 43),
        "code_challenge_method": "S256",
        "resource": f"{PUBLIC}/mcp/acme/tiny",
        "state": "s",
    }
    checked = rules.authorization_request(good, ("http://127.0.0.1:9/cb",), PUBLIC)
    assert checked.scopes == ("call",) and checked.state == "s"
    with pytest.raises(NoRedirect):
        rules.authorization_request(good, None, PUBLIC)
    with pytest.raises(NoRedirect):
        rules.authorization_request(good, ("http://127.0.0.1:9/other",), PUBLIC)
    with pytest.raises(OAuthError) as refused:
        rules.authorization_request({**good, "response_type": "token"}, ("http://127.0.0.1:9/cb",), PUBLIC)
    assert refused.value.error == "unsupported_response_type" and not isinstance(refused.value, NoRedirect)
    assert rules.redirect_to("http://127.0.0.1:9/cb?a=1", {"code": "x y", "state": None}) == (
        "http://127.0.0.1:9/cb?a=1&code=x+y"
    )


def test_registration_takes_public_clients_with_good_redirect_uris() -> None:
    name, uris, grants = rules.registration(
        {
            "redirect_uris": ["http://127.0.0.1:5/cb"],
            "client_name": "Inspector",
            "token_endpoint_auth_method": "client_secret_post",
        }
    )
    assert (name, uris, grants) == (
        "Inspector",
        ["http://127.0.0.1:5/cb"],
        ["authorization_code", "refresh_token"],
    )
    for body, error in [
        ({}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),
        (
            {"redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["client_credentials"]},
            "invalid_client_metadata",
        ),
        ({"redirect_uris": ["http://127.0.0.1/cb"], "response_types": ["token"]}, "invalid_client_metadata"),
        ([], "invalid_client_metadata"),
    ]:
        with pytest.raises(OAuthError) as refused:
            rules.registration(body)
        assert refused.value.error == error, body


def test_client_id_metadata_documents_are_https_urls_with_a_path() -> None:
    assert rules.is_document_client_id("https://client.example/oauth/client.json")
    assert rules.is_document_client_id("https://127.0.0.1:8443/c.json")
    for other in ("mcpzc_abc", "https://client.example", "https://client.example/", "http://client.example/c.json",
                  "https://client.example/c.json#x", "https://u@client.example/c.json", None):  # fmt: skip
        assert not rules.is_document_client_id(other), other


def test_a_document_must_name_itself_and_be_a_public_client() -> None:
    url = "https://client.example/c.json"
    good = {"client_id": url, "client_name": "C", "redirect_uris": ["http://127.0.0.1/cb"]}
    assert rules.document_client(url, good) == (
        "C",
        ["http://127.0.0.1/cb"],
        ["authorization_code", "refresh_token"],
    )
    for bad in (
        {**good, "client_id": "https://client.example/other.json"},
        {**good, "token_endpoint_auth_method": "private_key_jwt"},
        {**good, "redirect_uris": ["http://client.example/cb"]},
        ["not", "an", "object"],
    ):
        with pytest.raises(OAuthError) as refused:
            rules.document_client(url, bad)
        assert refused.value.error == "invalid_client"


def test_documents_are_kept_as_long_as_their_cache_control_says() -> None:
    assert rules.cache_seconds(None) == 300
    assert rules.cache_seconds("public, max-age=60") == 60
    assert rules.cache_seconds("max-age=99999999") == 86_400
    assert rules.cache_seconds("no-store") == 0
    assert rules.cache_seconds("no-cache, max-age=60") == 0


def test_a_public_registry_fetches_no_document_from_a_private_address() -> None:
    from registry_server.oauth.documents import ClientDocuments

    for url in (
        "https://127.0.0.1:9/c.json",
        "https://10.1.2.3/c.json",
        "https://[::1]/c.json",
        "https://localhost/c.json",
    ):
        with pytest.raises(OAuthError) as refused:
            ClientDocuments(allow_private=False).get(url)
        assert refused.value.error == "invalid_client" and "non-public address" in refused.value.description
