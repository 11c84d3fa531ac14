"""The main job: `mcpz demo` runs the whole loop for real, as a fresh machine would."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_runs_every_step_and_reports_them() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcpz", "demo", "--json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["ok"] is True
    assert result["steps"] == [
        "init", "commit", "log", "tools", "call", "registry",
        "wallet", "login", "namespace", "push", "verify", "info",
        "node-key", "nodes", "deploy", "status", "gateway", "usage", "stop-nodes",
    ]  # fmt: skip
    assert {"echo", "add"} <= set(result["tools"])
    assert "published demo/weather 0.1.0" in done.stderr
    assert f"signed by {result['address']}" in done.stderr
    assert "verified demo/weather 0.1.0" in done.stderr
    assert sorted(result["replicas"].values()) == ["demo-node-1", "demo-node-2"]  # spread over both
    assert "2/2 ready" in done.stderr
    assert "stopped 2 nodes" in done.stderr
    assert result["usage"] == {"add": 1}  # the one call through the gateway, metered once
    assert "mcpz_" not in done.stderr + done.stdout, "the demo must never print a token"
