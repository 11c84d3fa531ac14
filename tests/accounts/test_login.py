"""Sign-In with Ethereum against a live registry: every refusal distinct, nonces burnt only by success."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry
from eth_account import Account
from gitutil import api
from sqlalchemy import text

from mcpz.client.models import Challenge
from mcpz.client.signin import login_message
from mcpz.keys import signing, siwe
from registry_server.db import Database

ALICE = Account.from_key("0x" + "a1" * 32)
BOB = Account.from_key("0x" + "b0" * 32)


def nonce(reg: LiveRegistry, address: str | None = None) -> Challenge:
    response = api(reg, "/v1/auth/nonce", method="POST", json={"address": address} if address else None)
    assert response.status_code == 200, response.text
    return Challenge.from_json(response.json())


def message(reg: LiveRegistry, account: Any = ALICE, **changes: Any) -> siwe.SiweMessage:
    built = login_message(reg.url, account.address, nonce(reg, account.address), datetime.now(UTC))
    return dataclasses.replace(built, **changes)


def login(reg: LiveRegistry, text_: str, signature: str) -> tuple[int, dict[str, Any]]:
    response = api(reg, "/v1/auth/login", method="POST", json={"message": text_, "signature": signature})
    return response.status_code, response.json()


def refusal(reg: LiveRegistry, text_: str, signature: str) -> str:
    status, body = login(reg, text_, signature)
    assert status == 401, body
    assert "mcpz_" not in json.dumps(body)
    return str(body["error"]["code"])


def stamp(moment: datetime) -> str:
    return siwe.format_timestamp(moment)


def test_sign_in_creates_the_account_and_its_address_namespace(registry: LiveRegistry) -> None:
    challenge = nonce(registry)
    assert challenge.uri == registry.url + "/v1/auth/login"
    assert challenge.domain == registry.url.removeprefix("http://")
    assert challenge.chain_id == 1
    signed = message(registry)
    status, body = login(registry, signed.to_text(), siwe.sign(signed, ALICE))
    assert status == 200, body
    account = ALICE.address.lower()
    assert (body["account"], body["address"], body["namespaces"]) == (account, ALICE.address, [account])
    assert body["scopes"] == ["read", "publish", "deploy", "call", "admin"]
    assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC) + timedelta(days=29)
    who = api(registry, "/v1/whoami", body["token"]).json()
    assert (who["account"], who["namespaces"]) == (account, [account])

    again = message(registry)
    status, second = login(registry, again.to_text(), siwe.sign(again, ALICE))
    assert status == 200 and second["account"] == account and second["token"] != body["token"]
    owner = api(registry, f"/v1/namespaces/{account}").json()
    assert (owner["owner"], owner["owner_address"]) == (account, ALICE.address)


def test_each_refusal_has_its_own_code(registry: LiveRegistry) -> None:
    now = datetime.now(UTC)
    codes: dict[str, str] = {}

    replayed = message(registry)
    signature = siwe.sign(replayed, ALICE)
    assert login(registry, replayed.to_text(), signature)[0] == 200
    codes["replayed nonce"] = refusal(registry, replayed.to_text(), signature)

    def signed(**changes: Any) -> str:
        m = message(registry, **changes)
        return refusal(registry, m.to_text(), siwe.sign(m, ALICE))

    codes["wrong domain"] = signed(domain="registry.evil.example")
    codes["wrong uri"] = signed(uri="http://registry.evil.example/v1/auth/login")
    codes["wrong chain id"] = signed(chain_id=324)
    codes["expired"] = signed(
        issued_at=stamp(now - timedelta(minutes=4)), expiration_time=stamp(now - timedelta(minutes=2))
    )
    codes["not yet valid"] = signed(not_before=stamp(now + timedelta(hours=1)))

    original = message(registry)
    tampered = original.to_text().replace(
        "Sign in to the mcpz registry", "Sign in to the mcpz registry as admin"
    )
    codes["tampered message"] = refusal(registry, tampered, siwe.sign(original, ALICE))

    # A nonce asked for by Alice, used in a message Bob signed validly.
    for_alice = nonce(registry, ALICE.address)
    by_bob = login_message(registry.url, BOB.address, for_alice, datetime.now(UTC))
    codes["wrong signer"] = refusal(registry, by_bob.to_text(), siwe.sign(by_bob, BOB))

    assert codes == {
        "replayed nonce": "nonce_refused",
        "wrong domain": "wrong_domain",
        "wrong uri": "wrong_uri",
        "wrong chain id": "wrong_chain_id",
        "expired": "expired",
        "not yet valid": "not_yet_valid",
        "tampered message": "tampered_message",
        "wrong signer": "wrong_signer",
    }
    assert len(set(codes.values())) == len(codes)


def test_a_bad_signature_does_not_burn_the_nonce(registry: LiveRegistry) -> None:
    good = message(registry)
    # Signed by someone else, then not a signature at all, then garbage text: all refused...
    assert refusal(registry, good.to_text(), signing.personal_sign(good.to_text().encode(), BOB)) == (
        "tampered_message"
    )
    assert refusal(registry, good.to_text(), "0x" + "00" * 65) == "malformed_signature"
    assert refusal(registry, good.to_text(), "not hex") == "malformed_signature"
    # ...and the nonce is still there for the genuine signature.
    status, body = login(registry, good.to_text(), siwe.sign(good, ALICE))
    assert status == 200, body


def test_an_unreadable_expiration_time_is_a_refusal_not_no_expiry(registry: LiveRegistry) -> None:
    good = message(registry)
    assert good.expiration_time is not None
    for bad in ("tomorrow", "2099-13-01T00:00:00Z", "2099-01-01 00:00:00Z", ""):
        text_ = good.to_text().replace(f"Expiration Time: {good.expiration_time}", f"Expiration Time: {bad}")
        signature = signing.personal_sign(text_.encode(), ALICE)
        assert refusal(registry, text_, signature) == "malformed_message", bad
    assert login(registry, good.to_text(), siwe.sign(good, ALICE))[0] == 200


def test_an_expired_or_unknown_nonce_is_refused(registry: LiveRegistry) -> None:
    unknown = message(registry, nonce="neverIssued123")
    assert refusal(registry, unknown.to_text(), siwe.sign(unknown, ALICE)) == "nonce_refused"
    stale = message(registry)
    db = Database(registry.database_url)
    try:
        with db.session() as session:
            session.execute(
                text("UPDATE auth_nonces SET expires_at = :t WHERE nonce = :n"),
                {"t": datetime.now(UTC) - timedelta(seconds=1), "n": stale.nonce},
            )
    finally:
        db.dispose()
    assert refusal(registry, stale.to_text(), siwe.sign(stale, ALICE)) == "nonce_refused"


def test_contract_wallet_signatures_need_a_configured_chain(sqlite_registry: LiveRegistry) -> None:
    contract = Account.from_key("0x" + "c0" * 32)  # stands for a contract wallet: its key never signs
    m = message(sqlite_registry, contract)
    status, body = login(sqlite_registry, m.to_text(), "0x" + "ab" * 100)
    assert status == 401
    assert body["error"]["code"] == "malformed_signature"
    assert "MCPZ_REGISTRY_CHAIN_RPC" in body["error"]["hint"]


class _Chain(BaseHTTPRequestHandler):
    """A JSON-RPC endpoint whose one contract answers isValidSignature with the EIP-1271 magic value."""

    calls: list[dict[str, Any]] = []  # noqa: RUF012
    valid = True

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        requests = request if isinstance(request, list) else [request]
        answers = []
        for one in requests:
            type(self).calls.append(one)
            if one["method"] == "eth_chainId":
                result: Any = "0x1"
            elif one["method"] == "eth_call":
                data = one["params"][0]["data"]
                ok = data.startswith("0x1626ba7e") and type(self).valid
                result = "0x" + ("1626ba7e" if ok else "ffffffff") + "00" * 28
            else:
                result = None
            answers.append({"jsonrpc": "2.0", "id": one["id"], "result": result})
        payload = json.dumps(answers if isinstance(request, list) else answers[0]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def chain() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chain)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Chain.calls = []
    _Chain.valid = True
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_contract_wallet_sign_in_through_eip1271(chain: str, tmp_path: Path) -> None:
    pytest.importorskip("web3", reason="EIP-1271 needs web3 (a dependency of mcpz)")
    reg = start_registry(tmp_path / "registry", chain_rpc=chain)
    try:
        wallet = Account.from_key("0x" + "c1" * 32)  # the contract's address; no key signs for it
        m = message(reg, wallet)
        status, body = login(reg, m.to_text(), "0x" + "ab" * 100)
        assert status == 200, body
        assert body["address"] == wallet.address
        call = next(c for c in _Chain.calls if c["method"] == "eth_call")
        assert call["params"][0]["to"].lower() == wallet.address.lower()
        assert signing.personal_hash(m.to_text().encode()).hex() in call["params"][0]["data"]

        _Chain.valid = False
        m = message(reg, wallet)
        assert refusal(reg, m.to_text(), "0x" + "ab" * 100) == "malformed_signature"
    finally:
        reg.stop()


def test_cli_login_with_a_wallet(
    cli: Any, sqlite_registry: LiveRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPZ_REGISTRY", sqlite_registry.url)
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", "correct horse battery")
    monkeypatch.setenv("MCPZ_WALLET_SCRYPT_N", "1024")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    assert cli("login").exit_code == 2
    no_wallet = cli("login", "--wallet")
    assert no_wallet.exit_code == 2 and "mcpz wallet create" in no_wallet.stderr
    created = cli("--json", "wallet", "create")
    assert created.exit_code == 0, created.stderr
    address = json.loads(created.stdout)["address"]

    logged = cli("--json", "login", "--wallet")
    assert logged.exit_code == 0, logged.stderr
    body = json.loads(logged.stdout)
    assert (body["address"], body["account"], body["stored_in"]) == (address, address.lower(), "file")
    assert "token" not in body and "mcpz_" not in logged.stdout + logged.stderr
    who = cli("whoami")
    assert who.exit_code == 0, who.stderr
    assert f"account:    {address.lower()}" in who.stdout
    assert "scopes:     read, publish, deploy, call, admin" in who.stdout

    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", "Zq9-not-the-passphrase")
    wrong = cli("-v", "login", "--wallet")
    assert wrong.exit_code == 4
    assert "passphrase does not open" in wrong.stderr
    assert "Zq9-not-the-passphrase" not in wrong.stdout + wrong.stderr
