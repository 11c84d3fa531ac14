"""Tool definitions pinned at publish, as a node holds a replica to them.

A release published with its tools pinned carries their digest in its signed statement; the
deploy frame names it (`tools_digest`) and the node checks it with the release signature, so the
digest here is the publisher's, not the registry's word. After a replica's first healthy answer,
and at every later `tools/list` the node makes, `tools_changed` compares the answer's digest with
it: a different one fails the replica with `tools-changed` (naming what changed, from the pinned
definitions the registry serves, used only once their digest matches the signed one), unless the
deployment's signed statement allows tool drift.

`pin_for` and `tools_changed` are pure; `fetch_pinned_tools` does one HTTP request.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcpz import jsonlimits
from mcpz.keys import signing
from mcpz.mesh import ErrorCode
from mcpz.node.state import Assignment
from mcpz.tooldefs import ToolDefinitionsError, changes, tools_digest

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolPin:
    """The signed digest a replica's tools must have, and whether its deployment allows drift."""

    digest: str
    allow_drift: bool


def drift_allowed(statement: str) -> bool:
    """Whether a deployment statement (its canonical text) allows tool drift; "" and a statement
    that does not parse do not."""
    if not statement:
        return False
    try:
        return signing.DeploymentStatement.parse(statement).allow_tool_drift
    except signing.StatementError:
        return False


def pin_for(assignment: Assignment) -> ToolPin | None:
    """The pin a replica is held to; None when its release has no signed tools."""
    if not assignment.tools_digest:
        return None
    return ToolPin(assignment.tools_digest, drift_allowed(assignment.deployment_statement))


def tools_changed(
    pin: ToolPin,
    answered: Sequence[Mapping[str, Any]],
    pinned: Sequence[Mapping[str, Any]] | None = None,
) -> str | None:
    """None when `answered` (a tools/list) has the pinned digest; else the failure detail,
    `tools-changed: ...`, naming the tools added, removed or changed when `pinned` is known."""
    try:
        digest = tools_digest(answered)
    except ToolDefinitionsError as e:
        return f"{ErrorCode.TOOLS_CHANGED.value}: the agent's tools/list cannot be read as tools ({e})"
    if digest == pin.digest:
        return None
    what = ""
    if pinned is not None:
        try:
            what = changes(pinned, answered)
        except ToolDefinitionsError:
            what = ""
    return (
        f"{ErrorCode.TOOLS_CHANGED.value}: {what or 'the tool definitions differ'} from those signed "
        f"at publish ({pin.digest[:19]}, now {digest[:19]})"
    )


def fetch_pinned_tools(
    base_url: str, token: str | None, ca_file: str | None, agent: str, version: str, digest: str
) -> list[dict[str, Any]] | None:
    """The release's pinned definitions as the registry serves them, if their digest is `digest`
    (the signed one); None when they cannot be had or do not match. Only used to say what changed."""
    import httpx2

    url = f"{base_url}/v1/agents/{agent}/releases/{version}/tools"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    try:
        response = httpx2.get(url, headers=headers, timeout=5.0, verify=verify)
        response.raise_for_status()
        tools = jsonlimits.loads(response.content).get("tools")
        if isinstance(tools, list) and tools_digest(tools) == digest:
            return tools
    except (httpx2.HTTPError, ValueError, AttributeError, ToolDefinitionsError) as e:
        logger.info("cannot read the pinned tools of %s %s: %s", agent, version, e)
    return None
