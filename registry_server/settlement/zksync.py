"""How final a settlement transaction is: zkSync's L1 batch stages, or the `finalized` block elsewhere.

On zkSync a transaction is final once the L1 batch holding it is executed on L1 (committed, then proven,
then executed). Three JSON-RPC calls tell where it stands:

- `zks_getTransactionDetails(hash)`: null for a transaction the node does not know; `status` is
  `pending` (not in a block yet), `included`, `verified` or `failed`;
- `eth_getTransactionReceipt(hash)`: zkSync adds `l1BatchNumber`, null until the batch is sealed;
- `zks_getL1BatchDetails(number)`: `commitTxHash`/`committedAt`, `proveTxHash`/`provenAt`,
  `executeTxHash`/`executedAt`, each null until that L1 transaction is confirmed.

Other chains have no batches: a block at or below the `finalized` tag of `eth_getBlockByNumber` is final.

The parsing functions take a decoded JSON result and return data, so they are tested without a node;
`ChainRpc` alone does the HTTP (httpx2, no web3: the unmaintained `zksync2` package is not needed for
three read-only calls).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import httpx2

from mcpz.errors import NetworkError, RemoteError

Finality = Literal["unknown", "included", "committed", "proven", "executed"]
FINALITIES: tuple[Finality, ...] = ("unknown", "included", "committed", "proven", "executed")

T = TypeVar("T")
TX_STATUSES = frozenset({"pending", "included", "verified", "failed"})
HINT = "check the settlement chain's RPC URL and that its node runs (zks_ methods need a zkSync node)"


class MalformedAnswer(ValueError):
    """A result that does not have the documented shape; `ChainRpc` turns it into a RemoteError."""


@dataclass(frozen=True)
class TransactionDetails:
    """What `zks_getTransactionDetails` says of one transaction (the fields finality needs)."""

    status: str
    is_l1_originated: bool
    eth_commit_tx_hash: str | None
    eth_prove_tx_hash: str | None
    eth_execute_tx_hash: str | None

    @property
    def in_block(self) -> bool:
        return self.status != "pending"

    @property
    def failed(self) -> bool:
        """Included and reverted: still final once its batch is, but it paid nothing."""
        return self.status == "failed"


@dataclass(frozen=True)
class BatchDetails:
    """One L1 batch's stages on L1; a stage counts only once the node reports both its hash and time."""

    number: int
    committed: bool
    proven: bool
    executed: bool


# --- pure parsing ---------------------------------------------------------------------------------


def _object(result: object, what: str) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise MalformedAnswer(f"{what} is {type(result).__name__}, not an object")
    return result


def _optional_hash(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("0x"):
        raise MalformedAnswer(f"{key} is {value!r}, not a 0x hash or null")
    return value


def _optional_time(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise MalformedAnswer(f"{key} is {value!r}, not a timestamp or null")
    return value


def parse_quantity(value: object, what: str) -> int:
    """A JSON-RPC quantity: `0x`-prefixed hex (the Ethereum way) or a plain integer (zks_ batch numbers)."""
    if isinstance(value, bool):
        raise MalformedAnswer(f"{what} is {value!r}, not a number")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.startswith("0x") and len(value) > 2:
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise MalformedAnswer(f"{what} is {value!r}, not a number")


def parse_transaction_details(result: object) -> TransactionDetails | None:
    """`zks_getTransactionDetails`'s result; None when the node does not know the transaction."""
    if result is None:
        return None
    obj = _object(result, "the transaction details")
    status = obj.get("status")
    if status not in TX_STATUSES:
        raise MalformedAnswer(f"status is {status!r}, not one of {', '.join(sorted(TX_STATUSES))}")
    l1 = obj.get("isL1Originated", False)
    if not isinstance(l1, bool):
        raise MalformedAnswer(f"isL1Originated is {l1!r}, not a boolean")
    return TransactionDetails(
        status=str(status),
        is_l1_originated=l1,
        eth_commit_tx_hash=_optional_hash(obj, "ethCommitTxHash"),
        eth_prove_tx_hash=_optional_hash(obj, "ethProveTxHash"),
        eth_execute_tx_hash=_optional_hash(obj, "ethExecuteTxHash"),
    )


def parse_receipt_batch(result: object) -> int | None:
    """The `l1BatchNumber` of a zkSync receipt; None without a receipt or before the batch is sealed."""
    if result is None:
        return None
    obj = _object(result, "the receipt")
    number = obj.get("l1BatchNumber")
    return None if number is None else parse_quantity(number, "l1BatchNumber")


def parse_batch_details(result: object) -> BatchDetails | None:
    """`zks_getL1BatchDetails`'s result; None for a batch the node does not have yet."""
    if result is None:
        return None
    obj = _object(result, "the batch details")
    stages = []
    for tx_key, at_key in (
        ("commitTxHash", "committedAt"),
        ("proveTxHash", "provenAt"),
        ("executeTxHash", "executedAt"),
    ):
        tx, at = _optional_hash(obj, tx_key), _optional_time(obj, at_key)
        stages.append(tx is not None and at is not None)
    committed, proven, executed = stages
    # L1 runs the three in order; a later stage without an earlier one is a node we cannot trust.
    if (proven and not committed) or (executed and not proven):
        raise MalformedAnswer(
            f"stages out of order (committed {committed}, proven {proven}, executed {executed})"
        )
    return BatchDetails(parse_quantity(obj.get("number"), "number"), committed, proven, executed)


def parse_block_number(result: object, tag: str) -> int | None:
    """The `number` of an `eth_getBlockByNumber` result; None when the node has no such block yet."""
    if result is None:
        return None
    return parse_quantity(_object(result, f"the {tag} block").get("number"), f"the {tag} block's number")


def finality_of(
    details: TransactionDetails | None, batch_number: int | None, batch: BatchDetails | None
) -> Finality:
    """Where a transaction stands, from the three answers (each None while the node has nothing)."""
    if details is None or not details.in_block:
        return "unknown"
    if batch_number is None or batch is None:
        return "included"
    if batch.number != batch_number:
        raise MalformedAnswer(f"asked for {batch_number}, the node described L1 batch {batch.number}")
    if batch.executed:
        return "executed"
    if batch.proven:
        return "proven"
    if batch.committed:
        return "committed"
    return "included"


# --- the I/O --------------------------------------------------------------------------------------


def _where(url: str) -> str:
    """The RPC URL without its path and query: hosted RPC URLs carry the API key there."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else "the chain RPC"


class ChainRpc:
    """A JSON-RPC client for the reads finality needs. Use as `async with ChainRpc(url) as rpc:`."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._http = httpx2.AsyncClient(timeout=timeout)
        self._ids = itertools.count(1)

    async def __aenter__(self) -> ChainRpc:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, params: list[Any]) -> object:
        """The `result` of one call: JSON null comes back as None. Errors are one-line McpzErrors."""
        where = _where(self.url)
        request_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        try:
            response = await self._http.post(self.url, json=body)
        except httpx2.TimeoutException as e:
            raise NetworkError(
                f"the chain RPC at {where} did not answer {method} within {self.timeout:g} s", hint=HINT
            ) from e
        except httpx2.TransportError as e:
            raise NetworkError(f"cannot reach the chain RPC at {where}: {e}", hint=HINT) from e
        if response.status_code != 200:
            raise RemoteError(
                f"the chain RPC at {where} answered {method} with HTTP {response.status_code}",
                status=response.status_code,
                hint=HINT,
            )
        try:
            answer = response.json()
        except ValueError as e:
            raise RemoteError(f"the chain RPC at {where} answered {method} with non-JSON", hint=HINT) from e
        if not isinstance(answer, dict) or answer.get("id") != request_id:
            raise RemoteError(
                f"the chain RPC at {where} answered {method} with no JSON-RPC response for id {request_id}",
                hint=HINT,
            )
        error = answer.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            message = (str(message).splitlines() or [""])[0][:300]
            raise RemoteError(
                f"the chain RPC at {where} refused {method}: {message} (code {code})", hint=HINT
            )
        if "result" not in answer:
            raise RemoteError(
                f"the chain RPC at {where} answered {method} with neither result nor error", hint=HINT
            )
        result: object = answer["result"]
        return result

    async def _parsed(self, method: str, params: list[Any], parse: Callable[[object], T]) -> T:
        result = await self.call(method, params)
        try:
            return parse(result)
        except MalformedAnswer as e:
            raise RemoteError(
                f"the chain RPC at {_where(self.url)} answered {method} malformed: {e}", hint=HINT
            ) from e

    async def transaction_details(self, tx_hash: str) -> TransactionDetails | None:
        """`zks_getTransactionDetails`: None for a transaction the node does not know."""
        return await self._parsed("zks_getTransactionDetails", [tx_hash], parse_transaction_details)

    async def l1_batch_number(self, tx_hash: str) -> int | None:
        """The L1 batch holding `tx_hash` (from its receipt); None before the batch is sealed."""
        return await self._parsed("eth_getTransactionReceipt", [tx_hash], parse_receipt_batch)

    async def l1_batch_details(self, batch_number: int) -> BatchDetails | None:
        """`zks_getL1BatchDetails`: None for a batch the node does not have yet."""
        return await self._parsed("zks_getL1BatchDetails", [batch_number], parse_batch_details)

    async def finality(self, tx_hash: str) -> Finality:
        """unknown, included, committed, proven or executed (= final: its L1 batch executed on L1)."""
        details = await self.transaction_details(tx_hash)
        if details is None or not details.in_block:
            return "unknown"
        batch_number = await self.l1_batch_number(tx_hash)
        batch = None if batch_number is None else await self.l1_batch_details(batch_number)
        try:
            return finality_of(details, batch_number, batch)
        except MalformedAnswer as e:
            raise RemoteError(
                f"the chain RPC at {_where(self.url)} answered zks_getL1BatchDetails malformed: {e}",
                hint=HINT,
            ) from e

    async def finalized_block(self) -> int | None:
        """The number of the newest `finalized` block (chains other than zkSync); None if there is none
        yet. A transaction in a block at or below it is final."""
        return await self._parsed(
            "eth_getBlockByNumber",
            ["finalized", False],
            lambda result: parse_block_number(result, "finalized"),
        )
