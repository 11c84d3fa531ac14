"""What the registry benchmarks share: a registry in its own process, seeded trees, timing, tables.

The registry runs as `mcpz registry serve --data DIR --port P` in a separate process (its own
interpreter, its own GIL), so a client in the benchmark process never competes with it for the
interpreter lock. Everything else is loopback, temporary folders, and child processes this module
started and ends by their own process id.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MCPZ = str(BIN / "mcpz") if (BIN / "mcpz").exists() else None
GIT = shutil.which("git") or "git"

# Fixed author and dates: the same seed gives the same commits, byte for byte.
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_AUTHOR_DATE": "2025-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2025-01-01T00:00:00+0000",
}


def mcpz_cmd(*args: str) -> list[str]:
    return [MCPZ, *args] if MCPZ else [sys.executable, "-m", "mcpz", *args]


# --- the environment ------------------------------------------------------------------------


class Workdir:
    """A temporary folder with its own HOME, config and git settings; removed on exit."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"mcpz-{prefix}-"))
        self.keep = keep
        home = self.path / "home"
        home.mkdir()
        gitconfig = home / ".gitconfig"
        gitconfig.write_text(
            "[user]\n\tname = Bench\n\temail = bench@example.com\n"
            "[init]\n\tdefaultBranch = main\n"
            "[advice]\n\tdetachedHead = false\n"
        )
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MCPZ_", "GIT_"))
            and k not in {"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"}
        }
        self.env.update(
            HOME=str(home),
            MCPZ_CONFIG_DIR=str(home / "config"),
            MCPZ_DATA_DIR=str(home / "data"),
            MCPZ_CACHE_DIR=str(home / "cache"),
            GIT_CONFIG_GLOBAL=str(gitconfig),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_TERMINAL_PROMPT="0",
            NO_COLOR="1",
            NO_PROXY="127.0.0.1,localhost",
        )
        self.children: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for child in reversed(self.children):
            stop_process(child)
        self.children.clear()
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """End one child we started (by its pid, then its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM) if _own_group(proc) else proc.terminate()
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL) if _own_group(proc) else proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)


def _own_group(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def run(
    cmd: Sequence[str],
    env: dict[str, str],
    cwd: Path | None = None,
    input: bytes | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, input=input, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout.decode(errors='replace')}"
            f"{proc.stderr.decode(errors='replace')}"
        )
    return proc


def timed(cmd: Sequence[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> float:
    """Wall time of one command, start-up included."""
    return timed_cpu(cmd, env, cwd, timeout)[0]


def timed_cpu(
    cmd: Sequence[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 300
) -> tuple[float, float]:
    """(wall, CPU) of one command: CPU is user + system of it and the children it waited for,
    steadier than wall time on a busy machine. Servers we started are never reaped meanwhile."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run(cmd, env, cwd, timeout=timeout)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# --- the registry in its own process --------------------------------------------------------


@dataclass
class Registry:
    """`mcpz registry serve` in a child process, on a free loopback port, SQLite in `data`."""

    work: Workdir
    data: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, work: Workdir, data: Path | None = None) -> Registry:
        reg = cls(work, data or work.path / "registry")
        reg.data.mkdir(parents=True, exist_ok=True)
        reg.port = free_port()
        reg.log = work.path / "registry.log"
        with reg.log.open("ab") as log:
            reg.proc = subprocess.Popen(
                mcpz_cmd("registry", "serve", "--data", str(reg.data), "--port", str(reg.port)),
                env=work.env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        work.children.append(reg.proc)
        try:
            wait_for_port(reg.port, reg.proc)
        except RuntimeError as e:
            tail = "\n".join(reg.log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"the registry did not start: {e}\n{tail}") from None
        return reg

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def account(self, name: str) -> str:
        """Create an account (its namespace too) with the operator commands; return a token."""
        if name not in self.tokens:
            run(mcpz_cmd("registry", "account", "create", name, "--data", str(self.data)), self.work.env)
            out = run(
                mcpz_cmd(
                    "registry",
                    "token",
                    "create",
                    "--account",
                    name,
                    "--scope",
                    "read,publish",
                    "--data",
                    str(self.data),
                ),
                self.work.env,
            )
            self.tokens[name] = out.stdout.decode().strip().splitlines()[-1].strip()
        return self.tokens[name]

    def git_url(self, name: str, token: str | None = None) -> str:
        auth = f"mcpz:{token}@" if token else ""
        return f"http://{auth}127.0.0.1:{self.port}/git/{name}.git"

    def repo_path(self, name: str) -> Path:
        namespace, short = name.split("/")
        return self.data / "repos" / namespace / f"{short}.git"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


# --- seeded agent trees ---------------------------------------------------------------------


def _vocabulary(rng: random.Random) -> list[bytes]:
    """256 source-like tokens, so generated files compress about as well as code does (~4x)."""
    keywords = [
        b"def ",
        b"return ",
        b"import ",
        b"class ",
        b"self.",
        b"if ",
        b"else:",
        b"for ",
        b"in ",
        b"= ",
        b"(",
        b")",
        b": ",
        b", ",
        b"\n",
        b"\n    ",
        b"\n        ",
        b"None",
        b"True",
        b"# ",
    ]
    words = list(keywords)
    letters = b"abcdefghijklmnopqrstuvwxyz_"
    while len(words) < 256:
        size = rng.randint(2, 10)
        words.append(bytes(rng.choice(letters) for _ in range(size)) + rng.choice([b" ", b"_", b".", b"\n"]))
    return words


def file_content(rng: random.Random, vocab: list[bytes], size: int) -> bytes:
    """About `size` bytes of source-like text, drawn from `rng`."""
    tokens = rng.randbytes(max(1, size // 5))
    data = b"".join([vocab[t] for t in tokens])
    return data[:size]


MANIFEST = """[agent]
name = "{name}"
version = "{version}"
kind = "agent"
description = "A generated agent for the push and clone benchmarks."

[run]
command = ["python", "server.py"]
"""


def write_tree(folder: Path, *, files: int = 2000, total_bytes: int = 20_000_000, seed: int = 1) -> int:
    """Write `files` seeded source-like files (`total_bytes` in all) under `folder`; return bytes written."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    # Sizes vary (a few large files, many small ones) and add up to total_bytes.
    weights = [rng.lognormvariate(0, 1) for _ in range(files)]
    scale = total_bytes / sum(weights)
    sizes = [max(64, int(w * scale)) for w in weights]
    sizes[-1] += total_bytes - sum(sizes)
    written = 0
    per_dir = 50
    for i, size in enumerate(sizes):
        path = folder / "src" / f"pkg{i // per_dir:03d}" / f"mod{i % per_dir:03d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = file_content(rng, vocab, size)
        path.write_bytes(data)
        written += len(data)
    (folder / "server.py").write_text("print('bench agent')\n")
    return written


def make_agent_repo(folder: Path, template: Path, name: str, version: str, env: dict[str, str]) -> None:
    """A git repository at `folder`: the template's files plus mcpz.toml, committed on `main`."""
    shutil.copytree(template, folder)
    (folder / "mcpz.toml").write_text(MANIFEST.format(name=name, version=version))
    genv = {**env, **_GIT_IDENTITY}
    run([GIT, "init", "-q", "-b", "main", str(folder)], genv)
    run([GIT, "add", "-A"], genv, cwd=folder)
    run([GIT, "commit", "-q", "-m", f"{name} {version}"], genv, cwd=folder)


def commit_change(folder: Path, env: dict[str, str], path: str, content: bytes, message: str) -> None:
    """Change one file and commit it."""
    (folder / path).write_bytes(content)
    genv = {**env, **_GIT_IDENTITY}
    run([GIT, "add", "--", path], genv, cwd=folder)
    run([GIT, "commit", "-q", "-m", message], genv, cwd=folder)


def bump_version(folder: Path, env: dict[str, str], name: str, version: str) -> None:
    commit_change(
        folder, env, "mcpz.toml", MANIFEST.format(name=name, version=version).encode(), f"release {version}"
    )


# --- figures and tables ---------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def machine() -> dict[str, object]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = subprocess.run([GIT, "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "git": git.removeprefix("git version "),
    }


def print_machine(title: str) -> dict[str, object]:
    info = machine()
    print(f"== {title}")
    print(
        f"machine: {info['cores_usable']} usable cores ({info['cores']} online), "
        f"{info['cpu'] or 'cpu unknown'}; "
        f"Python {info['python']}; git {info['git']}; all traffic on 127.0.0.1"
    )
    return info


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        pairs = enumerate(zip(row, widths, strict=True))
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def emit_json(payload: dict[str, object]) -> None:
    """The one machine-readable line every benchmark ends with."""
    print(json.dumps(payload, sort_keys=True))


# --- a C git server for comparison: git http-backend behind a tiny CGI-capable HTTP server ------


def git_http_backend_server(root: Path, port: int) -> None:
    """Serve `git http-backend` (C git's smart HTTP) for the repositories under `root`.

    Each request runs `git http-backend` as a CGI program, as Apache or nginx+fcgiwrap would:
    the request body goes to its stdin, its output is streamed back as HTTP/1.1 chunks in 64 KB
    reads (connections are kept alive, as uvicorn keeps ours). Runs until killed.
    """
    import tempfile as _tempfile
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import unquote

    git = GIT

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._cgi()

        def do_POST(self) -> None:
            self._cgi()

        def _read_body(self, spool: object) -> int:
            size = 0
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if n == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return size
                    spool.write(self.rfile.read(n))  # type: ignore[attr-defined]
                    self.rfile.readline()
                    size += n
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, 1 << 16))
                if not data:
                    break
                spool.write(data)  # type: ignore[attr-defined]
                remaining -= len(data)
                size += len(data)
            return size

        def _cgi(self) -> None:
            path, _, query = self.path.partition("?")
            with _tempfile.TemporaryFile() as body:
                size = self._read_body(body)
                body.seek(0)
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "HOME": os.environ.get("HOME", "/tmp"),
                    "GATEWAY_INTERFACE": "CGI/1.1",
                    "SERVER_PROTOCOL": "HTTP/1.1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": unquote(path),
                    "QUERY_STRING": query,
                    "REMOTE_ADDR": "127.0.0.1",
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(size),
                }
                for header in ("Content-Encoding", "Git-Protocol"):
                    if self.headers.get(header):
                        env["HTTP_" + header.upper().replace("-", "_")] = self.headers[header]
                proc = subprocess.Popen([git, "http-backend"], stdin=body, stdout=subprocess.PIPE, env=env)
                assert proc.stdout is not None
                status, headers = 200, []
                while True:
                    line = proc.stdout.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    key, _, value = line.decode("latin-1").partition(":")
                    if key.lower() == "status":
                        status = int(value.strip().split()[0])
                    else:
                        headers.append((key.strip(), value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while True:
                    chunk = proc.stdout.read1(1 << 16)  # type: ignore[attr-defined]
                    if not chunk:
                        break
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
                proc.wait()

    ThreadingHTTPServer.daemon_threads = True
    with ThreadingHTTPServer(("127.0.0.1", port), Handler) as server:
        server.serve_forever()


def start_http_backend(work: Workdir, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "http-backend", str(root), str(port)],
        env=work.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    work.children.append(proc)
    wait_for_port(port, proc)
    return proc, port


def start_git_daemon(work: Workdir, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            GIT,
            "daemon",
            "--export-all",
            "--reuseaddr",
            f"--base-path={root}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(root),
        ],
        env=work.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    work.children.append(proc)
    wait_for_port(port, proc)
    return proc, port


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "http-backend":
        git_http_backend_server(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit("usage: _registry.py http-backend ROOT PORT")
