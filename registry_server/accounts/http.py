"""The accounts domain's HTTP surface for every domain's routes: who is calling, and how a refused
signature answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from mcpz.keys import signing
from registry_server.accounts.auth import principal_from_headers
from registry_server.accounts.models import ROLES
from registry_server.accounts.service import Principal
from registry_server.accounts.tokens import SCOPES
from registry_server.http import error_response, state_of

# Documentation in the OpenAPI document; the routes' own checks answer a bad value with a 400.
ROLE_SCHEMA: dict[str, Any] = {"enum": list(ROLES)}
SCOPE_SCHEMA: dict[str, Any] = {"items": {"type": "string", "enum": list(SCOPES)}}


def caller(request: Request) -> Principal | None:
    return principal_from_headers(state_of(request).db, request.headers)


Caller = Annotated[Principal | None, Depends(caller)]


def signature_refusal(e: signing.SignatureError) -> Response:
    """403 for a signature by a key that may not sign, 400 for one that is not a signature at all."""
    status = 403 if isinstance(e, signing.UnexpectedSigner) else 400
    return error_response(status, e.message, e.hint, code=e.code)
