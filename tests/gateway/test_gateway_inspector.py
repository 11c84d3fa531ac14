"""The MCP Inspector's CLI (npm `@modelcontextprotocol/inspector`, `--cli`; pinned in
tests/conformance/package.json beside the Node.js 22 it needs) lists and calls tools of an agent on
a real node, through the gateway, with a bearer token: a client we did not write, configured as a
person configures it (the URL and an Authorization header)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformanceutil import NODE, SUITE
from conftest import missing
from meshutil import AGENT, Mesh, serving_one

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG"),
]

INSPECTOR = SUITE / "node_modules" / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build"
LAUNCHER = INSPECTOR / "index.js"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    if not NODE.exists() or not LAUNCHER.exists():
        missing("the MCP Inspector (`npm ci --prefix tests/conformance`)")
    with serving_one(tmp_path_factory.mktemp("inspector")) as mesh:
        yield mesh


def inspector(url: str, token: str | None, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    header = ["--header", f"Authorization: Bearer {token}"] if token else []
    env = {
        **os.environ,
        "HOME": str(home),  # its catalog (~/.mcp-inspector) stays in the test's folder
        "PATH": f"{NODE.parent}{os.pathsep}{os.environ.get('PATH', '')}",  # Node.js 22 first
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [str(NODE), str(LAUNCHER), "--cli", url, "--transport", "http", *header, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=home,
    )


def test_the_inspector_cli_lists_and_calls_tools_through_the_gateway(mesh: Mesh, tmp_path: Path) -> None:
    url = f"{mesh.reg.url}/mcp/{AGENT}"
    token = mesh.reg.account("inspector", "read,call")

    listed = inspector(url, token, "--method", "tools/list", home=tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    tools = json.loads(listed.stdout)["tools"]
    assert {"echo", "add", "divide"} <= {t["name"] for t in tools}

    called = inspector(
        url, token, "--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=2", "b=3", home=tmp_path
    )
    assert called.returncode == 0, called.stderr[-2000:]
    result = json.loads(called.stdout)
    assert result.get("isError") is not True
    assert result["content"][0]["text"] == "5"

    # Without a token, the 401's challenge sends it to OAuth (the MCP authorization spec), which
    # needs a person at a terminal: here it says so and stops.
    refused = inspector(url, None, "--method", "tools/list", "--stored-auth-only", home=tmp_path)
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower()
