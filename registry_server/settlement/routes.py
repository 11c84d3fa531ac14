"""`/v1/billing/settlement`: where and in what this registry takes deposits on chain;
`/v1/billing/payouts`: a creator's payouts in committed batches, with the proofs to claim them."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mcpz.errors import NetworkError, NotFoundError
from registry_server.accounts.auth import require
from registry_server.accounts.http import Caller
from registry_server.http import State, error_response
from registry_server.openapi import errors
from registry_server.settlement import payouts as payout_service
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
