"""The deployment mesh end to end: real `mcpz node run` processes against a real registry on loopback.

Every node is its own process with its own data folder; every replica is a real agent process
(found through /proc by the checkout folder it runs in). The registry runs in a thread of the test
process with fast heartbeats. Waits are bounded conditions, never fixed sleeps.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import LiveRegistry
from meshutil import AGENT, FAST, Mesh, until
from tlsutil import self_signed

LOOPBACK = "127.0.0.1"
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


# --- the tests -------------------------------------------------------------------------------------


def test_deploy_scale_rolling_update_and_rollback(mesh: Mesh) -> None:
    mesh.publish("1.0.0", "2.0.0")
    a, b = mesh.node("node-a"), mesh.node("node-b")
    mesh.connected(2)

    mesh.deploy("1.0.0", replicas=2)
    view = mesh.settled(2, "1.0.0")
    assert {i["node_name"] for i in view["instances"]} == {"node-a", "node-b"}  # spread
    for pid in [*a.agents(), *b.agents()]:
        assert pid_alive(pid)

    mesh.post("/scale", {"replicas": 3})
    mesh.settled(3, "1.0.0")
    mesh.post("/scale", {"replicas": 1})
    mesh.settled(1, "1.0.0")
    mesh.post("/scale", {"replicas": 2})
    before = mesh.settled(2, "1.0.0")

    # A rolling update: never fewer running than asked while it rolls, then every replica at v2.
    mesh.deploy("2.0.0")
    fewest = 2

    def rolled() -> dict[str, Any] | None:
        nonlocal fewest
        view = mesh.view()
        running = [i for i in view["instances"] if i["status"] == "running" and not i["stopping"]]
        fewest = min(fewest, len(running))
        return view if view["state"] == "ready" and view["version"] == "2.0.0" else None

    until(rolled, 45, "the rolling update")
    after = mesh.settled(2, "2.0.0")
    assert fewest >= 1
    assert {i["version"] for i in after["instances"]} == {"2.0.0"}
    assert after["revision"] == before["revision"] + 1

    mesh.post("/rollback", {})
    back = mesh.settled(2, "1.0.0")
    assert back["commit"] == mesh.commits["1.0.0"]
    assert {i["version"] for i in back["instances"]} == {"1.0.0"}


def test_a_node_killed_by_sigkill_loses_its_agents_and_its_replicas_move(mesh: Mesh) -> None:
    mesh.publish("1.0.0")
    a, b = mesh.node("node-a"), mesh.node("node-b")
    mesh.connected(2)
    mesh.deploy("1.0.0", replicas=2)
    mesh.settled(2, "1.0.0")
    victims = a.agents()
    assert len(victims) == 1

    killed = time.monotonic()
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=10)
    until(lambda: not any(pid_alive(p) for p in victims), 10, "the agents to die with their node")
    view = mesh.settled(2, "1.0.0", timeout=30)
    moved = time.monotonic() - killed
    print(f"\nkill -9: replicas running elsewhere after {moved:.2f}s")
    assert {i["node_name"] for i in view["instances"]} == {"node-b"}
    assert len(b.agents()) == 2
    assert moved < 2.0 + 20  # grace + rescheduling and a start


def test_a_node_cut_off_past_its_grace_comes_back_and_its_stale_replicas_stop(mesh: Mesh) -> None:
    mesh.publish("1.0.0")
    a, b = mesh.node("node-a"), mesh.node("node-b")
    mesh.connected(2)
    mesh.deploy("1.0.0", replicas=2)
    first = mesh.settled(2, "1.0.0")
    [old] = [i for i in first["instances"] if i["node_name"] == "node-a"]
    [a_id] = [n["id"] for n in mesh.connected(2) if n["name"] == "node-a"]

    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        # Lost past its grace; its replica is placed on node-b at a higher epoch and runs there.
        def replaced() -> dict[str, Any] | None:
            view = mesh.view()
            mine = [i for i in view["instances"] if i["id"] == old["id"]]
            ok = mine and mine[0]["node_name"] == "node-b" and mine[0]["status"] == "running"
            return view if ok and view["state"] == "ready" else None

        during = until(replaced, 30, "the replica to be replaced on node-b")
        [new] = [i for i in during["instances"] if i["id"] == old["id"]]
        assert new["epoch"] > old["epoch"]
        # While the node is frozen its agent still runs: the registry cannot reach it.
        assert list(a.agents().values()) == [old["id"]]
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)

    # Back: its stale copy is stopped, never adopted beside the replacement.
    def back() -> bool:
        nodes = {n["id"]: n for n in mesh.http.get("/v1/nodes").json()}
        return bool(nodes[a_id]["connected"]) and not a.agents()

    until(back, 30, f"node-a to reconnect and stop its stale replica: {a.tail()}")
    end = time.monotonic() + 2.0  # it stays settled: watch it for a while
    while time.monotonic() < end:
        assert max(mesh.running_processes().values(), default=0) <= 1, mesh.view_brief()
        view = mesh.view()
        [now] = [i for i in view["instances"] if i["id"] == old["id"]]
        assert (now["node_name"], now["epoch"]) == ("node-b", new["epoch"])  # no stale frame moved it
        time.sleep(0.05)
    mesh.settled(2, "1.0.0")
    assert len(b.agents()) == 2


def test_a_registry_restart_loses_nothing_and_doubles_nothing(mesh: Mesh) -> None:
    from registry_server.serve import start_in_thread
    from registry_server.settings import RegistrySettings

    mesh.publish("1.0.0")
    mesh.node("node-a")
    mesh.node("node-b")
    mesh.connected(2)
    mesh.deploy("1.0.0", replicas=3)
    before = mesh.settled(3, "1.0.0")
    pids_before = {pid for n in mesh.nodes for pid in n.agents()}

    port = int(mesh.reg.url.rsplit(":", 1)[1])
    mesh.reg.stop()
    settings = RegistrySettings.load(data_dir=mesh.reg.data_dir, env=dict(os.environ), port=port, **FAST)
    handle = start_in_thread(settings)
    mesh.reg = LiveRegistry(handle.url, settings.data_dir, settings.database_url, handle)

    mesh.connected(2)
    after = mesh.settled(3, "1.0.0")
    key = lambda v: sorted((i["id"], i["node"], i["epoch"]) for i in v["instances"])  # noqa: E731
    assert key(after) == key(before)  # adopted as they were: same nodes, same epochs
    assert {pid for n in mesh.nodes for pid in n.agents()} == pids_before  # never restarted


def test_wss_with_a_self_signed_certificate(tmp_path: Path) -> None:
    from registry_server.serve import free_port, start_in_thread
    from registry_server.settings import RegistrySettings

    cert, key = self_signed(tmp_path)
    port = free_port()
    settings = RegistrySettings.load(  # served over TLS: its public URL says https
        data_dir=tmp_path / "registry",
        env=dict(os.environ),
        port=port,
        public_url=f"https://127.0.0.1:{port}",
        **FAST,
    )
    handle = start_in_thread(settings, ssl_certfile=cert, ssl_keyfile=key)
    assert handle.url.startswith("https://127.0.0.1:")
    reg = LiveRegistry(handle.url, settings.data_dir, settings.database_url, handle)
    mesh = Mesh(tmp_path, reg)
    try:
        # Publish over plain git with the CA trusted; then the node: wss:// for the hub, https:// for git.
        os.environ["GIT_SSL_CAINFO"] = str(cert)
        try:
            mesh.publish("1.0.0")
        finally:
            del os.environ["GIT_SSL_CAINFO"]
        wss = handle.url.replace("https://", "wss://")
        node = mesh.node("node-tls", "--ca-file", str(cert), url=wss)
        with httpx2.Client(
            base_url=reg.url,
            headers={"Authorization": f"Bearer {mesh.token}"},
            verify=ssl.create_default_context(cafile=str(cert)),
        ) as http:
            until(
                lambda: [n for n in http.get("/v1/nodes").json() if n["connected"]],
                what=f"the node over wss: {node.tail()}",
            )
            created = http.post("/v1/deployments", json={"agent": AGENT, "version": "1.0.0", "replicas": 1})
            assert created.status_code == 201, created.text

            def ready() -> dict[str, Any] | None:
                view = http.get(f"/v1/deployments/{AGENT}").json()
                return view if view["state"] == "ready" else None

            until(ready, 45, f"a replica fetched over https: {node.tail()}")
            assert len(node.agents()) == 1
    finally:
        mesh.close()
        reg.stop()


def _hostile_release(reg: LiveRegistry, commits: dict[str, str], tmp: Path) -> str:
    """Version 6.6.6 of AGENT: a tree with `../escaped.txt` and a symlink out, written straight into
    the registry's bare repository (a push would be refused) and recorded as a release."""
    from dulwich.objects import Blob, Commit, Tag, Tree, serialize_tree
    from dulwich.repo import Repo
    from sqlalchemy import select

    from registry_server.db import Database
    from registry_server.releases.models import Agent, Release

    namespace, short = AGENT.split("/")
    repo = Repo(str(Path(reg.data_dir) / "repos" / namespace / f"{short}.git"), bare=True)
    store = repo.object_store
    base = store[store[commits["1.0.0"].encode()].tree]
    manifest_text = (
        store[base[b"mcpz.toml"][1]].data.decode().replace('version = "1.0.0"', 'version = "6.6.6"')
    )
    items: list[tuple[bytes, int, bytes]] = []
    for name, mode, sha in base.iteritems():
        if name == b"mcpz.toml":
            blob = Blob.from_string(manifest_text.encode())
            store.add_object(blob)
            sha = blob.id
        items.append((name, mode, sha))
    evil = Blob.from_string(b"escaped\n")
    link = Blob.from_string(str(tmp / "outside").encode())
    store.add_object(evil)
    store.add_object(link)
    items.append((b"../escaped.txt", 0o100644, evil.id))
    items.append((b"zlink", 0o120000, link.id))
    raw = b"".join(serialize_tree(sorted(items, key=lambda i: i[0])))
    tree = Tree.from_raw_string(Tree.type_num, raw)
    store.add_object(tree)
    commit = Commit()
    commit.tree = tree.id
    commit.parents = [commits["1.0.0"].encode()]
    commit.author = commit.committer = b"Mallory <m@example.invalid>"
    commit.author_time = commit.commit_time = int(time.time())
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"escape\n"
    store.add_object(commit)
    tag = Tag()
    tag.name = b"v6.6.6"
    tag.object = (Commit, commit.id)
    tag.tagger = commit.author
    tag.tag_time = commit.commit_time
    tag.tag_timezone = 0
    tag.message = b"v6.6.6\n"
    store.add_object(tag)
    repo.refs[b"refs/tags/v6.6.6"] = tag.id
    repo.close()

    db = Database(reg.database_url)
    try:
        with db.session() as session:
            agent = session.scalar(select(Agent).where(Agent.name == AGENT))
            assert agent is not None
            first = session.scalar(select(Release).where(Release.agent_id == agent.id))
            assert first is not None
            session.add(
                Release(
                    agent_id=agent.id,
                    version="6.6.6",
                    commit=commit.id.decode(),
                    manifest=manifest_text,
                    dependencies="{}",
                    publisher_id=first.publisher_id,
                    published_at=dt.datetime.now(dt.UTC),
                )
            )
    finally:
        db.dispose()
    return str(commit.id.decode())


def test_a_release_whose_tree_escapes_the_checkout_is_refused_by_the_node(mesh: Mesh) -> None:
    mesh.publish("1.0.0")
    node = mesh.node("node-a")
    mesh.connected(1)
    _hostile_release(mesh.reg, mesh.commits, mesh.tmp)
    before = sorted(p.name for p in mesh.tmp.iterdir())

    mesh.deploy("6.6.6", replicas=1)

    def failed() -> dict[str, Any] | None:
        view = mesh.view()
        bad = [i for i in view["instances"] if i["status"] == "failed"]
        return bad[0] if bad else None

    bad = until(failed, 30, f"the replica to fail: {node.tail()}")
    assert "escape" in bad["detail"] or ".." in bad["detail"], bad["detail"]
    assert not node.agents()
    assert sorted(p.name for p in mesh.tmp.iterdir()) == before  # nothing landed beside the node
    assert not (node.data / "escaped.txt").exists()
    assert not list(node.data.rglob("escaped.txt"))
