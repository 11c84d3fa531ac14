"""Billing's HTTP API.

GET /v1/billing/receipt-key     the public key receipts are signed with (no token needed)
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from registry_server.billing.receipt_key import ReceiptSigner

router = APIRouter(tags=["billing"])


def receipt_signer(request: Request) -> ReceiptSigner:
    return request.app.state.receipts  # type: ignore[no-any-return]


Signer = Annotated[ReceiptSigner, Depends(receipt_signer)]


class ReceiptKeyOut(BaseModel):
    key: str = Field(description='The public key: "ed25519:" and its 32 bytes in base64url, unpadded')
    registry: str = Field(description="The registry URL its receipts name")
    algorithm: Literal["ed25519"]


@router.get("/v1/billing/receipt-key", response_model=ReceiptKeyOut)
async def receipt_key(signer: Signer) -> ReceiptKeyOut:
    """The key that signs the receipts of paid calls: check one offline with
    `mcpz billing verify-receipt FILE --key KEY` (docs/receipts.md)."""
    return ReceiptKeyOut(key=signer.public_key, registry=signer.registry, algorithm="ed25519")
