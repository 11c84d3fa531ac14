"""Creating agents and releasing versions: the steps that touch both the manifest and git.

A release is an annotated tag `v{version}` on a commit whose manifest declares that version.
Annotated rather than lightweight: the tag object records who released and when, it is what
`git describe` and `git push --follow-tags` act on, and it is the object a publisher's
signature can later be attached to.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mcpz.errors import ManifestError, RepositoryError, UsageError
from mcpz.manifest import MANIFEST_FILE, Manifest, check_version, load_manifest, parse_manifest
from mcpz.names import AgentName
from mcpz.repo.model import DEFAULT_BRANCH, BumpPart, InitResult, ReleaseResult, bump_version, tag_for

if TYPE_CHECKING:
    from mcpz.repo.repository import AgentRepo

_VERSION_LINE = re.compile(r"""^(?P<lead>\s*version\s*=\s*)(?P<q>["'])(?P<value>[^"'\n]*)(?P=q)""", re.M)
_AGENT_HEADER = re.compile(r"^\s*\[agent\]\s*(#.*)?$", re.M)
_TABLE_HEADER = re.compile(r"^\s*\[", re.M)


def manifest_with_version_text(text: str, manifest: Manifest, version: str) -> str:
    """The manifest's text with `[agent].version` changed, comments and layout kept.

    Falls back to a fresh rendering (`Manifest.to_toml`) when the text cannot be edited in
    place safely.
    """
    updated = manifest.with_version(version)
    start = _AGENT_HEADER.search(text)
    if start:
        following = _TABLE_HEADER.search(text, start.end())
        end = following.start() if following else len(text)
        match = _VERSION_LINE.search(text, start.end(), end)
        if match:
            edited = text[: match.start("value")] + version + text[match.end("value") :]
            with contextlib.suppress(ManifestError):
                if parse_manifest(edited) == updated:
                    return edited
    return updated.to_toml()


def write_manifest_version(root: Path, manifest: Manifest, version: str) -> None:
    """Write the new version into `root/mcpz.toml` atomically (temp file, then os.replace)."""
    path = root / MANIFEST_FILE
    text = manifest_with_version_text(path.read_text(encoding="utf-8"), manifest, version)
    fd, temp = tempfile.mkstemp(prefix=".mcpz.toml.", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(temp, path.stat().st_mode & 0o7777)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def release(
    repo: AgentRepo,
    version: str | None = None,
    *,
    bump: BumpPart | None = None,
    author: str | None = None,
    message: str | None = None,
) -> ReleaseResult:
    """Set the manifest's version, commit, and tag `v{version}`.

    Refuses (UsageError) when both or neither of `version`/`bump` are given, when the tag
    exists, and when anything but `mcpz.toml` has uncommitted changes. If the manifest already
    declares the version and nothing changed, the current commit is tagged as it is.
    """
    if (version is None) == (bump is None):
        raise UsageError("give either a VERSION or --bump major|minor|patch", hint="e.g. mcpz release 1.0.0")
    manifest = load_manifest(repo.root)
    new_version = bump_version(manifest.version, bump) if bump else check_version(version, key="VERSION")
    tag = tag_for(new_version)
    if repo.has_tag(tag):
        raise UsageError(
            f"{tag} already exists: version {new_version} was released before",
            hint="versions are immutable; release a higher one, e.g. --bump patch",
        )
    status = repo.status()
    dirty = [c.path for c in (*status.staged, *status.unstaged) if c.path != MANIFEST_FILE]
    dirty += [p for p in status.untracked if p != MANIFEST_FILE]
    if dirty:
        listed = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        raise UsageError(
            f"uncommitted changes: {listed}",
            hint='commit them first with `mcpz commit -m "..."`, then release',
        )
    if new_version != manifest.version:
        write_manifest_version(repo.root, manifest, new_version)
    result = repo.commit(message or f"Release {new_version}", author=author)
    if repo.head_id() is None:
        raise UsageError("nothing to release: there are no commits yet")
    repo.tag(tag, message=f"{manifest.name} {new_version}", author=author)
    return ReleaseResult(
        name=manifest.name,
        version=new_version,
        previous_version=manifest.version,
        tag=tag,
        commit=repo.commit_info("HEAD"),
        committed=result.committed,
    )


def enclosing_repository(path: Path) -> Path | None:
    """The git repository (work tree) that `path` would be inside of, not counting `path` itself."""
    for folder in path.absolute().parents:
        if (folder / ".git").exists():
            return folder
    return None


def init_agent(
    path: str | os.PathLike[str],
    name: str,
    *,
    template: str = "python",
    force: bool = False,
    author: str | None = None,
    env: Mapping[str, str] | None = None,
) -> InitResult:
    """Create an agent in `path` from a template, as a repository with one commit on `main`.

    Refuses a bad name or template before writing anything, and a folder that is not empty
    (anything but `.git` in it) unless `force`.
    """
    from mcpz.bundled import bundled_path
    from mcpz.repo.repository import AgentRepo
    from mcpz.repo.templates import available_templates, render_template

    agent = AgentName.parse(name)
    source = bundled_path("templates") / template
    if template.startswith((".", "_")) or "/" in template or not source.is_dir():
        choices = ", ".join(available_templates())
        raise UsageError(f'no template "{template}"', hint=f"choose one of: {choices}")
    dest = Path(path).absolute()
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a folder")
    if dest.is_dir() and not force:
        present = sorted(p.name for p in dest.iterdir() if p.name != ".git")
        if present:
            shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
            raise UsageError(
                f"{dest} is not empty ({shown})",
                hint="choose a new or empty folder, or pass --force to add the agent's files to it",
            )
    inside = enclosing_repository(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        written = render_template(template, dest, str(agent))
    except OSError as e:
        raise RepositoryError(f"cannot create {dest}: {e}") from e
    repo = AgentRepo.open(dest, env) if (dest / ".git").exists() else AgentRepo.init(dest, env)
    with repo:
        result = repo.commit(f"Create {agent} from the {template} template", author=author)
        branch = repo.branch() or DEFAULT_BRANCH
    return InitResult(
        path=str(dest),
        name=str(agent),
        template=template,
        files=tuple(sorted(p.relative_to(dest).as_posix() for p in written)),
        commit=result,
        branch=branch,
        inside=str(inside) if inside is not None else None,
    )
