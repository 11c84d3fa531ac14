"""What a revision runs, read from a published release: its manifest's command and env, and the
agents locked in its `mcpz.lock`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from mcpz.errors import NotFoundError, RefusedError, UsageError
from mcpz.mesh import LockedDependency, SessionPolicy
from mcpz.names import LATEST
from registry_server.db import Database
from registry_server.deployments.records import Limits, Template


def release_template(
    db: Database,
    repos: Any,
    agent: str,
    version: str | None,
    *,
    limits: Limits,
    selector: Mapping[str, str],
    allow_tool_drift: bool = False,
) -> Template:
    """The template that runs release `agent` `version` (default: the newest that is not yanked
    nor a pre-release), with the manifest's command and env and the release's locked dependencies."""
    from packaging.version import Version

    from mcpz.manifest import parse_manifest
    from registry_server.releases.models import Agent, Release

    with db.session() as session:
        row = session.scalar(select(Agent).where(Agent.name == agent))
        if row is None:
            raise NotFoundError(f"no agent {agent} in this registry", hint="publish it with `mcpz push`")
        releases = list(session.scalars(select(Release).where(Release.agent_id == row.id)))
    if version is None or version == LATEST:
        candidates = [r for r in releases if not r.yanked and not Version(r.version).is_prerelease]
        if not candidates:
            raise NotFoundError(f"{agent} has no release to deploy", hint="name a version: NAME@VERSION")
        release = max(candidates, key=lambda r: Version(r.version))
    else:
        found = [r for r in releases if r.version == version]
        if not found:
            raise NotFoundError(f"{agent} {version} is not published", hint=f"see `mcpz versions {agent}`")
        release = found[0]
    manifest = parse_manifest(release.manifest)
    if manifest.run is None:
        raise UsageError(f"{agent} is a {manifest.kind}, which is not run on its own; deploy an agent")
    return Template(
        agent=agent,
        version=release.version,
        commit=release.commit,
        command=tuple(manifest.run.command),
        env=dict(manifest.run.env),
        limits=limits,
        selector=dict(selector),
        dependencies=_locked_dependencies(repos, agent, release.commit),
        allow_tool_drift=allow_tool_drift,
        sessions=SessionPolicy(
            mode=manifest.run.sessions,
            max_processes=manifest.run.max_sessions,
            idle=manifest.run.session_idle,
        ),
    )


def _locked_dependencies(repos: Any, agent: str, commit: str) -> tuple[LockedDependency, ...]:
    """The agents in the release's `mcpz.lock`, if its tree has one."""
    from dulwich.objects import Blob, Commit, Tree

    from mcpz.lockfile import LOCK_FILE, parse_lock

    repo = repos.open(agent)
    if repo is None:
        return ()
    try:
        obj = repo.object_store[commit.encode()]
        tree = repo.object_store[obj.tree] if isinstance(obj, Commit) else None
        if not isinstance(tree, Tree) or LOCK_FILE.encode() not in tree:
            return ()
        _mode, sha = tree[LOCK_FILE.encode()]
        blob = repo.object_store[sha]
        if not isinstance(blob, Blob):
            return ()
        text = blob.as_raw_string().decode("utf-8")
    except (KeyError, UnicodeDecodeError) as e:
        raise RefusedError(f"cannot read {LOCK_FILE} of {agent} at {commit[:12]}: {e}") from e
    finally:
        repo.close()
    lock = parse_lock(text)
    return tuple(LockedDependency(name=a.name, version=a.version, commit=a.commit) for a in lock.agents)
