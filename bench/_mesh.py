"""What the mesh benchmarks share: a registry process with fast or default heartbeats, real node
processes, an agent published with `git push`, and the deployment API polled for its state."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _registry as rb

from mcpz.repo.templates import render_template


def start_registry(work: rb.Workdir, **env: str) -> rb.Registry:
    work.env.update(env)
    return rb.Registry.start(work)


def token(reg: rb.Registry, account: str, scopes: str) -> str:
    rb.run(rb.mcpz_cmd("registry", "account", "create", account, "--data", str(reg.data)), reg.work.env)
    out = rb.run(
        rb.mcpz_cmd("registry", "token", "create", "--account", account, "--scope", scopes,
                    "--data", str(reg.data)),
        reg.work.env,
    )  # fmt: skip
    return str(out.stdout.decode().strip().splitlines()[-1].strip())


def agent(folder: Path, name: str, version: str, env: dict[str, str], payload_bytes: int = 0) -> None:
    """The python template as `name` `version`, plus `payload_bytes` of seeded files under data/."""
    render_template("python", folder, name)
    if payload_bytes:
        rb.write_tree(folder / "data", files=400, total_bytes=payload_bytes, seed=5)
    genv = {**env, **rb._GIT_IDENTITY}
    manifest = folder / "mcpz.toml"
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', f'version = "{version}"'))
    rb.run([rb.GIT, "init", "-q", "-b", "main", str(folder)], genv)
    rb.run([rb.GIT, "add", "-A"], genv, cwd=folder)
    rb.run([rb.GIT, "commit", "-q", "-m", f"{name} {version}"], genv, cwd=folder)


def release(folder: Path, reg: rb.Registry, name: str, version: str, tok: str) -> None:
    genv = {**reg.work.env, **rb._GIT_IDENTITY}
    rb.run([rb.GIT, "tag", f"v{version}"], genv, cwd=folder)
    rb.run([rb.GIT, "push", "-q", reg.git_url(name, tok), "main", f"v{version}"], genv, cwd=folder)


def set_version(folder: Path, env: dict[str, str], version: str) -> None:
    text = (folder / "mcpz.toml").read_text()
    import re

    text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text, count=1)
    rb.commit_change(folder, env, "mcpz.toml", text.encode(), f"release {version}")


def start_node(work: rb.Workdir, reg: rb.Registry, tok: str, name: str) -> subprocess.Popen[bytes]:
    data = work.path / "nodes" / name
    data.mkdir(parents=True, exist_ok=True)
    log = (work.path / "nodes" / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        rb.mcpz_cmd("node", "run", "--registry", reg.url, "--token", tok, "--name", name,
                    "--data", str(data), "--capacity", "10", "--stop-grace", "3", "--allow-unsigned"),
        env=work.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    work.children.append(proc)
    return proc


def api(reg: rb.Registry, tok: str, path: str) -> Any:
    request = urllib.request.Request(reg.url + path, headers={"Authorization": f"Bearer {tok}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def connected(reg: rb.Registry, tok: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    return wait(  # type: ignore[no-any-return]
        lambda: ns if len(ns := [n for n in api(reg, tok, "/v1/nodes") if n["connected"]]) >= count else None,
        timeout,
        f"{count} connected nodes",
    )


def bytes_written(pid: int) -> int:
    """What the process wrote through write(2)/send(2) so far (/proc/PID/io `wchar`): its sockets,
    and also its log and database writes, so an upper bound on what it sent."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/PID/io")


def stop_nodes(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
