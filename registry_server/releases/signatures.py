"""Release signatures: each checked with `mcpz.keys.signing` against the namespace's keys before it is
stored, so what the registry serves to nodes can be checked by them without trusting it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mcpz.errors import NotFoundError, UsageError
from mcpz.keys import signing
from registry_server.accounts.namespaces import allowed_signers
from registry_server.orm import utcnow
from registry_server.releases.models import Agent, Release, ReleaseSignature


def release_statement(registry: str, name: str, release: Release) -> signing.ReleaseStatement:
    return signing.ReleaseStatement(
        registry=registry,
        name=name,
        version=release.version,
        commit=release.commit,
        manifest_sha256=signing.sha256_hex(release.manifest.encode("utf-8")),
    )


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
    session: Session, registry: str, name: str, version: str, signature: str
) -> ReleaseSignature:
    """Check `signature` over the release's statement against the namespace's keys, and keep it."""
    release = find_release(session, name, version)
    namespace = name.split("/")[0]
    signers = allowed_signers(session, namespace)
    if not signers:
        raise UsageError(
            f'no one in "{namespace}" has a wallet, so no signature can be checked',
            hint="the namespace owner signs in with `mcpz login --wallet`",
        )
    signer = signing.verify_statement(release_statement(registry, name, release), signature, signers=signers)
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
