"""What the OpenAPI document says beyond FastAPI's defaults: the error body, the error statuses each
route answers with, and the shapes of names (those of roles and scopes are accounts/http.py).

Patterns and enums are documentation here, not FastAPI validation: the route's own check (one rule
in `mcpz.names`, `accounts.tokens.SCOPES`, `accounts.models.ROLES`) answers a bad value with a 400
that says what is wrong, which is what the document then promises.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, Field

from mcpz.names import MAX_PART

PART_PATTERN = r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$"
"""One part of an agent name (namespace or name), as `mcpz.names` checks it."""
AGENT_PATTERN = r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?/[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$"

PART_SCHEMA: dict[str, Any] = {"pattern": PART_PATTERN, "maxLength": MAX_PART}
AGENT_SCHEMA: dict[str, Any] = {"pattern": AGENT_PATTERN, "maxLength": 2 * MAX_PART + 1}

Namespace = Annotated[
    str, Path(description="A namespace: [a-z0-9-], at most 64", json_schema_extra=PART_SCHEMA)
]
AgentPart = Annotated[
    str, Path(description="An agent's name in its namespace", json_schema_extra=PART_SCHEMA)
]
VersionPath = Annotated[str, Path(description="A published version (PEP 440)", max_length=128)]


class ErrorDetail(BaseModel):
    message: str = Field(description="What is wrong")
    hint: str | None = Field(default=None, description="What to do next")
    request_id: str = Field(description="Also the X-Request-Id header; quote it in a report")
    code: str | None = Field(default=None, description="A stable code (sign-in and signature refusals)")


class ErrorOut(BaseModel):
    """Every JSON error answer of the API."""

    error: ErrorDetail


_MEANING = {
    400: "Bad request: a malformed name, version, value or signature",
    401: "Authentication required, or the token is invalid or expired",
    403: "The token lacks the scope, or the account may not act in the namespace",
    404: "No such agent, version, namespace, deployment or key",
    409: "Refused: it conflicts with the current state (taken, changed meanwhile, immutable)",
    413: "The request body is larger than the registry accepts",
    415: "The request body has the wrong Content-Type",
    422: "The request does not match this operation's parameters or body",
    429: "Too many requests from this client address; see Retry-After",
    503: "A service the registry depends on (such as the settlement chain) cannot be reached",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a JSON route answering with these error statuses."""
    return {code: {"model": ErrorOut, "description": _MEANING[code]} for code in codes}


def text_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a git smart HTTP route: its errors are one line of text, as git shows them."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {code: {"description": _MEANING[code], "content": text} for code in codes}


def use_error_model(document: dict[str, Any]) -> dict[str, Any]:
    """Point FastAPI's default 422 answers at ErrorOut, which is what the registry sends for them."""
    ref = "#/components/schemas/ErrorOut"
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorOut" not in schemas:
        schemas.update(ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"])
        schemas["ErrorOut"] = {
            k: v
            for k, v in ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}").items()
            if k != "$defs"
        }
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422")
            if answer is not None:
                answer["description"] = _MEANING[422]
                answer["content"] = {"application/json": {"schema": {"$ref": ref}}}
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document
