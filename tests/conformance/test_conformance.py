"""The official MCP conformance suite's server scenarios, against the everything agent
(examples/everything) three times: served directly over Streamable HTTP by the `mcp` SDK, and
deployed on a real node behind the gateway, reached with a bearer token, in each session mode.

The direct run says the agent meets the suite's requirements. In `isolated` session mode (a
process per client session) the gateway must pass every scenario the direct server passes. In
`shared` mode (one warm process for every session) it must too, except the scenarios in
tests/conformance/expected-failures.toml, each of which names the spec clause it breaks and why
(and must still fail: a stale entry is an error).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from conformanceutil import EVERYTHING, BearerProxy, expected_failures, missing, run_suite
from conftest import isolate, start_registry
from gitutil import git
from meshutil import AGENT, FAST, Mesh, until

from mcpz.repo.templates import render_template
from registry_server.serve import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG"),
    pytest.mark.skipif(missing() is not None, reason=missing() or ""),
]


def _serving(url: str) -> bool:
    try:
        httpx2.get(url, timeout=1)
    except httpx2.HTTPError:
        return False
    return True


@pytest.fixture(scope="module")
def direct() -> Iterator[dict[str, bool]]:
    """The suite against the agent served by the SDK's Streamable HTTP transport."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(EVERYTHING / "server.py"), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        until(lambda: _serving(url), 20, "the everything agent serving HTTP")
        yield run_suite(url)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)


def _through_gateway(tmp_path_factory: pytest.TempPathFactory, sessions: str) -> Iterator[dict[str, bool]]:
    """The suite against the everything agent deployed on a node in session mode `sessions`,
    through the gateway with a token."""
    tmp = tmp_path_factory.mktemp(f"gateway-{sessions}")
    proxy_port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, tmp_path_factory.mktemp("home"))
        # The proxy's origin is a configured one: the suite's DNS-rebinding check sends it.
        reg = start_registry(tmp / "registry", **FAST, allowed_origins=(f"http://127.0.0.1:{proxy_port}",))
        mesh = Mesh(tmp, reg)
        try:
            work = tmp / "tiny"  # Mesh.publish commits what is in this folder
            work.mkdir()
            render_template("python", work, AGENT)
            shutil.copy(EVERYTHING / "server.py", work / "server.py")
            if sessions != "shared":
                # The suite opens a session per scenario and ends none: room for every one of them.
                manifest = work / "mcpz.toml"
                policy = f'sessions = "{sessions}"\nmax_sessions = 64\n'
                manifest.write_text(manifest.read_text().replace("[run]\n", f"[run]\n{policy}"))
            git("init", "-q", "-b", "main", cwd=work)
            mesh.publish("1.0.0")
            mesh.node("node-0")
            mesh.connected(1)
            mesh.deploy("1.0.0", replicas=1)
            mesh.settled(1, "1.0.0", processes=2 if sessions == "isolated" else 1)
            token = reg.account("caller", "read,call")
            host, port = reg.url.removeprefix("http://").rsplit(":", 1)
            with BearerProxy((host, int(port)), token, proxy_port) as proxy:
                yield run_suite(f"{proxy.origin}/mcp/{AGENT}")
        finally:
            mesh.close()
            reg.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, bool]]:
    """The suite through the gateway, the agent in `shared` session mode (the default)."""
    yield from _through_gateway(tmp_path_factory, "shared")


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, bool]]:
    """The suite through the gateway, the agent in `isolated` session mode."""
    yield from _through_gateway(tmp_path_factory, "isolated")


def _table(direct: dict[str, bool], gateway: dict[str, bool]) -> str:
    return "\n".join(f"{s:36} direct {direct[s]!s:5}  gateway {gateway.get(s)!s:5}" for s in sorted(direct))


def test_the_agent_passes_every_scenario_directly(direct: dict[str, bool]) -> None:
    failed = sorted(s for s, ok in direct.items() if not ok)
    assert not failed, f"the everything agent fails {failed} served directly"
    assert len(direct) >= 30, sorted(direct)


def test_isolated_sessions_pass_every_scenario_the_direct_server_passes(
    direct: dict[str, bool], isolated: dict[str, bool]
) -> None:
    failed = sorted(s for s, ok in direct.items() if ok and not isolated.get(s))
    table = _table(direct, isolated)
    assert not failed, f"through the gateway in isolated session mode these fail:\n{failed}\n{table}"


def test_shared_sessions_pass_what_the_direct_server_passes_but_the_expected_failures(
    direct: dict[str, bool], gateway: dict[str, bool]
) -> None:
    expected = expected_failures()
    regressed = sorted(s for s, ok in direct.items() if ok and not gateway.get(s) and s not in expected)
    stale = sorted(s for s in expected if gateway.get(s))
    table = _table(direct, gateway)
    assert not regressed, f"through the gateway these fail, and are not expected to:\n{regressed}\n{table}"
    assert not stale, f"these pass through the gateway now: remove them from expected-failures.toml: {stale}"


def test_every_expected_failure_names_its_clause_and_why() -> None:
    for entry in expected_failures().values():
        assert entry.clause.startswith("https://modelcontextprotocol.io/specification/"), entry
        assert len(entry.why) > 40, entry


def test_the_expected_failures_file_names_real_scenarios(direct: dict[str, bool]) -> None:
    unknown = sorted(set(expected_failures()) - set(direct))
    assert not unknown, f"not scenarios of the suite: {unknown}"


def test_the_everything_agent_is_the_example() -> None:
    """The test deploys examples/everything/server.py as it is: its manifest runs it over stdio."""
    manifest = (EVERYTHING / "mcpz.toml").read_text()
    assert 'command = ["python", "server.py"]' in manifest
    assert Path(EVERYTHING / "server.py").is_file()
