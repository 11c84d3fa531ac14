"""Where an agent folder stands against its registry: ahead/behind, and whether its version is out.

`mcpz status --remote` calls this; plain `mcpz status` never does (it stays offline and fast). One
request: the refs the registry advertises for the agent's repository (git's own ref discovery),
read with a short timeout. From them: the registry's head of the current branch (ahead/behind by
walking the local history), whether the tag `v{version}` of the manifest's version exists (and on
which commit), and the highest published version, for the warning that a new release would be
lower than one already out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from mcpz.errors import NotFoundError

TIMEOUT = 10.0


@dataclass(frozen=True)
class RemoteStatus:
    registry: str
    name: str
    version: str
    branch: str
    head: str
    remote_head: str | None  # None: the branch is not on the registry
    ahead: int | None  # None: unknown (the registry has commits this clone lacks)
    behind: int | None
    published: bool
    published_commit: str | None
    latest: str | None  # the highest version published, yanked or not
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "name": self.name,
            "version": self.version,
            "branch": self.branch,
            "head": self.head,
            "remote_head": self.remote_head,
            "ahead": self.ahead,
            "behind": self.behind,
            "published": self.published,
            "published_commit": self.published_commit,
            "latest": self.latest,
            "warnings": list(self.warnings),
        }

    def summary(self) -> list[str]:
        """The lines `mcpz status --remote` prints."""
        lines: list[str] = []
        if self.remote_head is None:
            lines.append(f"{self.branch} is not on {self.registry} yet (`mcpz push` sends it)")
        elif self.ahead == 0 and self.behind == 0:
            lines.append(f"{self.branch} is up to date with {self.registry}")
        elif self.behind is None:
            lines.append(
                f"{self.branch} and the registry's have diverged, or it has commits you lack (`mcpz pull`)"
            )
        else:
            parts = []
            if self.ahead:
                parts.append(f"ahead by {self.ahead} commit{'s' if self.ahead != 1 else ''} (`mcpz push`)")
            if self.behind:
                parts.append(f"behind by {self.behind} commit{'s' if self.behind != 1 else ''} (`mcpz pull`)")
            lines.append(f"{self.branch} is " + " and ".join(parts) + f" of {self.registry}")
        if self.published and self.published_commit == self.head:
            lines.append(f"{self.name} {self.version} is published from this commit")
        elif self.published:
            lines.append(
                f"{self.name} {self.version} is published from another commit "
                f"({(self.published_commit or '')[:12]}): bump the version to publish this one"
            )
        else:
            lines.append(f"{self.name} {self.version} is not published yet (`mcpz push` publishes it)")
        return lines


def lower_than_published(version: str, published: list[str]) -> str | None:
    """A warning when `version` is lower than the highest of `published` (and not one of them). Pure."""
    versions: list[Version] = []
    for text in published:
        try:
            versions.append(Version(text))
        except InvalidVersion:
            continue
    if not versions or version in published:
        return None
    latest = max(versions)
    try:
        if Version(version) >= latest:
            return None
    except InvalidVersion:
        return None
    return (
        f"{version} is lower than the published {latest}: new resolutions of a range that allows "
        f"both still pick {latest}"
    )


def published_versions(refs: dict[bytes, bytes]) -> dict[str, str]:
    """version -> commit, from a repository's advertised refs (`refs/tags/v*`; peeled where annotated)."""
    found: dict[str, str] = {}
    for ref, sha in refs.items():
        name = ref.decode("utf-8", "replace")
        if not name.startswith("refs/tags/v") or name.endswith("^{}"):
            continue
        peeled = refs.get(ref + b"^{}", sha)
        found[name.removeprefix("refs/tags/v")] = peeled.decode()
    return found


def _count(repo: Any, include: bytes, exclude: bytes | None) -> int:
    walker = repo.get_walker(include=[include], exclude=[exclude] if exclude else None)
    return sum(1 for _ in walker)


def remote_status(path: Path, registry: str, token: str | None, *, timeout: float = TIMEOUT) -> RemoteStatus:
    """Compare the agent repository at `path` with its repository on `registry`."""
    from dulwich.client import HttpGitClient, HTTPUnauthorized
    from dulwich.errors import GitProtocolError, NotGitRepository
    from urllib3.exceptions import HTTPError

    from mcpz.client.publish import head_manifest, open_repo, repo_url, translate_transport

    repo = open_repo(path)
    try:
        branch, head, manifest = head_manifest(repo)
        client = HttpGitClient(
            repo_url(registry, manifest.name),
            username="mcpz" if token else None,
            password=token,
            timeout=timeout,
        )
        try:
            refs: dict[bytes, bytes] = dict(client.get_refs(b"").refs)
        except NotGitRepository:
            refs = {}  # the registry has no repository of that name: nothing pushed yet
        except (GitProtocolError, HTTPUnauthorized, OSError, HTTPError) as e:
            translated = translate_transport(e, registry)
            if not isinstance(translated, NotFoundError):
                raise translated from e
            refs = {}
        remote = refs.get(branch)
        ahead: int | None
        behind: int | None
        if remote is None:
            ahead, behind = _count(repo, head.encode(), None), 0
        elif remote in repo.object_store:
            ahead = _count(repo, head.encode(), remote)
            behind = _count(repo, remote, head.encode())
        else:
            ahead, behind = None, None
        versions = published_versions(refs)
        warnings = []
        lower = lower_than_published(manifest.version, list(versions))
        if lower:
            warnings.append(lower)
        latest = max((v for v in versions if _is_version(v)), key=Version, default=None)
        return RemoteStatus(
            registry=registry,
            name=manifest.name,
            version=manifest.version,
            branch=branch.decode().removeprefix("refs/heads/"),
            head=head,
            remote_head=remote.decode() if remote else None,
            ahead=ahead,
            behind=behind,
            published=manifest.version in versions,
            published_commit=versions.get(manifest.version),
            latest=latest,
            warnings=warnings,
        )
    finally:
        repo.close()


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True
