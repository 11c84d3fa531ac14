"""`mcpz node gc` keeps what runs: a real registry and node, a rolling update, then gc.

The node ran 0.1.0, then was updated to 0.2.0. While it runs, gc keeps everything recent (its
grace is at least ten minutes). Stopped, with no grace, it drops 0.1.0's ref and the objects only
0.1.0 had, and keeps 0.2.0 whole: started again, the node runs 0.2.0 from its cache.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from gitutil import git
from meshutil import AGENT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _cache_refs(data: Path) -> set[str]:
    out = git("for-each-ref", "--format=%(objectname)", "refs/agents", cwd=data / "objects.git").stdout
    return set(out.split())


def test_node_gc_keeps_what_runs(mesh: Any, cli: Any) -> None:
    mesh.publish("0.1.0")
    # 0.2.0 on a history of its own (main force-pushed over), so 0.1.0's commit, trees and manifest
    # are not reachable from it: a node fetches whole histories.
    work = mesh.tmp / "tiny"
    git("checkout", "-q", "--orphan", "fresh", cwd=work)
    git("commit", "-qm", "a fresh start", cwd=work)
    git("branch", "-M", "main", cwd=work)
    scheme, rest = mesh.reg.url.split("://", 1)
    git("push", "-q", "--force", f"{scheme}://mcpz:{mesh.token}@{rest}/git/{AGENT}.git", "main", cwd=work)
    mesh.publish("0.2.0")
    node = mesh.node("n1")
    mesh.connected(1)
    mesh.deploy("0.1.0", replicas=1)
    mesh.settled(1, "0.1.0")
    mesh.deploy("0.2.0")
    mesh.settled(1, "0.2.0")
    data: Path = node.data
    assert _cache_refs(data) == {mesh.commits["0.1.0"], mesh.commits["0.2.0"]}

    running = cli("node", "gc", "--data", str(data), "--grace", "now", "--json")
    assert running.exit_code == 0, running.stderr
    report = json.loads(running.stdout)
    assert report["node_running"] is True and report["releases"] == [] and report["checkouts"] == []
    assert mesh.commits["0.2.0"] in report["kept_releases"]

    node.stop()
    dry = json.loads(cli("node", "gc", "--data", str(data), "--grace", "now", "--dry-run", "--json").stdout)
    assert [r.split("@")[1] for r in dry["releases"]] == [mesh.commits["0.1.0"]]
    assert _cache_refs(data) == {mesh.commits["0.1.0"], mesh.commits["0.2.0"]}  # the dry run freed nothing

    done = json.loads(cli("node", "gc", "--data", str(data), "--grace", "now", "--json").stdout)
    assert [r.split("@")[1] for r in done["releases"]] == [mesh.commits["0.1.0"]]
    assert done["objects"] > 0 and done["freed_bytes"] > 0
    assert _cache_refs(data) == {mesh.commits["0.2.0"]}
    fsck = git("fsck", "--full", "--no-dangling", cwd=data / "objects.git", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    git("rev-list", "--objects", "--missing=error", mesh.commits["0.2.0"], cwd=data / "objects.git")

    # Started again on the same folder, the node runs 0.2.0 from what gc kept; its own scheduled gc
    # (every second here) keeps what runs.
    started = time.monotonic()
    mesh.nodes.remove(node)
    mesh.node("n1", "--gc-every", "1s")
    mesh.settled(1, "0.2.0")
    assert time.monotonic() - started < 60
    time.sleep(3)  # a few scheduled collections
    mesh.settled(1, "0.2.0")
    assert _cache_refs(data) == {mesh.commits["0.2.0"]}


def test_a_bad_gc_schedule_is_one_line(cli: Any, tmp_path: Path) -> None:
    result = cli("node", "run", "--registry", "http://127.0.0.1:9", "--token", "x", "--data", str(tmp_path),
                 "--gc-every", "soon")  # fmt: skip
    assert result.exit_code == 2 and '--gc-every "soon" is no duration' in result.stderr
