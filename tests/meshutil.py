"""Helpers for tests of the mesh: real `mcpz node run` processes against a live registry.

Every node is its own process with its own data folder; every replica is a real agent process
(found through /proc by the checkout folder it runs in). Waits are bounded conditions, never
fixed sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from conftest import LiveRegistry, start_registry
from gitutil import git

from mcpz.repo.templates import render_template

T = TypeVar("T")
AGENT = "acme/tiny"
FAST: dict[str, Any] = {"heartbeat_interval": 0.3, "heartbeat_grace": 2.0, "resync_interval": 1.0}


# --- waiting ---------------------------------------------------------------------------------------


def until(predicate: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy (returned), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


# --- agent processes, found by their checkout folder ------------------------------------------------


def agent_pids(data: Path) -> dict[int, str]:
    """pid -> replica id of every live process whose working folder is a checkout under `data`."""
    replicas = str((data / "replicas").resolve()) + os.sep
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z" or not cwd.startswith(replicas):
            continue
        found[int(entry)] = cwd[len(replicas) :].split(os.sep)[0]
    return found


# --- nodes -----------------------------------------------------------------------------------------


class NodeProc:
    def __init__(self, reg_url: str, token: str, name: str, data: Path, *extra: str) -> None:
        self.name = name
        self.data = data
        self.log = data.parent / f"{name}.log"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "mcpz", "node", "run", "--registry", reg_url, "--token", token,
            "--name", name, "--data", str(data), "--capacity", "4", "--stop-grace", "2",
            "--allow-unsigned", *extra,
        ]  # fmt: skip
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT)

    def agents(self) -> dict[int, str]:
        return agent_pids(self.data)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        for pid in self.agents():  # nothing of ours may outlive the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


class Mesh:
    def __init__(self, tmp: Path, reg: LiveRegistry) -> None:
        self.tmp = tmp
        self.reg = reg
        self.token = reg.account("acme", "read,publish,deploy,node,admin")
        self.node_token = reg.account("acme", "node")
        self.nodes: list[NodeProc] = []
        self.commits: dict[str, str] = {}

    @property
    def http(self) -> httpx2.Client:
        return httpx2.Client(
            base_url=self.reg.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def publish(self, *versions: str) -> None:
        work = self.tmp / "tiny"
        for version in versions:
            if not work.exists():
                work.mkdir()
                render_template("python", work, AGENT)
                git("init", "-q", "-b", "main", cwd=work)
            manifest = work / "mcpz.toml"
            text = manifest.read_text()
            manifest.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text, count=1))
            git("add", "-A", cwd=work)
            git("commit", "-qm", f"v{version}", cwd=work)
            git("tag", f"v{version}", cwd=work)
            scheme, rest = self.reg.url.split("://", 1)
            url = f"{scheme}://mcpz:{self.token}@{rest}/git/{AGENT}.git"
            git("push", "-q", url, "main", f"v{version}", cwd=work)
            self.commits[version] = git("rev-parse", "HEAD", cwd=work).stdout.strip()

    def write_agent(
        self, server: str | None = None, tools: str = "", env: dict[str, str] | None = None
    ) -> Path:
        """The agent's working folder, which `publish` then commits instead of the bare template:
        the python template with `server` as its server.py, or `tools` (functions) added to the
        template's before its main block, and `env` as the variables its process runs with."""
        work = self.tmp / "tiny"
        work.mkdir()
        render_template("python", work, AGENT)
        source = work / "server.py"
        if server is not None:
            source.write_text(server)
        if tools:
            main = 'if __name__ == "__main__":'
            source.write_text(source.read_text().replace(main, tools.strip("\n") + "\n\n\n" + main, 1))
        if env:
            manifest = work / "mcpz.toml"
            table = ", ".join(f'{name} = "{value}"' for name, value in env.items())
            manifest.write_text(manifest.read_text() + f"env = {{ {table} }}\n")
        git("init", "-q", "-b", "main", cwd=work)
        return work

    def node(self, name: str, *extra: str, url: str | None = None) -> NodeProc:
        node = NodeProc(url or self.reg.url, self.node_token, name, self.tmp / name, *extra)
        self.nodes.append(node)
        return node

    def connected(self, count: int) -> list[dict[str, Any]]:
        def nodes(http: httpx2.Client) -> list[dict[str, Any]]:
            # A registry of replicas answers 503 until one of them leads the mesh.
            response = http.get("/v1/nodes")
            return [n for n in response.json() if n["connected"]] if response.status_code == 200 else []

        with self.http as http:
            return until(
                lambda: ns if len(ns := nodes(http)) >= count else None,
                what=f"{count} connected nodes; logs: {[n.tail() for n in self.nodes]}",
            )

    def serve_one(self, version: str = "1.0.0", *node_args: str) -> NodeProc:
        """`version` published, one node ("node-0", started with `node_args`) connected and one
        replica of it deployed and running there: the setup of most tests that call an agent."""
        self.publish(version)
        node = self.node("node-0", *node_args)
        self.connected(1)
        self.deploy(version, replicas=1)
        self.settled(1, version)
        return node

    def view(self) -> dict[str, Any]:
        with self.http as http:
            response = http.get(f"/v1/deployments/{AGENT}")
            assert response.status_code == 200, response.text
            return response.json()  # type: ignore[no-any-return]

    def deploy(self, version: str, replicas: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"agent": AGENT, "version": version}
        if replicas is not None:
            body["replicas"] = replicas
        with self.http as http:
            response = http.post("/v1/deployments", json=body)
        assert response.status_code in (200, 201), response.text
        return response.json()  # type: ignore[no-any-return]

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.http as http:
            response = http.post(f"/v1/deployments/{AGENT}{path}", json=body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def running_processes(self) -> Counter[str]:
        """Live agent processes per replica id, over every node."""
        return Counter(rid for n in self.nodes for rid in n.agents().values())

    def settled(
        self, replicas: int, version: str, timeout: float = 45.0, processes: int = 1
    ) -> dict[str, Any]:
        """The deployment ready at `version` with `replicas` replicas, `processes` agent processes
        each (isolated session mode: the warm one and the spare)."""

        def check() -> dict[str, Any] | None:
            view = self.view()
            if view["state"] != "ready" or view["version"] != version:
                return None
            live = [i for i in view["instances"] if not i["stopping"]]
            if len(view["instances"]) != replicas or len(live) != replicas:
                return None
            if {i["status"] for i in live} != {"running"}:
                return None
            if self.running_processes() != Counter({i["id"]: processes for i in live}):
                return None
            return view

        return until(check, timeout, f"{replicas} running at {version}: {self.view_brief()}")

    def view_brief(self) -> Any:
        try:
            view = self.view()
        except Exception as e:  # pragma: no cover - diagnostics only
            return repr(e)
        return (
            view["state"],
            view["version"],
            [(i["id"], i["node_name"], i["epoch"], i["status"], i["stopping"]) for i in view["instances"]],
            dict(self.running_processes()),
        )

    def close(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def serving_one(tmp: Path, **settings: object) -> Iterator[Mesh]:
    """A registry in `tmp` (FAST heartbeats and `settings`) with AGENT 1.0.0 served by one replica
    on one node (`Mesh.serve_one`); the node and the registry stopped after."""
    mesh = Mesh(tmp, start_registry(tmp / "registry", None, **FAST, **settings))
    try:
        mesh.serve_one("1.0.0")
        yield mesh
    finally:
        mesh.close()
        mesh.reg.stop()


def node_config(hub_url: str, data: Path, **overrides: object) -> object:
    """A test node's settings: fast backoff, no liveness checks, unsigned releases allowed."""
    from mcpz.node import NodeConfig, SupervisorSettings

    settings = dict(
        registry=hub_url,
        token="node-token",
        data_dir=data,
        name="test-node",
        labels={"zone": "a"},
        capacity=2,
        stop_grace=5.0,
        supervisor=SupervisorSettings(liveness_interval=0),
        backoff_base=0.01,
        backoff_cap=0.05,
        environ={"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/")},
        # These releases are unsigned: tests/signing/test_node_signatures.py checks signing.
        allow_unsigned=True,
    )
    settings.update(overrides)
    return NodeConfig(**settings)  # type: ignore[arg-type]
