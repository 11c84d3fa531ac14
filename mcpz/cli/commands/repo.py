"""Repository commands: init, commit, status, log, diff, show, release.

Each parses its options, calls `mcpz.repo.repository.AgentRepo` (imported when the command runs, so that
`mcpz --help` and other commands do not pay for dulwich), and renders the result: data on
stdout (the `--json` payload with --json), talk on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mcpz.cli import repo_views
from mcpz.cli.common import RegistryOpt, TokenOpt, settings, token_for
from mcpz.cli.output import out
from mcpz.cli.repo_views import decorated, open_repo, print_patch

if TYPE_CHECKING:
    from rich.console import Console

    from mcpz.repo.model import CommitInfo, FileAtRev, ShowCommit

_AUTHOR = typer.Option("--author", help='Commit as "Name <email>" (else MCPZ_AUTHOR, config, git config).')


def _author(flag: str | None) -> str | None:
    from mcpz.config import Settings

    return Settings.load(flags={"author": flag}).author or None


def _write_bytes(data: bytes) -> None:
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        sys.stdout.write(data.decode("utf-8", "replace"))


# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()


@app.command()
def init(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME|PATH",
            help='The agent\'s name "namespace/name" (created in ./name), or a folder (then --name).',
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help='The agent\'s name, "namespace/name".')] = None,
    template: Annotated[str, typer.Option("--template", "-t", help="Template: python or plugin.")] = "python",
    force: Annotated[bool, typer.Option("--force", help="Write into a folder that is not empty.")] = False,
    author: Annotated[str | None, _AUTHOR] = None,
) -> None:
    """Create an agent from a template, as a git repository with its first commit."""
    from mcpz.errors import UsageError
    from mcpz.names import name_problem
    from mcpz.repo.repository import init_agent

    path = None if target is None else Path(target)
    if name is None and target is not None and name_problem(target) is None:
        # `mcpz init acme/weather`: the name, in a new folder named after it.
        name, path = target, Path(target.split("/")[1])
    if name is None:
        given = target or ""
        short = given.rstrip("/").split("/")[-1] or "my-agent"
        raise UsageError(
            "the agent needs a name",
            hint=f"e.g. `mcpz init acme/{short}`, or `mcpz init {given or '.'} --name acme/{short}`",
        )
    result = init_agent(path or Path.cwd(), name, template=template, force=force, author=_author(author))
    if result.inside:
        out().warn(
            f"{result.path} is inside the repository at {result.inside}: the agent has a repository of its "
            "own, which that one sees as a nested repository (its commits skip it)"
        )
    commit = result.commit.commit
    out().info(
        f"Created {result.name} in {result.path} from the {result.template} template"
        + (f" (commit {commit.short_id} on {result.branch})" if commit else "")
    )
    out().data(result.to_dict(), lambda c: c.print(result.path, markup=False, highlight=False))


@app.command()
def commit(
    message: Annotated[str | None, typer.Option("-m", "--message", help="The commit message.")] = None,
    amend: Annotated[bool, typer.Option("--amend", help="Replace the last commit.")] = False,
    author: Annotated[str | None, _AUTHOR] = None,
) -> None:
    """Snapshot every change (new, edited, deleted files; .gitignore honoured) as a commit."""
    with open_repo() as repo:
        result = repo.commit(message, amend=amend, author=_author(author))
    info = result.commit
    if info is None:
        out().info("nothing to commit, working tree clean")
        out().data(result.to_dict())
        return
    where = result.branch or "detached HEAD"
    count = len(result.changes)
    out().info(f"[{where} {info.short_id}] {info.summary} ({count} file{'' if count == 1 else 's'} changed)")
    out().data(result.to_dict(), lambda c: c.print(info.id, markup=False, highlight=False))


@app.command()
def status(
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="Also ask the registry: ahead/behind its branch, and whether the manifest's version is "
            "published (one request; plain `status` never leaves this machine).",
        ),
    ] = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show the branch and what changed since the last commit (git status --short style).

    Example: `mcpz status --remote` (after `mcpz push`: up to date, and the version published).
    """
    found = None
    if remote:
        from mcpz.client.remote_status import remote_status

        url = settings(registry).registry
        found = remote_status(Path.cwd(), url, token_for(url, token))
    repo_views.status(found)


@app.command("log")
def log_(
    rev: Annotated[str, typer.Argument(help="Where to start (default HEAD).")] = "HEAD",
    max_count: Annotated[
        int | None, typer.Option("-n", "--max-count", help="Show at most N commits.")
    ] = None,
) -> None:
    """List commits, newest first."""
    repo_views.log(rev, max_count)


@app.command()
def diff(
    revs: Annotated[
        list[str] | None, typer.Argument(help="[FROM [TO]]: default HEAD to the work tree.")
    ] = None,
) -> None:
    """Show changes as a unified diff: work tree vs HEAD, vs FROM, or FROM vs TO."""
    repo_views.diff(revs or [])


def _render_commit(console: Console, shown: ShowCommit) -> None:
    info: CommitInfo = shown.commit
    data = info.to_dict()
    lines = [f"commit {info.id}{decorated(shown.refs)}"]
    if len(info.parents) > 1:
        lines.append("Merge: " + " ".join(p[:7] for p in info.parents))
    lines += [f"Author: {info.author}", f"Date:   {data['author_date']}", ""]
    lines += [f"    {line}".rstrip() for line in info.message.rstrip("\n").split("\n")]
    lines.append("")
    console.print("\n".join(lines), markup=False, highlight=False)
    if shown.diff.files:
        print_patch(console, shown.diff.patch)


def _render_file(console: Console, shown: FileAtRev) -> None:
    if shown.entries is None:
        _write_bytes(shown.content)
        return
    for entry in shown.entries:
        suffix = "/" if entry.kind == "tree" else ""
        console.print(f"{entry.name}{suffix}", markup=False, highlight=False)


@app.command()
def show(
    spec: Annotated[str, typer.Argument(help="REV (a commit and its diff) or REV:PATH (a file).")] = "HEAD",
) -> None:
    """Show a commit with its diff, or a file's content at a revision (REV:PATH)."""
    from mcpz.repo.model import ShowCommit

    with open_repo() as repo:
        shown = repo.show(spec)
    if isinstance(shown, ShowCommit):
        commit_shown = shown
        out().data(shown.to_dict(), lambda c: _render_commit(c, commit_shown))
    else:
        file_shown = shown
        out().data(shown.to_dict(), lambda c: _render_file(c, file_shown))


@app.command()
def release(
    version: Annotated[str | None, typer.Argument(help="The new version, e.g. 1.0.0.")] = None,
    bump: Annotated[
        str | None, typer.Option("--bump", help="Compute the version: major, minor or patch.")
    ] = None,
    message: Annotated[str | None, typer.Option("-m", "--message", help="Commit message.")] = None,
    author: Annotated[str | None, _AUTHOR] = None,
) -> None:
    """Set the manifest version, commit, and tag the commit v{version}."""
    from mcpz.errors import UsageError
    from mcpz.repo.model import BUMP_PARTS

    part = next((p for p in BUMP_PARTS if p == bump), None)
    if bump is not None and part is None:
        raise UsageError(f'--bump "{bump}" is not one of major, minor, patch')
    with open_repo() as repo:
        result = repo.release(version, bump=part, author=_author(author), message=message)
    out().info(
        f"Released {result.name} {result.version} as {result.tag} (commit {result.commit.short_id}"
        + ("" if result.committed else ", already committed")
        + ")"
    )
    payload: dict[str, Any] = result.to_dict()
    out().data(payload, lambda c: c.print(result.tag, markup=False, highlight=False))
