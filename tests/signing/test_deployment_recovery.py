"""Failed replicas recover: a real registry, real `mcpz node run` processes that require signatures,
and a release that fails to verify until its owner signs it.

A failed replica is tried again at once when what failed it may have changed (the deployment
deployed again, a node joining, `mcpz deploy restart`) and otherwise after a backoff; `deploy --wait`
says why a deployment is not ready as soon as the registry knows, with a next step that exists.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry
from gitutil import api
from test_deployment_signing import NodeProcess, make_world, signed_deploy, until, view_of
from test_node_signatures import AGENT, publish, token_for
from test_signed_releases import OWNER, World, post_signature

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="real node processes"),
]
FAST: dict[str, Any] = {"heartbeat_interval": 0.3, "heartbeat_grace": 2.0, "resync_interval": 1.0}


class Cluster:
    def __init__(self, reg: LiveRegistry, tmp: Path) -> None:
        self.reg = reg
        self.tmp = tmp
        self.world = make_world(reg, tmp)
        self.nodes: list[NodeProcess] = []

    def node(self, name: str) -> NodeProcess:
        node = NodeProcess(self.reg, token_for(self.reg, OWNER.address, "node"), self.tmp / name)
        self.nodes.append(node)
        connected = len(self.nodes)
        until(
            lambda: (
                sum(n["connected"] for n in api(self.reg, "/v1/nodes", self.world.owner).json()) >= connected
            ),
            what=f"{connected} node(s) connected: {node.tail()}",
        )
        return node

    def instance(self, version: str, status: str) -> dict[str, Any] | None:
        """The live replica of `version` once it has `status`."""
        view = view_of(self.world) or {}
        for node in self.nodes:
            assert node.proc.poll() is None, node.tail()
        found = [
            i
            for i in view.get("instances", [])
            if i["version"] == version and i["status"] == status and not i["stopping"]
        ]
        return found[0] if found else None

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        self.reg.stop()


@pytest.fixture
def patient(tmp_path: Path) -> Iterator[Cluster]:
    """A registry whose backoff is long (300 s): any quick retry was caused by an event."""
    cluster = Cluster(
        start_registry(tmp_path / "registry", retry_base=300.0, retry_cap=600.0, **FAST), tmp_path
    )
    yield cluster
    cluster.close()


def _failed(w: World, version: str, c: Cluster) -> dict[str, Any]:
    """The replica of `version` once failed, with the node's detail (a heartbeat may report the
    status a moment before the status frame brings the detail)."""
    return until(
        lambda: (i := c.instance(version, "failed")) is not None and i["detail"] and i,
        what=f"{version} to fail",
    )


def test_a_failed_replica_is_retried_when_deployed_again_restarted_or_a_node_joins(patient: Cluster) -> None:
    c, w = patient, patient.world
    c.node("node-a")

    # The release is not signed: the node refuses it, and the registry waits its backoff.
    signed_deploy(w, "1.0.0", OWNER, replicas=1)
    bad = _failed(w, "1.0.0", c)
    assert bad["detail"].startswith("verify-failed: acme/weather 1.0.0 is not signed"), bad
    assert bad["retry_in"] is not None and bad["retry_in"] > 200, bad
    view = view_of(w)
    assert view is not None and view["state"] == "failed"
    assert view["reason"].startswith("replica failed: verify-failed:"), view
    assert view["rollback_to"] is None  # nothing to roll back to: the hint must not offer it

    # Its owner signs the release, and deploys again (same release, same revision): retried now.
    assert post_signature(w, "1.0.0", OWNER).status_code == 200
    again = signed_deploy(w, "1.0.0", OWNER)
    assert again.revision == 1
    ran = until(lambda: c.instance("1.0.0", "running"), 30, "1.0.0 running after the deploy again")
    assert ran["id"] == bad["id"] and ran["epoch"] > bad["epoch"]  # the same replica, a new epoch

    # A new release, unsigned: its replica fails; signed meanwhile, `restart` retries it now.
    publish(w, "1.1.0")
    signed_deploy(w, "1.1.0", OWNER)
    bad = _failed(w, "1.1.0", c)
    assert post_signature(w, "1.1.0", OWNER).status_code == 200
    restarted = api(c.reg, f"/v1/deployments/{AGENT}/restart", w.owner, method="POST")
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["restarted"] == 1
    ran = until(lambda: c.instance("1.1.0", "running"), 30, "1.1.0 running after restart")
    assert ran["id"] == bad["id"] and ran["epoch"] > bad["epoch"]
    until(lambda: (v := view_of(w)) is not None and v["state"] == "ready" and v["version"] == "1.1.0")

    # And once more: signed after the failure, retried when a node joins the mesh.
    publish(w, "1.2.0")
    signed_deploy(w, "1.2.0", OWNER)
    bad = _failed(w, "1.2.0", c)
    assert post_signature(w, "1.2.0", OWNER).status_code == 200
    c.node("node-b")
    ran = until(lambda: c.instance("1.2.0", "running"), 30, "1.2.0 running after a node joined")
    assert ran["id"] == bad["id"] and ran["epoch"] > bad["epoch"]

    # Restart is the deployment owner's to ask for; an unknown deployment is a 404.
    nobody = api(c.reg, f"/v1/deployments/{AGENT}/restart", method="POST")
    assert nobody.status_code == 401, nobody.text
    missing = api(c.reg, "/v1/deployments/acme/nothing/restart", w.owner, method="POST")
    assert missing.status_code == 404, missing.text


def test_without_any_event_a_failed_replica_is_retried_after_its_backoff(tmp_path: Path) -> None:
    c = Cluster(start_registry(tmp_path / "registry", retry_base=0.5, retry_cap=1.0, **FAST), tmp_path)
    try:
        w = c.world
        c.node("node-a")
        signed_deploy(w, "1.0.0", OWNER, replicas=1)
        first = _failed(w, "1.0.0", c)
        # Nothing changes, yet the replica is tried again (new epochs), and keeps failing.
        again = until(
            lambda: (
                (i := c.instance("1.0.0", "failed")) is not None and i["epoch"] >= first["epoch"] + 2 and i
            ),
            30,
            "two retries by backoff",
        )
        assert again["id"] == first["id"]
        # Signed meanwhile: the next retry by backoff runs it.
        assert post_signature(w, "1.0.0", OWNER).status_code == 200
        until(lambda: c.instance("1.0.0", "running"), 30, "running after the next retry")
    finally:
        c.close()


def test_deploy_wait_says_why_it_is_not_ready_and_names_a_next_step_that_exists(
    patient: Cluster, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, w = patient, patient.world
    monkeypatch.setenv("MCPZ_REGISTRY", c.reg.url)
    monkeypatch.setenv("MCPZ_TOKEN", w.owner)
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", "Quiet-Harbour-Lamp-41")
    monkeypatch.setenv("MCPZ_WALLET_SCRYPT_N", "1024")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    assert cli("wallet", "import", input=OWNER.key.hex() + "\n").exit_code == 0
    c.node("node-a")

    # The release does not verify: a failed replica, why, and a hint with commands that exist.
    failed = cli("deploy", f"{AGENT}@latest", "--wait", "--timeout", "120")
    assert failed.exit_code == 7, (failed.stdout, failed.stderr)
    error = failed.stderr.strip().splitlines()[-1]
    assert "1 of 1 replica(s) failed: verify-failed: acme/weather 1.0.0 is not signed" in error, error
    assert f"`mcpz sign {AGENT}@1.0.0`" in error and f"`mcpz deploy restart {AGENT}`" in error
    assert "rollback" not in error  # revision 1 has nothing earlier to return to
    for hinted in (["sign", "--help"], ["deploy", "restart", "--help"], ["logs", "--help"]):
        assert cli(*hinted).exit_code == 0, hinted

    # Signed now: `mcpz deploy restart --wait` brings it up.
    assert post_signature(w, "1.0.0", OWNER).status_code == 200
    restarted = cli("--json", "deploy", "restart", AGENT, "--wait", "--timeout", "60")
    assert restarted.exit_code == 0, restarted.stderr
    assert json.loads(restarted.stdout)["state"] == "ready"
    assert "restarting 1 failed replica(s)" in restarted.stderr

    # No node has the label: said at once, and the wait ends long before its timeout.
    started = time.monotonic()
    mars = cli("deploy", AGENT, "--selector", "region=mars", "--wait", "--timeout", "120")
    assert mars.exit_code == 1, (mars.stdout, mars.stderr)
    assert time.monotonic() - started < 60
    assert f"{AGENT}: no node matches region=mars" in mars.stderr, mars.stderr
    assert "is not ready: no node matches region=mars" in mars.stderr, mars.stderr
