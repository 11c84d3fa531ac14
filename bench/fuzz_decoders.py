"""Fuzz every decoder that faces the network for as long as you like; exit 1 on the first crash.

From a fresh clone (after `python -m venv .venv && .venv/bin/pip install -e '.[test]'`):

    .venv/bin/python bench/fuzz_decoders.py --seconds 300              # all four, five minutes
    .venv/bin/python bench/fuzz_decoders.py --seconds 60 --only json   # one of them
    .venv/bin/python bench/fuzz_decoders.py --seed 7                   # another sequence

The decoders, and the only error each may raise:

- `json`: `mcpz.jsonlimits.loads` (request bodies, relayed JSON-RPC), JSONError;
- `mesh`: `mcpz.mesh.decode` (hub, node and connector frames), ProtocolError;
- `siwe`: `mcpz.keys.siwe.SiweMessage.parse` (sign-in messages), MalformedMessage;
- `pktline`: a fetch negotiation read as `git_http.upload_pack` reads it, GitProtocolError.

Inputs are mutations of valid seeds (bit flips, inserted and deleted bytes, splices, truncation,
repeated runs, deep nesting), with the recursion limit raised as py_ecc raises it, so a decoder
that recurses on its input shows as a crash here. The tests (test_jsonlimits, test_mesh_protocol,
test_siwe, test_git_pktline_fuzz) run the same properties for seconds; this runs them for minutes.
A failing input is written to `fuzz-crash-<decoder>.bin` in the current folder. Each decoder runs
in the same process: a crash that kills it (SIGSEGV) ends the run with a non-zero status too.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dulwich.errors import GitProtocolError
from dulwich.repo import Repo

from mcpz import jsonlimits
from mcpz.keys.siwe import MalformedMessage, SiweMessage
from mcpz.mesh import Call, Heartbeat, Hello, ProtocolError, decode, encode
from registry_server.git.pack_reuse import ReusingUploadPackHandler
from registry_server.git.routes import GitProtocol, _Backend

Decoder = tuple[list[bytes], Callable[[bytes], object], type[BaseException]]


def json_seeds() -> list[bytes]:
    docs: list[object] = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"t": "x"}},
        },
        [1, 2.5, None, True, 's\u00e9"', {"a": [[], {}]}],
        {"address": "0x" + "ab" * 20, "nested": [[[[[{"deep": [1]}]]]]]},
    ]
    return [json.dumps(d).encode() for d in docs]


def mesh_seeds() -> list[bytes]:
    frames = [
        Hello(id=1, node_name="node-0", capacity=4, software_version="0.1.0", features=("connector",)),
        Heartbeat(id=2, cpu_percent=1.5, memory_used=10, memory_total=100, load=0.2),
        Call(id=3, call_id=7, replica_id="r-1", epoch=1, payload=b'{"jsonrpc":"2.0","id":1,"method":"ping"}'),
    ]
    return [encode(f) for f in frames]


def siwe_seeds() -> list[bytes]:
    message = SiweMessage.create(
        domain="registry.example",
        address="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        uri="https://registry.example/v1/auth/login",
        chain_id=1,
        nonce="abcdefgh12345678",
        issued_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        statement="Sign in to the registry.",
        resources=["https://registry.example/a"],
    )
    return [message.to_text().encode()]


def pktline_seeds() -> list[bytes]:
    def pkt(data: bytes) -> bytes:
        return b"%04x" % (len(data) + 4) + data

    want = pkt(b"want " + b"a" * 40 + b" multi_ack side-band-64k ofs-delta\n")
    return [want + b"0000" + pkt(b"have " + b"b" * 40 + b"\n") + pkt(b"done\n"), pkt(b"deepen 1\n") + b"0000"]


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        at = rng.randint(0, len(out))
        if kind == 0 and out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 2:
            del out[at : at + rng.randint(1, 16)]
        elif kind == 3:
            other = rng.choice(seeds)
            j = rng.randint(0, len(other))
            out[at:] = other[j:]
        elif kind == 4:
            del out[at:]
        elif kind == 5 and out:
            i = rng.randrange(len(out))
            out[i:i] = out[i : i + rng.randint(1, 4)] * rng.randint(2, 2000)
        else:
            opener = rng.choice([b"[", b"{", b"\x91", b"\x81\xa1k"])
            out[at:at] = opener * rng.randint(100, 200_000)
    return bytes(out)


def decoders() -> dict[str, Decoder]:
    repo = Repo.init_bare(tempfile.mkdtemp(prefix="mcpz-fuzz-"))

    def fetch(body: bytes) -> None:
        proto = GitProtocol(BytesIO(body).read, BytesIO().write)
        ReusingUploadPackHandler(_Backend(repo), ["fuzz/a"], proto, stateless_rpc=True).handle()

    return {
        "json": (json_seeds(), jsonlimits.loads, jsonlimits.JSONError),
        "mesh": (mesh_seeds(), decode, ProtocolError),
        "siwe": (siwe_seeds(), lambda b: SiweMessage.parse(b.decode("utf-8", "replace")), MalformedMessage),
        "pktline": (pktline_seeds(), fetch, GitProtocolError),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long in all (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["json", "mesh", "siwe", "pktline"], action="append")
    args = parser.parse_args()
    sys.setrecursionlimit(100_000)  # as py_ecc leaves it: recursion on input must show as a crash
    chosen = {k: v for k, v in decoders().items() if not args.only or k in args.only}
    rng = random.Random(args.seed)
    counts = dict.fromkeys(chosen, 0)
    refused = dict.fromkeys(chosen, 0)
    deadline = time.monotonic() + args.seconds
    names = sorted(chosen)
    while time.monotonic() < deadline:
        for name in names:
            seeds, decoder, allowed = chosen[name]
            data = mutate(rng, rng.choice(seeds), seeds)
            counts[name] += 1
            try:
                decoder(data)
            except allowed:
                refused[name] += 1
            except Exception:
                crash = Path(f"fuzz-crash-{name}.bin")
                crash.write_bytes(data)
                traceback.print_exc()
                print(f"{name}: unexpected error on {len(data)} bytes, input in {crash}", file=sys.stderr)
                return 1
    print(f"{'decoder':<8} {'inputs':>9} {'refused':>9}")
    for name in names:
        print(f"{name:<8} {counts[name]:>9} {refused[name]:>9}")
    print(json.dumps({"seconds": args.seconds, "seed": args.seed, "inputs": counts, "refused": refused}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
