"""The embedded EVM (mcpz/local/evm.py, served by mcpz/local/evmserver.py) answers as anvil does where
mcpz and web3 look: JSON-RPC 2.0 framing and batches, reverts as code 3 with their data, block tags, one
block a transaction, logs counted over the block, snapshots that bring other block hashes."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from chainutil import CHAIN_ID, Anvil, deploy_settlement, error_selector

from mcpz.contracts import SETTLEMENT, load_artifact

pytestmark = pytest.mark.slow


def post(chain: Anvil, body: Any) -> httpx2.Response:
    return httpx2.post(chain.rpc_url, json=body, timeout=30)


def rpc(chain: Anvil, method: str, *params: Any) -> Any:
    answer = post(chain, {"jsonrpc": "2.0", "id": 7, "method": method, "params": list(params)}).json()
    assert answer["id"] == 7 and "error" not in answer, answer
    return answer["result"]


def test_framing_batches_and_errors(evm: Anvil) -> None:
    batch = post(
        evm,
        [
            {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
            {"jsonrpc": "2.0", "id": 2, "method": "eth_noSuchThing", "params": []},
            {"jsonrpc": "2.0", "method": "eth_blockNumber", "params": []},  # a notification: no answer
            {"jsonrpc": "2.0", "id": 3, "method": "eth_getBalance", "params": ["0x1234"]},
            "not a request",
        ],
    ).json()
    assert batch[0] == {"jsonrpc": "2.0", "id": 1, "result": hex(CHAIN_ID)}
    assert batch[1]["error"]["code"] == -32601 and "eth_noSuchThing" in batch[1]["error"]["message"]
    assert batch[2]["id"] == 3 and batch[2]["error"]["code"] == -32602
    assert batch[3]["error"]["code"] == -32600 and len(batch) == 4
    parse = httpx2.post(evm.rpc_url, content=b"{nope", timeout=30).json()
    assert parse == {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
    assert post(evm, []).json()["error"]["code"] == -32600
    assert rpc(evm, "net_version") == str(CHAIN_ID)


def test_reverts_carry_their_data_like_anvil(evm: Anvil) -> None:
    s = deploy_settlement(evm)
    call = {
        "from": s.user.address,
        "to": s.contract.address,
        "data": s.contract.encode_abi("deposit", ["x" * 200, 1]),
    }
    selector = error_selector(load_artifact(SETTLEMENT).abi, "BadAccountName")
    for method in ("eth_call", "eth_estimateGas"):
        answer = post(evm, {"jsonrpc": "2.0", "id": 1, "method": method, "params": [call, "latest"]}).json()
        assert answer["error"]["code"] == 3 and answer["error"]["message"].startswith("execution reverted")
        assert answer["error"]["data"] == selector + f"{200:064x}"
    # Sent anyway (its gas given, so nothing estimates it first): mined in a block, status 0.
    w3 = evm.w3
    params = {"from": s.user.address, "gas": 200_000, "chainId": CHAIN_ID}
    tx = s.contract.functions.deposit("x" * 200, 1).build_transaction(
        {**params, "nonce": w3.eth.get_transaction_count(s.user.address)}
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(s.user.sign_transaction(tx).raw_transaction)
    )
    assert receipt["status"] == 0 and receipt["blockNumber"] == w3.eth.block_number
    # A transaction signed for another chain is refused, as every node refuses it.
    other = s.user.sign_transaction({**tx, "chainId": 1, "nonce": tx["nonce"] + 1}).raw_transaction
    refused = post(
        evm, {"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": ["0x" + other.hex()]}
    )
    assert refused.json()["error"] == {
        "code": -32000,
        "message": "invalid chain id for signer: have 1, want 31337",
    }
    # A call needs no balance for its gas, as on anvil: from an empty address, at no fee.
    token = {"to": s.contract.address, "data": s.contract.encode_abi("token", [])}
    assert rpc(evm, "eth_call", token, "latest")[-40:] == s.token.address[2:].lower()


def test_blocks_tags_logs_and_snapshots(evm: Anvil) -> None:
    s = deploy_settlement(evm)
    head = int(rpc(evm, "eth_blockNumber"), 16)
    for tag in ("latest", "safe", "finalized"):
        assert int(rpc(evm, "eth_getBlockByNumber", tag, False)["number"], 16) == head
    assert rpc(evm, "eth_getBlockByNumber", hex(head + 5), False) is None
    nonce = rpc(evm, "eth_getTransactionCount", s.user.address, "pending")
    assert nonce == rpc(evm, "eth_getTransactionCount", s.user.address, "latest")

    receipt = s.deposit(s.user, "bob", 3)  # mint, approve, deposit: a block each
    assert receipt["blockNumber"] == head + 3
    block = rpc(evm, "eth_getBlockByNumber", hex(receipt["blockNumber"]), True)
    assert [t["hash"] for t in block["transactions"]] == ["0x" + receipt["transactionHash"].hex()]
    # The token's Transfer then the contract's Deposited, counted over the block.
    assert [log["logIndex"] for log in receipt["logs"]] == [0, 1]
    [event] = s.contract.events.Deposited().get_logs(from_block=head, to_block="latest")
    assert (event.args.account, event.args.amount, event.logIndex) == ("bob", 3, 1)
    topic = "0x" + s.contract.events.Deposited().topic.removeprefix("0x")
    found = rpc(
        evm, "eth_getLogs", {"fromBlock": hex(head), "address": s.contract.address, "topics": [topic]}
    )
    assert [log["transactionHash"] for log in found] == ["0x" + receipt["transactionHash"].hex()]
    history = rpc(evm, "eth_feeHistory", "0x3", "latest", [50])
    assert len(history["baseFeePerGas"]) == 4 and len(history["gasUsedRatio"]) == len(history["reward"]) == 3

    snap = rpc(evm, "evm_snapshot")
    rpc(evm, "anvil_mine", "0x2")
    gone = rpc(evm, "eth_getBlockByNumber", "latest", False)
    assert rpc(evm, "evm_revert", snap) is True
    assert int(rpc(evm, "eth_blockNumber"), 16) == int(gone["number"], 16) - 2
    rpc(evm, "evm_mine")
    rpc(evm, "evm_mine")
    again = rpc(evm, "eth_getBlockByNumber", "latest", False)
    assert again["number"] == gone["number"] and again["hash"] != gone["hash"]
    assert rpc(evm, "eth_getBlockByHash", gone["hash"], False) is None
