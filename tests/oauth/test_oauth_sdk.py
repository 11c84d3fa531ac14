"""Any MCP client by URL alone: the official Python SDK's OAuth client provider
(`mcp.client.auth.OAuthClientProvider`) connects to an agent deployed on a real node, through the
gateway, knowing nothing but the gateway's URL. It finds the protected resource metadata from the
401, this registry as authorization server, registers itself (RFC 7591) or names its client ID
metadata document (an https URL, served here on loopback), and sends its user to the
authorization page, where headless Chromium signs in with a wallet (tests/webutil.py) and allows.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from conftest import missing
from meshutil import AGENT, Mesh, serving_one
from tlsutil import https_files, self_signed
from webutil import CHROMIUM, PROVIDER, chromium, wallet_sign

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG"),
]

REDIRECT = "http://127.0.0.1:53118/callback"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    if not Path(CHROMIUM).exists():
        missing(f"chromium ({CHROMIUM})")
    with serving_one(tmp_path_factory.mktemp("oauth")) as mesh:
        yield mesh


def sign_in_and_allow(url: str, shots: list[str]) -> str:
    """The person's part, in a browser: the authorization page, the wallet sign-in, Allow. Returns
    the URL the browser was sent back to (the client's loopback redirect URI, answered here)."""
    sent_back: list[str] = []
    with chromium() as browser:
        context = browser.new_context()
        context.expose_function("mcpzTestSign", wallet_sign)
        context.add_init_script(PROVIDER)

        def callback(route: Any) -> None:
            sent_back.append(route.request.url)
            route.fulfill(status=200, content_type="text/plain", body="You can close this window.")

        context.route(re.compile(r"^http://127\.0\.0\.1:53118/"), callback)
        page = context.new_page()
        page.goto(url)
        page.wait_for_url(re.compile(r"/sign-in\?next=%2Foauth%2Fauthorize"))
        shots.append(page.url)
        page.get_by_role("button", name="Test Wallet").click()
        page.wait_for_url(re.compile(r"/oauth/authorize\?"))
        assert page.get_by_role("heading", name=re.compile(r"^Allow .* to use your agents\?$")).is_visible()
        shots.append(page.url)
        page.get_by_role("button", name="Allow").click()
        page.wait_for_url(re.compile(r"^http://127\.0\.0\.1:53118/callback\?"))
        context.close()
    assert len(sent_back) == 1
    return sent_back[0]


class Memory:
    """The SDK's TokenStorage, in memory."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client

    async def set_client_info(self, client_info: Any) -> None:
        self.client = client_info


@pytest.mark.parametrize("registration", ["dynamic", "metadata document"])
def test_the_sdk_oauth_provider_connects_by_url_alone(
    mesh: Mesh, registration: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp import Client
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
    from pydantic import AnyUrl

    url = f"{mesh.reg.url}/mcp/{AGENT}"
    storage = Memory()
    visited: list[str] = []
    returned: list[str] = []

    async def redirect_handler(authorization_url: str) -> None:
        returned.append(await anyio.to_thread.run_sync(sign_in_and_allow, authorization_url, visited))

    async def callback_handler() -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(returned[-1]).query)
        return AuthorizationCodeResult(
            code=query["code"][0], state=query.get("state", [None])[0], iss=query.get("iss", [None])[0]
        )

    files: dict[str, bytes] = {}
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the registry (in this process) trusts the server
    with https_files(files, cert, key) as base:
        document = f"{base}/mcpz-test-client.json"
        files["/mcpz-test-client.json"] = json.dumps(
            {"client_id": document, "client_name": "mcpz test client", "redirect_uris": [REDIRECT]}
        ).encode()
        provider = OAuthClientProvider(
            server_url=url,
            client_metadata=OAuthClientMetadata(
                client_name="mcpz test client",
                redirect_uris=[AnyUrl(REDIRECT)],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
            ),
            storage=storage,
            redirect_handler=redirect_handler,
            callback_handler=callback_handler,
            client_metadata_url=document if registration == "metadata document" else None,
        )

        async def main() -> tuple[list[str], Any]:
            async with httpx2.AsyncClient(auth=provider, timeout=60) as http:
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    tools = await client.list_tools()
                    added = await client.call_tool("add", {"a": 2, "b": 3})
                    return [t.name for t in tools.tools], added

        names, added = anyio.run(main)
    assert {"echo", "add", "divide"} <= set(names)
    assert not added.is_error and added.content[0].text == "5"
    # One browser round: sign-in, then consent; the token is bound to this deployment.
    assert len(returned) == 1 and len(visited) == 2
    if registration == "dynamic":
        assert storage.client.client_id.startswith("mcpzc_")
    else:
        assert storage.client.client_id == document
    assert storage.tokens.scope == "call" and storage.tokens.refresh_token
    with httpx2.Client(timeout=30) as http:
        other = http.post(
            f"{mesh.reg.url}/mcp/acme/other",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": f"Bearer {storage.tokens.access_token}"},
        )
    assert other.status_code == 401
