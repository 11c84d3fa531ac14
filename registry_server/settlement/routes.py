"""`/v1/billing/settlement`: where and in what this registry takes deposits on chain;
`/v1/billing/payouts`: a creator's payouts in committed batches, with the proofs to claim them;
`/v1/billing/withdrawals`: vouchers to take unspent balance back on chain."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mcpz.errors import NetworkError, NotFoundError
from registry_server.accounts.auth import require
from registry_server.accounts.http import Caller
from registry_server.accounts.service import account_by_id
from registry_server.billing.service import now_us
from registry_server.http import State, error_response
from registry_server.openapi import errors
from registry_server.settlement import payouts as payout_service
from registry_server.settlement import withdrawals
from registry_server.settlement.models import Withdrawal
from registry_server.settlement.worker import SettlementWorker

router = APIRouter(tags=["billing"])


class SettlementOut(BaseModel):
    chain_id: int
    contract: str = Field(description="The McpzSettlement address: deposit with deposit(account, amount)")
    token: str = Field(description="The settlement token's address (ERC-20)")
    decimals: int
    confirmations: int = Field(description="Blocks a deposit waits before it is credited, its own included")


def _worker(request: Request) -> SettlementWorker:
    worker: SettlementWorker | None = getattr(request.app.state, "settlement", None)
    if worker is None:
        raise NotFoundError(
            "settlement is not configured on this registry",
            hint="its operator sets MCPZ_REGISTRY_SETTLEMENT_RPC (docs/settlement.md)",
        )
    return worker


@router.get("/v1/billing/settlement", response_model=SettlementOut, responses=errors(404, 503))
async def settlement(request: Request) -> SettlementOut | Response:
    """The settlement chain and contract to deposit into; 404 when this registry settles nothing on chain."""
    worker = _worker(request)
    try:
        token = await worker.token()
    except NetworkError as e:
        return error_response(503, e.message, e.hint, code="chain_unavailable")
    return SettlementOut(
        chain_id=worker.chain.chain_id,
        contract=worker.chain.address,
        token=token.address,
        decimals=token.decimals,
        confirmations=worker.confirmations,
    )


class PayoutOut(BaseModel):
    batch_id: int
    index: int = Field(description="The leaf's index in the batch: the bit the contract marks once paid")
    address: str = Field(description="The wallet the leaf pays")
    amount: int = Field(description="Base units of the settlement token")
    state: str = Field(description="The batch's state: pending, submitted, confirmed or final")
    root: str = Field(description="The batch's Merkle root, as committed on chain")
    tx_hash: str | None = Field(description="The transaction that committed the batch, once mined")
    proof: list[str] = Field(description="Sibling hashes, leaf to root (OpenZeppelin MerkleProof)")


class PayoutsOut(BaseModel):
    chain_id: int
    contract: str
    payouts: list[PayoutOut]


@router.get("/v1/billing/payouts", response_model=PayoutsOut, responses=errors(401, 403, 404))
async def my_payouts(request: Request, state: State, principal: Caller) -> PayoutsOut:
    """The caller's payouts, newest batch first, each with its Merkle proof: claim a final (or
    confirmed) one with the contract's `claim`, and check it against the chain without trusting us."""
    worker = _worker(request)

    def run() -> PayoutsOut:
        who = require(principal, "call", db=state.db)
        with state.db.session() as session:
            found = payout_service.payouts_of(session, worker.chain.chain_id, who.account_id)
        return PayoutsOut(
            chain_id=worker.chain.chain_id,
            contract=worker.chain.address,
            payouts=[
                PayoutOut(
                    batch_id=p.batch_id, index=p.index, address=p.address, amount=p.amount, state=p.state,
                    root=p.root, tx_hash=p.tx_hash, proof=list(p.proof),
                )
                for p in found
            ],
        )  # fmt: skip

    return await anyio.to_thread.run_sync(run)


# -- withdrawal vouchers (settlement/withdrawals.py)


class WithdrawIn(BaseModel):
    amount: int = Field(ge=1, le=withdrawals.MAX_AMOUNT, description="Base units of the settlement token")
    address: str | None = Field(
        default=None,
        max_length=42,
        description="The wallet that will send the withdrawal: refused unless it is the account's",
    )


class WithdrawalOut(BaseModel):
    id: int
    nonce: int = Field(description="The voucher's nonce on chain (its id)")
    chain_id: int
    contract: str
    address: str = Field(description="The wallet it pays: only it can send the withdrawal")
    amount: int
    expiry: int = Field(description="Unix seconds: usable in blocks at or before it")
    signature: str = Field(description="The operator's EIP-712 signature of the Withdrawal")
    state: str = Field(description='"issued", "withdrawn" or "expired"')
    tx_hash: str | None
    created_us: int
    settled_us: int | None


def _voucher_out(row: Withdrawal) -> WithdrawalOut:
    return WithdrawalOut(
        id=row.id,
        nonce=row.id,
        chain_id=row.chain_id,
        contract=row.contract,
        address=row.address,
        amount=row.amount,
        expiry=row.expiry,
        signature=row.signature,
        state=row.state,
        tx_hash=row.tx_hash,
        created_us=row.created_us,
        settled_us=row.settled_us,
    )


@router.post(
    "/v1/billing/withdrawals",
    response_model=WithdrawalOut,
    status_code=201,
    responses=errors(400, 401, 403, 404, 409, 422),
)
async def withdraw(request: Request, state: State, principal: Caller, body: WithdrawIn) -> WithdrawalOut:
    """A voucher to take `amount` of the available balance back to the account's wallet on chain: the
    amount is held until the voucher is used (`withdraw(amount, nonce, expiry, signature)`) or expires."""
    who = await anyio.to_thread.run_sync(lambda: require(principal, "call", db=state.db))
    worker = _worker(request)
    domain = withdrawals.VoucherDomain(worker.chain.chain_id, worker.chain.address)

    def run() -> WithdrawalOut:
        with state.db.session() as session:
            row = withdrawals.issue(
                session,
                account_by_id(session, who.account_id),
                body.amount,
                worker.operator,
                domain,
                now_us(),
                ttl=state.settings.settlement_voucher_ttl,
                address=body.address,
                decimals=state.settings.currency_decimals,
            )
            return _voucher_out(row)

    return await anyio.to_thread.run_sync(run)


@router.get(
    "/v1/billing/withdrawals", response_model=list[WithdrawalOut], responses=errors(401, 403, 404, 422)
)
async def list_withdrawals(
    request: Request,
    state: State,
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[WithdrawalOut]:
    """The caller's withdrawal vouchers on this registry's chain, newest first, with their states."""
    scope = "call" if principal is not None and principal.has("call") else "read"
    who = await anyio.to_thread.run_sync(lambda: require(principal, scope, db=state.db))
    worker = _worker(request)

    def run() -> list[WithdrawalOut]:
        with state.db.session() as session:
            rows = withdrawals.vouchers_of(session, who.account_id, worker.chain.chain_id, limit)
            return [_voucher_out(r) for r in rows]

    return await anyio.to_thread.run_sync(run)
