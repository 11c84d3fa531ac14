"""The deployment API: deployments (create or update, scale, rollback, remove), their replicas and
logs, and the mesh's nodes. Frames to nodes: docs/mesh-protocol.md.

Mutations need a token with scope `deploy` in the agent's namespace; reads need `read` or
`deploy` there (`/v1/nodes`: any of `read`, `deploy`, `node`, `admin`, and it lists only the
nodes the caller may use: see `list_nodes`). A mutation returns once
the reconciler has planned it: the replicas it created are in the answer, with their nodes.

Deploy, scale and rollback are signed by the deployer's wallet (docs/signing.md): the body with
`"prepare": true` changes nothing and answers the canonical deployment statement the change would
make (`mcpz.keys.signing.DeploymentStatement`: registry, deployment, release, commit, replicas, and a
revision number that only grows); the same body with that `statement` and its `signature` makes
the change. The signature must recover to the namespace's owner or a member (403
`unexpected_signer`), and the statement must still be the one the change makes (409
`statement_changed`: the deployment moved meanwhile; prepare again). Without a signature the
change is made unsigned, and nodes that require signatures refuse to run it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from mcpz.errors import NotFoundError, UsageError
from mcpz.keys import signing
from mcpz.mesh import Deploy, ProtocolError, ReplicaStatus, ResourceLimits, encode
from mcpz.names import LATEST
from registry_server.accounts import namespaces
from registry_server.accounts import service as accounts
from registry_server.accounts.auth import Forbidden, require
from registry_server.accounts.http import Caller, signature_refusal
from registry_server.accounts.service import Principal
from registry_server.deployments.logbook import LogBook
from registry_server.deployments.records import (
    Change,
    DeploymentState,
    Limits,
    NodeState,
    Signed,
    StatementChanged,
    Template,
)
from registry_server.deployments.service import MAX_REPLICAS, DeploymentService
from registry_server.deployments.templates import release_template
from registry_server.http import State, agent_name, checked_agent_name, error_response
from registry_server.logs import note
from registry_server.openapi import AGENT_SCHEMA, AgentPart, Namespace, errors
from registry_server.settings import public_url
from registry_server.state import RegistryState

router = APIRouter(tags=["deployments"])

FOLLOW_WINDOW = 10.0
"""Seconds one follow response lasts; the client goes on with `after=<last seq>`. Bounded, so an
open `mcpz logs -f` never holds up a registry that is shutting down."""
KEEPALIVE = 2.0

_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,252}")


class LimitsIn(BaseModel):
    memory_bytes: int | None = Field(default=None, ge=1, description="Memory limit of each replica")
    open_files: int | None = Field(default=None, ge=1, le=2**31 - 1, description="Open files limit")


class SigningIn(BaseModel):
    prepare: bool = Field(
        default=False,
        description="Change nothing: answer the deployment statement this change would make, to sign",
    )
    statement: str | None = Field(
        default=None, max_length=4096, description="The statement `prepare` answered, as signed"
    )
    signature: str | None = Field(
        default=None, max_length=4096, description="EIP-191 signature of `statement` by the deployer's wallet"
    )


class DeployIn(SigningIn):
    agent: str = Field(
        description="namespace/name of a published agent; also the deployment's name",
        json_schema_extra=AGENT_SCHEMA,
    )
    version: str | None = Field(
        default=None,
        description="Release to run; default: the current one, or the newest release for a new deployment",
    )
    replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS, description="Default: unchanged, or 1")
    selector: dict[str, str] | None = Field(
        default=None, description="Node labels required; default: unchanged"
    )
    limits: LimitsIn | None = Field(default=None, description="Default: unchanged, or none")
    allow_tool_drift: bool | None = Field(
        default=None,
        description="Run replicas whose tools/list differs from the tools signed with the release "
        "(part of the signed statement); default: unchanged, or false",
    )


class ScaleIn(SigningIn):
    replicas: int = Field(ge=0, le=MAX_REPLICAS)


class RollbackIn(SigningIn):
    revision: int | None = Field(
        default=None, ge=1, description="Revision to return to; default: the one before the current"
    )


def service_of(request: Request) -> DeploymentService:
    return request.app.state.mesh.service  # type: ignore[no-any-return]


async def _allow(state: RegistryState, principal: Principal | None, namespace: str, *, write: bool) -> None:
    scope = "deploy" if write or (principal is not None and principal.has("deploy")) else "read"
    await anyio.to_thread.run_sync(lambda: require(principal, scope, namespace, db=state.db))


def _check_signature(state: RegistryState, namespace: str, name: str, body: SigningIn) -> Signed | None:
    """The deployer's signature, checked against the namespace's owner and members (None: unsigned)."""
    if body.statement is None and body.signature is None:
        return None
    if body.prepare:
        raise UsageError("a prepared change carries no statement or signature: it only answers one")
    if not body.statement or not body.signature:
        raise UsageError("`statement` and `signature` go together", hint="sign what `prepare` answered")
    try:
        statement = signing.DeploymentStatement.parse(body.statement)
    except signing.StatementError as e:
        raise UsageError(f"the deployment statement is malformed: {e.message}") from e
    if statement.deployment != name:
        raise UsageError(f"the statement signed is for deployment {statement.deployment}, not {name}")
    with state.db.session() as session:
        signers = namespaces.allowed_signers(session, namespace)
    if not signers:
        raise UsageError(
            f'no one in "{namespace}" has a wallet, so no signature can be checked',
            hint="the namespace owner signs in with `mcpz login --wallet`",
        )
    try:
        signer = signing.verify_statement(statement, body.signature, signers=signers)
    except signing.UnexpectedSigner as e:
        raise signing.UnexpectedSigner(
            f"{e.message}: it is neither the owner nor a member of {namespace}",
            signer=e.signer,
            hint=e.hint,
        ) from e
    return Signed(body.statement, body.signature, signer)


async def _change(
    request: Request,
    state: RegistryState,
    namespace: str,
    name: str,
    body: SigningIn,
    make: Callable[[str, Signed | None, bool], Awaitable[Change]],
    *,
    status: int = 200,
) -> Any:
    """Check the signature, make (or prepare) the change with `make(registry, signed, prepare)`,
    and answer the deployment (or, prepared, the statement to sign)."""
    service = service_of(request)
    try:
        signed = await anyio.to_thread.run_sync(lambda: _check_signature(state, namespace, name, body))
        change: Change = await make(public_url(state.settings), signed, body.prepare)
    except signing.SignatureError as e:
        return signature_refusal(e)
    except StatementChanged as e:
        return error_response(409, e.message, e.hint, code="statement_changed")
    if body.prepare:
        return JSONResponse(
            {
                "deployment": name,
                "created": change.created,
                "revision": change.revision,
                "new_revision": change.new_revision,
                "statement": change.statement,
                "signers": list(change.signers),
            }
        )
    return JSONResponse(deployment_view(service, _found(service, name)), 201 if change.created else status)


def _found(service: DeploymentService, name: str) -> DeploymentState:
    deployment = service.deployments.get(name)
    if deployment is None:
        raise NotFoundError(f"no deployment {name}", hint=f"create it with `mcpz deploy {name}@VERSION`")
    return deployment


def _found_live(service: DeploymentService, name: str) -> DeploymentState:
    deployment = _found(service, name)
    if deployment.deleted:
        raise NotFoundError(f"no deployment {name} (it is being removed)", hint="see `mcpz deployments`")
    return deployment


# --- routes -----------------------------------------------------------------------------------


@router.post("/v1/deployments", status_code=201, responses=errors(400, 401, 403, 404, 409, 413, 422))
async def deploy(body: DeployIn, request: Request, state: State, principal: Caller) -> Any:
    """Create a deployment of a release, or update it (a new revision rolls out one replica at a time)."""
    checked_agent_name(body.agent)
    note(agent=body.agent)
    namespace = body.agent.split("/")[0]
    await _allow(state, principal, namespace, write=True)
    service = service_of(request)
    existing = service.deployments.get(body.agent)
    current = existing if existing is not None and not existing.deleted else None
    selector = (
        body.selector if body.selector is not None else dict(current.template.selector) if current else {}
    )
    for key, value in selector.items():
        if not _LABEL_KEY.fullmatch(key) or len(value) > 253:
            raise UsageError(f"invalid selector {key}={value}", hint="labels are k=v, keys [A-Za-z0-9._/-]")
    if body.limits is not None:
        limits = Limits(body.limits.memory_bytes, body.limits.open_files)
    else:
        limits = current.template.limits if current is not None else Limits()
    asked = None if body.version == LATEST else body.version
    version = asked or (current.template.version if current is not None else None)
    if body.allow_tool_drift is not None:
        drift = body.allow_tool_drift
    else:
        drift = current.template.allow_tool_drift if current is not None else False
    template = await anyio.to_thread.run_sync(
        lambda: release_template(
            state.db,
            state.repos,
            body.agent,
            version,
            limits=limits,
            selector=selector,
            allow_tool_drift=drift,
        )
    )
    _check_deployable(template)

    async def make(registry: str, signed: Signed | None, prepare: bool) -> Change:
        return await service.apply(
            body.agent, namespace, template, body.replicas, registry=registry, signed=signed, prepare=prepare
        )

    return await _change(request, state, namespace, body.agent, body, make)


@router.get("/v1/deployments", responses=errors(401, 403))
async def list_deployments(request: Request, state: State, principal: Caller) -> Any:
    """Deployments in the namespaces the caller may read."""
    service = service_of(request)
    allowed: dict[str, bool] = {}
    out = []
    for deployment in sorted(service.deployments.values(), key=lambda d: d.name):
        if deployment.namespace not in allowed:
            try:
                await _allow(state, principal, deployment.namespace, write=False)
                allowed[deployment.namespace] = True
            except Forbidden:
                allowed[deployment.namespace] = False
        if allowed[deployment.namespace]:
            out.append(deployment_view(service, deployment, instances=False))
    if not allowed:  # nothing deployed: still refuse callers without credentials
        await anyio.to_thread.run_sync(lambda: _require_any(principal, ("read", "deploy"), state))
    return JSONResponse(out)


@router.get("/v1/deployments/{namespace}/{name}", responses=errors(400, 401, 403, 404))
async def get_deployment(
    namespace: Namespace, name: AgentPart, request: Request, state: State, principal: Caller
) -> Any:
    full = agent_name(namespace, name, what="deployment")
    await _allow(state, principal, namespace, write=False)
    service = service_of(request)
    return JSONResponse(deployment_view(service, _found(service, full)))


@router.post("/v1/deployments/{namespace}/{name}/scale", responses=errors(400, 401, 403, 404, 409, 413, 422))
async def scale(
    namespace: Namespace, name: AgentPart, body: ScaleIn, request: Request, state: State, principal: Caller
) -> Any:
    full = agent_name(namespace, name, what="deployment")
    await _allow(state, principal, namespace, write=True)
    service = service_of(request)

    async def make(registry: str, signed: Signed | None, prepare: bool) -> Change:
        return await service.scale(full, body.replicas, registry=registry, signed=signed, prepare=prepare)

    return await _change(request, state, namespace, full, body, make)


@router.post(
    "/v1/deployments/{namespace}/{name}/rollback", responses=errors(400, 401, 403, 404, 409, 413, 422)
)
async def rollback(
    namespace: Namespace,
    name: AgentPart,
    request: Request,
    state: State,
    principal: Caller,
    body: RollbackIn | None = None,
) -> Any:
    """A new revision with the template of an earlier one (default: the one before the current)."""
    full = agent_name(namespace, name, what="deployment")
    await _allow(state, principal, namespace, write=True)
    service = service_of(request)
    body = body or RollbackIn()

    async def make(registry: str, signed: Signed | None, prepare: bool) -> Change:
        return await service.rollback(full, body.revision, registry=registry, signed=signed, prepare=prepare)

    return await _change(request, state, namespace, full, body, make)


@router.post("/v1/deployments/{namespace}/{name}/restart", responses=errors(400, 401, 403, 404, 422))
async def restart(
    namespace: Namespace, name: AgentPart, request: Request, state: State, principal: Caller
) -> Any:
    """Try every failed replica again now (their backoff forgotten); the revision does not change."""
    full = agent_name(namespace, name, what="deployment")
    await _allow(state, principal, namespace, write=True)
    service = service_of(request)
    _found_live(service, full)
    restarted = await service.restart(full)
    view = deployment_view(service, _found_live(service, full))
    view["restarted"] = restarted
    return view


@router.delete("/v1/deployments/{namespace}/{name}", responses=errors(400, 401, 403, 404, 409))
async def remove(
    namespace: Namespace, name: AgentPart, request: Request, state: State, principal: Caller
) -> Any:
    """Stop every replica; the deployment goes once its nodes confirm (state "deleting" until then)."""
    full = agent_name(namespace, name, what="deployment")
    await _allow(state, principal, namespace, write=True)
    service = service_of(request)
    await service.remove(full)
    deployment = service.deployments.get(full)
    if deployment is None:
        return {"name": full, "state": "deleted"}
    return JSONResponse(deployment_view(service, deployment))


@router.get("/v1/deployments/{namespace}/{name}/logs", responses=errors(400, 401, 403, 404, 422))
async def logs(
    namespace: Namespace,
    name: AgentPart,
    request: Request,
    state: State,
    principal: Caller,
    tail: Annotated[int, Query(ge=0, le=10_000, description="Lines kept before following")] = 100,
    after: Annotated[int, Query(ge=0, description="Only lines with a higher seq (to resume)")] = 0,
    follow: Annotated[bool, Query(description="Stream new lines as NDJSON")] = False,
    since: Annotated[
        float | None, Query(ge=0, description="Only lines written at or after this Unix time")
    ] = None,
    replica: Annotated[
        str, Query(max_length=64, description="Only lines of replicas whose id starts with this")
    ] = "",
) -> Any:
    """Log lines of the deployment's replicas, history kept on disk included (the last `tail`);
    with `follow`, then an NDJSON stream of new ones (a blank line every few seconds keeps it
    alive; it ends after a while: resume with `after`)."""
    full = agent_name(namespace, name, what="deployment")
    await _allow(state, principal, namespace, write=False)
    service = service_of(request)
    _found(service, full)
    book: LogBook = service.logs
    if not follow:
        lines = await anyio.to_thread.run_sync(
            lambda: book.tail(full, tail, after, since=since, replica=replica)
        )
        return {"lines": [line.to_dict() for line in lines]}
    return StreamingResponse(
        _follow(service, full, tail, after, since, replica),
        media_type="application/x-ndjson",
        headers={"Cache-Control": "no-cache"},
    )


@router.get("/v1/nodes", responses=errors(401, 403))
async def list_nodes(request: Request, state: State, principal: Caller) -> Any:
    """The nodes the caller may use, lost ones too: its own, those of the accounts it shares a
    namespace with, and shared ones. Accounts in the `node_admins` setting, with an `admin` token,
    see every node."""
    service = service_of(request)
    owners = {node.account_id for node in service.nodes.values()}
    visible, names = await anyio.to_thread.run_sync(lambda: _node_audience(state, principal, owners))
    shown = [
        node
        for node in service.nodes.values()
        if visible is None or node.account_id in visible or service.is_shared(node)
    ]
    return [
        node_view(service, node, names.get(node.account_id, ""))
        for node in sorted(shown, key=lambda n: (n.name, n.node_id))
    ]


def _node_audience(
    state: RegistryState, principal: Principal | None, owners: set[int]
) -> tuple[set[int] | None, dict[int, str]]:
    """Whose nodes the caller sees (None: everyone's), and the names of the accounts in `owners`."""
    principal = _require_any(principal, ("read", "deploy", "node", "admin"), state)
    admin = principal.has("admin") and principal.account_name in state.settings.node_admins
    with state.db.session() as session:
        visible = None if admin else namespaces.colleagues(session, principal.account_id)
        names = accounts.names_of(session, owners)
    return visible, names


def _require_any(principal: Principal | None, scopes: tuple[str, ...], state: RegistryState) -> Principal:
    held = next((s for s in scopes if principal is not None and principal.has(s)), scopes[0])
    return require(principal, held, db=state.db)


async def _follow(
    service: DeploymentService, name: str, tail: int, after: int, since: float | None, replica: str
) -> AsyncIterator[bytes]:
    book: LogBook = service.logs
    queue = book.subscribe(name)
    loop = asyncio.get_running_loop()
    try:
        last = after
        history = await anyio.to_thread.run_sync(
            lambda: book.tail(name, tail, after, since=since, replica=replica)
        )
        for line in history:
            last = line.seq
            yield _ndjson(line.to_dict())
        deadline = loop.time() + FOLLOW_WINDOW
        while name in service.deployments:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(min(remaining, KEEPALIVE)):
                    entry = await queue.get()
            except TimeoutError:
                yield b"\n"
                continue
            if entry.seq > last and entry.replica.startswith(replica):
                last = entry.seq
                yield _ndjson(entry.to_dict())
    finally:
        book.unsubscribe(name, queue)


def _ndjson(item: dict[str, Any]) -> bytes:
    return json.dumps(item, separators=(",", ":")).encode() + b"\n"


def _check_deployable(template: Template) -> None:
    """Refuse a release whose deploy frame would break the protocol (e.g. an env key with "=")."""
    try:
        encode(
            Deploy(
                id=1,
                deployment=template.agent,
                replica_id="check",
                epoch=1,
                agent=template.agent,
                version=template.version,
                commit=template.commit,
                registry_url="http://registry.invalid/git/x/y.git",
                command=template.command,
                env=template.env,
                limits=ResourceLimits(
                    memory_bytes=template.limits.memory_bytes, open_files=template.limits.open_files
                ),
                dependencies=template.dependencies,
                sessions=template.sessions,
            )
        )
    except ProtocolError as e:
        raise UsageError(f"{template.agent} {template.version} cannot be deployed: {e.message}") from None


# --- views ------------------------------------------------------------------------------------


def deployment_view(
    service: DeploymentService, deployment: DeploymentState, *, instances: bool = True
) -> Any:
    """What the API shows of a deployment: desired state, replicas by status, revisions."""
    desired = deployment.desired()
    template = deployment.template
    by_status = {s.value: 0 for s in ReplicaStatus}
    ready = updated = old = stopping = 0
    failed = False
    failure = ""  # the first current failed replica's detail
    waiting = ""  # why unplaced replicas wait, worked out once
    clock = time.monotonic()
    rows = []
    for replica in sorted(service.replicas_of(deployment.name), key=lambda r: r.replica_id):
        node = service.nodes.get(replica.node_id) if replica.node_id else None
        current = desired.is_current(replica.revision)
        revision = deployment.revisions.get(replica.revision)
        detail = replica.detail
        if replica.node_id is None:
            if not detail:
                detail = waiting = waiting or service.unplaced_reason(deployment)
        elif node is not None and not node.live:
            detail = detail or f"its node {node.name} is lost; waiting for an eligible node"
        due = service.retries.due_at(replica.replica_id)
        rows.append(
            {
                "id": replica.replica_id,
                "revision": replica.revision,
                "version": revision.template.version if revision else None,
                "current": current,
                "node": replica.node_id,
                "node_name": node.name if node else None,
                "epoch": replica.epoch or None,
                "status": replica.status.value,
                "stopping": replica.stopping,
                "detail": detail,
                "exit_code": replica.exit_code,
                "retry_in": (
                    round(max(0.0, due - clock), 1)
                    if due is not None and replica.status is ReplicaStatus.FAILED
                    else None
                ),
            }
        )
        if replica.stopping:
            stopping += 1
            continue
        by_status[replica.status.value] += 1
        if not current:
            old += 1
            continue
        updated += 1
        if replica.status is ReplicaStatus.RUNNING and node is not None and node.live:
            ready += 1
        if replica.status is ReplicaStatus.FAILED and not (failed and failure != "no detail"):
            # The reason names a failure the node explained, when any did: a heartbeat may report a
            # replica failed a moment before its status frame brings the detail.
            failed, failure = True, replica.detail or "no detail"
    if deployment.deleted:
        phase = "deleting"
    elif failed:
        phase = "failed"
    elif ready >= deployment.replicas and updated == deployment.replicas and old == 0:
        phase = "ready"
    else:
        phase = "progressing"
    if phase == "failed":
        reason = f"replica failed: {failure}"
    elif phase == "progressing" and waiting:
        reason = waiting
    else:
        reason = ""
    # Stuck: nodes are up, yet none may take a replica (labels, owners, capacity); waiting for a
    # node to connect at all is not stuck (one may be starting).
    stuck = bool(waiting) and phase == "progressing" and service.any_node_up()
    current_revision = deployment.revisions[deployment.revision]
    view: dict[str, Any] = {
        "name": deployment.name,
        "namespace": deployment.namespace,
        "agent": template.agent,
        "version": template.version,
        "commit": template.commit,
        "revision": deployment.revision,
        "replicas": deployment.replicas,
        "statement": current_revision.statement,
        "signers": [signer for signer, _ in current_revision.signatures],
        "selector": dict(template.selector),
        "limits": template.limits.to_dict(),
        "allow_tool_drift": template.allow_tool_drift,
        "state": phase,
        "reason": reason,
        "stuck": stuck,
        "rollback_to": deployment.rollback_target(),
        "ready": ready,
        "updated": updated,
        "old": old,
        "stopping": stopping,
        "by_status": by_status,
        "created_at": deployment.created_at.isoformat(),
        "updated_at": deployment.updated_at.isoformat(),
    }
    if instances:
        view["instances"] = rows
        view["revisions"] = [
            {
                "revision": r.number,
                "version": r.template.version,
                "commit": r.template.commit,
                "created_at": r.created_at.isoformat(),
                "current": r.number == deployment.revision,
                "signers": [signer for signer, _ in r.signatures],
            }
            for r in sorted(deployment.revisions.values(), key=lambda r: -r.number)
        ]
    return view


def node_view(service: DeploymentService, node: NodeState, owner: str) -> dict[str, Any]:
    assigned = len(service.assigned_to(node.node_id))
    return {
        "id": node.node_id,
        "name": node.name,
        "owner": owner,
        "shared": service.is_shared(node),
        "state": node.state,
        "connected": service.transport.is_connected(node.node_id),
        "labels": dict(node.labels),
        "capacity": node.capacity,
        "replicas": assigned,
        "free": max(0, node.capacity - assigned),
        "software_version": node.software_version,
        "cpu_percent": node.cpu_percent,
        "memory_used": node.memory_used,
        "memory_total": node.memory_total,
        "load": node.load,
        "stale_frames": node.stale_frames,
        "created_at": node.created_at.isoformat(),
        "last_seen_at": node.last_seen_at.isoformat() if node.last_seen_at else None,
        "lost_at": node.lost_at.isoformat() if node.lost_at else None,
    }
