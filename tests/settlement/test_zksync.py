"""The zkSync finality wrapper against a small JSON-RPC server answering the documented shapes, and
`finalized_block()` against a real anvil.

No zkSync node installs offline, so the server below (a thread on a loopback port) is the one stand-in
of the settlement tests: it answers `zks_getTransactionDetails`, `eth_getTransactionReceipt` and
`zks_getL1BatchDetails` as zkSync's API documentation shows them, with the nulls a node returns before a
batch is committed, proven and executed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from mcpz.errors import NetworkError, RemoteError
from registry_server.settlement.zksync import (
    BatchDetails,
    ChainRpc,
    Finality,
    MalformedAnswer,
    finality_of,
    parse_batch_details,
    parse_block_number,
    parse_receipt_batch,
    parse_transaction_details,
)

TX = "0x60944a2b978561ba6b0b1962fec4f51c80402b8aa61c07b8879233d34a8f7775"
BATCH = 468355
L1_COMMIT = "0x5b2598bf1260d498c1c6a05326f7416ef2a602b8a1ac0f75b583cd6e08ae83cb"
L1_PROVE = "0xc02563331d0a83d634bc4190750e920fc26b57096ec72dd100af2ab037b43912"
L1_EXECUTE = "0xbe1ba1fdd17c2421cf2dabe2908fafa26ff4fa2190a7724d16295dd9df72b144"


def tx_details(status: str, stages: int = 0) -> dict[str, Any]:
    """`zks_getTransactionDetails`'s documented result, with the L1 hashes of the first `stages` stages."""
    hashes = [L1_COMMIT, L1_PROVE, L1_EXECUTE]
    return {
        "isL1Originated": False,
        "status": status,
        "fee": "0x226a77f62da0",
        "gasPerPubdata": "0xc350",
        "initiatorAddress": "0x513e6e3bd197a4667b589ce0bf4cc8e584152eb4",
        "receivedAt": "2025-01-27T13:31:05.546654Z",
        "ethCommitTxHash": hashes[0] if stages > 0 else None,
        "ethProveTxHash": hashes[1] if stages > 1 else None,
        "ethExecuteTxHash": hashes[2] if stages > 2 else None,
    }


def receipt(batch: int | None) -> dict[str, Any]:
    """A zkSync receipt (the standard fields finality ignores, plus zkSync's l1BatchNumber)."""
    return {
        "transactionHash": TX,
        "blockNumber": "0x1d1c2d7",
        "status": "0x1",
        "l1BatchNumber": None if batch is None else hex(batch),
        "l1BatchTxIndex": None if batch is None else "0x2a",
        "logs": [],
    }


def batch_details(stages: int, number: int = BATCH) -> dict[str, Any]:
    """`zks_getL1BatchDetails`'s documented result, the first `stages` of commit/prove/execute done."""
    done = [
        ("commitTxHash", L1_COMMIT, "committedAt", "2024-03-28T18:24:49.713730Z"),
        ("proveTxHash", L1_PROVE, "provenAt", "2024-03-29T03:09:19.634524Z"),
        ("executeTxHash", L1_EXECUTE, "executedAt", "2024-03-29T18:18:04.204270Z"),
    ]
    answer: dict[str, Any] = {
        "number": number,
        "timestamp": 1711649164,
        "l1TxCount": 1,
        "l2TxCount": 2363,
        "rootHash": "0x7b31ef880f09238f13b71a0f6bfea340b9c76d01bba0712af6aa0a4f224be167",
        "status": "verified" if stages == 3 else "sealed",
        "l1GasPrice": 47875552051,
        "l2FairGasPrice": 25000000,
        "baseSystemContractsHashes": {"bootloader": "0x01", "default_aa": "0x01"},
    }
    for i, (tx_key, tx, at_key, at) in enumerate(done):
        answer[tx_key] = tx if i < stages else None
        answer[at_key] = at if i < stages else None
    return answer


# --- the stand-in node ----------------------------------------------------------------------------

Answer = Callable[[list[Any]], dict[str, Any]]


def result(value: object) -> Answer:
    return lambda params: {"result": value}


@dataclass
class FakeZkSync:
    """Answers each method from `answers` (a function of the params giving the response's body minus
    jsonrpc and id); `raw` replaces the whole HTTP body; `hang` holds every request until teardown."""

    url: str = ""
    answers: dict[str, Answer] = field(default_factory=dict)
    raw: bytes | None = None
    status: int = 200
    hang: threading.Event | None = None
    calls: list[tuple[str, list[Any]]] = field(default_factory=list)


@pytest.fixture
def node() -> Iterator[FakeZkSync]:
    fake = FakeZkSync()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.calls.append((request["method"], request["params"]))
            if fake.hang is not None:
                fake.hang.wait(30)
                return
            if fake.raw is not None:
                body = fake.raw
            elif request["method"] in fake.answers:
                answer = fake.answers[request["method"]](request["params"])
                body = json.dumps({"jsonrpc": "2.0", "id": request["id"], **answer}).encode()
            else:
                error = {"code": -32601, "message": f"Method not found: {request['method']}"}
                body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}).encode()
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    # Credentials and an API key where hosted RPC URLs carry them: no error message may show them.
    fake.url = f"http://user:secret-pass@127.0.0.1:{server.server_address[1]}/v2/secret-api-key"
    try:
        yield fake
    finally:
        if fake.hang is not None:
            fake.hang.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def at_stage(node: FakeZkSync, status: str, batch: int | None, stages: int | None) -> None:
    """The node's view of TX: its status, the batch its receipt names, how far that batch got on L1
    (None: the node has no details of the batch yet)."""
    node.answers["zks_getTransactionDetails"] = result(tx_details(status, stages or 0))
    node.answers["eth_getTransactionReceipt"] = result(receipt(batch))
    node.answers["zks_getL1BatchDetails"] = lambda params: {
        "result": None if stages is None or params != [batch] else batch_details(stages)
    }


def finality(url: str, timeout: float = 10.0) -> Finality:
    async def go() -> Finality:
        async with ChainRpc(url, timeout=timeout) as rpc:
            return await rpc.finality(TX)

    return anyio.run(go)


# --- finality through the stages -------------------------------------------------------------------


def test_an_unknown_transaction_is_unknown(node: FakeZkSync) -> None:
    node.answers["zks_getTransactionDetails"] = result(None)
    assert finality(node.url) == "unknown"
    assert [m for m, _ in node.calls] == ["zks_getTransactionDetails"]


def test_a_pending_transaction_is_unknown_it_is_in_no_block(node: FakeZkSync) -> None:
    at_stage(node, "pending", None, None)
    assert finality(node.url) == "unknown"


def test_included_before_its_batch_is_sealed_or_described(node: FakeZkSync) -> None:
    at_stage(node, "included", None, None)
    assert finality(node.url) == "included"
    at_stage(node, "included", BATCH, None)  # sealed, the node has no details of the batch yet
    assert finality(node.url) == "included"
    at_stage(node, "included", BATCH, 0)  # described, nothing on L1 yet: every L1 field null
    assert finality(node.url) == "included"
    assert ("zks_getL1BatchDetails", [BATCH]) in node.calls


def test_committed_proven_executed(node: FakeZkSync) -> None:
    expected: list[Finality] = ["committed", "proven", "executed"]
    for stages, want in enumerate(expected, start=1):
        at_stage(node, "verified" if stages == 3 else "included", BATCH, stages)
        assert finality(node.url) == want


def test_a_stage_counts_only_once_its_time_is_reported_too(node: FakeZkSync) -> None:
    at_stage(node, "included", BATCH, 2)
    half = batch_details(2)
    half["provenAt"] = None  # the proof's L1 transaction sent, not yet confirmed
    node.answers["zks_getL1BatchDetails"] = result(half)
    assert finality(node.url) == "committed"


def test_a_failed_transaction_still_reaches_finality(node: FakeZkSync) -> None:
    at_stage(node, "failed", BATCH, 3)
    assert finality(node.url) == "executed"
    details = parse_transaction_details(tx_details("failed", 3))
    assert details is not None and details.failed


# --- errors: one line, an McpzError ---------------------------------------------------------------


def test_an_rpc_error_object_is_a_remote_error_naming_method_and_message(node: FakeZkSync) -> None:
    with pytest.raises(RemoteError) as caught:
        finality(node.url)  # the stand-in knows no method yet: -32601
    message = str(caught.value)
    assert "zks_getTransactionDetails" in message and "Method not found" in message and "-32601" in message
    assert "\n" not in message
    assert "secret" not in message, "the URL's credentials or path (a hosted RPC's API key) leaked"


def test_an_rpc_error_from_a_later_call_stops_finality(node: FakeZkSync) -> None:
    at_stage(node, "included", BATCH, 1)
    node.answers["zks_getL1BatchDetails"] = lambda params: {
        "error": {"code": -32602, "message": "Invalid params\nsecond line"}
    }
    with pytest.raises(RemoteError) as caught:
        finality(node.url)
    host = node.url.split("@")[1].split("/")[0]
    assert str(caught.value) == (
        f"the chain RPC at http://{host} refused zks_getL1BatchDetails: Invalid params (code -32602)"
    )


@pytest.mark.parametrize(
    ("method", "answer", "complaint"),
    [
        ("zks_getTransactionDetails", {"result": "0x1"}, "not an object"),
        ("zks_getTransactionDetails", {"result": {"status": "done"}}, "status is 'done'"),
        ("zks_getTransactionDetails", {"result": {"status": "included", "ethCommitTxHash": 7}}, "ethCommit"),
        ("eth_getTransactionReceipt", {"result": {"l1BatchNumber": "batch"}}, "l1BatchNumber"),
        ("zks_getL1BatchDetails", {"result": {**batch_details(1), "number": None}}, "number"),
        ("zks_getL1BatchDetails", {"result": batch_details(3, number=BATCH + 1)}, f"asked for {BATCH}"),
        ("zks_getL1BatchDetails", {"result": {**batch_details(3), "proveTxHash": None}}, "out of order"),
        ("zks_getL1BatchDetails", {"id_missing": True}, "neither result nor error"),
    ],
)  # fmt: skip
def test_a_malformed_answer_is_a_clear_error(
    node: FakeZkSync, method: str, answer: dict[str, Any], complaint: str
) -> None:
    at_stage(node, "included", BATCH, 1)
    node.answers[method] = lambda params: answer
    with pytest.raises(RemoteError) as caught:
        finality(node.url)
    assert method in str(caught.value) and complaint in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("raw", "status", "complaint"),
    [
        (b"<html>bad gateway</html>", 502, "HTTP 502"),
        (b"not json", 200, "non-JSON"),
        (b'{"jsonrpc": "2.0", "id": 999, "result": null}', 200, "no JSON-RPC response for id"),
        (b"[]", 200, "no JSON-RPC response for id"),
    ],
)
def test_a_broken_response_is_a_clear_error(
    node: FakeZkSync, raw: bytes, status: int, complaint: str
) -> None:
    node.raw, node.status = raw, status
    with pytest.raises(RemoteError) as caught:
        finality(node.url)
    assert complaint in str(caught.value)


def test_a_node_that_does_not_answer_times_out_as_a_network_error(node: FakeZkSync) -> None:
    node.hang = threading.Event()
    with pytest.raises(NetworkError) as caught:
        finality(node.url, timeout=0.2)
    assert "did not answer zks_getTransactionDetails within 0.2 s" in str(caught.value)


def test_an_unreachable_node_is_a_network_error() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(NetworkError) as caught:
            finality(f"http://127.0.0.1:{port}")
    assert "cannot reach the chain RPC at http://127.0.0.1:" in str(caught.value)


# --- the pure parsers, directly -------------------------------------------------------------------


def test_parsers_take_the_documented_shapes_and_nulls() -> None:
    assert parse_transaction_details(None) is None
    details = parse_transaction_details(tx_details("verified", 3))
    assert details is not None and details.eth_execute_tx_hash == L1_EXECUTE and not details.failed
    assert parse_receipt_batch(None) is None
    assert parse_receipt_batch(receipt(None)) is None
    assert parse_receipt_batch(receipt(BATCH)) == BATCH
    assert parse_batch_details(None) is None
    assert parse_batch_details(batch_details(0)) == BatchDetails(BATCH, False, False, False)
    assert parse_batch_details(batch_details(3)) == BatchDetails(BATCH, True, True, True)
    assert parse_batch_details({"number": hex(BATCH)}) == BatchDetails(BATCH, False, False, False)
    assert parse_block_number(None, "finalized") is None
    assert parse_block_number({"number": "0x40"}, "finalized") == 64
    with pytest.raises(MalformedAnswer):
        parse_block_number({"number": True}, "finalized")


def test_finality_of_is_decided_by_the_batch_stages() -> None:
    included = parse_transaction_details(tx_details("included"))
    assert finality_of(None, None, None) == "unknown"
    assert finality_of(included, None, None) == "included"
    assert finality_of(included, BATCH, None) == "included"
    expected: list[Finality] = ["included", "committed", "proven", "executed"]
    for stages, want in enumerate(expected):
        assert finality_of(included, BATCH, parse_batch_details(batch_details(stages))) == want


# --- other chains: the `finalized` block tag, on a real anvil -----------------------------------------


@pytest.mark.slow
def test_finalized_block_follows_the_chain_on_anvil(anvil: Any) -> None:
    async def finalized() -> int | None:
        async with ChainRpc(anvil.rpc_url) as rpc:
            return await rpc.finalized_block()

    before = anyio.run(finalized)
    assert before is not None and before <= anvil.w3.eth.block_number
    anvil.w3.provider.make_request("anvil_mine", [hex(200)])
    after = anyio.run(finalized)
    latest = anvil.w3.eth.block_number
    assert after is not None and before < after < latest
    # The same answer web3 gets for the tag, read independently.
    assert after == anvil.w3.eth.get_block("finalized")["number"]
