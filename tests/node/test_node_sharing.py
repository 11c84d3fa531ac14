"""Who a node serves, end to end: real `mcpz node run` processes of two accounts on one registry.

A node runs only the deployments of namespaces whose owner or member its token's account is,
unless it opted in with `--shared` or the operator declared a shared pool. `/v1/nodes` (and
`mcpz nodes`) list only the nodes the caller may use, with their owners. Waits are bounded
conditions, never fixed sleeps.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import LiveRegistry, start_registry
from gitutil import git
from meshutil import FAST, NodeProc, until

from mcpz.repo.templates import render_template
from registry_server.accounts import namespaces
from registry_server.accounts import service as accounts
from registry_server.db import Database

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG")

BOB_AGENT = "bob/tiny"


class Two:
    """A registry with the accounts alice and bob, and the nodes started on it."""

    def __init__(self, tmp: Path, reg: LiveRegistry) -> None:
        self.tmp = tmp
        self.reg = reg
        self.alice = reg.account("alice", "read,publish,deploy,node,admin")
        self.bob = reg.account("bob", "read,publish,deploy,node,admin")
        self.nodes: list[NodeProc] = []

    def get(self, token: str, path: str) -> Any:
        response = httpx2.get(
            f"{self.reg.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        return response.json()

    def node(self, token: str, name: str, *extra: str) -> NodeProc:
        node = NodeProc(self.reg.url, token, name, self.tmp / name, *extra)
        self.nodes.append(node)
        return node

    def connected(self, token: str, *names: str) -> list[dict[str, Any]]:
        """The nodes `token` sees once those named are connected."""

        def seen() -> list[dict[str, Any]] | None:
            nodes: list[dict[str, Any]] = self.get(token, "/v1/nodes")
            up = {n["name"] for n in nodes if n["connected"]}
            return nodes if set(names) <= up else None

        return until(seen, 30, f"nodes {names} connected; logs: {[n.tail() for n in self.nodes]}")

    def publish_bob(self) -> None:
        work = self.tmp / "bob-tiny"
        work.mkdir()
        render_template("python", work, BOB_AGENT)
        git("init", "-q", "-b", "main", cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "-qm", "v0.1.0", cwd=work)
        git("tag", "v0.1.0", cwd=work)
        git("push", "-q", self.reg.git_url(BOB_AGENT, self.bob), "main", "v0.1.0", cwd=work)

    def deploy_bob(self, replicas: int) -> dict[str, Any]:
        response = httpx2.post(
            f"{self.reg.url}/v1/deployments",
            json={"agent": BOB_AGENT, "replicas": replicas},
            headers={"Authorization": f"Bearer {self.bob}"},
            timeout=30,
        )
        assert response.status_code in (200, 201), response.text
        return response.json()  # type: ignore[no-any-return]

    def bob_view(self) -> dict[str, Any]:
        return self.get(self.bob, f"/v1/deployments/{BOB_AGENT}")  # type: ignore[no-any-return]

    def close(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Two]:
    """Alice and Bob on a registry with fast heartbeats, once on SQLite and once on PostgreSQL."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    reg = start_registry(tmp_path / "registry", url, **FAST)
    world = Two(tmp_path, reg)
    try:
        yield world
    finally:
        world.close()
        reg.stop()


def _running_on(view: dict[str, Any]) -> dict[str, str] | None:
    """replica id -> node name of the running replicas, once every one asked for runs."""
    live = [i for i in view["instances"] if not i["stopping"]]
    if len(live) != view["replicas"] or any(i["status"] != "running" for i in live):
        return None
    return {i["id"]: i["node_name"] for i in live}


def test_a_node_serves_only_its_owners_namespaces_unless_shared(two: Two, cli: Any) -> None:
    two.publish_bob()
    alice_node = two.node(two.alice, "alice-node")
    two.connected(two.alice, "alice-node")

    # Bob deploys: Alice's node is the only one connected, and it may not run Bob's replicas.
    created = two.deploy_bob(2)
    assert {i["node"] for i in created["instances"]} == {None}
    view = two.bob_view()
    assert view["state"] == "progressing"
    for instance in view["instances"]:
        assert instance["node"] is None and instance["status"] == "pending"
        assert instance["detail"] == (
            "waiting for a node that may run it: none of the connected nodes belongs to the owner or "
            'a member of "bob", and none is shared'
        )
    # Bob does not see Alice's node at all; Alice sees it, with its owner.
    assert two.get(two.bob, "/v1/nodes") == []
    (mine,) = two.get(two.alice, "/v1/nodes")
    assert (mine["name"], mine["owner"], mine["shared"], mine["replicas"]) == (
        "alice-node",
        "alice",
        False,
        0,
    )

    # A node Alice started with --shared takes Bob's replicas; her other node still gets none.
    two.node(two.alice, "alice-shared", "--shared")
    settled = until(lambda: _running_on(two.bob_view()), 45, f"bob's replicas running: {two.bob_view()}")
    assert set(settled.values()) == {"alice-shared"}
    assert alice_node.agents() == {}
    assert "bob/tiny" not in alice_node.tail()

    # Bob now sees the shared node (and only it); Alice sees both of hers.
    (shared,) = two.get(two.bob, "/v1/nodes")
    assert (shared["name"], shared["owner"], shared["shared"], shared["replicas"]) == (
        "alice-shared",
        "alice",
        True,
        2,
    )
    assert sorted(n["name"] for n in two.get(two.alice, "/v1/nodes")) == ["alice-node", "alice-shared"]

    # `mcpz nodes` shows the owner, in the table and in --json.
    shown = cli("nodes", "--registry", two.reg.url, "--token", two.bob)
    assert shown.exit_code == 0, shown.stderr
    header, row = shown.stdout.splitlines()[:2]
    assert header.split()[:4] == ["id", "name", "owner", "state"]
    assert row.split()[2] == "alice" and "(shared)" in shown.stdout  # a narrow terminal wraps it
    listed = json.loads(cli("--json", "nodes", "--registry", two.reg.url, "--token", two.alice).stdout)
    assert {(n["name"], n["owner"]) for n in listed} == {("alice-node", "alice"), ("alice-shared", "alice")}


def test_a_members_node_runs_the_namespaces_deployments_and_stops_when_the_member_is_removed(
    two: Two,
) -> None:
    two.publish_bob()
    two.node(two.alice, "alice-node")
    two.connected(two.alice, "alice-node")
    two.deploy_bob(1)
    db = Database(two.reg.database_url)
    try:
        with db.session() as session:
            bob = accounts.account_by_name(session, "bob")
            namespaces.set_member(session, bob, "bob", "alice", "publisher")
        # Membership is read at every plan: the periodic resync places the replica on Alice's node.
        ran = until(lambda: _running_on(two.bob_view()), 45, f"bob's replica running: {two.bob_view()}")
        assert set(ran.values()) == {"alice-node"}
        # Bob sees the node of a member of his namespace.
        assert [n["name"] for n in two.get(two.bob, "/v1/nodes")] == ["alice-node"]

        with db.session() as session:
            bob = accounts.account_by_name(session, "bob")
            namespaces.remove_member(session, bob, "bob", "alice")
        # Removed: the replica is stopped on her node, and waits for one that may run it.
        until(lambda: not two.nodes[0].agents(), 45, "the replica stopped on alice's node")
        waiting = until(
            lambda: (v := two.bob_view())["instances"] and v["instances"][0]["node"] is None and v,
            45,
            "bob's replica unplaced",
        )
        assert "may run it" in waiting["instances"][0]["detail"]
        assert two.get(two.bob, "/v1/nodes") == []
    finally:
        db.dispose()


def test_the_operators_shared_pool_serves_every_account(tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "registry", shared_node_owners=("alice",), **FAST)
    two = Two(tmp_path, reg)
    try:
        two.publish_bob()
        two.node(two.alice, "alice-node")
        two.connected(two.alice, "alice-node")
        two.deploy_bob(1)
        ran = until(lambda: _running_on(two.bob_view()), 45, f"bob's replica running: {two.bob_view()}")
        assert set(ran.values()) == {"alice-node"}
        (pool,) = two.get(two.bob, "/v1/nodes")
        assert (pool["owner"], pool["shared"]) == ("alice", True)
    finally:
        two.close()
        reg.stop()


def test_a_lost_node_is_pruned_after_the_retention_and_its_replicas_wait(tmp_path: Path) -> None:
    from sqlalchemy import select

    from registry_server.deployments.models import MeshNode

    reg = start_registry(tmp_path / "registry", lost_node_retention=0.5, **FAST)
    two = Two(tmp_path, reg)
    db = Database(reg.database_url)
    try:
        two.publish_bob()
        node = two.node(two.bob, "bob-node")
        two.connected(two.bob, "bob-node")
        two.deploy_bob(1)
        until(lambda: _running_on(two.bob_view()), 45, f"bob's replica running: {two.bob_view()}")
        node.proc.kill()  # no goodbye: lost after the heartbeat grace, then pruned
        node.proc.wait()

        until(lambda: two.get(two.bob, "/v1/nodes") == [], 30, "the lost node pruned")
        with db.session() as session:
            assert list(session.scalars(select(MeshNode))) == []
        (instance,) = two.bob_view()["instances"]
        assert (instance["node"], instance["status"]) == (None, "pending")
        assert instance["detail"] == "waiting for a node: none is connected"

        # A new node takes the replica that waited.
        two.node(two.bob, "bob-node-2")
        ran = until(lambda: _running_on(two.bob_view()), 45, f"bob's replica running: {two.bob_view()}")
        assert set(ran.values()) == {"bob-node-2"}
    finally:
        db.dispose()
        two.close()
        reg.stop()


def test_the_node_settings_from_the_environment(tmp_path: Path) -> None:
    from mcpz.errors import UsageError
    from registry_server.settings import RegistrySettings

    default = RegistrySettings.load(data_dir=tmp_path, env={})
    assert (default.shared_nodes, default.shared_node_owners, default.node_admins) == (False, (), ())
    assert default.lost_node_retention == 86400.0
    env = {
        "MCPZ_REGISTRY_SHARED_NODES": "true",
        "MCPZ_REGISTRY_SHARED_NODE_OWNERS": "ops, infra",
        "MCPZ_REGISTRY_NODE_ADMINS": "root",
        "MCPZ_REGISTRY_LOST_NODE_RETENTION": "3600",
    }
    loaded = RegistrySettings.load(data_dir=tmp_path, env=env)
    assert (loaded.shared_nodes, loaded.shared_node_owners, loaded.node_admins) == (
        True,
        ("ops", "infra"),
        ("root",),
    )
    assert loaded.lost_node_retention == 3600.0
    for key, value in [
        ("SHARED_NODES", "sometimes"),
        ("LOST_NODE_RETENTION", "-1"),
        ("LOST_NODE_RETENTION", "inf"),
    ]:
        with pytest.raises(UsageError, match="invalid registry setting"):
            RegistrySettings.load(data_dir=tmp_path, env={f"MCPZ_REGISTRY_{key}": value})
