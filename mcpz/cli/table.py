"""The table of commands: name -> (module, summary, topic), and the root help drawn from it.

Kept free of typer (and of every command module) so that `mcpz --help` prints from it alone
(cli/fast.py) and `cli/app.py` mounts each command by name when it runs. tests/cli/test_cli_registration.py
checks every entry against the module it names.
"""

from __future__ import annotations

from typing import NamedTuple

from mcpz._version import __version__


class Entry(NamedTuple):
    module: str  # the module under mcpz.cli.commands whose `app` holds the command
    summary: str  # the first paragraph of the command's help, shown by `mcpz --help`
    topic: str  # the panel of `mcpz --help` it is listed in


REPO, DEPS, PUBLISH, DEPLOY, CALL, MARKET, BILLING, ACCOUNT, OPERATE = TOPICS = (
    "Repositories",
    "Dependencies",
    "Publishing",
    "Deploying",
    "Calling",
    "Market",
    "Billing",
    "Accounts",
    "Operators",
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
        "local", "Run an agent in the foreground: MCP on stdin/stdout, its exit code passed through.", CALL
    ),
    "tools": Entry(
        "local", "List an agent's tools: name, arguments and description (input schemas with --json).", CALL
    ),
    "call": Entry("local", "Call one tool and print its result (text; the whole result with --json).", CALL),
    "push": Entry(
        "publish",
        "Push the current branch; publish the manifest's version if it is new, signed by your wallet.",
        PUBLISH,
    ),
    "clone": Entry("publish", "Clone an agent from the registry.", PUBLISH),
    "pull": Entry(
        "publish", "Fast-forward the current branch from the registry it was cloned from.", PUBLISH
    ),
    "info": Entry(
        "publish",
        "Description, versions, yanked, dependencies, latest; with @VERSION, that release's tools.",
        PUBLISH,
    ),
    "versions": Entry("publish", "Every published version, oldest first.", PUBLISH),
    "yank": Entry("publish", "Skip a version in new resolutions (exact locks still install it).", PUBLISH),
    "unyank": Entry("publish", "Undo a yank.", PUBLISH),
    "verify": Entry(
        "verify",
        "Check that the namespace's owner key signed this release (the key is pinned on first use).",
        PUBLISH,
    ),
    "sign": Entry(
        "verify",
        "Sign a published release with your wallet (push does this for the releases it publishes).",
        PUBLISH,
    ),
    "usage": Entry(
        "usage", "Calls through the gateway, summed per agent and tool: calls, errors, time, bytes.", CALL
    ),
    "top": Entry(
        "top",
        "Your nodes, deployments and each agent's calls per second, errors and latency, refreshed in place "
        "until Ctrl-C; with --json, one snapshot.",
        DEPLOY,
    ),
    "market": Entry(
        "market", "The marketplace: search agents, read their listings, review the ones you used.", MARKET
    ),
    "billing": Entry(
        "billing",
        "Billing: prices, balance, usage with amounts, spend caps, and the receipts of paid calls.",
        BILLING,
    ),
    "login": Entry(
        "auth",
        "Log in to a registry and keep the token (OS keyring; a 0600 file where there is none).",
        ACCOUNT,
    ),
    "logout": Entry(
        "auth",
        "Forget the stored token for a registry (the default one unless --registry), or for all.",
        ACCOUNT,
    ),
    "whoami": Entry(
        "auth",
        "The account, its namespaces, and this token's scopes and expiry; every registry logged into.",
        ACCOUNT,
    ),
    "doctor": Entry(
        "doctor", "Check the registry, your token and scopes, wallet, namespace, signing and nodes.", ACCOUNT
    ),
    "keys": Entry("auth", "API keys of your account.", ACCOUNT),
    "wallet": Entry(
        "wallet",
        "Your Ethereum wallet: the key that signs in (`mcpz login --wallet`) and signs releases.",
        ACCOUNT,
    ),
    "namespace": Entry("namespace", "Namespaces: claim them, share them, hand them over.", ACCOUNT),
    "deploy": Entry("deploy", "Deploy NAME@VERSION to the mesh, or manage a deployment.", DEPLOY),
    "deployments": Entry("deploy", "Deployments you can see, with replicas ready and their state.", DEPLOY),
    "nodes": Entry(
        "deploy",
        "Nodes that may run your deployments (yours, your namespaces' members', shared ones): owner, state, "
        "labels, replicas and capacity, load.",
        DEPLOY,
    ),
    "logs": Entry(
        "deploy",
        "Log lines of a deployment's replicas: history the registry keeps on disk, then with -f the live "
        'tail. Says "no log lines yet" (exit 0) when there are none.',
        DEPLOY,
    ),
    "node": Entry("node", "Run a mesh node: the agents a registry deploys to this machine.", DEPLOY),
    "connect": Entry(
        "connect",
        "Run the agent in PATH on this machine and serve it through the gateway until interrupted.",
        CALL,
    ),
    "config": Entry("config", "Read and change your settings (the user config file).", ACCOUNT),
    "cache": Entry("cache", "The client's caches: index answers and fetched releases.", DEPS),
    "registry": Entry("registry", "Run a registry, and bootstrap it on its own host.", OPERATE),
    "chain": Entry("chain", "A local settlement chain for development.", OPERATE),
    "demo": Entry(
        "demo",
        "Run the whole loop for real: init ... call, registry, wallet, login, namespace, push, verify, info.",
        OPERATE,
    ),
}


ABOUT = "Version, publish, deploy and sell AI agents (MCP servers)."

GLOBAL_OPTIONS = (
    ("--version", "Print the version."),
    ("--json", "Machine output on stdout."),
    ("-v, --verbose", "More detail (repeat for more)."),
    ("-q, --quiet", "Only results and errors."),
    ("--install-completion", "Install tab completion for the current shell."),
    ("--show-completion", "Print the completion script, to install it by hand."),
    ("-h, --help", "Show this message and exit."),
)


def root_help(width: int = 80) -> str:
    """`mcpz --help`: the commands grouped by topic, then the global options, as plain text."""
    import textwrap

    name_width = max(len(name) for name in COMMANDS) + 2
    option_width = max(len(flag) for flag, _ in GLOBAL_OPTIONS) + 2
    indent = 2
    lines = ["Usage: mcpz [OPTIONS] COMMAND [ARGS]...", "", ABOUT, ""]

    def rows(items: list[tuple[str, str]], column: int) -> list[str]:
        text_width = max(20, width - indent - column)
        out: list[str] = []
        for left, text in items:
            wrapped = textwrap.wrap(text, text_width) or [""]
            out.append(" " * indent + left.ljust(column) + wrapped[0])
            out.extend(" " * (indent + column) + more for more in wrapped[1:])
        return out

    topics: dict[str, list[tuple[str, str]]] = {topic: [] for topic in TOPICS}
    for name, entry in COMMANDS.items():
        topics[entry.topic].append((name, entry.summary))
    for topic, items in topics.items():
        if items:
            lines += [f"{topic}:", *rows(items, name_width), ""]
    lines += ["Options (also accepted after the command's name):", *rows(list(GLOBAL_OPTIONS), option_width)]
    lines += ["", "Run `mcpz COMMAND --help` for a command's options and an example.", f"mcpz {__version__}"]
    return "\n".join(lines) + "\n"
