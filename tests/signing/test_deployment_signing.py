"""Signed deployments end to end: the CLI and `mcpz.client.deploy` sign each revision's statement, the
registry keeps only signatures by the namespace's owner or members and numbers revisions so they
only grow, and nodes run only what the namespace owner's key signed, never a revision lower than
one they have seen — whatever the registry's database says (it is tampered with here, as an
attacker with access to it could). Revoked keys: a node refuses what a key revoked for the
namespace signed, and remembers revocations a registry later hides."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import meshutil
import pytest
from conftest import LiveRegistry, start_registry
from gitutil import api, git
from test_node_signatures import AGENT, deploy, publish, set_version, token_for
from test_signed_releases import MEMBER, OWNER, STRANGER, SUCCESSOR, World, post_signature, sign_in, sql

from mcpz.client import deploy as deploying
from mcpz.client.models import Deployment
from mcpz.client.registry import SignedChange, connect
from mcpz.errors import AuthError, RefusedError
from mcpz.keys import signing, trust
from mcpz.repo.templates import render_template

T = TypeVar("T")
FAST: dict[str, Any] = {"heartbeat_interval": 0.3, "heartbeat_grace": 2.0, "resync_interval": 1.0}


def until(predicate: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """meshutil's poll, with the longer wait these multi-process tests need."""
    return meshutil.until(predicate, timeout, what)


def add_member(w: World, account: Any) -> None:
    added = api(w.reg, f"/v1/namespaces/acme/members/{account.address}", w.owner, method="PUT",
                json={"role": "publisher"})  # fmt: skip
    assert added.status_code == 200, added.text


async def deploy_as(w: World, version: str, account: Any, **kw: Any) -> Deployment:
    """`mcpz.client.deploy.deploy` with the owner's token, signed by `account` (None: unsigned)."""
    async with connect(w.reg.url, w.owner) as client:
        return await deploying.deploy(client, AGENT, version, account=account, **kw)


def signed_deploy(w: World, version: str, account: Any, **kw: Any) -> Deployment:
    """`deploy_as` outside an event loop."""
    return anyio.run(lambda: deploy_as(w, version, account, **kw))


def make_world(reg: LiveRegistry, tmp_path: Path) -> World:
    """As test_node_signatures' `world`: OWNER owns "acme", and acme/weather 1.0.0 (a real agent)
    is published, unsigned."""
    owner, member, stranger = sign_in(reg, OWNER), sign_in(reg, MEMBER), sign_in(reg, STRANGER)
    assert api(reg, "/v1/namespaces", owner, method="POST", json={"name": "acme"}).status_code == 201
    work = tmp_path / "agent"
    work.mkdir()
    render_template("python", work, AGENT)
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "weather", cwd=work)
    commits = {"1.0.0": set_version(work, "1.0.0")}
    git("tag", "v1.0.0", cwd=work)
    git("push", "-q", reg.git_url(AGENT, owner), "main", "v1.0.0", cwd=work)
    return World(reg, owner, member, stranger, work, commits)


@pytest.fixture
def world(sqlite_registry: LiveRegistry, tmp_path: Path) -> World:
    return make_world(sqlite_registry, tmp_path)


# --- the registry's side ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_each_change_is_a_signed_revision_whose_number_only_grows(world: World) -> None:
    reg = world.reg
    async with connect(reg.url, world.owner) as client:
        prepared = await client.prepare_deploy(AGENT, "1.0.0", replicas=2)
        assert (prepared.revision, prepared.new_revision, prepared.created) == (1, True, True)
        assert prepared.statement is not None
        statement = signing.DeploymentStatement.parse(prepared.statement)
        assert statement == signing.DeploymentStatement(
            registry=signing.canonical_registry_url(reg.url), deployment=AGENT, name=AGENT, version="1.0.0",
            commit=world.commits["1.0.0"], replicas=2, revision=1,
        )  # fmt: skip
        assert await client.deployments() == []  # preparing changes nothing

        # A stranger's signature, and the owner's over another revision, are refused.
        by_stranger = signing.sign_statement(statement, STRANGER)
        with pytest.raises(AuthError, match=r"neither the owner nor a member.*\[unexpected_signer\]"):
            await client.deploy(
                AGENT, "1.0.0", replicas=2, signed=SignedChange(prepared.statement, by_stranger)
            )
        later = dataclasses.replace(statement, revision=2)
        with pytest.raises(RefusedError, match=r"\[statement_changed\]"):
            await client.deploy(
                AGENT,
                "1.0.0",
                replicas=2,
                signed=SignedChange(later.to_text(), signing.sign_statement(later, OWNER)),
            )
        assert await client.deployments() == []

        view = await deploying.deploy(client, AGENT, "1.0.0", replicas=2, account=OWNER)
        assert (view.revision, view.signers, view.statement) == (1, [OWNER.address], prepared.statement)

        # Scale, update and rollback: each a new revision, signed.
        view = await deploying.scale(client, AGENT, 3, account=OWNER)
        assert (view.revision, view.replicas, view.version) == (2, 3, "1.0.0")
        publish(world, "1.1.0")
        view = await deploying.deploy(client, AGENT, "1.1.0", account=OWNER)
        assert (view.revision, view.replicas, view.version) == (3, 3, "1.1.0")
        view = await deploying.rollback(client, AGENT, account=OWNER)
        assert (view.revision, view.version) == (4, "1.0.0")
        rolled = signing.DeploymentStatement.parse(view.statement)
        assert (rolled.revision, rolled.release, rolled.replicas) == (4, f"{AGENT}@1.0.0", 3)
        assert all(r.signers == [OWNER.address] for r in view.revisions)
        # Asking for what is already so makes no revision and signs nothing new.
        same = await deploying.deploy(client, AGENT, "1.0.0", replicas=3, account=OWNER)
        assert (same.revision, same.signers) == (4, [OWNER.address])

        # A member's signature is kept too (nodes, though, check the owner's key).
        add_member(world, MEMBER)
        view = await deploying.scale(client, AGENT, 1, account=MEMBER)
        assert (view.revision, view.signers) == (5, [MEMBER.address])

        # Removed, then deployed again: the numbering goes on, so nodes that saw 5 accept it.
        await client.remove_deployment(AGENT)
        with anyio.fail_after(30):
            while await client.deployments():
                await anyio.sleep(0.05)
        again = await deploying.deploy(client, AGENT, "1.0.0", account=OWNER)
        assert (again.revision, again.signers) == (6, [OWNER.address])


def test_the_cli_signs_deploy_scale_and_rollback_with_the_wallet(
    world: World, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPZ_REGISTRY", world.reg.url)
    monkeypatch.setenv("MCPZ_TOKEN", world.owner)
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", "Quiet-Harbour-Lamp-41")
    monkeypatch.setenv("MCPZ_WALLET_SCRYPT_N", "1024")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")

    unsigned = cli("--json", "deploy", f"{AGENT}@1.0.0")  # no wallet yet
    assert unsigned.exit_code == 0, unsigned.stderr
    assert json.loads(unsigned.stdout)["signers"] == []
    assert "is not signed: no wallet" in unsigned.stderr

    imported = cli("wallet", "import", input=OWNER.key.hex() + "\n")
    assert imported.exit_code == 0, imported.stderr
    scaled = cli("--json", "deploy", "scale", AGENT, "2")
    assert scaled.exit_code == 0, scaled.stderr
    view = json.loads(scaled.stdout)
    assert (view["revision"], view["replicas"], view["signers"]) == (2, 2, [OWNER.address])
    assert f"revision 2 signed by {OWNER.address}" in scaled.stderr
    publish(world, "1.1.0")
    updated = cli("--json", "deploy", f"{AGENT}@1.1.0")
    assert updated.exit_code == 0, updated.stderr
    assert (json.loads(updated.stdout)["revision"], json.loads(updated.stdout)["signers"]) == (
        3,
        [OWNER.address],
    )
    back = cli("--json", "deploy", "rollback", AGENT)
    assert back.exit_code == 0, back.stderr
    assert (json.loads(back.stdout)["version"], json.loads(back.stdout)["signers"]) == (
        "1.0.0",
        [OWNER.address],
    )
    status = cli("deploy", "status", AGENT)
    assert f"signed by: {OWNER.address}" in status.stdout
    no_sign = cli("--json", "deploy", "scale", AGENT, "1", "--no-sign")
    assert no_sign.exit_code == 0, no_sign.stderr
    assert json.loads(no_sign.stdout)["signers"] == [] and "--no-sign" in no_sign.stderr


# --- what a node runs -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_unsigned_deployment_is_refused_unless_allow_unsigned(world: World, tmp_path: Path) -> None:
    assert post_signature(world, "1.0.0", OWNER).status_code == 200  # the release itself is signed
    refused = await deploy(world, tmp_path, "1.0.0", data="strict", sign=None)
    assert refused["status"] == "failed", refused
    assert refused["detail"].startswith("verify-failed: deployment acme/weather revision 1 is not signed")
    assert not refused["started"]
    assert not list((tmp_path / "strict" / "replicas").glob("*/*"))  # nothing fetched or checked out

    allowed = await deploy(world, tmp_path, "1.0.0", data="lax", sign=None, allow_unsigned=True)
    assert allowed["status"] == "running", allowed


@pytest.mark.anyio
async def test_a_deployment_signed_by_a_non_member_is_refused(world: World, tmp_path: Path) -> None:
    assert post_signature(world, "1.0.0", OWNER).status_code == 200
    # The registry refuses the stranger's signature outright...
    with pytest.raises(AuthError, match="unexpected_signer"):
        await deploy_as(world, "1.0.0", STRANGER)
    # ...but one whose database was changed to let the stranger in keeps it, and serves it.
    stranger = sql(world.reg, "SELECT id FROM accounts WHERE address = :a", a=STRANGER.address)[0][0]
    sql(
        world.reg,
        "INSERT INTO namespace_members (namespace, account_id, role, created_at)"
        " VALUES ('acme', :a, 'publisher', CURRENT_TIMESTAMP)",
        a=stranger,
    )
    # The node refuses it, even with --allow-unsigned (a signature that is there must be right).
    result = await deploy(world, tmp_path, "1.0.0", sign=STRANGER, allow_unsigned=True)
    assert result["status"] == "failed", result
    assert result["detail"].startswith("verify-failed:"), result
    assert "is not signed by the namespace key" in result["detail"] and STRANGER.address in result["detail"]
    assert not result["started"]


@pytest.mark.anyio
async def test_a_member_signature_is_kept_by_the_registry_but_nodes_check_the_owner_key(
    world: World, tmp_path: Path
) -> None:
    assert post_signature(world, "1.0.0", OWNER).status_code == 200
    add_member(world, MEMBER)
    result = await deploy(world, tmp_path, "1.0.0", sign=MEMBER)
    assert result["status"] == "failed" and "is not signed by the namespace key" in result["detail"], result


async def node_outcome(w: World, data: Path, **config: Any) -> dict[str, Any]:
    """Run an in-process node until its first replica runs or fails; what became of it."""
    from meshutil import node_config

    from mcpz.node import Node

    config.setdefault("allow_unsigned", False)
    node = Node(node_config(w.reg.url, data, token=token_for(w.reg, OWNER.address, "node"), **config))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(node.run)
        with anyio.fail_after(30):
            await node.connected.wait()
        assert node.manager is not None
        with anyio.fail_after(60):
            await node.manager.wait_until(
                lambda: any(a.status.value in ("running", "failed") for a in node.state.replicas.values())
            )
        (assignment,) = node.state.replicas.values()
        started = any(r.supervisor is not None for r in node.manager.live.values())
        node.shutdown()
    return {"status": assignment.status.value, "detail": assignment.detail, "started": started}


@pytest.mark.anyio
async def test_a_deploy_that_is_not_what_was_signed_is_refused(world: World, tmp_path: Path) -> None:
    """The registry's database re-points a signed revision at another (signed) release."""
    publish(world, "1.1.0")
    for version in ("1.0.0", "1.1.0"):
        assert post_signature(world, version, OWNER).status_code == 200
    assert (await deploy_as(world, "1.1.0", OWNER)).revision == 1  # no node yet: nothing runs it
    world.reg.stop()
    sql(
        world.reg,
        "UPDATE deployment_revisions SET version = '1.0.0', \"commit\" = :c",
        c=world.commits["1.0.0"],
    )
    world.reg = restart_registry(world.reg)
    try:
        result = await node_outcome(world, tmp_path / "node")
    finally:
        world.reg.stop()
    assert result["status"] == "failed", result
    assert result["detail"].startswith(
        "verify-failed: the deploy asks for acme/weather: acme/weather 1.0.0"
    ), result
    assert "statement signed says acme/weather: acme/weather 1.1.0" in result["detail"]
    assert not result["started"]


# --- revisions only grow: a real node process, a registry that rolls back -----------------------------


def restart_registry(reg: LiveRegistry, **settings: Any) -> LiveRegistry:
    """The same registry (data folder, database, port) stopped and started again."""
    from registry_server.serve import start_in_thread
    from registry_server.settings import RegistrySettings

    port = int(reg.url.rsplit(":", 1)[1])
    reg.stop()
    env = {k: v for k, v in os.environ.items() if k != "MCPZ_DATABASE_URL"}
    config = RegistrySettings.load(data_dir=reg.data_dir, env=env, port=port, **settings)
    handle = start_in_thread(config)
    return LiveRegistry(handle.url, config.data_dir, config.database_url, handle)


class NodeProcess:
    """`mcpz node run` in its own process, requiring signatures (no --allow-unsigned)."""

    def __init__(self, reg: LiveRegistry, token: str, data: Path) -> None:
        self.data = data
        self.log = data.parent / f"{data.name}.log"
        argv = [sys.executable, "-m", "mcpz", "node", "run", "--registry", reg.url, "--token", token,
                "--name", data.name, "--data", str(data), "--capacity", "4", "--stop-grace", "2"]  # fmt: skip
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def view_of(w: World) -> dict[str, Any] | None:
    response = api(w.reg, f"/v1/deployments/{AGENT}", w.owner)
    return response.json() if response.status_code == 200 else None  # type: ignore[no-any-return]


def running(w: World, version: str, node: NodeProcess) -> dict[str, Any] | None:
    view = view_of(w)
    if view is None or view["state"] != "ready" or view["version"] != version:
        assert node.proc.poll() is None, node.tail()
        return None
    return view


@pytest.mark.skipif(sys.platform != "linux", reason="real node processes")
def test_a_revision_lower_than_one_the_node_has_seen_is_refused(tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "registry", **FAST)
    node: NodeProcess | None = None
    try:
        w = make_world(reg, tmp_path)
        publish(w, "1.1.0")
        for version in ("1.0.0", "1.1.0"):
            assert post_signature(w, version, OWNER).status_code == 200
        node = live = NodeProcess(reg, token_for(reg, OWNER.address, "node"), tmp_path / "node")
        until(lambda: any(n["connected"] for n in api(reg, "/v1/nodes", w.owner).json()), what="the node")
        assert signed_deploy(w, "1.0.0", OWNER, replicas=1).revision == 1
        until(lambda: running(w, "1.0.0", live), what="revision 1 running")
        assert signed_deploy(w, "1.1.0", OWNER).revision == 2
        until(lambda: running(w, "1.1.0", live), what="revision 2 running")
        node.stop()
        store = trust.TrustStore(tmp_path / "node" / "trust.json")
        assert store.revision(signing.canonical_registry_url(reg.url), AGENT)[0] == 2  # type: ignore[index]

        # A dishonest registry goes back to revision 1: a statement the owner really signed, replayed.
        reg.stop()
        sql(reg, "UPDATE deployments SET revision = 1")
        w.reg = reg = restart_registry(reg, **FAST)
        node = NodeProcess(reg, token_for(reg, OWNER.address, "node"), tmp_path / "node")  # restarted too

        def refused() -> dict[str, Any] | None:
            view = view_of(w)
            assert node is not None and node.proc.poll() is None, node.tail()
            failed = [i for i in (view or {}).get("instances", []) if i["status"] == "failed"]
            return failed[0] if failed else None

        replay = until(refused, what="the replayed revision refused")
        assert replay["version"] == "1.0.0" and replay["revision"] == 1
        assert replay["detail"].startswith(
            "verify-failed: deployment acme/weather revision 1 is older than"
        ), replay
        # Refused before anything was fetched or checked out for it.
        assert not (tmp_path / "node" / "replicas" / replay["id"]).exists()
    finally:
        if node is not None:
            node.stop()
        reg.stop()


# --- revoked keys -------------------------------------------------------------------------------------


def rotate_owner_key(w: World) -> None:
    """The owner moves to SUCCESSOR's key, as `mcpz namespace rotate-key` does: OWNER is revoked."""
    registry = signing.canonical_registry_url(w.reg.url)
    signatures = {}
    for namespace in ("acme", OWNER.address.lower()):
        statement = signing.KeyRotationStatement(
            registry=registry, namespace=namespace, old_address=OWNER.address,
            new_address=SUCCESSOR.address, sequence=1,
        )  # fmt: skip
        signatures[namespace] = [
            signing.sign_statement(statement, OWNER),
            signing.sign_statement(statement, SUCCESSOR),
        ]
    body = {"new_address": SUCCESSOR.address, "rotations": signatures}
    rotated = api(w.reg, "/v1/account/rotate-key", w.owner, method="POST", json=body)
    assert rotated.status_code == 200, rotated.text


@pytest.mark.anyio
async def test_a_release_signed_by_a_revoked_key_is_refused(world: World, tmp_path: Path) -> None:
    assert post_signature(world, "1.0.0", OWNER).status_code == 200
    rotate_owner_key(world)
    # Whoever holds the old key, with the registry's database, puts it back as the owner's key: a
    # node that never met "acme" would pin it on first use, but the rotation it signed revokes it.
    sql(
        world.reg, "UPDATE accounts SET address = :a WHERE address = :b", a=OWNER.address, b=SUCCESSOR.address
    )
    result = await deploy(world, tmp_path, "1.0.0", sign=OWNER)
    assert result["status"] == "failed", result
    assert result["detail"].startswith("verify-failed:") and "revoked" in result["detail"], result
    assert not result["started"]


def test_a_node_remembers_the_revoked_keys_list_when_the_registry_hides_it(
    world: World, tmp_path: Path
) -> None:
    from mcpz.node.pull import RegistryAccess, refresh_revocations

    rotate_owner_key(world)
    listed = api(world.reg, "/v1/revoked-keys").json()["keys"]
    assert sorted((k["address"], k["namespace"]) for k in listed) == [
        (OWNER.address, OWNER.address.lower()),
        (OWNER.address, "acme"),
    ]
    node = trust.Verifier(world.reg.url, trust.TrustStore(tmp_path / "trust.json"))
    assert refresh_revocations(RegistryAccess(world.reg.url), node) == 2
    assert refresh_revocations(RegistryAccess(world.reg.url), node) == 0  # not due again yet

    # The registry now hides every rotation and names the old key again.
    sql(world.reg, "DELETE FROM key_rotations")
    sql(
        world.reg, "UPDATE accounts SET address = :a WHERE address = :b", a=OWNER.address, b=SUCCESSOR.address
    )
    assert api(world.reg, "/v1/revoked-keys").json()["keys"] == []
    keys = trust.NamespaceKeys.from_json(api(world.reg, "/v1/namespaces/acme/keys").json())
    assert keys.owner_address == OWNER.address and keys.rotations == ()
    restarted = trust.Verifier(world.reg.url, trust.TrustStore(tmp_path / "trust.json"))
    with pytest.raises(trust.RevokedKey):
        restarted.namespace_key(keys)
