"""`mcpz add | remove | lock | install | sync | tree | why | outdated`: an agent's dependencies."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mcpz.cli.common import RegistryOpt, TokenOpt, run, settings, token_for
from mcpz.cli.output import out
from mcpz.cli.transfer import transfer

if TYPE_CHECKING:
    from rich.console import Console

    from mcpz.deps.flows import LockChange, LockResult, Project, Remote
    from mcpz.resolve import TreeLine

PathOpt = Annotated[
    Path, typer.Option("--path", "-C", help="The agent's folder (where mcpz.toml is).", show_default=False)
]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="Use only the local cache; never contact the registry.")
]
NoLockOpt = Annotated[bool, typer.Option("--no-lock", help="Edit mcpz.toml only; leave mcpz.lock alone.")]


def _remote(registry: str | None, token: str | None, offline: bool) -> Remote:
    from mcpz.config import cache_dir
    from mcpz.deps.flows import Remote

    url = settings(registry).registry
    explicit = token or os.environ.get("MCPZ_TOKEN") or None
    return Remote(
        registry=url,
        token=explicit,
        cache_root=cache_dir(),
        offline=offline,
        token_lookup=lambda: token_for(url, None),
    )


def _project(path: Path) -> Project:
    from mcpz.deps.flows import open_project

    return open_project(path)


def _change_line(change: LockChange) -> str:
    mark = {"added": "+", "removed": "-", "upgraded": "^", "downgraded": "v", "changed": "~"}[change.kind]
    return f"{mark} {change}"


def _report_lock(result: LockResult | None, *, verb: str = "locked") -> None:
    output = out()
    if result is None:
        return
    for warning in result.warnings:
        output.warn(warning)
    if result.changes:
        output.line("\n".join(_change_line(change) for change in result.changes))
    count = len(result.lock.agents)
    agents = f"{count} agent{'' if count == 1 else 's'}"
    figures = ""
    if result.index is not None and result.index.names:
        stats = result.index
        resolved = f"resolved in {result.resolve_seconds:.2f} s" if result.searched else "still valid"
        figures = (
            f" (index: {stats.requests} request{'' if stats.requests == 1 else 's'}, "
            f"{stats.not_modified} not modified, {stats.seconds:.2f} s; {resolved})"
            if stats.requests
            else f" (index from the cache; {resolved})"
        )
    if result.written:
        output.info(f"{verb} {agents} into {result.path.name}{figures}")
    else:
        output.info(f"{result.path.name} is up to date: {agents}{figures}")


# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()


@app.command("add")
def add_command(
    name: Annotated[str, typer.Argument(help='The agent to depend on, "namespace/name".')],
    specifier: Annotated[
        str | None,
        typer.Argument(
            metavar="SPEC",
            help='Version specifier, e.g. "^1.2", "~=1.4", ">=1.2,<2" (default: compatible with the latest).',
            show_default=False,
        ),
    ] = None,
    path: PathOpt = Path("."),
    no_lock: NoLockOpt = False,
    offline: OfflineOpt = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Add a dependency to mcpz.toml (or change its specifier) and lock it."""
    from mcpz.deps import flows as deps

    project = _project(path)
    result = run(
        lambda: deps.add(project, _remote(registry, token, offline), name, specifier, relock=not no_lock)
    )
    output = out()
    if not result.formatting_kept:
        output.warn("mcpz.toml had an unusual layout, so it was rewritten (its comments are gone)")

    def render(console: Console) -> None:
        if result.previous is None:
            console.print(f'added {result.name} "{result.specifier}"', markup=False)
        elif result.previous != result.specifier:
            console.print(f'{result.name}: "{result.previous}" -> "{result.specifier}"', markup=False)
        else:
            console.print(f'{result.name} "{result.specifier}" (unchanged)', markup=False)

    output.data(result.to_dict(), render)
    _report_lock(result.lock)
    if no_lock:
        output.info("mcpz.lock was not updated: run `mcpz lock`")


@app.command("remove")
def remove_command(
    name: Annotated[str, typer.Argument(help="The dependency to remove.")],
    path: PathOpt = Path("."),
    no_lock: NoLockOpt = False,
    offline: OfflineOpt = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Remove a dependency from mcpz.toml, and from mcpz.lock what only it needed."""
    from mcpz.deps import flows as deps

    project = _project(path)
    result = run(lambda: deps.remove(project, _remote(registry, token, offline), name, relock=not no_lock))
    output = out()
    if not result.formatting_kept:
        output.warn("mcpz.toml had an unusual layout, so it was rewritten (its comments are gone)")
    output.data(result.to_dict(), lambda c: c.print(f"removed {name}", markup=False))
    _report_lock(result.lock)


@app.command("lock")
def lock_command(
    path: PathOpt = Path("."),
    upgrade: Annotated[
        bool, typer.Option("--upgrade", "-U", help="Ignore mcpz.lock: newest allowed versions of everything.")
    ] = False,
    upgrade_package: Annotated[
        list[str] | None,
        typer.Option(
            "--upgrade-package",
            "-P",
            metavar="NAME",
            help="Let only this agent (and what it forces) move; repeatable.",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Write nothing; fail (exit 9) if mcpz.lock is missing or out of date. For CI."
        ),
    ] = False,
    offline: OfflineOpt = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Resolve the dependencies of mcpz.toml against the registry; write mcpz.lock (exact commits)."""
    from mcpz.deps import flows as deps

    project = _project(path)
    remote = _remote(registry, token, offline)
    result = run(
        lambda: deps.lock(
            project, remote, upgrade=upgrade, upgrade_packages=upgrade_package or (), check=check
        )
    )
    payload = result.to_dict()
    if check:
        payload["fresh"] = True
    out().data(payload)
    _report_lock(result)


@app.command("install")
def install_command(
    path: PathOpt = Path("."),
    offline: OfflineOpt = False,
    reinstall: Annotated[
        bool, typer.Option("--reinstall", help="Write every agent again, even if it is in place.")
    ] = False,
    registry: Annotated[
        str | None,
        typer.Option("--registry", help="Fetch from this registry instead of the one mcpz.lock names."),
    ] = None,
    token: TokenOpt = None,
) -> None:
    """Fetch every agent of mcpz.lock at its exact commit into .mcpz/deps/, verified; remove the rest."""
    from mcpz.config import cache_dir
    from mcpz.deps import flows as deps
    from mcpz.deps.install import DEPS_DIR, InstallResult

    project = _project(path)
    url = deps.install_registry(project, registry)
    secret = token_for(url, token) if url else token
    output = out()

    total = len(project.lock.agents) if project.lock is not None else 0
    with transfer("installing", "agents") as shown:
        installed = [0]

        def one_done(_name: str, _action: str) -> None:
            installed[0] += 1
            if shown.step is not None:
                shown.step(installed[0], total)

        async def go() -> InstallResult:
            return await deps.install(
                project,
                registry=url,
                token=secret,
                cache_root=cache_dir(),
                offline=offline,
                reinstall=reinstall,
                progress=one_done if shown.step is not None else None,
                received=shown.moved,
            )

        result = run(go)

    def render(console: Console) -> None:
        text = [
            f"{agent.action} {agent.name} {agent.version} ({agent.commit[:12]})"
            for agent in result.agents
            if agent.action != "unchanged"
        ]
        text += [f"removed {name}" for name in result.removed]
        if text:
            console.print("\n".join(text), markup=False, highlight=False)

    output.data(result.to_dict(), render)
    fetched = sum(1 for a in result.agents if a.fetched)
    unchanged = sum(1 for a in result.agents if a.action == "unchanged")
    count = len(result.agents)
    output.info(
        f"{count} agent{'' if count == 1 else 's'} in {DEPS_DIR} "
        f"({fetched} fetched, {unchanged} unchanged, {len(result.removed)} removed)"
    )


app.command("sync", help="Alias of `mcpz install`.")(install_command)


def _tree_prefixes(lines: list[TreeLine]) -> list[str]:
    """The box-drawing prefix of each line: a line is last when no sibling follows it."""
    last = [True] * len(lines)
    following_depths: dict[int, bool] = {}
    for i in range(len(lines) - 1, -1, -1):
        depth = lines[i].depth
        last[i] = not following_depths.get(depth, False)
        following_depths = {d: v for d, v in following_depths.items() if d < depth}
        following_depths[depth] = True
    prefixes: list[str] = []
    open_levels: list[bool] = []
    for i, line in enumerate(lines):
        del open_levels[line.depth :]
        stem = "".join("│   " if still else "    " for still in open_levels)
        prefixes.append(stem + ("└── " if last[i] else "├── "))
        open_levels.append(not last[i])
    return prefixes


@app.command("tree")
def tree_command(path: PathOpt = Path(".")) -> None:
    """The locked dependency tree, with the specifier that pulled each agent in; cycles marked."""
    from mcpz.deps import report as deps_report

    report = deps_report.tree(_project(path))
    output = out()
    for warning in report.warnings:
        output.warn(warning)
    lines, cycles = report.lines, report.cycles

    def render(console: Console) -> None:
        text = [f"{report.name} {report.version}"]
        for prefix, line in zip(_tree_prefixes(lines), lines, strict=True):
            mark = {"seen": " (*)", "cycle": " (cycle)"}.get(line.mark, "")
            text.append(f"{prefix}{line.name} {line.version} ({line.specifier}){mark}")
        if any(line.mark == "seen" for line in lines):
            text.append("(*) its dependencies are shown above")
        text += ["cycle: " + " -> ".join([*cycle, cycle[0]]) for cycle in cycles]
        console.print("\n".join(text), markup=False, highlight=False)  # one call: rich is slow per line

    output.data(report.to_dict(), render)


@app.command("why")
def why_command(
    name: Annotated[str, typer.Argument(help="A locked agent.")],
    path: PathOpt = Path("."),
) -> None:
    """Why an agent is locked: the chains of dependencies from mcpz.toml to it."""
    from mcpz.deps import report as deps_report

    report = deps_report.why_report(_project(path), name)
    output = out()
    for warning in report.warnings:
        output.warn(warning)

    def render(console: Console) -> None:
        console.print(f"{name} {report.version} ({report.commit[:12]}) is locked because:", markup=False)
        for chain in report.paths:
            text = f"{report.root} (mcpz.toml)"
            for step in chain:
                text += f" -> {step.name} {step.version} ({step.specifier})"
            console.print("  " + text, markup=False)

    output.data(report.to_dict(), render)


@app.command("outdated")
def outdated_command(
    path: PathOpt = Path("."),
    all_: Annotated[
        bool, typer.Option("--all", help="List every locked agent, not only outdated ones.")
    ] = False,
    offline: OfflineOpt = False,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Locked agents with newer releases: locked, allowed (what `lock --upgrade` would take), latest."""
    from mcpz.deps import report as deps_report

    project = _project(path)
    rows = run(lambda: deps_report.outdated(project, _remote(registry, token, offline), all_agents=all_))

    def render(console: Console) -> None:
        from rich.table import Table

        if not rows:
            out().info("every locked agent is at its latest release")
            return
        table = Table("agent", "locked", "allowed", "latest", "", box=None)
        for row in rows:
            notes = ["direct" if row.direct else "indirect"]
            if row.yanked:
                notes.append("locked version yanked")
            table.add_row(row.name, row.locked, row.allowed or "-", row.latest or "-", ", ".join(notes))
        console.print(table)

    out().data([row.to_dict() for row in rows], render)
