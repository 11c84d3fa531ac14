"""Running the official MCP conformance suite (`@modelcontextprotocol/conformance`, npm, pinned in
tests/conformance/package.json with the Node.js 22 it needs) against a server, for
tests/conformance/ and bench/bench_conformance.py.

- `missing()` says why the suite cannot run here (None when it can): .ci/run installs it.
- `run_suite(url)` runs the suite's active server scenarios and returns, per scenario, whether
  every check passed (a WARNING is not a failure: the suite counts it as neither).
- `BearerProxy` stands where an MCP client configured with a bearer token stands: the suite's
  client has no option for headers, so this loopback proxy adds `Authorization` to each request
  and relays every byte of both directions as is (Host and Origin included).
- `expected_failures()` reads tests/conformance/expected-failures.toml: the scenarios that pass
  direct but not through the gateway, each with the spec clause and why.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "conformance"
NODE = SUITE / "node_modules" / ".bin" / "node"
CLI = SUITE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
EVERYTHING = ROOT / "examples" / "everything"
EXPECTED = SUITE / "expected-failures.toml"


def missing() -> str | None:
    if not NODE.exists() or not CLI.exists():
        return "the conformance suite is not installed: npm ci --prefix tests/conformance (.ci/run does)"
    return None


def run_suite(url: str, *, scenario: str | None = None, timeout: float = 300.0) -> dict[str, bool]:
    """Every server scenario of the suite (the active ones and the pending, `--suite all`), or only
    `scenario`, against `url`: scenario -> passed."""
    which = ["--scenario", scenario] if scenario else ["--suite", "all"]
    with tempfile.TemporaryDirectory(prefix="mcpz-conformance-") as out:
        done = subprocess.run(
            [str(NODE), str(CLI), "server", "--url", url, *which, "--output-dir", out],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=out,
        )
        results: dict[str, bool] = {}
        for checks in Path(out).glob("*/checks.json"):
            scenario = _scenario_of(checks.parent.name)
            found = json.loads(checks.read_text())
            results[scenario] = bool(found) and all(c.get("status") != "FAILURE" for c in found)
    if not results:
        output = f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        raise RuntimeError(f"the conformance suite ran no scenario:\n{output}")
    return results


def _scenario_of(folder: str) -> str:
    """`server-{scenario}-{timestamp}` (the timestamp has dashes of its own) -> the scenario."""
    name = folder.removeprefix("server-")
    stamp = re.search(r"-\d{4}-\d{2}-\d{2}T", name)
    return name[: stamp.start()] if stamp else name


@dataclass(frozen=True)
class ExpectedFailure:
    scenario: str
    clause: str
    why: str


def expected_failures() -> dict[str, ExpectedFailure]:
    if not EXPECTED.exists():
        return {}
    data = tomllib.loads(EXPECTED.read_text())
    return {
        name: ExpectedFailure(name, str(entry["clause"]), str(entry["why"]))
        for name, entry in data.get("scenario", {}).items()
    }


class BearerProxy:
    """A loopback HTTP/1.1 proxy to `upstream` (host, port) that adds `Authorization: Bearer`.

    Requests are read head by head (a body by its Content-Length; the suite's client sends no
    chunked requests), responses are copied through unparsed, so SSE streams flow as they come.
    """

    def __init__(self, upstream: tuple[str, int], token: str, port: int = 0) -> None:
        self.upstream = upstream
        self.header = f"Authorization: Bearer {token}\r\n".encode()
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bearer-proxy", daemon=True)

    def __enter__(self) -> BearerProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        serving = asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self._server = self._loop.run_until_complete(serving)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        back = asyncio.ensure_future(self._copy(up_r, client_w))
        try:
            while True:
                head = await client_r.readuntil(b"\r\n\r\n")
                line, _, rest = head.partition(b"\r\n")
                length = 0
                for field in rest.split(b"\r\n"):
                    name, _, value = field.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await client_r.readexactly(length) if length else b""
                up_w.write(line + b"\r\n" + self.header + rest + body)
                await up_w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            up_w.close()
            await asyncio.wait({back}, timeout=5)
            back.cancel()
            client_w.close()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
