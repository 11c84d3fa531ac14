"""An embedded EVM for `mcpz chain dev` where anvil is not installed: eth-tester's py-evm backend behind
the Ethereum JSON-RPC methods (mcpz/local/evmserver.py serves them over HTTP).

`Node` answers the methods that mcpz, the registry and web3 clients call, in the shapes anvil answers
them: each transaction is mined at once in a block of its own, a revert is error code 3 with the revert
data, calls cost the sender nothing, and the dev methods `evm_snapshot`, `evm_revert`, `evm_mine` and
`anvil_mine` work as on anvil. Its accounts are anvil's well-known development keys (so the contracts
land at the same addresses on either engine): never use them where tokens are worth anything.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

CHAIN_ID = 31337
# anvil's default mnemonic and derivation path: the same keys, the same contract addresses.
MNEMONIC = "test test test test test test test test test test test junk"
HD_PATH = "m/44'/60'/0'/0"
TIP = 10**9  # the priority fee it suggests, as anvil does
ZERO_ADDRESS = "0x" + "00" * 20
TAGS = frozenset({"latest", "earliest", "pending", "safe", "finalized"})

# JSON-RPC 2.0 error codes, and the two Ethereum nodes use for refused transactions and reverts.
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
SERVER_ERROR, REVERTED = -32000, 3


class RpcFailure(Exception):
    """A JSON-RPC error answer."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class Reverted(Exception):
    def __init__(self, data: bytes) -> None:
        super().__init__("execution reverted")
        self.data = data


def _backend(accounts: int, chain_id: int) -> Any:
    from eth.exceptions import Revert
    from eth.vm.spoof import SpoofTransaction
    from eth_tester import PyEVMBackend
    from eth_tester.backends.pyevm.main import _get_vm_for_block_number

    class Backend(PyEVMBackend):  # type: ignore[misc]
        """eth-tester's backend with calls and estimates as anvil makes them: they cost the sender
        nothing (no balance needed, no base fee to meet), and a revert keeps its data (eth-tester
        makes a string of it)."""

        def _prepare(self, transaction: dict[str, Any], block_number: Any) -> tuple[Any, Any]:
            state = _get_vm_for_block_number(self.chain, block_number).state
            # A zero fee (some tools send one with their calls) means none: anvil runs such calls too.
            for key in ("gas_price", "max_fee_per_gas", "max_priority_fee_per_gas"):
                if transaction.get(key) == 0:
                    del transaction[key]
            if not {"gas_price", "max_fee_per_gas"} & transaction.keys():
                base_fee = state.execution_context.base_fee_per_gas
                transaction = {**transaction, "max_fee_per_gas": base_fee, "max_priority_fee_per_gas": 0}
            transaction.setdefault("gas", self._max_available_gas())
            unsigned = self._get_normalized_and_unsigned_evm_transaction(transaction, block_number)
            spoofed = SpoofTransaction(unsigned, from_=transaction["from"])
            # The gas is paid up front, out of what is added here: the code sees the sender's balance.
            price = unsigned.max_fee_per_gas if hasattr(unsigned, "max_fee_per_gas") else unsigned.gas_price
            sender = transaction["from"]
            state.set_balance(sender, state.get_balance(sender) + max(unsigned.gas, state.gas_limit) * price)
            return state, spoofed

        def call(self, transaction: dict[str, Any], block_number: Any = "latest") -> bytes:
            state, spoofed = self._prepare(dict(transaction), block_number)
            computation = state.apply_transaction(spoofed)
            _raise_error(computation)
            return bytes(computation.output)

        def estimate_gas(self, transaction: dict[str, Any], block_number: Any = "latest") -> int:
            """Runs it once with the block's gas limit and tries what it used (then a little more, for
            the 63/64 rule) before falling back to py-evm's search: two runs instead of fifteen."""
            state, spoofed = self._prepare(dict(transaction), block_number)
            limit = state.gas_limit

            def run(gas: int) -> Any:
                snapshot = state.snapshot()
                try:
                    return state.apply_transaction(SpoofTransaction(spoofed, gas=gas))
                finally:
                    state.revert(snapshot)

            first = run(limit)
            _raise_error(first)
            used = limit - first.get_gas_remaining()
            for guess in (used, used * 64 // 63 + 5000):
                if guess < limit and not run(guess).is_error:
                    return int(guess)
            low, high = used, limit
            while high - low > 1000:
                middle = (low + high) // 2
                low, high = (low, middle) if not run(middle).is_error else (middle, high)
            return int(high)

    def _raise_error(computation: Any) -> None:
        if computation.is_error:
            if isinstance(computation.error, Revert):
                raise Reverted(bytes(computation.output))
            raise RpcFailure(SERVER_ERROR, f"execution failed: {type(computation.error).__name__}")

    backend = Backend.from_mnemonic(MNEMONIC, num_accounts=accounts, hd_path=HD_PATH)
    # eth-tester fixes its chain id on the chain class it makes for each backend; set on the class, it
    # holds for the chain objects a revert to genesis makes too.
    type(backend.chain).chain_id = chain_id
    return backend


def _quantity(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise RpcFailure(INVALID_PARAMS, f"invalid params: {what} is not a hex quantity: {value!r}")


def _hex(value: Any) -> Any:
    """eth-tester's values in JSON-RPC's encoding: integers as hex quantities, bytes as hex data."""
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_hex(v) for v in value]
    if isinstance(value, Mapping):
        return {_camel(k): _hex(v) for k, v in value.items()}
    return value


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def _bloom(logs: list[dict[str, Any]]) -> str:
    from eth_bloom.bloom import BloomFilter

    bloom = BloomFilter()
    for log in logs:
        bloom.add(bytes.fromhex(log["address"][2:]))
        for topic in log["topics"]:
            bloom.add(bytes.fromhex(topic[2:]))
    return "0x" + int(bloom).to_bytes(256, "big").hex()


class Node:
    """The chain and its JSON-RPC methods. Not thread-safe: the server calls it under one lock."""

    def __init__(self, accounts: int = 10, chain_id: int = CHAIN_ID) -> None:
        # py-evm's precompiles import py_ecc, which sets a recursion limit of 100,000 (deep input could
        # then crash the process instead of raising); mcpz.keys.ethkeys undoes it for the library, and
        # this for the EVM's own process.
        limit = sys.getrecursionlimit()
        try:
            from eth_tester import EthereumTester

            backend = _backend(max(accounts, 1), chain_id)
        finally:
            sys.setrecursionlimit(limit)
        self.chain_id = chain_id
        self.tester = EthereumTester(backend, auto_mine_transactions=True)
        self._logs: dict[str, list[dict[str, Any]]] = {}  # by block hash: a block's logs never change
        self.methods: dict[str, Callable[..., Any]] = {
            "web3_clientVersion": self.client_version,
            "net_version": lambda: str(self.chain_id),
            "net_listening": lambda: True,
            "eth_chainId": lambda: hex(self.chain_id),
            "eth_syncing": lambda: False,
            "eth_accounts": lambda: list(self.tester.get_accounts()),
            "eth_blockNumber": lambda: hex(self._latest()),
            "eth_gasPrice": lambda: hex(self._next_base_fee() + TIP),
            "eth_maxPriorityFeePerGas": lambda: hex(TIP),
            "eth_feeHistory": self.fee_history,
            "eth_getBlockByNumber": self.block_by_number,
            "eth_getBlockByHash": self.block_by_hash,
            "eth_getBalance": self.balance,
            "eth_getCode": self.code,
            "eth_getStorageAt": self.storage,
            "eth_getTransactionCount": self.nonce,
            "eth_call": self.call,
            "eth_estimateGas": self.estimate_gas,
            "eth_sendRawTransaction": self.send_raw_transaction,
            "eth_sendTransaction": self.send_transaction,
            "eth_getTransactionByHash": self.transaction,
            "eth_getTransactionReceipt": self.receipt,
            "eth_getLogs": self.get_logs,
            "evm_snapshot": lambda: hex(self.tester.take_snapshot()),
            "evm_revert": self.revert,
            "evm_mine": self.evm_mine,
            "anvil_mine": self.anvil_mine,
        }

    def accounts(self) -> list[tuple[str, str]]:
        """(address, private key) of each funded, unlocked account."""
        return [
            (key.public_key.to_checksum_address(), "0x" + key.to_bytes().hex())
            for key in self.tester.backend.account_keys
        ]

    def handle(self, method: str, params: list[Any]) -> Any:
        from eth_tester.exceptions import ValidationError
        from eth_utils.exceptions import ValidationError as EthUtilsValidationError

        found = self.methods.get(method)
        if found is None:
            raise RpcFailure(METHOD_NOT_FOUND, f"Method not found: {method}")
        try:
            return found(*params)
        except TypeError as e:
            raise RpcFailure(INVALID_PARAMS, f"invalid params for {method}: {e}") from None
        except (ValidationError, EthUtilsValidationError, ValueError) as e:
            raise RpcFailure(SERVER_ERROR, str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    # --- reading --------------------------------------------------------------------------------

    def client_version(self) -> str:
        from importlib.metadata import version

        return f"mcpz-evm/eth-tester-{version('eth-tester')}/py-evm-{version('py-evm')}"

    def _latest(self) -> int:
        return int(self.tester.get_block_by_number("latest")["number"])

    def _next_base_fee(self) -> int:
        return int(self.tester.get_block_by_number("pending")["base_fee_per_gas"])

    def _block_id(self, block: Any) -> Any:
        if block is None:
            return "latest"
        if isinstance(block, dict):  # EIP-1898
            if "blockNumber" in block:
                return self._block_id(block["blockNumber"])
            if "blockHash" in block:
                return int(self.tester.get_block_by_hash(block["blockHash"])["number"])
        if block in TAGS:
            return block
        return _quantity(block, "block")

    def _block(self, found: Callable[[], dict[str, Any]], full: bool) -> dict[str, Any] | None:
        from eth_tester.exceptions import BlockNotFound

        try:
            block = found()
        except BlockNotFound:
            return None
        shown: dict[str, Any] = _hex(
            {k: v for k, v in block.items() if k not in ("transactions", "coinbase")}
        )
        shown["miner"] = block["coinbase"]
        shown["logsBloom"] = "0x" + int(block["logs_bloom"]).to_bytes(256, "big").hex()
        shown["transactions"] = [_transaction(t) if full else t for t in block["transactions"]]
        return shown

    def block_by_number(self, block: Any, full: bool = False) -> dict[str, Any] | None:
        number = self._block_id(block)
        return self._block(lambda: self.tester.get_block_by_number(number, full_transactions=full), full)

    def block_by_hash(self, block_hash: str, full: bool = False) -> dict[str, Any] | None:
        return self._block(lambda: self.tester.get_block_by_hash(block_hash, full_transactions=full), full)

    def balance(self, address: str, block: Any = None) -> str:
        return hex(self.tester.get_balance(_address(address), self._block_id(block)))

    def code(self, address: str, block: Any = None) -> str:
        return str(self.tester.get_code(_address(address), self._block_id(block)))

    def storage(self, address: str, slot: Any, block: Any = None) -> str:
        position = _quantity(slot, "slot")
        return str(self.tester.get_storage_at(_address(address), hex(position), self._block_id(block)))

    def nonce(self, address: str, block: Any = None) -> str:
        return hex(self.tester.get_nonce(_address(address), self._block_id(block)))

    def fee_history(self, count: Any, newest: Any, percentiles: list[float] | None = None) -> dict[str, Any]:
        blocks = min(max(_quantity(count, "block count"), 1), 1024)
        last = self._block_id(newest)
        last = self._latest() if last in TAGS else min(int(last), self._latest())
        first = max(0, last - blocks + 1)
        base_fees, ratios, rewards = [], [], []
        for number in range(first, last + 1):
            block = self.tester.get_block_by_number(number)
            base_fees.append(hex(block["base_fee_per_gas"]))
            ratios.append(block["gas_used"] / block["gas_limit"])
            rewards.append([hex(TIP) for _ in percentiles or ()])
        # One more base fee than blocks: the next block's (JSON-RPC's shape, which callers index at -1).
        after = self.tester.get_block_by_number(last + 1 if last < self._latest() else "pending")
        base_fees.append(hex(after["base_fee_per_gas"]))
        history: dict[str, Any] = {
            "oldestBlock": hex(first),
            "baseFeePerGas": base_fees,
            "gasUsedRatio": ratios,
        }
        if percentiles:
            history["reward"] = rewards
        return history

    def transaction(self, tx_hash: str) -> dict[str, Any] | None:
        from eth_tester.exceptions import TransactionNotFound

        try:
            return _transaction(self.tester.get_transaction_by_hash(tx_hash))
        except TransactionNotFound:
            return None

    def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        from eth_tester.exceptions import TransactionNotFound

        try:
            receipt = self.tester.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None
        if receipt["block_number"] is None:
            return None
        logs = [log for log in self._block_logs(receipt["block_hash"]) if log["transactionHash"] == tx_hash]
        shown: dict[str, Any] = _hex(
            {k: v for k, v in receipt.items() if k not in ("logs", "state_root", "to")}
        )
        shown["to"] = receipt["to"] or None
        shown["logs"] = logs
        shown["logsBloom"] = _bloom(logs)
        return shown

    def _block_logs(self, block_hash: str) -> list[dict[str, Any]]:
        """The block's logs in JSON-RPC's shape, `logIndex` counted over the block (eth-tester counts
        over each transaction)."""
        if block_hash not in self._logs:
            block = self.tester.get_block_by_hash(block_hash)
            logs: list[dict[str, Any]] = []
            for tx_hash in block["transactions"]:
                receipt = self.tester.get_transaction_receipt(tx_hash)
                for log in receipt["logs"]:
                    logs.append(
                        {
                            "address": log["address"],
                            "topics": list(log["topics"]),
                            "data": log["data"],
                            "blockNumber": hex(block["number"]),
                            "blockHash": block["hash"],
                            "blockTimestamp": hex(block["timestamp"]),
                            "transactionHash": tx_hash,
                            "transactionIndex": hex(receipt["transaction_index"]),
                            "logIndex": hex(len(logs)),
                            "removed": False,
                        }
                    )
            self._logs[block_hash] = logs
        return self._logs[block_hash]

    def get_logs(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(query, dict):
            raise RpcFailure(INVALID_PARAMS, "invalid params: eth_getLogs takes a filter object")
        latest = self._latest()
        if query.get("blockHash"):
            hashes = [str(query["blockHash"])]
        else:
            first, last = (self._number(query.get(k), latest) for k in ("fromBlock", "toBlock"))
            hashes = [self.tester.get_block_by_number(n)["hash"] for n in range(first, min(last, latest) + 1)]
        addresses = query.get("address") or []
        wanted = {a.lower() for a in ([addresses] if isinstance(addresses, str) else addresses)}
        topics = query.get("topics") or []
        return [
            log
            for block_hash in hashes
            for log in self._block_logs(block_hash)
            if (not wanted or log["address"].lower() in wanted) and _topics_match(log["topics"], topics)
        ]

    def _number(self, block: Any, latest: int) -> int:
        found = self._block_id(block)
        if found in ("latest", "pending", "safe", "finalized"):
            return latest
        return 0 if found == "earliest" else int(found)

    # --- executing -----------------------------------------------------------------------------

    def call(self, tx: dict[str, Any], block: Any = None) -> str:
        try:
            output = self.tester.call(_request(tx, "call"), self._block_id(block))
        except Reverted as e:
            raise _reverted(e.data) from None
        return str(output)

    def estimate_gas(self, tx: dict[str, Any], block: Any = None) -> str:
        try:
            return hex(self.tester.estimate_gas(_request(tx, "estimate"), self._block_id(block)))
        except Reverted as e:
            raise _reverted(e.data) from None

    def send_raw_transaction(self, raw: str) -> str:
        # py-evm takes a transaction signed for any chain; anvil, like every node, refuses it.
        tx = self.tester.backend.chain.get_vm().get_transaction_builder().decode(_data(raw))
        chain_id = getattr(tx, "chain_id", None)
        if chain_id is None and getattr(tx, "v", 0) >= 35:  # a legacy EIP-155 signature
            chain_id = (tx.v - 35) // 2
        if chain_id is not None and chain_id != self.chain_id:
            raise RpcFailure(
                SERVER_ERROR, f"invalid chain id for signer: have {chain_id}, want {self.chain_id}"
            )
        return str(self.tester.send_raw_transaction(raw))

    def send_transaction(self, tx: dict[str, Any]) -> str:
        request = _request(tx, "send")
        if request["from"] not in self.tester.get_accounts():
            raise RpcFailure(SERVER_ERROR, f"no unlocked account {request['from']}")
        if "gas" not in request:
            request["gas"] = int(self.estimate_gas(tx), 16)
        if not {"gas_price", "max_fee_per_gas"} & request.keys():
            tip = request.setdefault("max_priority_fee_per_gas", TIP)
            request["max_fee_per_gas"] = 2 * self._next_base_fee() + tip
        return str(self.tester.send_transaction(request))

    # --- dev methods ---------------------------------------------------------------------------

    def revert(self, snapshot: Any) -> bool:
        from eth_tester.exceptions import SnapshotNotFound

        try:
            self.tester.revert_to_snapshot(_quantity(snapshot, "snapshot id"))
        except SnapshotNotFound:
            return False
        return True

    def evm_mine(self, _options: Any = None) -> str:
        self._mine(1)
        return "0x0"

    def anvil_mine(self, blocks: Any = None, _interval: Any = None) -> None:
        self._mine(1 if blocks is None else _quantity(blocks, "block count"))

    def _mine(self, blocks: int) -> None:
        if blocks > 0:
            self.tester.mine_blocks(blocks)


def _data(value: Any) -> bytes:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    raise RpcFailure(INVALID_PARAMS, "invalid params: expected 0x-prefixed hex data")


def _address(value: Any) -> str:
    from eth_utils.address import is_address, to_checksum_address

    if not isinstance(value, str) or not is_address(value):
        raise RpcFailure(INVALID_PARAMS, f"invalid params: not an address: {value!r}")
    return str(to_checksum_address(value))


def _request(tx: Any, kind: str) -> dict[str, Any]:
    """A JSON-RPC transaction object as eth-tester takes it."""
    if not isinstance(tx, dict):
        raise RpcFailure(INVALID_PARAMS, "invalid params: expected a transaction object")
    request: dict[str, Any] = {"from": _address(tx["from"]) if tx.get("from") else ZERO_ADDRESS}
    if tx.get("to"):
        request["to"] = _address(tx["to"])
    data = tx.get("input", tx.get("data"))
    if data:
        request["data"] = data
    for field, name in (
        ("gas", "gas"),
        ("gasPrice", "gas_price"),
        ("maxFeePerGas", "max_fee_per_gas"),
        ("maxPriorityFeePerGas", "max_priority_fee_per_gas"),
        ("value", "value"),
        ("nonce", "nonce"),
    ):
        if tx.get(field) is not None:
            request[name] = _quantity(tx[field], field)
    return request


def _transaction(tx: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = _hex({k: v for k, v in tx.items() if k not in ("data", "to", "access_list")})
    shown["input"] = tx["data"]
    shown["to"] = tx["to"] or None
    if "access_list" in tx:
        shown["accessList"] = [
            {"address": a["address"], "storageKeys": list(a["storage_keys"])} for a in tx["access_list"]
        ]
    return shown


def _topics_match(topics: list[str], wanted: list[Any]) -> bool:
    if len(wanted) > len(topics):
        return False
    for have, want in zip(topics, wanted, strict=False):
        if want is None:
            continue
        options = [want] if isinstance(want, str) else want
        if have.lower() not in {o.lower() for o in options}:
            return False
    return True


def _reverted(data: bytes) -> RpcFailure:
    """anvil's answer to a revert: code 3, the reason in the message when it is `Error(string)`."""
    message = "execution reverted"
    if data[:4] == bytes.fromhex("08c379a0"):
        from eth_abi.abi import decode

        try:
            message += f": {decode(['string'], data[4:])[0]}"
        except Exception:  # an undecodable reason: the data still says all
            pass
    return RpcFailure(REVERTED, message, "0x" + data.hex())
