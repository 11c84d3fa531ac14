"""Changing deployments from the client side, each change signed by the deployer's wallet.

Nodes run a deployment only when the namespace owner's key signed its statement
(`mcpz.keys.signing.DeploymentStatement`: registry, deployment, release, commit, replicas, revision)
and never one whose revision is lower than one they have seen (docs/signing.md). The registry
assigns the revision, so a change goes in two steps:

1. the request with `prepare` answers the statement the change would make, changing nothing;
2. this side checks that the statement says what was asked (this registry, this deployment, the
   version and replica count asked for), signs it, and sends the request again with the
   statement and its signature. If the deployment moved in between (409 `statement_changed`),
   both steps run again.

    async with connect(url, token) as client:
        view = await deploy(client, "acme/weather", "1.2.0", replicas=3, account=wallet_key)

Without an `account` the change is made unsigned (nodes that require signatures refuse it).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from mcpz.client.models import Deployment, PreparedChange
from mcpz.client.registry import RegistryClient, SignedChange
from mcpz.errors import AgentError, McpzError, RefusedError, UsageError
from mcpz.keys import signing

if TYPE_CHECKING:
    from mcpz.keys.ethkeys import LocalAccount

__all__ = ["deploy", "not_ready", "parse_selector", "parse_size", "rollback", "scale"]

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)i?b?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`512M`, `2G`, `64k`, `1024` (bytes; binary units, an optional `i`/`B`) -> bytes; UsageError
    for anything else, zero included."""
    match = _SIZE.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f'"{text}" is not a size', hint='use e.g. "512M" or "2G"')
    power = " kmgt".index(match.group(2).lower() or " ")
    unit: int = 1024**power
    return int(match.group(1)) * unit


def parse_selector(items: Iterable[str]) -> dict[str, str]:
    """`["region=eu", "gpu=yes"]` -> the node selector `{"region": "eu", "gpu": "yes"}`; a later
    key wins; UsageError for an item that is not `k=v`."""
    selector: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f'selector "{item}" is not k=v', hint="e.g. --selector region=eu")
        selector[key] = value
    return selector


ATTEMPTS = 3
"""How many times a change is prepared and signed again when the deployment moved in between."""

Send = Callable[[SignedChange | None], Awaitable[Deployment]]
Prepare = Callable[[], Awaitable[PreparedChange]]
Check = Callable[[signing.DeploymentStatement], None]


async def deploy(
    client: RegistryClient,
    name: str,
    version: str | None = None,
    *,
    replicas: int | None = None,
    selector: Mapping[str, str] | None = None,
    limits: Mapping[str, int | None] | None = None,
    allow_tool_drift: bool | None = None,
    account: LocalAccount | None = None,
) -> Deployment:
    """Create or update the deployment of `name` (see `RegistryClient.deploy`), signed by `account`.

    `allow_tool_drift` (None: unchanged) lets replicas answer other tools than those signed with
    the release; it is a line of the signed statement, so the registry cannot turn it on."""

    async def send(signed: SignedChange | None) -> Deployment:
        return await client.deploy(
            name,
            version,
            replicas=replicas,
            selector=selector,
            limits=limits,
            allow_tool_drift=allow_tool_drift,
            signed=signed,
        )

    async def prepare() -> PreparedChange:
        return await client.prepare_deploy(
            name,
            version,
            replicas=replicas,
            selector=selector,
            limits=limits,
            allow_tool_drift=allow_tool_drift,
        )

    def check(statement: signing.DeploymentStatement) -> None:
        if version is not None and statement.version != version:
            raise _mismatch(statement, f"release {statement.release}, not {name}@{version}")
        if statement.name != name:
            raise _mismatch(statement, f"release {statement.release}, not one of {name}")
        if replicas is not None and statement.replicas != replicas:
            raise _mismatch(statement, f"{statement.replicas} replica(s), not {replicas}")
        if allow_tool_drift is not None and statement.allow_tool_drift != allow_tool_drift:
            drift = "allowed" if statement.allow_tool_drift else "not allowed"
            raise _mismatch(statement, f"tool drift {drift}")

    return await _change(client, name, send, prepare, check, account)


async def scale(
    client: RegistryClient, name: str, replicas: int, *, account: LocalAccount | None = None
) -> Deployment:
    """Set how many replicas of `name` run, signed by `account`."""

    async def send(signed: SignedChange | None) -> Deployment:
        return await client.scale(name, replicas, signed=signed)

    async def prepare() -> PreparedChange:
        return await client.prepare_scale(name, replicas)

    def check(statement: signing.DeploymentStatement) -> None:
        if statement.replicas != replicas:
            raise _mismatch(statement, f"{statement.replicas} replica(s), not {replicas}")

    return await _change(client, name, send, prepare, check, account)


async def rollback(
    client: RegistryClient, name: str, revision: int | None = None, *, account: LocalAccount | None = None
) -> Deployment:
    """A new revision of `name` with the release of `revision` (default: the previous one), signed by
    `account`."""

    async def send(signed: SignedChange | None) -> Deployment:
        return await client.rollback(name, revision, signed=signed)

    async def prepare() -> PreparedChange:
        return await client.prepare_rollback(name, revision)

    def check(statement: signing.DeploymentStatement) -> None:
        pass  # the registry picks the release to return to; the statement shows which

    return await _change(client, name, send, prepare, check, account)


def not_ready(view: Deployment) -> McpzError:
    """The error for a deployment view that is not ready (after `wait_deployment`): why, in one
    line, and a next step that works for it (no rollback when there is no earlier revision)."""
    name, reason = view.name, view.reason
    if view.state != "failed":
        return McpzError(
            f"{name} {view.version} is not ready: {reason or view.state or 'unknown'}",
            hint=f"see `mcpz nodes` for the nodes and their labels, and `mcpz deploy status {name}`",
        )
    bad = [r for r in view.instances if r.status == "failed" and r.current]
    count = f"{len(bad)} of {view.replicas} replica(s)" if bad else "a replica"
    reason = reason.removeprefix("replica failed: ")
    steps = [f"see `mcpz logs {name}`"]
    if "is not signed" in reason and "deployment" not in reason:
        steps.append(f"sign the release with `mcpz sign {view.agent}@{view.version}` in its folder")
    elif "is not signed" in reason:
        steps.append(f"deploy again with a wallet (`mcpz wallet create`, then `mcpz deploy {name}`)")
    steps.append(
        f"retry now with `mcpz deploy restart {name}` (failed replicas are also retried on their own)"
    )
    if view.rollback_to:
        steps.append(f"or go back with `mcpz deploy rollback {name}`")
    return AgentError(f"{name} {view.version}: {count} failed: {reason}", hint="; ".join(steps))


def _mismatch(statement: signing.DeploymentStatement, what: str) -> UsageError:
    return UsageError(
        f"the registry proposed to sign revision {statement.revision} of {statement.deployment} with {what}",
        hint="nothing was signed or changed; the registry does not do what was asked",
    )


async def _change(
    client: RegistryClient,
    name: str,
    send: Send,
    prepare: Prepare,
    check: Check,
    account: LocalAccount | None,
) -> Deployment:
    if account is None:
        return await send(None)
    registry = signing.canonical_registry_url(client.url)
    for attempt in range(1, ATTEMPTS + 1):
        proposal = await prepare()
        try:
            statement = signing.DeploymentStatement.parse(proposal.statement or "")
        except signing.StatementError as e:
            raise UsageError(
                f"the registry answered no valid deployment statement for {name}: {e.message}",
                hint="is it an older registry, that does not sign deployments? deploy with --no-sign",
            ) from e
        if statement.registry != registry:
            raise UsageError(
                f"the registry signs deployments as {statement.registry}, but it was reached as {registry}",
                hint="use the registry's public URL (--registry / MCPZ_REGISTRY), which nodes check",
            )
        if statement.deployment != name:
            raise _mismatch(statement, f"the deployment {statement.deployment}")
        check(statement)
        if not proposal.new_revision and account.address in proposal.signers:
            return await send(None)  # nothing changes, and this wallet signed the revision already
        signature = signing.sign_statement(statement, account)
        try:
            return await send(SignedChange(statement.to_text(), signature))
        except RefusedError as e:
            if "[statement_changed]" not in e.message or attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
