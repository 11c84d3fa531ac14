"""HTTP helpers every domain's routes share: the one JSON error body, the agent-name path parser,
and the registry state as a FastAPI dependency.

Errors look the same wherever they come from (an exception handler, a route's refusal, a refused
WebSocket upgrade): `{"error": {["code",] "message", "hint", "request_id"}}`; docs/errors.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from mcpz.errors import UsageError
from mcpz.names import name_problem
from registry_server.logs import request_id
from registry_server.state import RegistryState

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mcpz"'}


def error_body(message: str, hint: str | None = None, *, code: str | None = None) -> dict[str, object]:
    """The API's error body; `code` only where a refusal has a stable code clients match on."""
    error: dict[str, object] = {"message": message, "hint": hint, "request_id": request_id.get()}
    if code is not None:
        error = {"code": code, **error}
    return {"error": error}


def error_response(
    status: int,
    message: str,
    hint: str | None = None,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error body as a response; a 401 carries the Bearer challenge unless `headers` says otherwise."""
    if headers is None and status == 401:
        headers = BEARER_CHALLENGE
    return JSONResponse(error_body(message, hint, code=code), status_code=status, headers=headers)


def checked_agent_name(full: str, *, what: str = "agent") -> str:
    """`full` when it is a valid `namespace/name`, else a UsageError (400) saying what is wrong;
    `what` names the thing in the message ("agent", "deployment")."""
    problem = name_problem(full)
    if problem:
        raise UsageError(f'{what} name "{full}" {problem}')
    return full


def agent_name(namespace: str, name: str, *, what: str = "agent") -> str:
    """`namespace/name` from a path's two parts, or a UsageError (400) saying what is wrong with it."""
    return checked_agent_name(f"{namespace}/{name}", what=what)


def repository_agent_name(namespace: str, name: str) -> str | None:
    """The agent behind a git path's `namespace/name.git`; None when it names no agent."""
    if not name.endswith(".git"):
        return None
    try:
        return agent_name(namespace, name[:-4])
    except UsageError:
        return None


def state_of(request: Request) -> RegistryState:
    return request.app.state.registry  # type: ignore[no-any-return]


State = Annotated[RegistryState, Depends(state_of)]
