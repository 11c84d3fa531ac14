"""The one exception tree of mcpz.

    McpzError                    exit 1: a handled error, printed as one line
    ├── UsageError               exit 2: the user's own mistake (arguments, names, versions)
    │   ├── ManifestError        exit 2: mcpz.toml is missing or invalid
    │   └── StaleLockError       exit 9: mcpz.lock missing or stale (mcpz.lockfile)
    ├── RepositoryError          exit 1: the agent repository cannot do what was asked
    ├── NotFoundError            exit 5: an agent, version, revision or file does not exist
    ├── AuthError                exit 4: no credentials, or the registry refused them
    ├── NetworkError             exit 6: the registry could not be reached
    ├── RemoteError              exit 1: the registry answered with an error (keeps status, request id)
    │   ├── InvalidRequest       exit 2: the registry found the request's input invalid (HTTP 400/422)
    │   └── RefusedError         exit 8: the registry refused a push or publish
    ├── ResolutionImpossible     exit 3: no set of versions satisfies the dependencies
    ├── AgentError               exit 7: the agent crashed, timed out, or a tool reported an error
    └── ProtocolError            exit 1: a mesh frame broke the protocol (mcpz.mesh)

Every subclass elsewhere (mcpz.keys.wallet.NoPassphrase, mcpz.keys.trust.UnsignedRelease, ...) keeps its
parent's code; docs/errors.md lists each one, and tests/cli/test_error_contract.py holds the two together.

Third-party exceptions are translated where they enter (`raise ... from e`), so the CLI's
single handler only ever needs to know this tree.
"""

from __future__ import annotations

from mcpz import exit_codes


class McpzError(Exception):
    """A known failure: `message` says what is wrong, `hint` what to do next."""

    exit_code: int = exit_codes.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(McpzError):
    exit_code = exit_codes.USAGE


class ManifestError(UsageError):
    pass


class RepositoryError(McpzError):
    pass


class NotFoundError(McpzError):
    exit_code = exit_codes.NOT_FOUND


class AuthError(McpzError):
    exit_code = exit_codes.AUTH


class NetworkError(McpzError):
    exit_code = exit_codes.NETWORK


class RemoteError(McpzError):
    """The registry answered with an error; its message and request id are kept."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        if request_id:
            message = f"{message} (request id {request_id})"
        super().__init__(message, hint=hint)
        self.status = status
        self.request_id = request_id


class InvalidRequest(RemoteError):
    """The registry judged the request's input invalid (a bad name, scope or value): the user's to fix."""

    exit_code = exit_codes.USAGE


class RefusedError(RemoteError):
    exit_code = exit_codes.REFUSED


class ResolutionImpossible(McpzError):
    exit_code = exit_codes.RESOLUTION_IMPOSSIBLE


class AgentError(McpzError):
    exit_code = exit_codes.AGENT_FAILED
