"""`/v1/billing/settlement`: where and in what this registry takes deposits on chain."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mcpz.errors import NetworkError, NotFoundError
from registry_server.http import error_response
from registry_server.openapi import errors
from registry_server.settlement.worker import SettlementWorker

router = APIRouter(tags=["billing"])


class SettlementOut(BaseModel):
    chain_id: int
    contract: str = Field(description="The McpzSettlement address: deposit with deposit(account, amount)")
    token: str = Field(description="The settlement token's address (ERC-20)")
    decimals: int
    confirmations: int = Field(description="Blocks a deposit waits before it is credited, its own included")


@router.get("/v1/billing/settlement", response_model=SettlementOut, responses=errors(404, 503))
async def settlement(request: Request) -> SettlementOut | Response:
    """The settlement chain and contract to deposit into; 404 when this registry settles nothing on chain."""
    worker: SettlementWorker | None = getattr(request.app.state, "settlement", None)
    if worker is None:
        raise NotFoundError(
            "settlement is not configured on this registry",
            hint="its operator sets MCPZ_REGISTRY_SETTLEMENT_RPC (docs/settlement.md)",
        )
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
