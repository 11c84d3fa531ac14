"""Nodes check release signatures before running anything: a real registry, its hub, and the
node's in-process `Node`, deploying through the API. The registry's database is tampered with
as an attacker with access to it could; the node trusts only what the namespace's pinned key signed."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from conftest import LiveRegistry
from gitutil import commit, git
from meshutil import node_config
from test_signed_releases import MEMBER, OWNER, STRANGER, World, post_signature, sign_in, sql

from mcpz.repo.templates import render_template

pytestmark = pytest.mark.anyio
AGENT = "acme/weather"


def token_for(reg: LiveRegistry, address: str, scopes: str) -> str:
    from registry_server.accounts import namespaces, tokens
    from registry_server.accounts import service as accounts
    from registry_server.db import Database

    db = Database(reg.database_url)
    try:
        with db.session() as session:
            account = namespaces.find_account(session, address)
            _row, secret = accounts.create_token(
                session, account, tokens.parse_scopes(scopes), expires_in=None
            )
    finally:
        db.dispose()
    return secret


@pytest.fixture
def world(sqlite_registry: LiveRegistry, tmp_path: Path) -> Iterator[World]:
    reg = sqlite_registry
    owner, member, stranger = sign_in(reg, OWNER), sign_in(reg, MEMBER), sign_in(reg, STRANGER)
    assert (
        httpx2.post(
            f"{reg.url}/v1/namespaces", json={"name": "acme"}, headers={"Authorization": f"Bearer {owner}"}
        ).status_code
        == 201
    )
    work = tmp_path / "agent"
    work.mkdir()
    render_template("python", work, AGENT)
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "weather", cwd=work)
    commits = {"1.0.0": set_version(work, "1.0.0")}
    git("tag", "v1.0.0", cwd=work)
    git("push", "-q", reg.git_url(AGENT, owner), "main", "v1.0.0", cwd=work)
    yield World(reg, owner, member, stranger, work, commits)


def set_version(work: Path, version: str) -> str:
    manifest = work / "mcpz.toml"
    manifest.write_text(
        re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', manifest.read_text(), count=1)
    )
    return commit(work, None, f"version {version}")


def publish(w: World, version: str) -> None:
    w.commits[version] = set_version(w.work, version)
    git("tag", f"v{version}", cwd=w.work)
    git("push", "-q", w.reg.git_url(AGENT, w.owner), "main", f"v{version}", cwd=w.work)


WHO = "the deployer's own wallet"


async def deploy(
    w: World,
    tmp_path: Path,
    version: str,
    *,
    data: str = "node",
    who: str = OWNER.address,
    sign: Any = WHO,
    **config: Any,
) -> dict[str, Any]:
    """Deploy `version` to one in-process node, the deployment signed by `who`'s wallet (or by the
    account `sign`, or unsigned with `sign=None`); the replica's status once it ran or failed."""
    from mcpz.client import deploy as deploying
    from mcpz.client.registry import connect
    from mcpz.node import Node

    signer = {a.address: a for a in (OWNER, MEMBER, STRANGER)}[who] if sign is WHO else sign
    deployer = token_for(w.reg, who, "read,publish,deploy,admin")
    node_token = token_for(w.reg, who, "node")
    config.setdefault("allow_unsigned", False)
    node = Node(node_config(w.reg.url, tmp_path / data, token=node_token, **config))  # type: ignore[arg-type]
    headers = {"Authorization": f"Bearer {deployer}"}
    async with (
        anyio.create_task_group() as tg,
        httpx2.AsyncClient(base_url=w.reg.url, headers=headers) as http,
        connect(w.reg.url, deployer) as client,
    ):
        tg.start_soon(node.run)
        with anyio.fail_after(30):
            await node.connected.wait()
        created = await deploying.deploy(client, AGENT, version, replicas=1, account=signer)
        assert created.version == version, created
        assert node.manager is not None
        with anyio.fail_after(60):
            await node.manager.wait_until(
                lambda: any(a.status.value in ("running", "failed") for a in node.state.replicas.values())
            )
        (assignment,) = node.state.replicas.values()
        running = [r for r in node.manager.live.values() if r.supervisor is not None]
        removed = await http.delete(f"/v1/deployments/{AGENT}")
        assert removed.status_code in (200, 202, 204), removed.text
        node.shutdown()
    return {"status": assignment.status.value, "detail": assignment.detail, "started": bool(running)}


async def test_a_signed_release_runs(world: World, tmp_path: Path) -> None:
    assert post_signature(world, "1.0.0", OWNER).status_code == 200
    result = await deploy(world, tmp_path, "1.0.0")
    assert result["status"] == "running", result
    assert (tmp_path / "node" / "trust.json").is_file()  # the namespace's key is pinned


async def test_an_unsigned_release_runs_only_with_allow_unsigned(world: World, tmp_path: Path) -> None:
    refused = await deploy(world, tmp_path, "1.0.0", data="strict")
    assert refused["status"] == "failed", refused
    assert refused["detail"].startswith("verify-failed:"), refused
    assert "not signed" in refused["detail"]
    assert not refused["started"]
    assert not list((tmp_path / "strict" / "replicas").glob("*/*"))  # nothing checked out

    allowed = await deploy(world, tmp_path, "1.0.0", data="lax", allow_unsigned=True)
    assert allowed["status"] == "running", allowed


async def test_a_release_signed_by_a_non_member_is_refused_even_with_allow_unsigned(
    world: World, tmp_path: Path
) -> None:
    from test_signed_releases import manifest_in_registry, release_statement

    from mcpz.keys import signing

    manifest = manifest_in_registry(world.reg, AGENT, world.commits["1.0.0"])
    statement = release_statement(world.reg, AGENT, "1.0.0", world.commits["1.0.0"], manifest)
    forged = signing.sign_statement(statement, STRANGER)
    release_id = sql(world.reg, "SELECT id FROM releases WHERE version = '1.0.0'")[0][0]
    sql(
        world.reg,
        "INSERT INTO release_signatures (release_id, signer, signature, created_at)"
        " VALUES (:r, :s, :g, CURRENT_TIMESTAMP)",
        r=release_id, s=STRANGER.address, g=forged,
    )  # fmt: skip
    result = await deploy(world, tmp_path, "1.0.0", allow_unsigned=True)
    assert result["status"] == "failed", result
    assert result["detail"].startswith("verify-failed:"), result
    assert STRANGER.address in result["detail"]
    assert not result["started"]


async def test_a_commit_swapped_in_the_database_is_refused(world: World, tmp_path: Path) -> None:
    assert post_signature(world, "1.0.0", OWNER).status_code == 200
    evil = commit(world.work, {"server.py": "import os; os.system('steal')\n"}, "evil")
    git("push", "-q", world.reg.git_url(AGENT, world.owner), "main", cwd=world.work)
    sql(world.reg, "UPDATE releases SET \"commit\" = :c WHERE version = '1.0.0'", c=evil)
    result = await deploy(world, tmp_path, "1.0.0")
    assert result["status"] == "failed", result
    assert result["detail"].startswith("verify-failed:"), result
    assert not result["started"]


async def test_an_owner_changed_without_a_rotation_is_refused(world: World, tmp_path: Path) -> None:
    assert post_signature(world, "1.0.0", OWNER).status_code == 200
    first = await deploy(world, tmp_path, "1.0.0")  # pins OWNER for acme on this node
    assert first["status"] == "running", first

    publish(world, "1.1.0")
    stranger_id = sql(world.reg, "SELECT id FROM accounts WHERE address = :a", a=STRANGER.address)[0][0]
    sql(world.reg, "UPDATE namespaces SET owner_id = :o WHERE name = 'acme'", o=stranger_id)
    assert post_signature(world, "1.1.0", STRANGER, world.stranger).status_code == 200
    (tmp_path / "again").mkdir()
    shutil.copy(tmp_path / "node" / "trust.json", tmp_path / "again" / "trust.json")  # the same pin
    result = await deploy(world, tmp_path, "1.1.0", data="again", who=STRANGER.address)
    assert result["status"] == "failed", result
    assert result["detail"].startswith("verify-failed:"), result
    assert "no rotation" in result["detail"]
    assert not result["started"]
