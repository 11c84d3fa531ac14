"""`mcpz demo`: the whole loop, run for real in a temporary folder, one function per step.

Each step runs the real `mcpz` command in a subprocess (exactly what a user would type) against
an embedded registry served from this process, and checks what came back. Folders, config and
credentials all live in the temporary folder, so the user's own setup is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcpz.errors import McpzError

AGENT = "demo/weather"


class DemoFailed(McpzError):
    pass


@dataclass
class DemoContext:
    root: Path
    say: Callable[[str], None]
    show: Callable[[str], None]
    env: dict[str, str] = field(default_factory=dict)
    agent_dir: Path | None = None
    registry_url: str | None = None
    registry_handle: Any = None
    results: dict[str, Any] = field(default_factory=dict)
    node_token: str | None = None  # never shown
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    chain: Any = None  # mcpz.local.chain.DevChain, once started

    def mcpz(
        self,
        *args: str,
        cwd: Path | None = None,
        input: str | None = None,
        json_out: bool = False,
        token: str | None = None,
    ) -> Any:
        """Run `mcpz ARGS` as the user would; show it; fail the demo on a non-zero exit. `token`:
        act as another account (through MCPZ_TOKEN, so the shown command never holds it)."""
        argv = [*args, "--json"] if json_out else list(args)
        shown = " ".join(shlex.quote(a) for a in ["mcpz", *argv])
        self.say(f"$ {shown}" if token is None else f"$ MCPZ_TOKEN=... {shown}")
        done = subprocess.run(
            [sys.executable, "-m", "mcpz", *argv],
            cwd=cwd or self.root,
            env=self.env if token is None else {**self.env, "MCPZ_TOKEN": token},
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DemoFailed(f"`{shown}` exited {done.returncode}: {detail}")
        if json_out:
            return json.loads(done.stdout)
        talk = done.stderr.rstrip()
        if talk:
            self.show(talk)
        text = done.stdout.rstrip()
        if text:
            self.show(text)
        return text


def step_init(ctx: DemoContext) -> None:
    ctx.mcpz("init", "weather", "--name", AGENT, "--template", "python")
    ctx.agent_dir = ctx.root / "weather"


def step_commit(ctx: DemoContext) -> None:
    assert ctx.agent_dir is not None
    readme = ctx.agent_dir / "README.md"
    readme.write_text(
        readme.read_text(encoding="utf-8") + "\nTried out with `mcpz demo`.\n", encoding="utf-8"
    )
    result = ctx.mcpz("commit", "-m", "Describe how the demo uses it", cwd=ctx.agent_dir, json_out=True)
    ctx.results["commit"] = result
    ctx.show(f"committed {str(result.get('commit', ''))[:12]}")


def step_log(ctx: DemoContext) -> None:
    ctx.mcpz("log", "-n", "5", cwd=ctx.agent_dir)


def step_tools(ctx: DemoContext) -> None:
    tools = ctx.mcpz("tools", "--local", cwd=ctx.agent_dir, json_out=True)["tools"]
    if not tools:
        raise DemoFailed("the demo agent lists no tools")
    ctx.results["tools"] = [t["name"] for t in tools]
    ctx.show("tools: " + ", ".join(ctx.results["tools"]))


def step_call(ctx: DemoContext) -> None:
    answer = ctx.mcpz("call", "--local", ".", "add", "a=2", "b=40", cwd=ctx.agent_dir)
    if answer.strip() != "42":
        raise DemoFailed(f"add 2 40 on the local agent answered {answer!r}, not 42")


OPERATOR_KEY = "MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY"
RELAYER_KEY = "MCPZ_REGISTRY_SETTLEMENT_RELAYER_KEY"  # x402's relayer: the dev chain's own account


def step_chain(ctx: DemoContext) -> None:
    """A local settlement chain: anvil where it is installed, else the embedded EVM."""
    from mcpz.local.chain import start_dev_chain
    from registry_server.serve import free_port

    ctx.say("$ mcpz chain dev &   (a local chain with the token and the settlement contract)")
    ctx.chain = start_dev_chain(free_port())
    engine = "anvil" if ctx.chain.engine == "anvil" else "the embedded EVM: anvil is not installed"
    ctx.show(f"chain {ctx.chain.chain_id} on {ctx.chain.rpc_url} ({engine}), contract {ctx.chain.contract}")
    # The user's commands reach the chain here; the operator's (`mcpz registry payouts`) with these.
    ctx.env["MCPZ_CHAIN_RPC"] = ctx.chain.rpc_url
    for name, value in ctx.chain.env().items():
        ctx.env[name] = value
    # One confirmation: the local chain never reorganises (a real registry waits 12 blocks).
    ctx.env["MCPZ_REGISTRY_SETTLEMENT_CONFIRMATIONS"] = "1"
    ctx.env["MCPZ_REGISTRY_SETTLEMENT_PAYOUT_MINIMUM"] = "1"
    ctx.env["MCPZ_REGISTRY_SETTLEMENT_PAYOUT_INTERVAL"] = "0"
    ctx.results["chain"] = {"engine": ctx.chain.engine, "contract": ctx.chain.contract}


def step_registry(ctx: DemoContext) -> None:
    from registry_server.serve import free_port, start_in_thread
    from registry_server.settings import RegistrySettings

    data = ctx.root / "registry"
    ctx.say("starting an embedded registry (SQLite, in this process), settling on the local chain")
    # Its log lines would interleave with the steps' output; `mcpz -v demo` keeps them.
    server_log = logging.getLogger("registry_server")
    if not logging.getLogger("mcpz").isEnabledFor(logging.INFO):
        server_log.addHandler(logging.NullHandler())
        server_log.propagate = False
    # No notice period: the billing step's price applies at once (a real registry gives 14 days); no
    # refund window, so the creator's earnings are ready for payout at once (a real registry: 7 days).
    settings = RegistrySettings.load(
        data_dir=data, env=ctx.env, port=free_port(), price_notice_days=0.0, refund_window_days=0.0,
        settlement_poll_interval=0.2,
    )  # fmt: skip
    # The registry runs in this process and reads the operator key from its environment (never from
    # settings); it is the local chain's public development key, and leaves with the demo.
    os.environ[OPERATOR_KEY] = ctx.env[OPERATOR_KEY]
    if RELAYER_KEY in ctx.env:
        os.environ[RELAYER_KEY] = ctx.env[RELAYER_KEY]
    ctx.registry_handle = start_in_thread(settings)
    ctx.registry_url = ctx.registry_handle.url
    ctx.env["MCPZ_REGISTRY"] = ctx.registry_url
    ctx.show(f"registry at {ctx.registry_url}")


def step_wallet(ctx: DemoContext) -> None:
    # A throwaway wallet: its passphrase goes where a CI job would put it, and is never printed.
    ctx.env["MCPZ_WALLET_PASSPHRASE"] = secrets.token_urlsafe(24)
    ctx.env["MCPZ_WALLET_SCRYPT_N"] = str(2**14)  # a cheap key derivation: this key dies with the demo
    ctx.results["address"] = ctx.mcpz("wallet", "create", json_out=True)["address"]
    ctx.show(f"created a throwaway wallet {ctx.results['address']}")


def step_login(ctx: DemoContext) -> None:
    ctx.mcpz("login", "--wallet")
    ctx.mcpz("whoami")


def step_namespace(ctx: DemoContext) -> None:
    ctx.mcpz("namespace", "create", AGENT.split("/")[0])


def step_push(ctx: DemoContext) -> None:
    result = ctx.mcpz("push", cwd=ctx.agent_dir, json_out=True)
    if not result["published"] or result["signer"] != ctx.results["address"]:
        raise DemoFailed(f"push did not publish a signed release: {result}")
    ctx.show(f"published {AGENT} {result['version']} ({result['commit'][:12]}), signed by {result['signer']}")
    ctx.results["version"] = result["version"]


def step_verify(ctx: DemoContext) -> None:
    ctx.mcpz("verify", f"{AGENT}@{ctx.results['version']}")


def step_info(ctx: DemoContext) -> None:
    ctx.mcpz("info", AGENT)


def step_market(ctx: DemoContext) -> None:
    """The published agent is listed: search finds it by its name's words."""
    words = AGENT.split("/")[1]
    found = ctx.mcpz("market", "search", words, json_out=True)
    names = [item["name"] for item in found]
    if AGENT not in names:
        raise DemoFailed(f"`mcpz market search {words}` did not find {AGENT}: {names}")
    ctx.results["market"] = next(item for item in found if item["name"] == AGENT)
    ctx.mcpz("market", "search", words)


NODES = ("demo-node-1", "demo-node-2")


def step_node_key(ctx: DemoContext) -> None:
    # A key the nodes connect with: scope `node` only, minted by the wallet's own session (a node
    # runs only its account's namespaces, so no operator is needed). Kept, never printed.
    made = ctx.mcpz("keys", "create", "--scope", "node", "--name", "demo nodes", "--expires-days", "1",
                    json_out=True)  # fmt: skip
    ctx.node_token = made["token"]
    ctx.show("created a key with scope node for this wallet's nodes")


def _connected_nodes(ctx: DemoContext) -> list[str]:
    import httpx2

    assert ctx.registry_url is not None and ctx.node_token is not None
    response = httpx2.get(
        f"{ctx.registry_url}/v1/nodes", headers={"Authorization": f"Bearer {ctx.node_token}"}, timeout=10
    )
    response.raise_for_status()
    return [n["name"] for n in response.json() if n["connected"]]


def _node_log(ctx: DemoContext, name: str) -> str:
    path = ctx.root / "nodes" / f"{name}.log"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
    return lines[-1] if lines else "(no output)"


def step_nodes(ctx: DemoContext) -> None:
    import time

    assert ctx.registry_url is not None and ctx.node_token is not None
    folder = ctx.root / "nodes"
    folder.mkdir(exist_ok=True)
    # The token goes in the environment, so it is in no process listing and no shown command.
    env = {**ctx.env, "MCPZ_TOKEN": ctx.node_token}
    for name in NODES:
        argv = ["node", "run", "--registry", ctx.registry_url, "--name", name,
                "--data", str(folder / name), "--capacity", "2", "--stop-grace", "5"]  # fmt: skip
        ctx.say("$ " + " ".join(shlex.quote(a) for a in ["mcpz", *argv]) + " &")
        with (folder / f"{name}.log").open("wb") as log:
            ctx.nodes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "mcpz", *argv], cwd=ctx.root, env=env, stdout=log, stderr=log
                )
            )
    deadline = time.monotonic() + 60
    while sorted(_connected_nodes(ctx)) != sorted(NODES):
        for name, proc in zip(NODES, ctx.nodes, strict=True):
            if proc.poll() is not None:
                raise DemoFailed(f"node {name} exited {proc.returncode}: {_node_log(ctx, name)}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"the nodes did not connect within 60 s: {_node_log(ctx, NODES[0])}")
        time.sleep(0.1)
    ctx.mcpz("nodes")


def step_deploy(ctx: DemoContext) -> None:
    ctx.mcpz("deploy", f"{AGENT}@{ctx.results['version']}", "--replicas", "2", "--wait")


def step_status(ctx: DemoContext) -> None:
    view = ctx.mcpz("deploy", "status", AGENT, json_out=True)
    running = [i for i in view.get("instances", []) if i["status"] == "running" and not i["stopping"]]
    if view["state"] != "ready" or len(running) != 2:
        raise DemoFailed(f"{AGENT} is {view['state']} with {len(running)} replica(s) running, not 2")
    ctx.results["replicas"] = {i["id"]: i["node_name"] for i in running}
    ctx.mcpz("deploy", "status", AGENT)


def step_gateway(ctx: DemoContext) -> None:
    ctx.say(f"calling the deployed agent through the gateway: {ctx.registry_url}/mcp/{AGENT}")
    ctx.mcpz("tools", AGENT)
    answer = ctx.mcpz("call", AGENT, "add", "a=2", "b=40")
    if answer.strip() != "42":
        raise DemoFailed(f"add 2 40 through the gateway answered {answer!r}, not 42")


def step_usage(ctx: DemoContext) -> None:
    usage = ctx.mcpz("usage", "--agent", AGENT, "--events", "5", json_out=True)
    calls = {row["tool"]: row["calls"] for row in usage["summary"] if row["agent"] == AGENT}
    if calls.get("add") != 1:
        raise DemoFailed(f"expected one metered call of add, found {calls}")
    ctx.results["usage"] = calls
    ctx.mcpz("usage", "--agent", AGENT)


PRICE = "0.002"
CREDIT = "1"
PAID_CALLS = 3
CALLER = "demo-caller"


def _balance(ctx: DemoContext, token: str) -> dict[str, Any]:
    import httpx2

    response = httpx2.get(
        f"{ctx.registry_url}/v1/billing/balance", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def _caller_token(ctx: DemoContext) -> str:
    """A second account, the one that pays, and a key for it to call with: made directly in the
    embedded registry (`mcpz registry account create` and `token create` would do the same)."""
    from datetime import timedelta

    from registry_server.accounts import service as accounts
    from registry_server.accounts import tokens
    from registry_server.db import Database

    db = Database(ctx.registry_handle.settings.database_url)
    try:
        with db.session() as session:
            account = accounts.create_account(session, CALLER)
            _row, secret = accounts.create_token(
                session, account, tokens.parse_scopes("read,call"), expires_in=timedelta(days=1), name="demo"
            )
    finally:
        db.dispose()
    ctx.say(f"made a second account, {CALLER}, with a key that may call (kept, never printed)")
    return secret


def step_billing(ctx: DemoContext) -> None:
    """The creator prices the agent per call, the operator credits a second account, that account
    calls, and pays: its balance goes down by the calls' price, the creator's earnings go up."""
    import time

    from mcpz.money import format_amount, parse_amount

    assert ctx.registry_handle is not None and ctx.chain is not None
    ctx.mcpz("billing", "price", AGENT, "--per-call", PRICE)
    caller = _caller_token(ctx)
    # The local chain's faucet gives the wallet test tokens and gas; the wallet deposits for the caller.
    ctx.chain.give(ctx.results["address"], wei=10**18, tokens=parse_amount("5"))
    ctx.say("the local chain's faucet gave the wallet 5 test USDC and gas money")
    ctx.mcpz("billing", "deposit", CREDIT, "--account", CALLER, "--no-wait")
    deadline = time.monotonic() + 60
    while _balance(ctx, caller)["available"] < parse_amount(CREDIT):
        if time.monotonic() > deadline:
            raise DemoFailed(f"the deposit for {CALLER} was not credited within 60 s")
        ctx.chain.mine(1)
        time.sleep(0.2)
    ctx.show(f"the registry saw the deposit on chain and credited {CALLER} {CREDIT} USDC")
    ctx.say(f"{CALLER} calls {AGENT} {PAID_CALLS} times at {PRICE} a call")
    for _ in range(PAID_CALLS):
        answer = ctx.mcpz("call", AGENT, "add", "a=2", "b=40", token=caller)
        if answer.strip() != "42":
            raise DemoFailed(f"the paid call answered {answer!r}, not 42")
    # Rating is asynchronous; the balance route catches up on it, so a few looks suffice.
    spent = PAID_CALLS * parse_amount(PRICE)
    left = parse_amount(CREDIT) - spent
    deadline = time.monotonic() + 30
    while (found := _balance(ctx, caller))["available"] + found["reserved"] != left:
        if time.monotonic() > deadline:
            raise DemoFailed(f"{CALLER}'s balance did not go down by {spent} units within 30 s: {found}")
        time.sleep(0.2)
    ctx.mcpz("billing", "balance", token=caller)
    ctx.show(
        f"{CALLER} paid {format_amount(spent)} USDC for {PAID_CALLS} calls; what is reserved is held for "
        "its next calls and returns to available when it stops calling"
    )
    # No refund window here: the billing worker makes the earnings ready for payout within a moment.
    deadline = time.monotonic() + 30
    while (earned := ctx.mcpz("billing", "balance", json_out=True)["earnings"])["available"] <= 0:
        if time.monotonic() > deadline:
            raise DemoFailed(f"the creator's earnings did not become ready for payout: {earned}")
        time.sleep(0.3)
    ctx.mcpz("billing", "balance")
    ctx.results["billing"] = {
        "caller": found["available"] + found["reserved"],
        "spent": spent,
        "earned": earned,
    }


def step_payout(ctx: DemoContext) -> None:
    """The operator's payout job commits a Merkle batch of the creator's earnings on chain."""
    assert ctx.chain is not None
    data = str(ctx.root / "registry")
    built = ctx.mcpz("registry", "payouts", "run", "--data", data, json_out=True)
    batch = built["batch"]
    if batch is None:
        raise DemoFailed("the payout job built no batch, though the creator has earnings ready")
    if batch["state"] != "final":
        # Finality: the local chain mines the blocks a live chain adds over the next minutes (the
        # embedded EVM calls its head final at once; anvil's `finalized` trails by 64 blocks). The
        # registry's own job may finish the batch first: either way it is final once.
        ctx.chain.mine(70)
        ctx.say("the local chain mines 70 blocks (minutes on a live chain): the commit becomes final")
        ctx.mcpz("registry", "payouts", "run", "--no-build", "--wait", "60", "--data", data)
    listed = ctx.mcpz("registry", "payouts", "list", "--data", data, json_out=True)["batches"]
    final = next((b for b in listed if b["batch_id"] == batch["batch_id"]), None)
    if final is None or final["state"] != "final":
        raise DemoFailed(f"payout batch {batch['batch_id']} did not become final: {final}")
    ctx.mcpz("registry", "payouts", "list", "--data", data)
    ctx.results["payout"] = {"batch": batch["batch_id"], "total": batch["total"], "tx": final["tx_hash"]}


def step_claim(ctx: DemoContext) -> None:
    """The creator sees the payout with its proof, checks it against the chain, and claims it."""
    from mcpz.money import format_amount

    assert ctx.chain is not None
    batch = str(ctx.results["payout"]["batch"])
    ctx.mcpz("billing", "payouts", "--proof")
    check = ctx.mcpz("billing", "verify-payout", batch, json_out=True)
    if not check["ok"]:
        raise DemoFailed(f"the payout did not verify against the chain: {check}")
    ctx.mcpz("billing", "verify-payout", batch)
    claimed = ctx.mcpz("billing", "claim", json_out=True)
    total = ctx.results["payout"]["total"]
    if claimed["amount"] != total:
        raise DemoFailed(f"the claim paid {claimed['amount']}, not the batch's {total}")
    ctx.show(f"the creator's wallet holds its earnings: {format_amount(total)} USDC ({claimed['tx_hash']})")
    ctx.mcpz("billing", "claim")  # a second claim finds nothing left
    ctx.results["claim"] = claimed


def step_reconcile(ctx: DemoContext) -> None:
    assert ctx.chain is not None
    ctx.chain.mine(1)
    report = ctx.mcpz("registry", "payouts", "reconcile", "--data", str(ctx.root / "registry"), json_out=True)
    if not report["ok"]:
        raise DemoFailed(f"the ledger and the chain differ: {report}")
    ctx.mcpz("registry", "payouts", "reconcile", "--data", str(ctx.root / "registry"))
    ctx.results["reconcile"] = {r["what"]: r["difference"] for r in report["rows"]}


def _stop_nodes(ctx: DemoContext, timeout: float = 30) -> list[int | None]:
    import signal

    for proc in ctx.nodes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    codes: list[int | None] = []
    for proc in ctx.nodes:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)
    return codes


def step_stop_nodes(ctx: DemoContext) -> None:
    ctx.say("stopping the nodes (Ctrl-C): each stops its replicas, then disconnects")
    codes = _stop_nodes(ctx)
    ctx.nodes.clear()
    if codes != [0] * len(codes):
        raise DemoFailed(f"the nodes did not stop cleanly: exit codes {codes}")
    ctx.show(f"stopped {len(codes)} nodes")


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("init", step_init),
    ("commit", step_commit),
    ("log", step_log),
    ("tools", step_tools),
    ("call", step_call),
    ("chain", step_chain),
    ("registry", step_registry),
    ("wallet", step_wallet),
    ("login", step_login),
    ("namespace", step_namespace),
    ("push", step_push),
    ("verify", step_verify),
    ("info", step_info),
    ("market", step_market),
    ("node-key", step_node_key),
    ("nodes", step_nodes),
    ("deploy", step_deploy),
    ("status", step_status),
    ("gateway", step_gateway),
    ("usage", step_usage),
    ("billing", step_billing),
    ("payout", step_payout),
    ("claim", step_claim),
    ("reconcile", step_reconcile),
    ("stop-nodes", step_stop_nodes),
]


def run_demo(
    say: Callable[[str], None], show: Callable[[str], None], keep: Path | None = None
) -> dict[str, Any]:
    """Run every step; return what the steps found. Raises DemoFailed naming the failing step."""
    with tempfile.TemporaryDirectory(prefix="mcpz-demo-") as tmp:
        root = keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCPZ_")}
        env.update(
            MCPZ_CONFIG_DIR=str(root / ".config"),
            MCPZ_DATA_DIR=str(root / ".data"),
            MCPZ_CACHE_DIR=str(root / ".cache"),
            MCPZ_AUTHOR="mcpz demo <demo@example.invalid>",
            NO_COLOR="1",
            PYTHONUNBUFFERED="1",
            # The session token goes to a 0600 file in the demo's folder, never the user's OS keyring.
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        )
        ctx = DemoContext(root=root, say=say, show=show, env=env)
        done: list[str] = []
        try:
            for name, step in STEPS:
                say(f"[{len(done) + 1}/{len(STEPS)}] {name}")
                try:
                    step(ctx)
                except DemoFailed as e:
                    raise DemoFailed(f"demo step {name!r} failed: {e.message}") from e
                done.append(name)
        finally:
            _stop_nodes(ctx, timeout=15)  # a failed step may leave them running
            if ctx.registry_handle is not None:
                ctx.registry_handle.stop()
            os.environ.pop(OPERATOR_KEY, None)
            os.environ.pop(RELAYER_KEY, None)
            if ctx.chain is not None:
                ctx.chain.stop()
        return {"steps": done, **ctx.results}
