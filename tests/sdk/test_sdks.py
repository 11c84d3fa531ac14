"""The three SDKs against one live registry with a published agent deployed on a real node: the
Python SDK (`mcpz.Client`) in-process, the JavaScript SDK (`node --test` in sdk/js) and the Go SDK
(`go test` in sdk/go), each doing login (a token, and Sign-In with Ethereum with a test key),
search, info, deploy status, a call through the gateway, and usage.

The registry's URL, a token, the agent and the test key reach the JS and Go tests by environment.
A missing toolchain skips its test with the reason (and fails in CI, which installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import missing
from meshutil import AGENT, serving_one

import mcpz
from mcpz.client.models import SessionToken, WhoAmI
from mcpz.errors import NotFoundError
from mcpz.keys.ethkeys import Account

ROOT = Path(__file__).resolve().parents[2]
# A test key, no secret: every SDK signs in with it.
TEST_KEY = "0x" + "7a" * 32
# The user's Go build cache, taken before the tests isolate HOME: a cold cache costs a minute.
GO_CACHE = os.environ.get("GOCACHE") or str(Path.home() / ".cache" / "go-build")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """AGENT published, deployed on one node and running; the environment the SDK tests read."""
    with serving_one(tmp_path_factory.mktemp("sdks")) as mesh:
        token = mesh.reg.account("acme", "read,call")  # the owner's: it may read every caller's usage
        yield {
            "MCPZ_REGISTRY": mesh.reg.url,
            "MCPZ_TOKEN": token,
            "MCPZ_AGENT": AGENT,
            "MCPZ_TEST_KEY": TEST_KEY,
        }


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        command, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    # node's TAP report puts the failures' details first; go test's come last.
    failed = output[output.find("not ok") :] if "not ok" in output else output[-6000:]
    assert done.returncode == 0, failed[:6000]
    return output


def test_python_sdk(world: dict[str, str]) -> None:
    client = mcpz.Client(world["MCPZ_REGISTRY"])
    me = client.login(token=world["MCPZ_TOKEN"])
    assert isinstance(me, WhoAmI) and me.account == "acme" and "call" in me.scopes
    wallet = Account.from_key(TEST_KEY)
    session = mcpz.Client(world["MCPZ_REGISTRY"]).login(wallet=wallet)
    assert isinstance(session, SessionToken) and session.address == wallet.address

    found = client.search("tiny")
    assert AGENT in [listing.name for listing in found.results]
    assert client.info(AGENT).latest == "1.0.0"
    with pytest.raises(NotFoundError):
        client.info("acme/no-such-agent")
    assert client.deployment(AGENT).state == "ready"
    assert client.call(AGENT, "add", {"a": 2, "b": 3}).text == "5"
    deadline = time.monotonic() + 10
    while client.usage(agent=AGENT, since="1h").calls == 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # usage is written in batches
    assert client.usage(agent=AGENT, since="1h").calls >= 1


def test_javascript_sdk(world: dict[str, str]) -> None:
    js = ROOT / "sdk" / "js"
    if shutil.which("npm") is None or shutil.which("node") is None:
        missing("node and npm")
    if not (js / "node_modules" / "@modelcontextprotocol" / "sdk").exists():
        missing("sdk/js's npm packages (`npm ci --prefix sdk/js`)")
    output = _run(["npm", "test", "--silent"], js, world)
    assert "# fail 0" in output and "# skipped 0" in output, output[-3000:]


def test_go_sdk(world: dict[str, str]) -> None:
    go = shutil.which("go")
    if go is None:
        missing("go (Debian's golang-go)")
    env = {**world, "GOCACHE": GO_CACHE, "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    output = _run([str(go), "vet", "./..."], ROOT / "sdk" / "go", env)
    output = _run([str(go), "test", "-count=1", "-v", "./..."], ROOT / "sdk" / "go", env)
    assert "--- SKIP" not in output, output[-3000:]
    for name in ("TestLiveLogin", "TestLiveSearchInfoDeploymentCallUsage"):
        assert f"--- PASS: {name}" in output, output[-3000:]
