"""The settlement chain, through web3: the one module of settlement that imports it.

`SettlementChain` reads what the deposit watcher needs (the head, block hashes, `Deposited` logs, the
token) from the McpzSettlement contract over JSON-RPC, and what the payout job needs: receipts, the
pool, nonces, fees, the `finalized` block, a batch as the contract holds it; it signs and broadcasts
commitBatch transactions with the operator's key (signed here: the node never sees the key).
Every web3, provider or connection failure
leaves as `mcpz.errors.NetworkError` (the node could not be reached or answered nonsense) or
`UsageError` (the settings name no such contract or the wrong chain), with a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from eth_typing import HexStr

from mcpz.contracts import SETTLEMENT, TEST_TOKEN, load_artifact
from mcpz.errors import McpzError, NetworkError, UsageError
from mcpz.keys.ethkeys import LocalAccount
from registry_server.settings import RegistrySettings
from registry_server.settlement.batches import Receipt

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
class CommitLog:
    """One `BatchCommitted(batchId, root, total)` event."""

    batch_id: int
    root: str
    total: int
    receipt: Receipt


@dataclass(frozen=True)
class OnChainBatch:
    root: str  # 0x and 64 hex digits; all zeros while the batch id is unused
    total: int
    claimed: int

    @property
    def committed(self) -> bool:
        return int(self.root, 16) != 0


@dataclass(frozen=True)
class Signed:
    tx_hash: str
    raw: str  # 0x-prefixed hex of the signed transaction


class CommitRefused(UsageError):
    """The contract would revert commitBatch (e.g. InsufficientUnallocated): nothing was signed."""


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
                hint="reinstall mcpz (web3 is one of its dependencies), or unset settlement_rpc",
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
        # Its ERC-20 part, and for x402 its EIP-3009 and EIP-5267 parts, which USDC has alike.
        self._token_abi = load_artifact(TEST_TOKEN).abi

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
        except McpzError:  # already a one-line error of ours (CommitRefused)
            raise
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

    # --- the payout job's reads and writes ---------------------------------------------------

    def receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt of a mined transaction; None while it is pending or unknown."""
        from web3.exceptions import TransactionNotFound

        def read() -> Receipt | None:
            try:
                got = self._w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                return None
            if got is None or got.get("blockNumber") is None:
                return None
            return Receipt(
                tx_hash=_hex(got["transactionHash"]),
                block_number=int(got["blockNumber"]),
                block_hash=_hex(got["blockHash"]),
                status=int(got["status"]),
            )

        return self._call(f"the receipt of {tx_hash}", read)

    def in_pool(self, tx_hash: str) -> bool:
        """The node knows the transaction (pending or mined)."""
        from web3.exceptions import TransactionNotFound

        def read() -> bool:
            try:
                return self._w3.eth.get_transaction(tx_hash) is not None  # type: ignore[arg-type]
            except TransactionNotFound:
                return False

        return self._call(f"transaction {tx_hash}", read)

    def nonces(self, address: str) -> tuple[int, int]:
        """(next nonce counting mined transactions, counting the pool too)."""
        return self._call(
            f"the nonce of {address}",
            lambda: (
                int(self._w3.eth.get_transaction_count(address, "latest")),  # type: ignore[arg-type]
                int(self._w3.eth.get_transaction_count(address, "pending")),  # type: ignore[arg-type]
            ),
        )

    def fees(self) -> tuple[int, int]:
        """(max fee, priority fee) per gas to offer now: twice the latest base fee plus the tip, as
        wallets do, so that a few blocks of rising base fees do not strand the transaction."""

        def read() -> tuple[int, int]:
            block = self._w3.eth.get_block("latest")
            base = int(block.get("baseFeePerGas", 0) or 0)
            try:
                tip = int(self._w3.eth.max_priority_fee)
            except Exception:  # nodes without eth_maxPriorityFeePerGas
                tip = 10**9
            return 2 * base + tip, tip

        return self._call("fees", read)

    def finalized(self) -> int | None:
        """The number of the `finalized` block; None where the node has none yet."""
        from web3.exceptions import BlockNotFound

        def read() -> int | None:
            try:
                return int(self._w3.eth.get_block("finalized")["number"])
            except BlockNotFound:
                return None

        return self._call("the finalized block", read)

    def unallocated(self) -> int:
        return self._call("unallocated()", lambda: int(self._contract.functions.unallocated().call()))

    def batch(self, batch_id: int) -> OnChainBatch:
        def read() -> OnChainBatch:
            root, total, claimed = self._contract.functions.batches(batch_id).call()
            return OnChainBatch(root=_hex(root).ljust(66, "0"), total=int(total), claimed=int(claimed))

        return self._call(f"batches({batch_id})", read)

    def commits(self, from_block: int, to_block: int, batch_id: int | None = None) -> list[CommitLog]:
        """`BatchCommitted` events in blocks from_block..to_block, only `batch_id`'s when given."""

        def read() -> list[CommitLog]:
            event = self._contract.events.BatchCommitted()
            filters = {"batchId": batch_id} if batch_id is not None else None
            logs = event.get_logs(from_block=from_block, to_block=to_block, argument_filters=filters)
            return [
                CommitLog(
                    batch_id=int(log["args"]["batchId"]),
                    root=_hex(log["args"]["root"]),
                    total=int(log["args"]["total"]),
                    receipt=Receipt(
                        tx_hash=_hex(log["transactionHash"]),
                        block_number=int(log["blockNumber"]),
                        block_hash=_hex(log["blockHash"]),
                        status=1,
                    ),
                )
                for log in logs
            ]

        return self._call(f"BatchCommitted logs {from_block}..{to_block}", read)

    def event_totals(self, event: str, field: str, from_block: int, to_block: int) -> int:
        """The sum of `field` over the contract's `event` logs in from_block..to_block (reconciliation)."""

        def read() -> int:
            logs = getattr(self._contract.events, event)().get_logs(from_block=from_block, to_block=to_block)
            return sum(int(log["args"][field]) for log in logs)

        return self._call(f"{event} logs {from_block}..{to_block}", read)

    def token_balance(self) -> int:
        def read() -> int:
            address = self._contract.functions.token().call()
            token = self._w3.eth.contract(address=address, abi=self._token_abi)
            return int(token.functions.balanceOf(self.address).call())

        return self._call("the contract's token balance", read)

    def sign_commit(
        self,
        operator: LocalAccount,
        batch_id: int,
        root: str,
        total: int,
        *,
        nonce: int,
        max_fee: int,
        priority_fee: int,
    ) -> Signed:
        """A signed commitBatch transaction; gas estimated first, so a commit the contract would
        refuse is never signed (`CommitRefused`, naming the contract's error)."""
        from web3.exceptions import ContractCustomError, ContractLogicError

        call = self._contract.functions.commitBatch(batch_id, bytes.fromhex(root.removeprefix("0x")), total)

        def refused(e: Exception) -> McpzError | None:
            if not isinstance(e, ContractCustomError | ContractLogicError):
                return None
            return CommitRefused(
                f"the contract refuses commitBatch({batch_id}): {self._revert_name(e)}",
                hint="see `mcpz registry payouts list`; docs/settlement.md says what each error means",
            )

        return self._sign(call, operator, f"commitBatch({batch_id})", nonce, max_fee, priority_fee, refused)

    def _sign(
        self,
        call: Any,
        operator: LocalAccount,
        what: str,
        nonce: int,
        max_fee: int,
        priority_fee: int,
        refused: Callable[[Exception], McpzError | None] = lambda e: None,
    ) -> Signed:
        """`call` signed by `operator` at `nonce` with these fees, gas estimated first; an estimate
        that fails becomes `refused(e)` when that names the reason, else a chain error."""
        params: dict[str, Any] = {
            "from": operator.address,
            "nonce": nonce,
            "chainId": self.chain_id,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": priority_fee,
        }

        def build() -> dict[str, Any]:
            try:
                gas = int(call.estimate_gas({"from": operator.address}))
            except Exception as e:
                reason = refused(e)
                if reason is None:
                    raise
                raise reason from None
            # A margin over the estimate: the contract's state may change between estimate and mining.
            return dict(call.build_transaction({**params, "gas": gas + gas // 5}))

        tx = self._call(what, build)
        signed = operator.sign_transaction(tx)  # type: ignore[arg-type]
        return Signed(tx_hash=_hex(signed.hash), raw=_hex(signed.raw_transaction))

    def broadcast(self, raw: str) -> None:
        """Send a signed transaction. A node that already has it, or has mined it, is not an error: the
        receipts decide what happened."""

        def send() -> None:
            try:
                self._w3.eth.send_raw_transaction(HexStr(raw))
            except Exception as e:  # ValueError, or web3 7's Web3RPCError, which is not one
                text = str(e).lower()
                if "already known" in text or "nonce too low" in text or "already imported" in text:
                    return
                raise

        self._call("eth_sendRawTransaction", send)

    def _revert_name(self, e: Exception) -> str:
        data = getattr(e, "data", None)
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            from web3 import Web3

            errors: list[dict[str, Any]] = [dict(e) for e in self._contract.abi if e.get("type") == "error"]
            for entry in errors:
                signature = f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})"
                if Web3.keccak(text=signature)[:4].hex() == data[2:10]:
                    return str(entry["name"])
        return _first_line(e)

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

    # --- x402: EIP-3009 payments the registry settles as its own facilitator (settlement/x402.py) ---

    def token_domain(self) -> tuple[str, str, str]:
        """(name, version, address) of the token's EIP-712 domain, through EIP-5267's eip712Domain(),
        else `name()` and `version()` (USDC's FiatToken v2 has those and not EIP-5267)."""
        from web3.exceptions import BadFunctionCallOutput, ContractLogicError

        def read() -> tuple[str, str, str]:
            address = self._contract.functions.token().call()
            token = self._w3.eth.contract(address=address, abi=self._token_abi)
            try:
                _, name, version, _, _, _, _ = token.functions.eip712Domain().call()
            except (BadFunctionCallOutput, ContractLogicError):
                fiat = self._w3.eth.contract(address=address, abi=_NAME_VERSION_ABI)
                name, version = fiat.functions.name().call(), fiat.functions.version().call()
            return str(name), str(version), str(address)

        return self._call("the token's eip712Domain()", read)

    def x402_transfers(self, from_block: int, to_block: int) -> int:
        """The sum of the token's transfers to the contract in blocks from_block..to_block that an
        EIP-3009 authorization made (their transaction holds the token's `AuthorizationUsed` by the
        sender): what x402 settlements brought in (reconciliation). Transfers to the contract are few
        (deposits, x402, strays), so each one's transaction is read, not every authorization's."""

        def read() -> int:
            address = self._contract.functions.token().call()
            token = self._w3.eth.contract(address=address, abi=self._token_abi)
            transfers = token.events.Transfer().get_logs(
                from_block=from_block, to_block=to_block, argument_filters={"to": self.address}
            )
            used = token.events.AuthorizationUsed()
            total = 0
            seen: dict[str, set[str]] = {}
            for log in transfers:
                tx = _hex(log["transactionHash"])
                if tx not in seen:
                    receipt = self._w3.eth.get_transaction_receipt(log["transactionHash"])
                    seen[tx] = {
                        str(e["args"]["authorizer"]).lower()
                        for e in used.process_receipt(receipt, errors=_discard())
                        if str(e["address"]).lower() == str(address).lower()
                    }
                if str(log["args"]["from"]).lower() in seen[tx]:
                    total += int(log["args"]["value"])
            return total

        return self._call(f"x402 transfers {from_block}..{to_block}", read)

    def balance_of(self, token: str, owner: str) -> int:
        contract = self._w3.eth.contract(address=token, abi=self._token_abi)  # type: ignore[call-overload]
        return self._call(f"balanceOf({owner})", lambda: int(contract.functions.balanceOf(owner).call()))

    def authorization_used(self, token: str, authorizer: str, nonce: str) -> bool:
        contract = self._w3.eth.contract(address=token, abi=self._token_abi)  # type: ignore[call-overload]
        raw = bytes.fromhex(nonce.removeprefix("0x"))
        return self._call(
            "authorizationState()",
            lambda: bool(contract.functions.authorizationState(authorizer, raw).call()),
        )

    def _transfer_call(
        self, token: str, fields: tuple[str, str, int, int, int, str], v: int, r: bytes, s: bytes
    ) -> Any:
        sender, to, value, after, before, nonce = fields
        contract = self._w3.eth.contract(address=token, abi=self._token_abi)  # type: ignore[call-overload]
        return contract.functions.transferWithAuthorization(
            sender, to, value, after, before, bytes.fromhex(nonce.removeprefix("0x")), v, r, s
        )

    def simulate_transfer(
        self, token: str, sender: str, fields: tuple[str, str, int, int, int, str], v: int, r: bytes, s: bytes
    ) -> str | None:
        """None when transferWithAuthorization would succeed now from `sender`; else the token's
        error name (or the node's first line)."""
        from web3.exceptions import ContractCustomError, ContractLogicError

        call = self._transfer_call(token, fields, v, r, s)

        def read() -> str | None:
            try:
                call.call({"from": sender})
            except (ContractCustomError, ContractLogicError) as e:
                return self._token_revert_name(e)
            return None

        return self._call("a simulated transferWithAuthorization", read)

    def sign_transfer(
        self,
        operator: LocalAccount,
        token: str,
        fields: tuple[str, str, int, int, int, str],
        v: int,
        r: bytes,
        s: bytes,
        *,
        nonce: int,
        max_fee: int,
        priority_fee: int,
    ) -> Signed:
        """A signed transferWithAuthorization sent by the operator (who pays its gas)."""
        call = self._transfer_call(token, fields, v, r, s)
        return self._sign(call, operator, "transferWithAuthorization", nonce, max_fee, priority_fee)

    def gas_used(self, tx_hash: str) -> int:
        return self._call(
            f"the receipt of {tx_hash}",
            lambda: int(self._w3.eth.get_transaction_receipt(tx_hash)["gasUsed"]),  # type: ignore[arg-type]
        )

    def _token_revert_name(self, e: Exception) -> str:
        data = getattr(e, "data", None)
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            from web3 import Web3

            for entry in self._token_abi:
                if entry.get("type") != "error":
                    continue
                signature = f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})"
                if Web3.keccak(text=signature)[:4].hex() == data[2:10]:
                    return str(entry["name"])
        return _first_line(e)


_NAME_VERSION_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": n,
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "string"}],
    }
    for n in ("name", "version")
]


def _discard() -> Any:
    from web3.logs import DISCARD

    return DISCARD


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


def chain_of(settings: RegistrySettings) -> SettlementChain:
    """The settlement chain the settings name; a UsageError when settlement is off."""
    if not settings.settlement_on:
        raise UsageError(
            "settlement is not configured on this registry",
            hint="set MCPZ_REGISTRY_SETTLEMENT_RPC, _CHAIN_ID and _CONTRACT (docs/settlement.md)",
        )
    return SettlementChain(
        settings.settlement_rpc, settings.settlement_contract, settings.settlement_chain_id
    )


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
