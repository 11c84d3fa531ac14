"""Depositing into a registry's settlement contract from the user's own wallet, and withdrawing from
it with a voucher the registry signed, over raw JSON-RPC.

The wallet signs locally (eth_account) and the node only relays: one `depositWithPermit` transaction
when the token takes EIP-2612 permits, else `approve` then `deposit`. The RPC URL is the user's (it may
carry an API key), so errors name only its scheme, host and port.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mcpz.contracts import SETTLEMENT, TEST_TOKEN, load_artifact
from mcpz.errors import AuthError, McpzError, NetworkError, UsageError
from mcpz.jsonrpc import JsonRpc, RpcError

if TYPE_CHECKING:
    from mcpz.keys.ethkeys import LocalAccount

RECEIPT_TIMEOUT = 300.0
PERMIT_LIFETIME = 3600  # seconds a permit stays valid: it is used in the very next transaction
GAS_MARGIN = (6, 5)  # estimateGas * 6/5: the state may move a little before the transaction is mined
EIP712_DOMAIN = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"


@dataclass(frozen=True)
class SettlementInfo:
    """What `GET /v1/billing/settlement` tells: where the registry takes deposits."""

    chain_id: int
    contract: str
    token: str
    decimals: int
    confirmations: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SettlementInfo:
        return cls(
            chain_id=int(data["chain_id"]),
            contract=str(data["contract"]),
            token=str(data["token"]),
            decimals=int(data["decimals"]),
            confirmations=int(data["confirmations"]),
        )


@dataclass(frozen=True)
class Deposited:
    tx_hash: str
    block: int
    sender: str
    account: str
    amount: int
    method: str  # "permit" or "approve"


def shown_url(url: str) -> str:
    """The RPC URL without credentials, path or query, which may hold an API key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def _selector(signature: str) -> bytes:
    from eth_utils.crypto import keccak

    return keccak(text=signature)[:4]


def _call_data(signature: str, types: list[str], args: list[Any]) -> str:
    from eth_abi.abi import encode

    return "0x" + (_selector(signature) + encode(types, args)).hex()


def _errors() -> dict[bytes, tuple[str, list[str]]]:
    """Custom errors of the contract and the token by selector, to name a revert."""
    found: dict[bytes, tuple[str, list[str]]] = {}
    for name in (SETTLEMENT, TEST_TOKEN):
        for entry in load_artifact(name).abi:
            if entry.get("type") == "error":
                types = [i["type"] for i in entry["inputs"]]
                found[_selector(f"{entry['name']}({','.join(types)})")] = (entry["name"], types)
    return found


def describe_revert(data: str | None) -> str:
    """`Name(arg, ...)` for a custom error's revert data, the reason of `Error(string)`, else ''."""
    from eth_abi.abi import decode

    if not data or not data.startswith("0x") or len(data) < 10:
        return ""
    raw = bytes.fromhex(data[2:])
    selector, body = raw[:4], raw[4:]
    if selector == _selector("Error(string)"):
        try:
            return str(decode(["string"], body)[0])
        except Exception:
            return ""
    known = _errors().get(selector)
    if known is None:
        return ""
    name, types = known
    try:
        args = decode(types, body)
    except Exception:
        return name
    return f"{name}({', '.join(str(a) for a in args)})"


class Chain:
    """The user's view of one chain: reads, and transactions signed by their key."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        self.where = shown_url(url)
        self.rpc = JsonRpc(url, f"the chain at {self.where}", timeout=timeout)

    def close(self) -> None:
        self.rpc.close()

    def chain_id(self) -> int:
        try:
            return int(self.rpc("eth_chainId"), 16)
        except NetworkError:
            raise NetworkError(
                f"cannot reach the chain at {self.where}",
                hint="check --rpc / MCPZ_CHAIN_RPC / `mcpz config set chain_rpc URL`",
            ) from None

    def call(self, to: str, data: str) -> bytes:
        result = self.rpc("eth_call", {"to": to, "data": data}, "latest")
        return bytes.fromhex(str(result)[2:])

    def try_call(self, to: str, data: str) -> bytes | None:
        """The call's answer, or None when it reverts (a function the contract lacks)."""
        try:
            answer = self.call(to, data)
        except RpcError:
            return None
        return answer or None

    def token_balance(self, token: str, owner: str) -> int:
        from eth_abi.abi import decode

        raw = self.call(token, _call_data("balanceOf(address)", ["address"], [owner]))
        return int(decode(["uint256"], raw)[0])

    def send(
        self,
        key: LocalAccount,
        to: str,
        data: str,
        chain_id: int,
        what: str,
        refused_hint: str = "nothing was sent; check the amount, the account name and the wallet's balance",
    ) -> str:
        """Sign and send one EIP-1559 transaction; its hash. `refused_hint` follows a revert's reason."""
        tx: dict[str, Any] = {"from": key.address, "to": to, "data": data}
        try:
            gas = int(self.rpc("eth_estimateGas", tx), 16)
        except RpcError as e:
            reason = describe_revert(e.data)
            raise McpzError(
                f"the {what} would revert: {reason or e.message}",
                hint=refused_hint,
            ) from None
        nonce = int(self.rpc("eth_getTransactionCount", key.address, "pending"), 16)
        history = self.rpc("eth_feeHistory", "0x1", "latest", [])
        base = int(history["baseFeePerGas"][-1], 16)  # the next block's base fee
        tip = int(self.rpc("eth_maxPriorityFeePerGas"), 16)
        unsigned: Any = (  # eth_account's TypedDict wants HexStr where a plain str does
            {
                "type": 2,
                "chainId": chain_id,
                "nonce": nonce,
                "to": to,
                "value": 0,
                "data": data,
                "gas": gas * GAS_MARGIN[0] // GAS_MARGIN[1],
                # Twice the base fee: room for it to rise for several full blocks before this is mined.
                "maxFeePerGas": 2 * base + tip,
                "maxPriorityFeePerGas": tip,
            }
        )
        signed = key.sign_transaction(unsigned)
        return str(self.rpc("eth_sendRawTransaction", "0x" + signed.raw_transaction.hex().removeprefix("0x")))

    def wait(self, tx_hash: str, what: str, timeout: float = RECEIPT_TIMEOUT) -> dict[str, Any]:
        """The mined receipt of `tx_hash`; a revert is an error naming the contract's error if it can."""
        deadline = time.monotonic() + timeout
        pause = 0.05
        while True:
            receipt = self.rpc("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                break
            if time.monotonic() > deadline:
                raise NetworkError(
                    f"the {what} {tx_hash} was not mined within {timeout:g} s",
                    hint="it may still be mined: look it up on the chain before sending again",
                )
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
        if int(receipt["status"], 16) != 1:
            raise McpzError(f"the {what} {tx_hash} reverted{self._why(receipt)}")
        return receipt  # type: ignore[no-any-return]

    def _why(self, receipt: dict[str, Any]) -> str:
        """Replays the reverted transaction at its block to learn the reason; '' if it cannot."""
        tx = self.rpc("eth_getTransactionByHash", receipt["transactionHash"])
        if not tx:
            return ""
        try:
            self.rpc(
                "eth_call", {"from": tx["from"], "to": tx["to"], "data": tx["input"]}, receipt["blockNumber"]
            )
        except RpcError as e:
            reason = describe_revert(e.data)
            return f": {reason}" if reason else ""
        return ""

    def permit_domain(self, token: str, chain_id: int) -> bytes | None:
        """The token's EIP-712 domain separator if it takes EIP-2612 permits (and says so through
        EIP-5267, so that the name and version signed are the ones it checks), else None."""
        from eth_abi.abi import decode, encode
        from eth_utils.crypto import keccak

        said = self.try_call(token, "0x" + _selector("DOMAIN_SEPARATOR()").hex())
        domain = self.try_call(token, "0x" + _selector("eip712Domain()").hex())
        if said is None or domain is None:
            return None
        try:
            _, name, version, _, _, _, _ = decode(
                ["bytes1", "string", "string", "uint256", "address", "bytes32", "uint256[]"], domain
            )
        except Exception:
            return None
        mine = keccak(
            encode(
                ["bytes32", "bytes32", "bytes32", "uint256", "address"],
                [
                    keccak(text=EIP712_DOMAIN),
                    keccak(text=name),
                    keccak(text=version),
                    chain_id,
                    token,
                ],
            )
        )
        return mine if mine == said[:32] else None

    def permit_nonce(self, token: str, owner: str) -> int:
        from eth_abi.abi import decode

        raw = self.call(token, _call_data("nonces(address)", ["address"], [owner]))
        return int(decode(["uint256"], raw)[0])


def _sign_permit(
    key: LocalAccount, domain: bytes, spender: str, amount: int, nonce: int, deadline: int
) -> tuple[int, bytes, bytes]:
    from eth_abi.abi import encode
    from eth_utils.crypto import keccak

    permit_type = keccak(
        text="Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"
    )
    struct = keccak(
        encode(
            ["bytes32", "address", "address", "uint256", "uint256", "uint256"],
            [permit_type, key.address, spender, amount, nonce, deadline],
        )
    )
    digest: Any = keccak(b"\x19\x01" + domain + struct)  # a Hash32
    signed = key.unsafe_sign_hash(digest)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def deposit(
    rpc_url: str,
    info: SettlementInfo,
    key: LocalAccount,
    account: str,
    amount: int,
    *,
    on_sent: Callable[[str], None] | None = None,
    receipt_timeout: float = RECEIPT_TIMEOUT,
    permit: bool = True,
) -> Deposited:
    """Move `amount` tokens (base units) from `key`'s wallet into the settlement contract for
    `account`; returns once the deposit transaction is mined. `on_sent` hears each hash as it is sent.
    `permit=False` approves then deposits even when the token takes permits."""
    from eth_utils.address import to_checksum_address

    if amount <= 0:
        raise UsageError("the amount to deposit must be more than 0")
    chain = Chain(rpc_url)
    try:
        found = chain.chain_id()
        if found != info.chain_id:
            raise UsageError(
                f"the chain at {chain.where} is chain {found}, "
                f"but the registry settles on chain {info.chain_id}",
                hint="pass the RPC URL of the registry's chain with --rpc",
            )
        token, contract = to_checksum_address(info.token), to_checksum_address(info.contract)
        held = chain.token_balance(token, key.address)
        if held < amount:
            from mcpz.money import format_amount

            raise UsageError(
                f"the wallet {key.address} holds {format_amount(held, decimals=info.decimals)} of the "
                f"token, less than the {format_amount(amount, decimals=info.decimals)} to deposit",
                hint=f"send tokens ({token}) to {key.address} first",
            )

        def sent(tx_hash: str) -> str:
            if on_sent is not None:
                on_sent(tx_hash)
            return tx_hash

        domain = chain.permit_domain(token, info.chain_id) if permit else None
        if domain is not None:
            method = "permit"
            deadline = int(time.time()) + PERMIT_LIFETIME
            nonce = chain.permit_nonce(token, key.address)
            v, r, s = _sign_permit(key, domain, contract, amount, nonce, deadline)
            data = _call_data(
                "depositWithPermit(string,uint256,uint256,uint8,bytes32,bytes32)",
                ["string", "uint256", "uint256", "uint8", "bytes32", "bytes32"],
                [account, amount, deadline, v, r, s],
            )
        else:
            method = "approve"
            approve = _call_data("approve(address,uint256)", ["address", "uint256"], [contract, amount])
            chain.wait(
                sent(chain.send(key, token, approve, info.chain_id, "approval")), "approval", receipt_timeout
            )
            data = _call_data("deposit(string,uint256)", ["string", "uint256"], [account, amount])
        tx_hash = sent(chain.send(key, contract, data, info.chain_id, "deposit"))
        receipt = chain.wait(tx_hash, "deposit", receipt_timeout)
        return Deposited(
            tx_hash=tx_hash,
            block=int(receipt["blockNumber"], 16),
            sender=key.address,
            account=account,
            amount=amount,
            method=method,
        )
    finally:
        chain.close()


# --- payouts: claim, and check against the chain -------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """A payout leaf as the creator holds it: which batch, where in it, to whom, how much, the proof."""

    batch_id: int
    index: int
    address: str
    amount: int
    proof: tuple[str, ...]


class PayoutMismatch(AuthError):
    """A payout the registry describes is not what the chain holds: not committed, or its proof does
    not lead to the committed root."""


@dataclass(frozen=True)
class PayoutCheck:
    """What the chain says of one leaf, read from the contract alone."""

    batch_id: int
    root: str  # the root the contract holds for the batch (zeros when it holds none)
    committed: bool
    proof_ok: bool  # the proof leads from the leaf to that root (checked here, and by the contract)
    claimed: bool

    @property
    def ok(self) -> bool:
        return self.committed and self.proof_ok


def _proof_bytes(proof: tuple[str, ...]) -> list[bytes]:
    from mcpz.merkle import from_hex

    try:
        return [from_hex(p) for p in proof]
    except ValueError as e:
        raise UsageError(f"a payout proof is malformed: {e}") from None


def verify_payout(rpc_url: str, contract: str, leaf: Leaf) -> PayoutCheck:
    """Check `leaf` against the root the contract committed for its batch, reading only the chain:
    the proof is hashed here (mcpz.merkle) and asked of the contract's `verifyLeaf` too."""
    from eth_abi.abi import decode
    from eth_utils.address import to_checksum_address

    from mcpz import merkle

    chain = Chain(rpc_url)
    try:
        contract = to_checksum_address(contract)
        raw = chain.call(contract, _call_data("batches(uint256)", ["uint256"], [leaf.batch_id]))
        root_bytes, _total, _claimed = decode(["bytes32", "uint256", "uint256"], raw)
        committed = any(root_bytes)
        proof = _proof_bytes(leaf.proof)
        mine = merkle.verify(root_bytes, merkle.Leaf(leaf.index, leaf.address, leaf.amount), proof)
        theirs = decode(
            ["bool"],
            chain.call(
                contract,
                _call_data(
                    "verifyLeaf(uint256,uint256,address,uint256,bytes32[])",
                    ["uint256", "uint256", "address", "uint256", "bytes32[]"],
                    [leaf.batch_id, leaf.index, to_checksum_address(leaf.address), leaf.amount, proof],
                ),
            ),
        )[0]
        claimed = _paid(chain, contract, leaf.batch_id, leaf.index)
    finally:
        chain.close()
    return PayoutCheck(
        batch_id=leaf.batch_id,
        root="0x" + bytes(root_bytes).hex(),
        committed=committed,
        proof_ok=bool(mine) and bool(theirs),
        claimed=bool(claimed),
    )


def _paid(chain: Chain, contract: str, batch_id: int, index: int) -> bool:
    from eth_abi.abi import decode

    data = _call_data("isClaimed(uint256,uint256)", ["uint256", "uint256"], [batch_id, index])
    return bool(decode(["bool"], chain.call(contract, data))[0])


def is_claimed(rpc_url: str, contract: str, leaves: list[Leaf]) -> list[bool]:
    """Whether each leaf is paid already, as the contract says."""
    from eth_utils.address import to_checksum_address

    chain = Chain(rpc_url)
    try:
        address = to_checksum_address(contract)
        return [_paid(chain, address, x.batch_id, x.index) for x in leaves]
    finally:
        chain.close()


def claim(
    rpc_url: str,
    chain_id: int,
    contract: str,
    key: LocalAccount,
    leaves: list[Leaf],
    *,
    on_sent: Callable[[str], None] | None = None,
    receipt_timeout: float = RECEIPT_TIMEOUT,
) -> tuple[str, int]:
    """Claim `leaves` (paid to their own addresses) in one transaction signed by `key`: `claim` for
    one, `claimMany` for several. Returns (transaction hash, block)."""
    from eth_utils.address import to_checksum_address

    if not leaves:
        raise UsageError("nothing to claim")
    chain = Chain(rpc_url)
    try:
        found = chain.chain_id()
        if found != chain_id:
            raise UsageError(
                f"the chain at {chain.where} is chain {found}, but the registry settles on chain {chain_id}",
                hint="pass the RPC URL of the registry's chain with --rpc",
            )
        address = to_checksum_address(contract)
        if len(leaves) == 1:
            x = leaves[0]
            data = _call_data(
                "claim(uint256,uint256,address,uint256,bytes32[])",
                ["uint256", "uint256", "address", "uint256", "bytes32[]"],
                [x.batch_id, x.index, to_checksum_address(x.address), x.amount, _proof_bytes(x.proof)],
            )
        else:
            # Sorted by address: the contract pays consecutive claims of one account with one transfer.
            ordered = sorted(leaves, key=lambda x: (x.address.lower(), x.batch_id))
            data = _call_data(
                "claimMany((uint256,uint256,address,uint256,bytes32[])[])",
                ["(uint256,uint256,address,uint256,bytes32[])[]"],
                [[(x.batch_id, x.index, to_checksum_address(x.address), x.amount, _proof_bytes(x.proof))
                  for x in ordered]],
            )  # fmt: skip
        tx_hash = chain.send(key, address, data, chain_id, "claim")
        if on_sent is not None:
            on_sent(tx_hash)
        receipt = chain.wait(tx_hash, "claim", receipt_timeout)
        return tx_hash, int(receipt["blockNumber"], 16)
    finally:
        chain.close()


# -- withdrawals: a voucher the registry's operator signed, sent from the wallet it pays


@dataclass(frozen=True)
class Voucher:
    """An EIP-712 Withdrawal signed by the registry's operator: usable once, by `account` alone, in
    blocks whose timestamp is at most `expiry`."""

    chain_id: int
    contract: str
    account: str
    amount: int
    nonce: int
    expiry: int
    signature: str


@dataclass(frozen=True)
class Withdrew:
    tx_hash: str
    block: int
    account: str
    amount: int
    nonce: int


def check_chain(rpc_url: str, chain_id: int) -> None:
    """The node at `rpc_url` answers and is chain `chain_id` (checked before the registry is asked for
    anything that holds money)."""
    chain = Chain(rpc_url)
    try:
        found = chain.chain_id()
    finally:
        chain.close()
    if found != chain_id:
        raise UsageError(
            f"the chain at {chain.where} is chain {found}, but the registry settles on chain {chain_id}",
            hint="pass the RPC URL of the registry's chain with --rpc",
        )


def withdraw(
    rpc_url: str,
    voucher: Voucher,
    key: LocalAccount,
    *,
    on_sent: Callable[[str], None] | None = None,
    receipt_timeout: float = RECEIPT_TIMEOUT,
) -> Withdrew:
    """Send `withdraw(amount, nonce, expiry, signature)` from `key`'s wallet and wait for its receipt.
    A withdrawal the contract would refuse is not sent; its error is named (VoucherExpired, NonceUsed...)."""
    from eth_utils.address import to_checksum_address

    if key.address.lower() != voucher.account.lower():
        raise UsageError(
            f"the voucher pays {to_checksum_address(voucher.account)}, not this wallet ({key.address})",
            hint="use the wallet you sign in to the registry with",
        )
    check_chain(rpc_url, voucher.chain_id)
    chain = Chain(rpc_url)
    try:
        data = _call_data(
            "withdraw(uint256,uint256,uint256,bytes)",
            ["uint256", "uint256", "uint256", "bytes"],
            [
                voucher.amount,
                voucher.nonce,
                voucher.expiry,
                bytes.fromhex(voucher.signature.removeprefix("0x")),
            ],
        )
        tx_hash = chain.send(
            key,
            to_checksum_address(voucher.contract),
            data,
            voucher.chain_id,
            "withdrawal",
            refused_hint="nothing was sent; `mcpz billing withdrawals` shows the voucher's state (an unused "
            "one's amount comes back to your balance after its expiry)",
        )
        if on_sent is not None:
            on_sent(tx_hash)
        receipt = chain.wait(tx_hash, "withdrawal", receipt_timeout)
        return Withdrew(
            tx_hash=tx_hash,
            block=int(receipt["blockNumber"], 16),
            account=key.address,
            amount=voucher.amount,
            nonce=voucher.nonce,
        )
    finally:
        chain.close()
