"""The typer application, its global options, the one top-level error handler, and the table of
commands.

Registration points down (pip's `commands_dict` + `create_command`): `COMMANDS` names each command's
module, and the module is imported only when that command runs (or its own help is asked for).
`mcpz --help` is drawn from the table alone, so it imports no command module; tests/test_cli_registration.py
checks the table against the modules, so a command cannot vanish with an "unused" import.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Annotated, Any, NamedTuple

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup

from mcpz._version import __version__
from mcpz.cli.invocation import configure_logging, report_error, split_global_flags
from mcpz.cli.output import out, set_output
from mcpz.errors import McpzError


class Entry(NamedTuple):
    module: str  # the module under mcpz.cli.commands whose `app` holds the command
    summary: str  # the first paragraph of the command's help, shown by `mcpz --help`
    topic: str  # the panel of `mcpz --help` it is listed in


REPO, DEPS, LOCAL, REGISTRY, ACCOUNT, MESH, OPERATE = (
    "Agent repository",
    "Dependencies",
    "Run locally",
    "Registry",
    "Account and keys",
    "Mesh",
    "Operate",
)

COMMANDS: dict[str, Entry] = {
    "init": Entry(
        "repo", "Create an agent from a template, as a git repository with its first commit.", REPO
    ),
    "commit": Entry(
        "repo", "Snapshot every change (new, edited, deleted files; .gitignore honoured) as a commit.", REPO
    ),
    "status": Entry(
        "repo", "Show the branch and what changed since the last commit (git status --short style).", REPO
    ),
    "log": Entry("repo", "List commits, newest first.", REPO),
    "diff": Entry("repo", "Show changes as a unified diff: work tree vs HEAD, vs FROM, or FROM vs TO.", REPO),
    "show": Entry("repo", "Show a commit with its diff, or a file's content at a revision (REV:PATH).", REPO),
    "release": Entry("repo", "Set the manifest version, commit, and tag the commit v{version}.", REPO),
    "add": Entry("deps", "Add a dependency to mcpz.toml (or change its specifier) and lock it.", DEPS),
    "remove": Entry(
        "deps", "Remove a dependency from mcpz.toml, and from mcpz.lock what only it needed.", DEPS
    ),
    "lock": Entry(
        "deps",
        "Resolve the dependencies of mcpz.toml against the registry; write mcpz.lock (exact commits).",
        DEPS,
    ),
    "install": Entry(
        "deps",
        "Fetch every agent of mcpz.lock at its exact commit into .mcpz/deps/, verified; remove the rest.",
        DEPS,
    ),
    "sync": Entry("deps", "Alias of `mcpz install`.", DEPS),
    "tree": Entry(
        "deps",
        "The locked dependency tree, with the specifier that pulled each agent in; cycles marked.",
        DEPS,
    ),
    "why": Entry("deps", "Why an agent is locked: the chains of dependencies from mcpz.toml to it.", DEPS),
    "outdated": Entry(
        "deps",
        "Locked agents with newer releases: locked, allowed (what `lock --upgrade` would take), latest.",
        DEPS,
    ),
    "run": Entry(
        "local", "Run an agent in the foreground: MCP on stdin/stdout, its exit code passed through.", LOCAL
    ),
    "tools": Entry(
        "local", "List an agent's tools: name, arguments and description (input schemas with --json).", LOCAL
    ),
    "call": Entry("local", "Call one tool and print its result (text; the whole result with --json).", LOCAL),
    "push": Entry(
        "publish",
        "Push the current branch; publish the manifest's version if it is new, signed by your wallet.",
        REGISTRY,
    ),
    "clone": Entry("publish", "Clone an agent from the registry.", REGISTRY),
    "pull": Entry(
        "publish", "Fast-forward the current branch from the registry it was cloned from.", REGISTRY
    ),
    "info": Entry("publish", "Description, versions, yanked, dependencies, latest.", REGISTRY),
    "versions": Entry("publish", "Every published version, oldest first.", REGISTRY),
    "yank": Entry("publish", "Skip a version in new resolutions (exact locks still install it).", REGISTRY),
    "unyank": Entry("publish", "Undo a yank.", REGISTRY),
    "verify": Entry(
        "verify",
        "Check that the namespace's owner key signed this release (the key is pinned on first use).",
        REGISTRY,
    ),
    "sign": Entry(
        "verify",
        "Sign a published release with your wallet (push does this for the releases it publishes).",
        REGISTRY,
    ),
    "usage": Entry(
        "usage", "Calls through the gateway, summed per agent and tool: calls, errors, time, bytes.", REGISTRY
    ),
    "login": Entry(
        "auth",
        "Log in to a registry and keep the token (OS keyring; a 0600 file where there is none).",
        ACCOUNT,
    ),
    "logout": Entry("auth", "Forget the stored token for a registry.", ACCOUNT),
    "whoami": Entry("auth", "The account, its namespaces, and this token's scopes and expiry.", ACCOUNT),
    "keys": Entry("auth", "API keys of your account.", ACCOUNT),
    "wallet": Entry(
        "wallet",
        "Your Ethereum wallet: the key that signs in (`mcpz login --wallet`) and signs releases.",
        ACCOUNT,
    ),
    "namespace": Entry("namespace", "Namespaces: claim them, share them, hand them over.", ACCOUNT),
    "deploy": Entry("deploy", "Deploy NAME@VERSION to the mesh, or manage a deployment.", MESH),
    "deployments": Entry("deploy", "Deployments you can see, with replicas ready and their state.", MESH),
    "nodes": Entry(
        "deploy",
        "Nodes that may run your deployments (yours, your namespaces' members', shared ones): owner, state, "
        "labels, replicas and capacity, load.",
        MESH,
    ),
    "logs": Entry(
        "deploy",
        "Log lines of a deployment's replicas (the registry keeps the last 1,000 per deployment).",
        MESH,
    ),
    "node": Entry("node", "Run a mesh node: the agents a registry deploys to this machine.", MESH),
    "connect": Entry(
        "connect",
        "Run the agent in PATH on this machine and serve it through the gateway until interrupted.",
        MESH,
    ),
    "registry": Entry("registry", "Run a registry, and bootstrap it on its own host.", OPERATE),
    "demo": Entry(
        "demo",
        "Run the whole loop for real: init ... call, registry, wallet, login, namespace, push, verify, info.",
        OPERATE,
    ),
}

COMMANDS_PACKAGE = "mcpz.cli.commands"


def load_module_group(module: str) -> TyperGroup:
    """The click group of everything command module `module` defines (imported now)."""
    loaded = importlib.import_module(f"{COMMANDS_PACKAGE}.{module}")
    return typer.main.get_group(loaded.app)


class LazyCommands(MutableMapping[str, _click.Command]):
    """The root group's commands: names from `COMMANDS`, each module imported on first lookup.

    Mutable in type only (click's groups are): a command is added to the table, never at run time.
    """

    def __init__(self) -> None:
        self._groups: dict[str, TyperGroup] = {}

    def __getitem__(self, name: str) -> _click.Command:
        entry = COMMANDS[name]
        group = self._groups.get(entry.module)
        if group is None:
            group = self._groups[entry.module] = load_module_group(entry.module)
        command = group.commands.get(name)
        if command is None:
            # A table entry its module does not define: a defect of ours, not of the user's input.
            raise LookupError(f"{COMMANDS_PACKAGE}.{entry.module} defines no command {name!r}")
        return command

    def __setitem__(self, name: str, command: _click.Command) -> None:
        raise TypeError(f"commands are registered in mcpz.cli.app.COMMANDS, not at run time ({name!r})")

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"commands are registered in mcpz.cli.app.COMMANDS, not at run time ({name!r})")

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


def summary_command(name: str, entry: Entry) -> TyperCommand:
    """A stand-in that lists a command in `mcpz --help` without importing its module."""
    return TyperCommand(name, help=entry.summary, rich_help_panel=entry.topic)


class McpzGroup(TyperGroup):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.commands = LazyCommands()

    def main(self, args: Sequence[str] | None = None, *a: Any, **kw: Any) -> Any:
        output, rest = split_global_flags(sys.argv[1:] if args is None else args)
        set_output(output)
        configure_logging(output)
        return super().main(rest, *a, **kw)

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except McpzError as e:
            report_error(e, out())
            raise typer.Exit(e.exit_code) from None

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        lazy = self.commands
        self.commands = {name: summary_command(name, entry) for name, entry in COMMANDS.items()}
        try:
            super().format_help(ctx, formatter)
        finally:
            self.commands = lazy


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mcpz {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=McpzGroup,
    name="mcpz",
    help="Version, publish, deploy and sell AI agents (MCP servers).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Every command also takes --json, -v/--verbose and -q/--quiet after its name.",
)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More detail.")] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only results and errors.")] = False,
) -> None:
    """Version, publish, deploy and sell AI agents (MCP servers)."""
