"""Browser sessions without a browser: wallet sign-in to a cookie, CSRF on every form, API keys
made and revoked from the pages, one account never reaching another's, static assets' caching.

Against a live registry on SQLite and PostgreSQL, over real HTTP (httpx2 keeps the cookies as a
browser does). The browser itself is tests/web/test_web_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from conftest import LiveRegistry, start_registry

import mcpz.keys.siwe as siwe
from mcpz.keys.ethkeys import Account, LocalAccount

ALICE = Account.from_key("0x" + "a7" * 32)
BOB = Account.from_key("0x" + "b7" * 32)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveRegistry]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    live = start_registry(tmp_path / "registry", url)
    yield live
    live.stop()


def browser(reg: LiveRegistry) -> httpx2.Client:
    return httpx2.Client(base_url=reg.url, timeout=30, follow_redirects=False)


def sign_in(client: httpx2.Client, wallet: LocalAccount) -> httpx2.Response:
    issued = client.post("/sign-in/message", json={"address": wallet.address})
    assert issued.status_code == 200, issued.text
    message = issued.json()["message"]
    signature = siwe.sign(message, wallet.key)
    return client.post("/sign-in", json={"message": message, "signature": signature, "next": "/keys"})


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no CSRF field"
    return found.group(1)


def test_a_wallet_signs_in_to_an_httponly_session_and_out_again(reg: LiveRegistry) -> None:
    with browser(reg) as client:
        assert client.get("/dashboard").status_code == 303  # to the sign-in page
        answer = sign_in(client, ALICE)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"account": ALICE.address.lower(), "next": "/keys"}
        cookie = answer.headers["set-cookie"]
        assert "mcpz_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Secure" not in cookie  # served over plain http here
        page = client.get("/keys")
        assert page.status_code == 200
        assert ALICE.address.lower() in page.text
        assert page.headers["cache-control"] == "private, no-store"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        # Sign-out needs the form's token; with it, the session is gone on the server too.
        stolen = client.cookies.get("mcpz_session")
        assert client.post("/sign-out", data={"csrf": "forged"}).status_code == 403
        assert client.post("/sign-out", data={"csrf": csrf_of(page.text)}).status_code == 303
    with httpx2.Client(base_url=reg.url, timeout=30, cookies={"mcpz_session": stolen or ""}) as replay:
        assert replay.get("/keys").status_code == 303


def test_a_sign_in_is_refused_for_a_bad_signature_a_reused_message_and_another_site(
    reg: LiveRegistry,
) -> None:
    with browser(reg) as client:
        message = client.post("/sign-in/message", json={"address": ALICE.address}).json()["message"]
        forged = client.post(
            "/sign-in",
            json={
                "message": message,
                "signature": siwe.sign(message.replace(ALICE.address, BOB.address), BOB.key),
            },
        )
        assert forged.status_code == 401
        good = siwe.sign(message, ALICE.key)
        assert client.post("/sign-in", json={"message": message, "signature": good}).status_code == 200
        again = client.post("/sign-in", json={"message": message, "signature": good})
        assert again.status_code == 401
        assert again.json()["error"]["code"] == "nonce_refused"
        other_site = client.post(
            "/sign-in/message", json={"address": ALICE.address}, headers={"Origin": "https://evil.example"}
        )
        assert other_site.status_code == 403
        as_form = client.post("/sign-in", data={"message": message, "signature": good})
        assert as_form.status_code == 400  # only JSON: a cross-site form cannot post it
        assert client.post("/sign-in/message", json={"address": "0x123"}).status_code == 400


def test_keys_are_made_and_revoked_only_by_their_own_account(reg: LiveRegistry) -> None:
    with browser(reg) as alice, browser(reg) as bob:
        sign_in(alice, ALICE)
        sign_in(bob, BOB)
        page = alice.get("/keys").text
        made = alice.post(
            "/keys", data={"csrf": csrf_of(page), "name": "ci", "scope": ["read", "call"], "expires": "30d"}
        )
        assert made.status_code == 200
        secret = re.search(r'id="new-key">(mcpz_[^<]+)<', made.text)
        assert secret, made.text
        # The key works on the API, with the scopes ticked.
        keys = httpx2.get(f"{reg.url}/v1/usage", headers={"Authorization": f"Bearer {secret.group(1)}"})
        assert keys.status_code == 200
        key_id = re.search(r'action="/keys/(\d+)/revoke"', made.text)
        assert key_id
        # Bob sees none of Alice's keys, and cannot revoke one by its id, with his own valid token.
        bob_page = bob.get("/keys").text
        assert "ci" not in re.findall(r"<td>([^<]*)</td>", bob_page)
        refused = bob.post(f"/keys/{key_id.group(1)}/revoke", data={"csrf": csrf_of(bob_page)})
        assert refused.status_code == 404
        # Alice's own token in Bob's form is refused too (each session has its own).
        assert bob.post(f"/keys/{key_id.group(1)}/revoke", data={"csrf": csrf_of(page)}).status_code == 403
        assert alice.post("/keys", data={"csrf": csrf_of(page), "scope": "node"}).status_code == 400
        assert alice.post("/keys", data={"csrf": csrf_of(page)}).status_code == 400  # no scope ticked
        revoked = alice.post(f"/keys/{key_id.group(1)}/revoke", data={"csrf": csrf_of(page)})
        assert revoked.status_code == 200 and "is revoked" in revoked.text
        gone = httpx2.get(f"{reg.url}/v1/usage", headers={"Authorization": f"Bearer {secret.group(1)}"})
        assert gone.status_code == 401


def test_static_assets_are_cached_by_content_hash_or_etag(reg: LiveRegistry) -> None:
    page = httpx2.get(f"{reg.url}/sign-in").text
    css = re.search(r'href="(/static/app\.[0-9a-f]{12}\.css)"', page)
    assert css, page
    hashed = httpx2.get(reg.url + css.group(1))
    assert hashed.status_code == 200
    assert hashed.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert hashed.headers["content-type"].startswith("text/css")
    plain = httpx2.get(f"{reg.url}/static/app.css")
    assert plain.headers["cache-control"] == "public, max-age=300"
    again = httpx2.get(f"{reg.url}/static/app.css", headers={"If-None-Match": plain.headers["etag"]})
    assert again.status_code == 304
    assert httpx2.get(f"{reg.url}/static/../app.py").status_code == 404
    assert httpx2.get(f"{reg.url}/static/nothing.js").status_code == 404
    # Nothing on the pages comes from another host.
    assert not re.search(r'(src|href)="(https?:)?//', page.replace('href="https://eips.ethereum.org', ""))


def test_sign_in_never_redirects_off_the_site(reg: LiveRegistry) -> None:
    with browser(reg) as client:
        message = client.post("/sign-in/message", json={"address": ALICE.address}).json()["message"]
        signature = siwe.sign(message, ALICE.key)
        answer = client.post(
            "/sign-in", json={"message": message, "signature": signature, "next": "//evil.example"}
        )
        assert answer.json()["next"] == "/dashboard"
        for target in ("https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
            page = client.get("/sign-in", params={"next": target})
            assert page.status_code == 303 and page.headers["location"] == "/dashboard"


def test_over_https_the_cookie_is_secure_and_host_only(tmp_path: Path) -> None:
    """A registry whose public URL is https (behind a TLS proxy) sets `__Host-` Secure cookies."""
    live = start_registry(tmp_path / "registry", public_url="https://registry.example")
    try:
        with browser(live) as client:
            message = client.post("/sign-in/message", json={"address": ALICE.address}).json()["message"]
            assert message.startswith("https://registry.example wants you to sign in")
            answer = client.post(
                "/sign-in", json={"message": message, "signature": siwe.sign(message, ALICE.key)}
            )
            cookie = answer.headers["set-cookie"]
            assert cookie.startswith("__Host-mcpz_session=") and "Secure" in cookie and "Path=/" in cookie
            assert "Domain" not in cookie
    finally:
        live.stop()


@pytest.mark.slow
def test_every_page_renders_on_this_database(reg: LiveRegistry, tmp_path: Path) -> None:
    """The pages' own queries (dashboard sums, review fingerprints) on SQLite and PostgreSQL alike."""
    from webutil import FORECAST, MarketWorld, publish, seed

    world: MarketWorld = seed(reg, tmp_path / "work")
    namespace = ALICE.address.lower()
    world.account_for_wallet(ALICE.address)
    world.tokens[namespace] = reg.account(namespace)
    publish(
        world, tmp_path / "mine", f"{namespace}/tiny", [("1.0.0", [FORECAST])], description="T", keywords=[]
    )
    world.calls(f"{namespace}/tiny", world.account_for_wallet(BOB.address), 3)
    world.calls("acme/weather", world.account_for_wallet(BOB.address), 2)
    with browser(reg) as bob, browser(reg) as alice:
        sign_in(bob, BOB)
        sign_in(alice, ALICE)
        for path in (
            "/",
            "/search?q=forecast",
            "/agents/acme/weather",
            "/creators/acme",
            "/dashboard",
            "/keys",
        ):
            assert bob.get(path).status_code == 200, path
        token = csrf_of(bob.get("/agents/acme/weather").text)
        posted = bob.post("/agents/acme/weather/reviews", data={"csrf": token, "stars": "5", "text": "good"})
        assert posted.status_code == 303
        assert "by " + BOB.address.lower() + " · 2 calls" in bob.get("/agents/acme/weather").text.replace(
            "</strong>", ""
        ).replace("<strong>", "")
        board = alice.get("/dashboard").text
        assert f"/agents/{namespace}/tiny" in board and '<td class="num">3</td>' in board
