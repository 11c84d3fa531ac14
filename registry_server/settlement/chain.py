"""The settlement chain, through web3: the one module of settlement that imports it.

`SettlementChain` reads what the deposit watcher needs (the head, block hashes, `Deposited` logs, the
token) from the McpzSettlement contract over JSON-RPC. Every web3, provider or connection failure
leaves as `mcpz.errors.NetworkError` (the node could not be reached or answered nonsense) or
`UsageError` (the settings name no such contract or the wrong chain), with a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mcpz.contracts import SETTLEMENT, TEST_TOKEN, load_artifact
from mcpz.errors import NetworkError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class DepositLog:
    """One `Deposited(from, account, amount)` event, located exactly on the chain."""

    tx_hash: str  # 0x-prefixed, lower-case hex
    log_index: int
    block_number: int
    block_hash: str
    sender: str
    account: str
    amount: int


@dataclass(frozen=True)
class TokenInfo:
    address: str
    decimals: int


class SettlementChain:
    def __init__(self, rpc_url: str, contract: str, chain_id: int, timeout: float = 10.0) -> None:
        try:
            import mcpz.keys.ethkeys  # noqa: F401, I001  (before web3: it keeps py_ecc's recursion limit out)
            from web3 import Web3
        except ImportError:
            raise UsageError(
                "settlement needs web3, which is not installed",
                hint="pip install 'mcpz[chain]', or unset settlement_rpc",
            ) from None
        self.rpc_url = rpc_url
        # Hosted nodes put their API key in the URL's path or query: errors and logs show only this.
        self.endpoint = _endpoint(rpc_url)
        self.chain_id = chain_id
        self._w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        if not Web3.is_address(contract):
            raise UsageError(
                f"settlement_contract {contract!r} is not an address",
                hint="set MCPZ_REGISTRY_SETTLEMENT_CONTRACT to the McpzSettlement address (0x, 40 hex)",
            )
        self.address: str = Web3.to_checksum_address(contract)
        self._contract = self._w3.eth.contract(address=self.address, abi=load_artifact(SETTLEMENT).abi)
        self._token_abi = load_artifact(TEST_TOKEN).abi  # only its ERC-20 part is used

    def __repr__(self) -> str:
        return f"SettlementChain(rpc={self.endpoint!r}, contract={self.address!r})"

    def _scrub(self, text: str) -> str:
        """`text` without the URL's path, query or user (requests quotes them in its errors)."""
        parts = urlsplit(self.rpc_url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for secret in (self.rpc_url, path if path not in ("", "/") else "", parts.username or ""):
            if secret:
                text = text.replace(secret, "...")
        return text

    def _call(self, what: str, read: Callable[[], T]) -> T:
        from web3.exceptions import BadFunctionCallOutput, ContractLogicError

        try:
            return read()
        except (BadFunctionCallOutput, ContractLogicError) as e:
            raise UsageError(
                f"the settlement contract at {self.address} could not answer {what}: {_first_line(e)}",
                hint="check settlement_contract and settlement_rpc name the deployed McpzSettlement",
            ) from None
        except Exception as e:  # requests' errors, web3's, a node answering garbage
            raise NetworkError(
                f"the settlement chain at {self.endpoint} failed on {what}: {self._scrub(_first_line(e))}",
                hint="check that the node is up and settlement_rpc points at it",
            ) from None

    def check(self) -> None:
        """The node answers and is the configured chain."""
        got = self._call("eth_chainId", lambda: int(self._w3.eth.chain_id))
        if got != self.chain_id:
            raise UsageError(
                f"settlement_rpc {self.endpoint} is chain {got}, not settlement_chain_id {self.chain_id}",
                hint="point settlement_rpc at the right node or fix settlement_chain_id",
            )

    def head(self) -> int:
        return self._call("eth_blockNumber", lambda: int(self._w3.eth.block_number))

    def block_hash(self, number: int) -> str | None:
        """The hash of block `number` on the chain as it is now; None past the head."""
        from web3.exceptions import BlockNotFound

        def read() -> str | None:
            try:
                block = self._w3.eth.get_block(number)
            except BlockNotFound:
                return None
            return _hex(block["hash"])

        return self._call(f"block {number}", read)

    def deposits(self, from_block: int, to_block: int) -> list[DepositLog]:
        """`Deposited` events in blocks from_block..to_block (both included), in chain order."""

        def read() -> list[DepositLog]:
            logs = self._contract.events.Deposited().get_logs(from_block=from_block, to_block=to_block)
            return [_deposit(log) for log in logs]

        found = self._call(f"Deposited logs {from_block}..{to_block}", read)
        return sorted(found, key=lambda d: (d.block_number, d.log_index))

    def token(self) -> TokenInfo:
        def read() -> TokenInfo:
            address = self._contract.functions.token().call()
            token = self._w3.eth.contract(address=address, abi=self._token_abi)
            return TokenInfo(address=str(address), decimals=int(token.functions.decimals().call()))

        return self._call("token()", read)

    # -- withdrawal vouchers (settlement/withdrawals.py)

    def withdrawals(self, from_block: int, to_block: int) -> list[WithdrawnLog]:
        """`Withdrawn` events in blocks from_block..to_block (both included), in chain order."""

        def read() -> list[WithdrawnLog]:
            logs = self._contract.events.Withdrawn().get_logs(from_block=from_block, to_block=to_block)
            return [_withdrawn(log) for log in logs]

        found = self._call(f"Withdrawn logs {from_block}..{to_block}", read)
        return sorted(found, key=lambda w: (w.block_number, w.log_index))

    def nonce_used(self, account: str, nonce: int, block: int) -> bool:
        """Whether `account` has used voucher nonce `nonce`, as of block `block`."""
        from web3 import Web3

        who = Web3.to_checksum_address(account)
        return self._call(
            f"nonceUsed at block {block}",
            lambda: bool(self._contract.functions.nonceUsed(who, nonce).call(block_identifier=block)),
        )

    def block_timestamp(self, number: int) -> int | None:
        """The timestamp (unix seconds) of block `number`; None past the head."""
        from web3.exceptions import BlockNotFound

        def read() -> int | None:
            try:
                return int(self._w3.eth.get_block(number)["timestamp"])
            except BlockNotFound:
                return None

        return self._call(f"block {number}", read)


def _hex(value: Any) -> str:
    text = value.hex() if isinstance(value, bytes | bytearray) else str(value)
    text = text.lower()
    return text if text.startswith("0x") else "0x" + text


def _deposit(log: Any) -> DepositLog:
    args = log["args"]
    return DepositLog(
        tx_hash=_hex(log["transactionHash"]),
        log_index=int(log["logIndex"]),
        block_number=int(log["blockNumber"]),
        block_hash=_hex(log["blockHash"]),
        sender=str(args["from"]),
        account=str(args["account"]),
        amount=int(args["amount"]),
    )


def _endpoint(url: str) -> str:
    """`scheme://host[:port]` of `url`, without user, path or query."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


@dataclass(frozen=True)
class WithdrawnLog:
    """One `Withdrawn(account, amount, nonce)` event: a withdrawal voucher used on chain."""

    tx_hash: str
    log_index: int
    block_number: int
    account: str  # checksummed: the voucher's account, who sent the transaction
    amount: int
    nonce: int


def _withdrawn(log: Any) -> WithdrawnLog:
    args = log["args"]
    return WithdrawnLog(
        tx_hash=_hex(log["transactionHash"]),
        log_index=int(log["logIndex"]),
        block_number=int(log["blockNumber"]),
        account=str(args["account"]),
        amount=int(args["amount"]),
        nonce=int(args["nonce"]),
    )
