"""The main job: `mcpz demo` runs the whole loop for real, as a fresh machine would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(900)  # the whole loop, a local chain included: minutes on a busy machine
def test_demo_runs_every_step_and_reports_them() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcpz", "demo", "--json"], capture_output=True, text=True, timeout=840
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["ok"] is True
    assert result["steps"] == [
        "init", "commit", "log", "tools", "call", "chain", "registry",
        "wallet", "login", "namespace", "push", "verify", "info", "market",
        "node-key", "nodes", "deploy", "status", "gateway", "usage", "billing",
        "payout", "claim", "reconcile", "stop-nodes",
    ]  # fmt: skip
    assert {"echo", "add"} <= set(result["tools"])
    assert "published demo/weather 0.1.0" in done.stderr
    assert f"signed by {result['address']}" in done.stderr
    assert "verified demo/weather 0.1.0" in done.stderr
    assert sorted(result["replicas"].values()) == ["demo-node-1", "demo-node-2"]  # spread over both
    assert "2/2 ready" in done.stderr
    assert "stopped 2 nodes" in done.stderr
    assert result["market"]["name"] == "demo/weather" and result["market"]["version"] == "0.1.0"
    assert result["usage"] == {"add": 1}  # the one call through the gateway, metered once
    # The caller paid 3 calls at 0.002 from a deposit of 1; the creator earned 80 % of it, ready for
    # payout at once (the demo's registry has no refund window).
    assert result["billing"] == {
        "caller": 994_000,
        "spent": 6_000,
        "earned": {"pending": 0, "available": 4_800},
    }
    assert result["chain"]["engine"] in ("anvil", "evm")
    assert "the registry saw the deposit on chain and credited demo-caller 1 USDC" in done.stderr
    assert "earnings   0.00 USDC pending (refund window), 0.0048 USDC available" in done.stderr
    # The money loop: one batch of the creator's 4,800 units, final, claimed, verified, reconciled.
    assert result["payout"]["batch"] == 1 and result["payout"]["total"] == 4_800
    assert result["claim"]["amount"] == 4_800 and result["claim"]["claimed"] == [1]
    assert "verified on chain: 0.0048 USDC to" in done.stderr
    assert "nothing to claim" in done.stderr
    assert result["reconcile"] == {
        "deposits": 0, "payouts committed": 0, "withdrawals": 0, "x402 payments": 0,
    }  # fmt: skip
    assert "mcpz_" not in done.stderr + done.stdout, "the demo must never print a token"


def test_the_local_call_step_fails_on_a_wrong_answer(tmp_path: Path) -> None:
    from mcpz.demo import DemoContext, DemoFailed, step_call, step_init

    said: list[str] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPZ_")}
    env.update(MCPZ_CONFIG_DIR=str(tmp_path / ".config"), MCPZ_DATA_DIR=str(tmp_path / ".data"), NO_COLOR="1")
    ctx = DemoContext(root=tmp_path, say=said.append, show=said.append, env=env)
    step_init(ctx)
    assert ctx.agent_dir is not None
    step_call(ctx)  # the template's add answers 42
    server = ctx.agent_dir / "server.py"
    server.write_text(server.read_text(encoding="utf-8").replace("return a + b", "return a + b + 1"))
    with pytest.raises(DemoFailed, match="answered '43', not 42"):
        step_call(ctx)
