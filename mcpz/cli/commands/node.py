"""`mcpz node run`: run a mesh node, the agents a registry deploys to this machine."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mcpz.cli.common import TokenOpt, run, settings, token_for
from mcpz.cli.output import attach_log, out
from mcpz.errors import AuthError, UsageError

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
node_app = typer.Typer(
    help="Run a mesh node: the agents a registry deploys to this machine.", no_args_is_help=True
)
app.add_typer(node_app, name="node")


def _labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(
                f'--label "{pair}" is not key=value', hint="e.g. --label region=eu --label gpu=a100"
            )
        labels[key] = value
    return labels


@node_app.command("run")
def run_node(
    registry: Annotated[
        list[str] | None,
        typer.Option(
            "--registry",
            help="Registry URL (else MCPZ_REGISTRY, else the user config). Repeat it with the URLs of "
            "other replicas of the same registry: when one fails the node connects to the next, its "
            "agents kept running.",
        ),
    ] = None,
    token: TokenOpt = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The node's name (default: the host name).")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="A label k=v deployments select nodes by; repeatable.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Data folder (default: the user data folder's node/).")
    ] = None,
    capacity: Annotated[
        int, typer.Option("--capacity", min=0, help="How many replicas it runs at most.")
    ] = 10,
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", help="PEM file of CAs to trust for wss:// and https://.")
    ] = None,
    stop_grace: Annotated[
        float,
        typer.Option("--stop-grace", min=0, help="Seconds from SIGTERM to SIGKILL when stopping agents."),
    ] = 10.0,
    allow_unsigned: Annotated[
        bool,
        typer.Option(
            "--allow-unsigned",
            help="Also run releases and deployments that carry no signature (development only; a "
            "wrong signature is still refused). By default every release and every deployment must "
            "be signed by its namespace's key.",
        ),
    ] = False,
    shared: Annotated[
        bool,
        typer.Option(
            "--shared",
            help="Run the deployments of every account on the registry, not only those of namespaces "
            "the token's account owns or is a member of. Their callers' arguments and results pass "
            "through this machine.",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics (replicas, restarts, CPU, "
            "memory, fetched bytes); 0 picks a free port, named in the log.",
        ),
    ] = None,
    log_file_bytes: Annotated[
        int,
        typer.Option(
            "--log-file-bytes",
            min=0,
            help="Each replica's stdout/stderr lines are kept in DATA/logs/REPLICA.jsonl, rotated at "
            "this size (0: not kept on disk).",
        ),
    ] = 1024 * 1024,
    log_files: Annotated[
        int, typer.Option("--log-files", min=0, help="Log files kept per replica, the current one included.")
    ] = 3,
    gc_every: Annotated[
        str | None,
        typer.Option(
            "--gc-every",
            metavar="6h|30m",
            help="Run `mcpz node gc` inside the node this often (releases and checkouts no replica "
            "runs; what was written in the last 10 minutes is kept). Default: only by hand.",
        ),
    ] = None,
) -> None:
    """Connect to a registry and run the replicas it deploys here, until interrupted.

    The token needs scope `node`: create one with `mcpz keys create --scope node` (a wallet login
    may, for its own nodes) or, on the registry host, `mcpz registry token create`. The node runs
    only deployments of namespaces the token's account owns or is a member of, unless --shared (or
    the registry's shared pool) says otherwise. Ctrl-C or SIGTERM stops every replica (SIGTERM, then
    SIGKILL after --stop-grace) and disconnects.
    """
    import socket

    from mcpz.config import data_dir
    from mcpz.node import Node, NodeConfig

    url = settings(registry[0] if registry else None).registry
    secret = token_for(url, token)
    if not secret:
        raise AuthError(
            "a node needs a token with scope node",
            hint="pass --token or set MCPZ_TOKEN; create one with: mcpz keys create --scope node",
        )
    config = NodeConfig(
        registry=url,
        token=secret,
        data_dir=data if data is not None else data_dir() / "node",
        name=name or socket.gethostname(),
        labels=_labels(label or []),
        capacity=capacity,
        ca_file=ca_file,
        stop_grace=stop_grace,
        allow_unsigned=allow_unsigned,
        shared=shared,
        metrics_port=metrics_port,
        replica_log_bytes=log_file_bytes,
        replica_log_files=log_files,
        gc_interval=_every(gc_every),
        registries=tuple(registry[1:]) if registry else (),
    )
    node = Node(config)
    output = out()
    if allow_unsigned:
        warning = (
            "WARNING: --allow-unsigned: this node runs releases and deployments nobody signed; "
            "use it for development only"
        )
        if output.json:  # with --json every line on stderr is a JSON object (mcpz.cli.output)
            warning = json.dumps({"time": round(time.time(), 3), "level": "warning", "message": warning})
        sys.stderr.write(warning + "\n")
        sys.stderr.flush()
    handler = attach_log(output)

    async def main() -> None:
        await node.run(handle_signals=True)

    try:
        said = f"node {config.name} -> {node.url} (data: {config.data_dir})"
        if output.json and handler is not None:
            logging.getLogger("mcpz.node").info(said)  # a JSON line, as the node's others
        else:
            output.info(said)
        run(main, fast_loop=True)
    finally:
        if handler is not None:
            logging.getLogger("mcpz.node").removeHandler(handler)
    output.data({"node_id": node.state.node_id, "name": config.name, "registry": url, "stopped": True})


def _every(text: str | None) -> float:
    from mcpz.sizes import parse_duration

    if text is None:
        return 0.0
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise UsageError(f'--gc-every "{text}" is no duration', hint="give one such as 6h or 30m") from None
    if seconds <= 0:
        raise UsageError(f'--gc-every "{text}" must be more than 0', hint="give one such as 6h or 30m")
    return seconds


@node_app.command("gc")
def gc(
    data: Annotated[
        Path | None, typer.Option("--data", help="Data folder (default: the user data folder's node/).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")] = False,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            metavar="1h|10m|now",
            help="Keep what was written more recently than this (at least 10m while the node runs).",
        ),
    ] = "1h",
) -> None:
    """Remove cached releases and checkouts no replica of this node runs; keeps what runs."""
    from mcpz.config import data_dir
    from mcpz.node.gc import collect_node_garbage
    from mcpz.sizes import human_bytes, parse_duration

    try:
        seconds = parse_duration(grace)
    except ValueError:
        raise UsageError(
            f'--grace "{grace}" is no duration', hint="give one such as 1h, 10m or now"
        ) from None
    folder = data if data is not None else data_dir() / "node"
    report = collect_node_garbage(folder, dry_run=dry_run, grace=seconds)

    def render(c: Any) -> None:
        verb = "would free" if dry_run else "freed"
        for release in report.releases:
            c.print(f"release {release}", markup=False)
        for checkout in report.checkouts:
            c.print(f"checkout {checkout}", markup=False)
        running = " (the node is running: recent files kept)" if report.node_running else ""
        c.print(
            f"{verb} {human_bytes(report.freed_bytes)}: {len(report.releases)} releases, "
            f"{report.objects} objects, {len(report.checkouts)} checkouts{running}",
            markup=False,
        )

    out().data(report.to_dict(), render)
