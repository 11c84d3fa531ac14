"""Publishing: which ref updates a push may make, and the releases a `v*` tag publishes.

A release is a tag `v{version}` on a commit whose `mcpz.toml` names this agent and that
version. Once published it is immutable: the tag may not move or go, and the version may not
be published again at another commit. Branches are free.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dulwich.objects import Commit, ShaFile, Tag, Tree
from dulwich.refs import check_ref_format
from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mcpz.errors import ManifestError, NotFoundError, RefusedError
from mcpz.manifest import MANIFEST_FILE, Manifest, parse_manifest
from registry_server.accounts.namespaces import owner_address
from registry_server.accounts.service import names_of
from registry_server.orm import utcnow
from registry_server.releases.models import Agent, Release, ReleaseSignature
from registry_server.releases.signatures import signatures_by_release

ZERO = b"0" * 40
Lookup = Callable[[bytes], ShaFile | None]


@dataclass(frozen=True)
class RefUpdate:
    old: bytes
    new: bytes
    ref: bytes


@dataclass(frozen=True)
class PlannedRelease:
    version: str
    commit: str
    manifest: Manifest
    manifest_text: str


@dataclass
class Plan:
    """Per ref: None when allowed, else the reason it is refused; and the releases to record."""

    errors: list[str | None] = field(default_factory=list)
    releases: list[PlannedRelease] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return any(e is not None for e in self.errors)


def _peel(sha: bytes, lookup: Lookup) -> Commit | None:
    obj = lookup(sha)
    for _ in range(10):
        if isinstance(obj, Tag):
            obj = lookup(obj.object[1])
        else:
            break
    return obj if isinstance(obj, Commit) else None


def manifest_at(commit: Commit, lookup: Lookup) -> str | None:
    tree = lookup(commit.tree)
    if not isinstance(tree, Tree):
        return None
    try:
        _mode, sha = tree[MANIFEST_FILE.encode()]
    except KeyError:
        return None
    blob = lookup(sha)
    if blob is None:
        return None
    try:
        return blob.as_raw_string().decode("utf-8")  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        return None


def _check_release_tag(
    name: str, version: str, new: bytes, lookup: Lookup, published: Mapping[str, str]
) -> tuple[str | None, PlannedRelease | None]:
    try:
        normal = str(Version(version))
    except InvalidVersion:
        return f"tag v{version} is reserved for releases and {version!r} is not a PEP 440 version", None
    if normal != version:
        return f"release tags use the normal form of the version: v{normal}", None
    commit = _peel(new, lookup)
    if commit is None:
        return f"tag v{version} does not point to a commit", None
    commit_id = commit.id.decode()
    if version in published:
        if published[version] == commit_id:
            return None, None
        return (
            f"{name} {version} is already published at {published[version][:12]}; "
            "releases are immutable: bump the version to publish",
            None,
        )
    text = manifest_at(commit, lookup)
    if text is None:
        return f"tag v{version}: the tagged commit has no {MANIFEST_FILE}", None
    try:
        manifest = parse_manifest(text)
    except ManifestError as e:
        return f"tag v{version}: {e.message}", None
    if manifest.name != name:
        return (
            f'tag v{version}: {MANIFEST_FILE} names "{manifest.name}", but this repository is "{name}"',
            None,
        )
    if manifest.version != version:
        return (
            f"tag v{version}: {MANIFEST_FILE} declares version {manifest.version}; "
            f"tag the commit that declares {version}",
            None,
        )
    return None, PlannedRelease(version, commit_id, manifest, text)


def plan_updates(name: str, updates: list[RefUpdate], lookup: Lookup, published: Mapping[str, str]) -> Plan:
    """Decide every ref update of one push. Pure: reads objects through `lookup`."""
    plan = Plan()
    for update in updates:
        ref = update.ref.decode("utf-8", "replace")
        error: str | None = None
        if not check_ref_format(update.ref) or not update.ref.isascii():
            error = f"{ref!r} is not a valid ref name"
        elif ref.startswith("refs/heads/"):
            if update.new != ZERO and _peel(update.new, lookup) is None:
                error = "branches must point to commits"
        elif ref.startswith("refs/tags/v"):
            version = ref[len("refs/tags/v") :]
            if update.new == ZERO:
                error = f"release tag v{version} cannot be deleted; yank the version instead"
            elif update.old != ZERO and update.old != update.new:
                error = f"release tag v{version} cannot be moved; bump the version to publish"
            else:
                error, planned = _check_release_tag(name, version, update.new, lookup, published)
                if planned is not None:
                    plan.releases.append(planned)
        elif ref.startswith("refs/tags/"):
            if update.old != ZERO and update.new != update.old:
                error = "tags cannot be moved or deleted here"
        else:
            error = "only branches (refs/heads/*) and tags (refs/tags/*) can be pushed"
        plan.errors.append(error)
    return plan


def published_versions(session: Session, name: str) -> dict[str, str]:
    agent = session.scalar(select(Agent).where(Agent.name == name))
    if agent is None:
        return {}
    rows = session.execute(select(Release.version, Release.commit).where(Release.agent_id == agent.id))
    return {version: commit for version, commit in rows}


def record_releases(
    session: Session, agent: Agent, publisher_id: int, releases: list[PlannedRelease]
) -> None:
    """Insert the releases in the caller's transaction; a version published meanwhile refuses all."""
    for planned in releases:
        session.add(
            Release(
                agent_id=agent.id,
                version=planned.version,
                commit=planned.commit,
                manifest=planned.manifest_text,
                dependencies=json.dumps(dict(planned.manifest.dependencies), sort_keys=True),
                publisher_id=publisher_id,
                published_at=utcnow(),
                yanked=False,
                yank_reason="",
            )
        )
        agent.description = planned.manifest.description or agent.description
    if releases:
        agent.serial += 1
    try:
        session.flush()
    except IntegrityError as e:
        raise RefusedError(
            "this version was published by a concurrent push; bump the version to publish"
        ) from e


@dataclass(frozen=True)
class AgentReleases:
    """An agent with every release in version order, and what its listing shows beside them."""

    agent: Agent
    releases: list[Release]
    publishers: dict[int, str]  # account id -> name
    signatures: dict[int, list[ReleaseSignature]]  # release id -> its signatures
    owner_address: str | None  # the namespace owner's key: its signature is shown first


def agent_releases(session: Session, name: str) -> AgentReleases:
    """`name` and its releases; NotFoundError when no such agent was ever pushed."""
    agent = session.scalar(select(Agent).where(Agent.name == name))
    if agent is None:
        raise NotFoundError(f"no agent {name} in this registry")
    releases = sorted(
        session.scalars(select(Release).where(Release.agent_id == agent.id)), key=lambda r: Version(r.version)
    )
    return AgentReleases(
        agent=agent,
        releases=releases,
        publishers=names_of(session, (r.publisher_id for r in releases)),
        signatures=signatures_by_release(session, [r.id for r in releases]),
        owner_address=owner_address(session, agent.namespace),
    )


def set_yanked(session: Session, name: str, version: str, yanked: bool, reason: str = "") -> Release:
    agent = session.scalar(select(Agent).where(Agent.name == name))
    release = None
    if agent is not None:
        release = session.scalar(
            select(Release).where(Release.agent_id == agent.id, Release.version == version)
        )
    if agent is None or release is None:
        raise NotFoundError(f"{name} {version} is not published", hint=f"see `mcpz versions {name}`")
    if release.yanked != yanked or release.yank_reason != reason:
        release.yanked = yanked
        release.yank_reason = reason if yanked else ""
        agent.serial += 1
    return release
