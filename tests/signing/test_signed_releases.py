"""Signed releases end to end: push signs, the registry checks signers, and a node (mcpz.keys.trust) refuses
whatever the namespace owner's key did not sign — whatever the registry's database says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry
from eth_account import Account
from gitutil import api, commit, git, init_agent, open_bare, set_version
from sqlalchemy import text

from mcpz import credentials
from mcpz.client.models import Challenge
from mcpz.client.signin import login_message
from mcpz.keys import signing, siwe, trust
from registry_server.db import Database

OWNER = Account.from_key("0x" + "0a" * 32)
MEMBER = Account.from_key("0x" + "0b" * 32)
STRANGER = Account.from_key("0x" + "0c" * 32)
SUCCESSOR = Account.from_key("0x" + "0d" * 32)


def sign_in(reg: LiveRegistry, account: Any) -> str:
    challenge = Challenge.from_json(api(reg, "/v1/auth/nonce", method="POST").json())
    m = login_message(reg.url, account.address, challenge, datetime.now(UTC))
    body = {"message": m.to_text(), "signature": siwe.sign(m, account)}
    response = api(reg, "/v1/auth/login", method="POST", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def sql(reg: LiveRegistry, statement: str, **params: Any) -> list[Any]:
    """Run SQL on the registry's database, as an attacker with access to it could."""
    db = Database(reg.database_url)
    try:
        with db.session() as session:
            result = session.execute(text(statement), params)
            return list(result.fetchall()) if result.returns_rows else []  # type: ignore[attr-defined]
    finally:
        db.dispose()


def release_statement(reg: LiveRegistry, name: str, version: str, commit_id: str, manifest: bytes) -> Any:
    return signing.ReleaseStatement(
        registry=signing.canonical_registry_url(reg.url),
        name=name,
        version=version,
        commit=commit_id,
        manifest_sha256=signing.sha256_hex(manifest),
    )


def manifest_in_registry(reg: LiveRegistry, name: str, commit_id: str) -> bytes:
    """What a node reads: mcpz.toml at the commit, from the objects it fetched (here: the registry's)."""
    repo = open_bare(reg, name)
    try:
        tree = repo[repo[commit_id.encode()].tree]
        return bytes(repo[tree[b"mcpz.toml"][1]].as_raw_string())
    finally:
        repo.close()


def node_check(reg: LiveRegistry, verifier: trust.Verifier, name: str, version: str) -> trust.VerifiedRelease:
    """What a node does before it runs `name@version`: everything from the registry, nothing trusted."""
    release = api(reg, f"/v1/agents/{name}/{version}").json()
    keys = trust.NamespaceKeys.from_json(api(reg, f"/v1/namespaces/{name.split('/')[0]}/keys").json())
    return verifier.verify_release(
        name=name,
        version=version,
        commit=release["commit"],
        manifest=manifest_in_registry(reg, name, release["commit"]),
        signatures=[s["signature"] for s in release["signatures"]],
        keys=keys,
    )


@dataclass
class World:
    reg: LiveRegistry
    owner: str  # tokens
    member: str
    stranger: str
    work: Path
    commits: dict[str, str]


@pytest.fixture
def world(sqlite_registry: LiveRegistry, tmp_path: Path) -> Iterator[World]:
    reg = sqlite_registry
    owner, member, stranger = sign_in(reg, OWNER), sign_in(reg, MEMBER), sign_in(reg, STRANGER)
    assert api(reg, "/v1/namespaces", owner, method="POST", json={"name": "acme"}).status_code == 201
    added = api(
        reg, f"/v1/namespaces/acme/members/{MEMBER.address}", owner, method="PUT", json={"role": "publisher"}
    )
    assert added.status_code == 200, added.text
    work = tmp_path / "agent"
    commits = {"1.0.0": init_agent(work, "acme/weather", "1.0.0")}
    git("tag", "v1.0.0", cwd=work)
    git("push", reg.git_url("acme/weather", owner), "main", "v1.0.0", cwd=work)
    yield World(reg, owner, member, stranger, work, commits)


def post_signature(w: World, version: str, account: Any, token: str | None = None) -> Any:
    manifest = manifest_in_registry(w.reg, "acme/weather", w.commits[version])
    statement = release_statement(w.reg, "acme/weather", version, w.commits[version], manifest)
    signature = signing.sign_statement(statement, account)
    return api(
        w.reg, f"/v1/agents/acme/weather/{version}/signature", token or w.owner, method="POST",
        json={"signature": signature},
    )  # fmt: skip


def test_the_registry_keeps_only_signatures_by_the_namespace(world: World) -> None:
    reg = world.reg
    assert api(reg, "/v1/agents/acme/weather/1.0.0").json()["signature"] is None

    by_stranger = post_signature(world, "1.0.0", STRANGER)
    assert by_stranger.status_code == 403
    assert by_stranger.json()["error"]["code"] == "unexpected_signer"
    not_hex = api(
        reg, "/v1/agents/acme/weather/1.0.0/signature", world.owner, method="POST", json={"signature": "zz"}
    )
    assert (not_hex.status_code, not_hex.json()["error"]["code"]) == (400, "malformed_signature")
    # A stranger's token may not even try.
    assert post_signature(world, "1.0.0", STRANGER, world.stranger).status_code == 403

    by_member = post_signature(world, "1.0.0", MEMBER, world.member)
    assert by_member.status_code == 200, by_member.text
    assert by_member.json()["signer"] == MEMBER.address
    by_owner = post_signature(world, "1.0.0", OWNER)
    assert by_owner.status_code == 200
    served = api(reg, "/v1/agents/acme/weather/1.0.0").json()
    # The owner's signature is the one shown; both are kept.
    assert (served["signer"], len(served["signatures"])) == (OWNER.address, 2)
    assert served["manifest_sha256"] == signing.sha256_hex(
        manifest_in_registry(reg, "acme/weather", world.commits["1.0.0"])
    )
    assert post_signature(world, "1.0.0", OWNER).status_code == 200  # idempotent
    assert len(api(reg, "/v1/agents/acme/weather/1.0.0").json()["signatures"]) == 2


def test_a_node_runs_only_what_the_owner_signed(world: World, tmp_path: Path) -> None:
    reg = world.reg
    verifier = trust.Verifier(reg.url, trust.TrustStore(tmp_path / "node" / "trust.json"))

    with pytest.raises(trust.UnsignedRelease):
        node_check(reg, verifier, "acme/weather", "1.0.0")

    # A member may publish, but nodes check the namespace owner's key.
    assert post_signature(world, "1.0.0", MEMBER, world.member).status_code == 200
    with pytest.raises(trust.UntrustedSigner):
        node_check(reg, verifier, "acme/weather", "1.0.0")
    assert post_signature(world, "1.0.0", OWNER).status_code == 200
    assert node_check(reg, verifier, "acme/weather", "1.0.0").signer == OWNER.address

    # A signature by a non-member slipped into the database is not the owner's either.
    world.commits["1.1.0"] = set_version(world.work, "1.1.0", "acme/weather")
    git("tag", "v1.1.0", cwd=world.work)
    git("push", reg.git_url("acme/weather", world.owner), "main", "v1.1.0", cwd=world.work)
    manifest = manifest_in_registry(reg, "acme/weather", world.commits["1.1.0"])
    forged = signing.sign_statement(
        release_statement(reg, "acme/weather", "1.1.0", world.commits["1.1.0"], manifest), STRANGER
    )
    release_id = sql(reg, "SELECT r.id FROM releases r WHERE r.version = '1.1.0'")[0][0]
    sql(
        reg,
        "INSERT INTO release_signatures (release_id, signer, signature, created_at) VALUES (:r, :s, :g, :t)",
        r=release_id, s=STRANGER.address, g=forged, t=datetime.now(UTC),
    )  # fmt: skip
    with pytest.raises(trust.UntrustedSigner) as refused:
        node_check(reg, verifier, "acme/weather", "1.1.0")
    assert STRANGER.address in refused.value.message


def test_a_commit_swapped_in_the_database_is_refused(
    cli: Any, world: World, tmp_path: Path, monkeypatch
) -> None:
    reg = world.reg
    assert post_signature(world, "1.0.0", OWNER).status_code == 200
    verifier = trust.Verifier(reg.url, trust.TrustStore(tmp_path / "node" / "trust.json"))
    assert node_check(reg, verifier, "acme/weather", "1.0.0").signed

    # Other code reaches the registry on a branch; then its database is made to point 1.0.0 at it.
    evil = commit(world.work, {"server.py": "import os; os.system('steal')\n"}, "evil")
    git("push", reg.git_url("acme/weather", world.owner), "main", cwd=world.work)
    sql(reg, "UPDATE releases SET \"commit\" = :c WHERE version = '1.0.0'", c=evil)
    assert api(reg, "/v1/agents/acme/weather/1.0.0").json()["commit"] == evil
    with pytest.raises(trust.UntrustedSigner):
        node_check(reg, verifier, "acme/weather", "1.0.0")

    monkeypatch.setenv("MCPZ_REGISTRY", reg.url)
    checked = cli("verify", "acme/weather@1.0.0")
    assert checked.exit_code == 4
    assert "not signed by the namespace key" in checked.stderr


def test_an_owner_changed_without_a_rotation_is_refused(world: World, tmp_path: Path) -> None:
    reg = world.reg
    assert post_signature(world, "1.0.0", OWNER).status_code == 200
    verifier = trust.Verifier(reg.url, trust.TrustStore(tmp_path / "node" / "trust.json"))
    node_check(reg, verifier, "acme/weather", "1.0.0")  # pins OWNER for acme

    stranger_id = sql(reg, "SELECT id FROM accounts WHERE address = :a", a=STRANGER.address)[0][0]
    sql(reg, "UPDATE namespaces SET owner_id = :o WHERE name = 'acme'", o=stranger_id)
    # The new "owner" signs the release; the registry now even accepts it.
    assert post_signature(world, "1.0.0", STRANGER, world.stranger).status_code == 200
    with pytest.raises(trust.KeyChangeRefused) as refused:
        node_check(reg, verifier, "acme/weather", "1.0.0")
    assert refused.value.code == "key_changed"


def test_a_signed_transfer_moves_the_key_nodes_trust(world: World, tmp_path: Path) -> None:
    reg = world.reg
    assert post_signature(world, "1.0.0", OWNER).status_code == 200
    verifier = trust.Verifier(reg.url, trust.TrustStore(tmp_path / "node" / "trust.json"))
    node_check(reg, verifier, "acme/weather", "1.0.0")
    sign_in(reg, SUCCESSOR)

    statement = signing.KeyRotationStatement(
        registry=signing.canonical_registry_url(reg.url), namespace="acme",
        old_address=OWNER.address, new_address=SUCCESSOR.address, sequence=1,
    )  # fmt: skip
    unsigned = api(
        reg, "/v1/namespaces/acme/transfer", world.owner, method="POST", json={"account": SUCCESSOR.address}
    )
    assert unsigned.status_code == 400
    wrong_key = signing.sign_statement(statement, STRANGER)
    body = {"account": SUCCESSOR.address, "signature": wrong_key}
    assert api(reg, "/v1/namespaces/acme/transfer", world.owner, method="POST", json=body).status_code == 403
    body["signature"] = signing.sign_statement(statement, OWNER)
    moved = api(reg, "/v1/namespaces/acme/transfer", world.owner, method="POST", json=body)
    assert moved.status_code == 200, moved.text
    assert (moved.json()["owner_address"], moved.json()["key_sequence"]) == (SUCCESSOR.address, 1)

    # The old owner's signature no longer satisfies a node; the new owner's does, through the rotation.
    with pytest.raises(trust.UntrustedSigner):
        node_check(reg, verifier, "acme/weather", "1.0.0")
    assert post_signature(world, "1.0.0", SUCCESSOR, sign_in(reg, SUCCESSOR)).status_code == 200
    assert node_check(reg, verifier, "acme/weather", "1.0.0").signer == SUCCESSOR.address
    revoked = api(reg, "/v1/revoked-keys").json()["keys"]
    assert [(k["address"], k["replaced_by"], k["namespace"]) for k in revoked] == [
        (OWNER.address, SUCCESSOR.address, "acme")
    ]
    signing.verify_rotation(
        signing.KeyRotationStatement.parse(revoked[0]["statement"]), revoked[0]["signature"]
    )

    # Rolling the database back to the old owner does not fool the node.
    old_owner = sql(reg, "SELECT id FROM accounts WHERE address = :a", a=OWNER.address)[0][0]
    sql(reg, "UPDATE namespaces SET owner_id = :o WHERE name = 'acme'", o=old_owner)
    sql(reg, "DELETE FROM key_rotations")
    with pytest.raises(trust.KeyChangeRefused):
        node_check(reg, verifier, "acme/weather", "1.0.0")


# --- the commands --------------------------------------------------------------------------------

PASSPHRASE = "Ochre-Lantern-Wharf-29"


@pytest.fixture
def user(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveRegistry]:
    reg = start_registry(tmp_path / "registry")
    monkeypatch.setenv("MCPZ_REGISTRY", reg.url)
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("MCPZ_WALLET_SCRYPT_N", "1024")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    try:
        yield reg
    finally:
        reg.stop()


def test_push_signs_and_verify_checks_and_nothing_secret_is_shown(
    cli: Any, user: LiveRegistry, tmp_path: Path, isolated_env: Path
) -> None:
    outputs: list[str] = []

    def run(*args: str, cwd: Path | None = None, code: int = 0) -> Any:
        done = cli("-v", *args, cwd=cwd)
        outputs.append(done.stdout + done.stderr)
        assert done.exit_code == code, done.stderr
        return done

    address = json.loads(run("--json", "wallet", "create").stdout)["address"]
    run("--json", "login", "--wallet")
    run("namespace", "create", "acme")
    work = tmp_path / "agent"
    first = init_agent(work, "acme/weather", "0.1.0")
    # This agent is no MCP server, so no tools are pinned (tests/signing/test_tool_pinning.py pins them).
    pushed = json.loads(run("--json", "push", "--no-tools", cwd=work).stdout)
    assert (pushed["published"], pushed["signed"], pushed["signer"]) == (True, True, address)
    verified = json.loads(run("--json", "verify", "acme/weather@0.1.0").stdout)
    assert (verified["commit"], verified["signer"], verified["verified"]) == (first, address, True)
    plain = run("verify", "acme/weather@0.1.0")
    assert plain.stdout.strip() == f"verified acme/weather 0.1.0 ({first[:12]}): signed by {address}"

    set_version(work, "0.2.0", "acme/weather")
    unsigned = run("--json", "push", "--no-sign", cwd=work)
    assert json.loads(unsigned.stdout)["signed"] is False
    assert "not signed" in unsigned.stderr
    run("verify", "acme/weather@0.2.0", code=4)
    signed_later = run("sign", "acme/weather@0.2.0", str(work))
    assert f"signed acme/weather 0.2.0 as {address}" in signed_later.stdout
    run("verify", "acme/weather@0.2.0")

    private_key = json.loads(run("--json", "wallet", "export", "--private-key", "--yes").stdout)[
        "private_key"
    ]
    outputs.pop()  # the one place the key is meant to be shown
    token = credentials.get_token(user.url)
    assert token is not None and token.startswith("mcpz_")
    for shown in outputs:
        assert PASSPHRASE not in shown
        assert private_key[2:] not in shown.lower()
        assert token not in shown


def test_namespace_commands_and_rotate_key(cli: Any, user: LiveRegistry, tmp_path: Path) -> None:
    reg = user
    assert cli("wallet", "create").exit_code == 0
    assert cli("login", "--wallet").exit_code == 0
    old = cli("wallet", "address").stdout.strip()
    assert cli("namespace", "create", "acme").exit_code == 0
    taken = cli("namespace", "create", "acme")
    assert taken.exit_code == 8 and "already taken" in taken.stderr
    sign_in(reg, MEMBER)
    added = cli("--json", "namespace", "add-member", "acme", MEMBER.address, "--role", "publisher")
    assert added.exit_code == 0, added.stderr
    assert [m["role"] for m in json.loads(added.stdout)["members"]] == ["owner", "publisher"]
    assert cli("namespace", "add-member", "acme", MEMBER.address, "--role", "king").exit_code == 2
    shown = cli("namespace", "show", "acme")
    assert f"publisher  {MEMBER.address.lower()}" in shown.stdout
    assert cli("namespace", "remove-member", "acme", MEMBER.address).exit_code == 0
    assert cli("namespace", "remove-member", "acme", MEMBER.address).exit_code == 5

    work = tmp_path / "agent"
    init_agent(work, "acme/weather", "0.1.0")
    assert cli("push", "--no-tools", cwd=work).exit_code == 0
    node = trust.Verifier(reg.url, trust.TrustStore(tmp_path / "node.json"))
    assert node_check(reg, node, "acme/weather", "0.1.0").signer == old

    rotated = cli("--json", "namespace", "rotate-key")
    assert rotated.exit_code == 0, rotated.stderr
    body = json.loads(rotated.stdout)
    new = body["address"]
    assert new != old and cli("wallet", "address").stdout.strip() == new
    assert sorted(r["namespace"] for r in body["rotations"]) == sorted(["acme", old.lower()])
    assert Path(body["retired_keystore"]).exists()
    # Same account, new key: sign-in works with the new wallet, and the node follows the rotation.
    assert cli("login", "--wallet").exit_code == 0
    assert cli("sign", "acme/weather@0.1.0", str(work)).exit_code == 0
    assert node_check(reg, node, "acme/weather", "0.1.0").signer == new
    assert {k["address"] for k in api(reg, "/v1/revoked-keys").json()["keys"]} == {old}
