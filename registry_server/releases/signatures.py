"""Release signatures: each checked with `mcpz.keys.signing` against the namespace's keys before it
is stored, so what the registry serves to nodes can be checked by them without trusting it.

A release's statement carries the digest of its signed tool definitions when it has them
(`release_tools`, not observed): those are pinned by the first signature, in the same transaction,
and every later signature (a co-signature) is over the same digest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mcpz.errors import NotFoundError, RefusedError, UsageError
from mcpz.keys import signing
from mcpz.tooldefs import ToolDefinitionsError, tools_digest
from registry_server.accounts.namespaces import allowed_signers
from registry_server.orm import utcnow
from registry_server.releases.models import Agent, Release, ReleaseSignature
from registry_server.releases.tools import record_tools, tools_for_releases


def release_statement(
    registry: str, name: str, release: Release, tools: str | None = None
) -> signing.ReleaseStatement:
    """The statement signed for `release`; `tools` is the digest of its signed tools, if it has some."""
    return signing.ReleaseStatement(
        registry=registry,
        name=name,
        version=release.version,
        commit=release.commit,
        manifest_sha256=signing.sha256_hex(release.manifest.encode("utf-8")),
        tools=tools,
    )


def signed_tools_digest(session: Session, release: Release) -> str | None:
    """The digest of the release's signed tool definitions; None when it has none (or only observed)."""
    found = tools_for_releases(session, [release.id]).get(release.id)
    return found.digest if found is not None and not found.observed else None


def find_release(session: Session, name: str, version: str) -> Release:
    release = session.scalar(
        select(Release)
        .join(Agent, Agent.id == Release.agent_id)
        .where(Agent.name == name, Release.version == version)
    )
    if release is None:
        raise NotFoundError(f"{name} {version} is not published", hint=f"see `mcpz versions {name}`")
    return release


def sign_release(
    session: Session,
    registry: str,
    name: str,
    version: str,
    signature: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> ReleaseSignature:
    """Check `signature` over the release's statement against the namespace's keys, and keep it.

    With `tools` (the agent's `tools/list` at publish), the statement signed must carry their
    digest, recomputed here, and they are pinned to the release; only the first signature of a
    release may pin tools (a release signed without them, or with observed ones, stays so), and
    pinned tools never change. Without `tools`, the statement carries the digest of the tools
    pinned already, if any.
    """
    release = find_release(session, name, version)
    namespace = name.split("/")[0]
    signers = allowed_signers(session, namespace)
    if not signers:
        raise UsageError(
            f'no one in "{namespace}" has a wallet, so no signature can be checked',
            hint="the namespace owner signs in with `mcpz login --wallet`",
        )
    pinned = tools_for_releases(session, [release.id]).get(release.id)
    digest = pinned.digest if pinned is not None and not pinned.observed else None
    if tools is not None:
        try:
            given = tools_digest(tools)
        except ToolDefinitionsError as e:
            raise UsageError(f"the tool definitions are not valid: {e}") from e
        if digest is not None and given != digest:
            raise RefusedError(
                f"{name} {version} has other tool definitions pinned already; they cannot change",
                status=409,
                hint="publish a new version to change its tools",
            )
        if digest is None:
            has_signatures = session.scalar(
                select(ReleaseSignature.id).where(ReleaseSignature.release_id == release.id).limit(1)
            )
            if has_signatures is not None or pinned is not None:
                raise RefusedError(
                    f"{name} {version} was signed (or observed) without pinned tools; tools are "
                    "pinned only by a release's first signature",
                    status=409,
                    hint="publish a new version to pin its tools",
                )
        digest = given
    statement = release_statement(registry, name, release, digest)
    signer = signing.verify_statement(statement, signature, signers=signers)
    if tools is not None:
        record_tools(session, release.id, tools, observed=False)
    row = session.scalar(
        select(ReleaseSignature).where(
            ReleaseSignature.release_id == release.id, ReleaseSignature.signer == signer
        )
    )
    if row is None:
        row = ReleaseSignature(release_id=release.id, signer=signer, signature=signature, created_at=utcnow())
        session.add(row)
        session.flush()
    return row


def signatures_by_release(session: Session, release_ids: list[int]) -> dict[int, list[ReleaseSignature]]:
    found: dict[int, list[ReleaseSignature]] = {}
    if not release_ids:
        return found
    query = (
        select(ReleaseSignature)
        .where(ReleaseSignature.release_id.in_(release_ids))
        .order_by(ReleaseSignature.id)
    )
    for row in session.scalars(query):
        found.setdefault(row.release_id, []).append(row)
    return found
