"""The embedded EVM (mcpz/local/evm.py) as a JSON-RPC 2.0 server over HTTP on loopback: one request or
a batch a POST, anvil's command-line options.

It runs as its own process (`python -m mcpz.local.evmserver --port P`, started by mcpz/local/chain.py):
a pure-Python EVM holds the GIL for the length of every transaction, and in a process of its own it
neither slows the registry or the demo beside it nor outlives a clean stop (nor its parent: it stops
when the process that started it is gone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mcpz import jsonlimits
from mcpz.local.evm import CHAIN_ID, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, Node, RpcFailure

MAX_BODY = 16 * 2**20


def answer(node: Node, lock: threading.Lock, body: bytes) -> Any:
    """The JSON-RPC answer to `body` (one request or a batch); None when it asks for none."""
    try:
        request = jsonlimits.loads(body)
    except ValueError:  # jsonlimits.JSONError too: nested past its bound
        return _error(None, RpcFailure(PARSE_ERROR, "Parse error"))
    if isinstance(request, list):
        if not request:
            return _error(None, RpcFailure(INVALID_REQUEST, "Invalid request: empty batch"))
        answers = [a for a in (_one(node, lock, r) for r in request) if a is not None]
        return answers or None
    return _one(node, lock, request)


def _one(node: Node, lock: threading.Lock, request: Any) -> dict[str, Any] | None:
    if not isinstance(request, dict) or not isinstance(request.get("method"), str):
        return _error(None, RpcFailure(INVALID_REQUEST, "Invalid request"))
    request_id = request.get("id")
    params = request.get("params", [])
    if not isinstance(params, list):
        return _error(request_id, RpcFailure(INVALID_PARAMS, "invalid params: expected an array"))
    try:
        with lock:
            result = node.handle(request["method"], params)
    except RpcFailure as e:
        return _error(request_id, e) if "id" in request else None
    return {"jsonrpc": "2.0", "id": request_id, "result": result} if "id" in request else None


def _error(request_id: Any, failure: RpcFailure) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": failure.error()}


class RpcServer(ThreadingHTTPServer):
    """One thread a connection, one call on the node at a time (eth-tester is not thread-safe). It
    binds when made; `node` is set before it serves, so a taken port is known before the slow set-up."""

    daemon_threads = True
    node: Node

    def __init__(self, host: str, port: int) -> None:
        super().__init__((host, port), _Handler)
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: RpcServer
    protocol_version = "HTTP/1.1"  # keep-alive: web3 and httpx reuse their connections
    # Headers and body leave in one segment: no 40 ms wait on the client's delayed ACK.
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            self.send_error(413)
            return
        result = answer(self.server.node, self.server.lock, self.rfile.read(length))
        if result is None:
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = json.dumps(result).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a dev chain's every request is noise


def _watch_parent(httpd: RpcServer) -> None:
    """Stop when the process that started this one is gone (killed without stopping it first)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(1.0)
        httpd.shutdown()

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = argparse.ArgumentParser(
        prog="python -m mcpz.local.evmserver", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8545)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--chain-id", type=int, default=CHAIN_ID)
    parser.add_argument("--config-out", help="write the accounts here, as anvil's --config-out does")
    args = parser.parse_args(argv)
    try:
        httpd = RpcServer(args.host, args.port)
    except OSError as e:
        print(f"cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 1
    httpd.node = Node(args.accounts, args.chain_id)
    if args.config_out:
        accounts = httpd.node.accounts()
        config = {"available_accounts": [a for a, _ in accounts], "private_keys": [k for _, k in accounts]}
        _write_atomic(args.config_out, json.dumps(config))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown).start())
    _watch_parent(httpd)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


def _write_atomic(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    raise SystemExit(main())
