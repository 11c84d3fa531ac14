"""The errors of a mesh node, each a branch of mcpz's one exception tree.

    McpzError
    ├── NetworkError
    │   └── FetchError           a release's objects could not be fetched      (fetch-failed)
    ├── ReleaseError             what was fetched is not what was asked for     (verify-failed)
    │   └── CheckoutRefused      a path in the tree would escape the checkout   (verify-failed)
    ├── AgentError
    │   └── StartError           the replica's process could not be started
    ├── AuthError                the registry refused the node's token at the upgrade (exit 4)
    └── NodeReplaced             another process connected with this node's id (close 4000)

`code` is the mesh `ErrorCode` word a node puts at the front of a `failed` status's detail, so
the registry (and a person reading `mcpz deploy status`) can tell a fetch from a verify failure.
"""

from __future__ import annotations

from mcpz.errors import AgentError, McpzError, NetworkError
from mcpz.mesh import ErrorCode


class FetchError(NetworkError):
    """The release's objects could not be fetched from the registry."""

    code = ErrorCode.FETCH_FAILED


class StartError(AgentError):
    """The replica's process could not be started (no such program, a refused resource limit)."""

    code = ErrorCode.INTERNAL


class NodeReplaced(McpzError):
    """The hub closed this node's connection with 4000: another process connected with its id."""
