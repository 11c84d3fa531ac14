"""Who is calling: tokens from `Authorization: Bearer` or Basic (token as the password)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from mcpz.errors import AuthError
from registry_server.accounts.service import Principal, authenticate, owns_namespace
from registry_server.db import Database
from registry_server.logs import note


class Unauthenticated(AuthError):
    """No credentials, or credentials that name nobody: HTTP 401."""


class Forbidden(AuthError):
    """Credentials that do not allow this: HTTP 403."""


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, rest = value.partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer":
        return rest or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        # git sends the token as the password; a token given as the user name works too.
        return password or user or None
    return None


def principal_from_headers(
    db: Database, headers: Mapping[str, str], *, bound_ok: bool = False
) -> Principal | None:
    """Who the request's token names, None without one; Unauthenticated for a bad one. A token
    bound to a resource (OAuth) is refused unless `bound_ok`: the caller (the gateway) then checks
    the audience itself, against the URL asked for."""
    secret = token_from_headers(headers)
    if secret is None:
        return None
    try:
        with db.session() as session:
            principal = authenticate(session, secret)
    except AuthError as e:
        raise Unauthenticated(e.message, hint=e.hint) from None
    if principal.resource is not None and not bound_ok:
        raise Unauthenticated(
            f"this token is for {principal.resource} only",
            hint="use an API key here (mcpz keys create)",
        )
    note(account=principal.account_name)  # on the request's log lines from here on
    return principal


def require(
    principal: Principal | None, scope: str, namespace: str | None = None, *, db: Database
) -> Principal:
    """The principal, if it may use `scope` (in `namespace`); else Unauthenticated/Forbidden."""
    if principal is None:
        raise Unauthenticated(
            "authentication required", hint="pass a token: --token, MCPZ_TOKEN or `mcpz login`"
        )
    if not principal.has(scope):
        raise Forbidden(
            f'this token lacks the "{scope}" scope', hint=f"create one with: mcpz keys create --scope {scope}"
        )
    if namespace is not None:
        from registry_server.accounts.namespaces import may_publish

        with db.session() as session:
            # The owner, and members with a role (owner, publisher), act in the namespace.
            if not owns_namespace(session, principal.account_id, namespace) and not may_publish(
                session, principal.account_id, namespace
            ):
                raise Forbidden(
                    f'account "{principal.account_name}" is neither owner nor member of the namespace '
                    f'"{namespace}"'
                )
    return principal
