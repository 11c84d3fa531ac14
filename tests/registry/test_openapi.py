"""The OpenAPI document states what each route answers, errors included, and 405s name every method."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry
from gitutil import api

from registry_server.accounts import routes as api_auth
from registry_server.accounts.http import caller
from registry_server.accounts.models import ROLES
from registry_server.accounts.tokens import SCOPES
from registry_server.billing import tier_routes as api_tiers
from registry_server.deployments import routes as api_deploy
from registry_server.market import routes as api_market
from registry_server.releases import routes as api_routes
from registry_server.usage import routes as api_usage

METHODS = {"get", "post", "put", "delete", "patch"}


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRegistry]:
    live = start_registry(tmp_path_factory.mktemp("registry"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def document(reg: LiveRegistry) -> dict[str, Any]:
    return api(reg, "/openapi.json").json()  # type: ignore[no-any-return]


def _errors(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    responses = document["paths"][path][method]["responses"]
    return {code: r for code, r in responses.items() if code.startswith(("4", "5"))}


@pytest.mark.parametrize(
    ("method", "path", "codes"),
    [
        ("get", "/v1/agents/{namespace}/{name}", {"400", "404", "422"}),
        ("get", "/v1/index", {"400", "404", "422"}),
        ("post", "/v1/keys", {"400", "401", "403", "413", "422"}),
        ("post", "/v1/auth/nonce", {"400", "413", "422", "429"}),
        ("post", "/v1/namespaces", {"400", "401", "403", "409", "413", "422"}),
        ("post", "/v1/deployments", {"400", "401", "403", "404", "409", "413", "422"}),
        ("get", "/v1/usage", {"400", "401", "403", "404", "422"}),
        ("get", "/v1/billing/tier", {"401", "403"}),
    ],
)
def test_json_routes_document_their_errors_with_the_error_body(
    document: dict[str, Any], method: str, path: str, codes: set[str]
) -> None:
    errors = _errors(document, method, path)
    assert set(errors) == codes
    for answer in errors.values():
        assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
    detail = document["components"]["schemas"]["ErrorDetail"]
    assert {"message", "request_id"} <= set(detail["required"])
    assert {"message", "hint", "request_id", "code"} == set(detail["properties"])
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_git_routes_document_text_errors(document: dict[str, Any]) -> None:
    errors = _errors(document, "post", "/git/{namespace}/{name}/git-receive-pack")
    assert set(errors) == {"401", "403", "404", "413", "415", "422"}
    assert all("text/plain" in errors[code]["content"] for code in ("401", "403", "404", "413", "415"))


def test_every_route_that_reads_a_token_documents_401(document: dict[str, Any]) -> None:
    checked = 0
    routes = [
        r
        for module in (api_routes, api_auth, api_deploy, api_usage, api_market, api_tiers)
        for r in module.router.routes
    ]
    for route in routes:
        calls = {d.call for d in getattr(getattr(route, "dependant", None), "dependencies", [])}
        if caller in calls:
            for method in route.methods:
                assert "401" in _errors(document, method.lower(), route.path), (method, route.path)
                checked += 1
    assert checked > 10


def test_names_roles_and_scopes_have_their_shapes(document: dict[str, Any]) -> None:
    params = {
        p["name"]: p["schema"]
        for p in document["paths"]["/v1/agents/{namespace}/{name}"]["get"]["parameters"]
    }
    for part in ("namespace", "name"):
        assert params[part]["pattern"] == "^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$"
        assert params[part]["maxLength"] == 64
    schemas = document["components"]["schemas"]
    assert schemas["MemberIn"]["properties"]["role"]["enum"] == list(ROLES)
    assert schemas["KeyIn"]["properties"]["scopes"]["items"]["enum"] == list(SCOPES)
    assert schemas["WhoAmI"]["properties"]["scopes"]["items"]["enum"] == list(SCOPES)
    assert "/" in schemas["DeployIn"]["properties"]["agent"]["pattern"]
    assert schemas["NamespaceIn"]["properties"]["name"]["pattern"] == params["namespace"]["pattern"]


def test_a_405_names_every_method_of_its_path(reg: LiveRegistry, document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        documented = {m.upper() for m in operations if m in METHODS}
        concrete = path.replace("{key_id}", "1").replace("{", "").replace("}", "")
        for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - documented):
            answer = api(reg, concrete, method=method)
            assert answer.status_code == 405, (method, path)
            assert set(answer.headers["Allow"].split(", ")) == documented, (method, path)
            assert answer.json()["error"]["request_id"]


def test_an_unknown_path_is_a_404_in_the_error_body(reg: LiveRegistry) -> None:
    answer = api(reg, "/v1/no-such-thing")
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "no such path"
