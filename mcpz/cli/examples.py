"""One example per command, shown at the end of its `--help` (and in docs/cli.md).

Kept apart from the command modules so that the help of every command reads the same way and a
test can check that no command is without one (tests/cli/test_cli_help.py). Keys are command paths
without the leading `mcpz`; a group's example shows its commonest subcommand.
"""

from __future__ import annotations

_TOKEN = "mcpz registry token create --account acme --scope read,publish --expires 30d"

EXAMPLES: dict[str, tuple[str, ...]] = {
    # repositories
    "init": ("mcpz init acme/weather", "mcpz init acme/weather --template plugin"),
    "commit": ('mcpz commit -m "Add the forecast tool"',),
    "status": ("mcpz status",),
    "log": ("mcpz log -n 5",),
    "diff": ("mcpz diff", "mcpz diff v1.0.0 HEAD"),
    "show": ("mcpz show HEAD", "mcpz show v1.0.0:mcpz.toml"),
    "release": ("mcpz release 1.0.0", "mcpz release --bump minor"),
    # dependencies
    "add": ('mcpz add acme/geo "^1.2"',),
    "remove": ("mcpz remove acme/geo",),
    "lock": ("mcpz lock", "mcpz lock --check"),
    "install": ("mcpz install",),
    "sync": ("mcpz sync",),
    "tree": ("mcpz tree",),
    "why": ("mcpz why acme/geo",),
    "outdated": ("mcpz outdated",),
    # calling
    "run": ("mcpz run . -- --verbose",),
    "tools": ("mcpz tools acme/weather", "mcpz tools --local ."),
    "call": (
        "mcpz call acme/weather forecast city=Oslo days=3",
        "mcpz call --local . echo text=hi",
        "mcpz call acme/weather forecast city=Oslo --pay --max-price 50000",
    ),
    "connect": ("mcpz connect .",),
    "usage": ("mcpz usage --since 7d", "mcpz usage --agent acme/weather -n 20"),
    "top": ("mcpz top", "mcpz top --window 300 --interval 5", "mcpz --json top"),
    # publishing
    "push": ("mcpz push",),
    "clone": ("mcpz clone acme/weather@1.0.0",),
    "pull": ("mcpz pull",),
    "info": ("mcpz info acme/weather",),
    "versions": ("mcpz versions acme/weather",),
    "yank": ("mcpz yank acme/weather@1.0.1",),
    "unyank": ("mcpz unyank acme/weather@1.0.1",),
    "verify": ("mcpz verify acme/weather@1.0.0",),
    "sign": ("mcpz sign acme/weather@1.0.0",),
    # deploying
    "deploy": ("mcpz deploy acme/weather@1.0.0 --replicas 2 --wait",),
    "deploy apply": ("mcpz deploy apply acme/weather@1.1.0 --wait",),
    "deploy status": ("mcpz deploy status acme/weather",),
    "deploy restart": ("mcpz deploy restart acme/weather --wait",),
    "deploy scale": ("mcpz deploy scale acme/weather 3",),
    "deploy rollback": ("mcpz deploy rollback acme/weather",),
    "deploy rm": ("mcpz deploy rm acme/weather",),
    "deployments": ("mcpz deployments",),
    "nodes": ("mcpz nodes",),
    "logs": (
        "mcpz logs acme/weather -f",
        "mcpz logs acme/weather --since 10m --replica acme.weather-3f -f",
    ),
    "node": ("mcpz node run --name laptop --label region=eu",),
    "node run": (
        "mcpz node run --name laptop --label region=eu",
        "mcpz node run --registry https://r1.example --registry https://r2.example",
    ),
    # accounts
    "login": ("mcpz login --wallet --registry https://registry.example.com", "mcpz login --token"),
    "logout": ("mcpz logout",),
    "whoami": ("mcpz whoami",),
    "doctor": ("mcpz doctor", "mcpz doctor --json"),
    # market
    "market": ("mcpz market search weather --sort popular",),
    "market search": (
        'mcpz market search "forecast" --tag weather --free',
        "mcpz market search weathr --json",
    ),
    "market info": ("mcpz market info acme/weather",),
    "market review": ('mcpz market review acme/weather --stars 5 -m "Fast and right"',),
    "market reviews": ("mcpz market reviews acme/weather",),
    "market reply": ('mcpz market reply 12 -m "Fixed in 1.2.1, thanks"',),
    "market report": ('mcpz market report 12 -m "spam"',),
    "market list": ("mcpz market list acme/weather",),
    "market unlist": ("mcpz market unlist acme/weather",),
    # settlement
    "chain": ("mcpz chain dev",),
    "chain dev": (
        "mcpz chain dev --port 8545",
        "mcpz chain dev --json > chain.json",
        "mcpz chain dev --engine evm",
    ),
    # billing
    "billing": ("mcpz billing balance",),
    "billing plans": ("mcpz billing plans acme/weather",),
    "billing price": (
        "mcpz billing price acme/weather --per-call 0.002 --tool forecast=0.005",
        "mcpz billing price acme/weather --monthly 10 --included 10000 --overage 0.001",
    ),
    "billing split": ("mcpz billing split acme/weather acme=70% bob=30%",),
    "billing subscribe": ("mcpz billing subscribe acme/weather monthly",),
    "billing unsubscribe": ("mcpz billing unsubscribe acme/weather",),
    "billing subscriptions": ("mcpz billing subscriptions",),
    "billing balance": ("mcpz billing balance", "mcpz billing balance --json"),
    "billing usage": ("mcpz billing usage --since 7d",),
    "billing deposit": (
        "mcpz billing deposit 5 --rpc http://127.0.0.1:8545",
        "mcpz billing deposit 20 --account acme --no-wait --json",
    ),
    "billing payouts": ("mcpz billing payouts", "mcpz billing payouts --proof --json"),
    "billing claim": ("mcpz billing claim", "mcpz billing claim 12 --rpc http://127.0.0.1:8545"),
    "billing verify-payout": ("mcpz billing verify-payout 12 --rpc https://mainnet.era.zksync.io",),
    "billing withdraw": (
        "mcpz billing withdraw 5 --rpc http://127.0.0.1:8545",
        "mcpz billing withdraw --voucher 12 --json",
    ),
    "billing withdrawals": ("mcpz billing withdrawals", "mcpz billing withdrawals --json"),
    "billing caps": ("mcpz billing caps",),
    "billing caps set": (
        "mcpz billing caps set 5 --per day",
        "mcpz billing caps set 50 --per month --agent acme/weather",
    ),
    "billing caps remove": ("mcpz billing caps remove 3",),
    "billing verify-receipt": (
        "mcpz billing verify-receipt result.json",
        "mcpz billing verify-receipt receipt.json --key ed25519:... --request request.json",
    ),
    "billing invoices": ("mcpz billing invoices",),
    "billing invoice": ("mcpz billing invoice draft", "mcpz billing invoice 12 --json"),
    "billing statement": ("mcpz billing statement --period 2026-11",),
    "keys": ("mcpz keys list",),
    "keys create": ("mcpz keys create --scope read,call --name ci --expires-days 30",),
    "keys list": ("mcpz keys list",),
    "keys revoke": ("mcpz keys revoke 12",),
    "wallet": ("mcpz wallet create",),
    "wallet create": ("mcpz wallet create",),
    "wallet address": ("mcpz wallet address",),
    "wallet export": ("mcpz wallet export > keystore.json",),
    "wallet import": ("mcpz wallet import --keystore keystore.json",),
    "namespace": ("mcpz namespace create acme",),
    "namespace create": ("mcpz namespace create acme",),
    "namespace show": ("mcpz namespace show acme",),
    "namespace add-member": ("mcpz namespace add-member acme alice",),
    "namespace remove-member": ("mcpz namespace remove-member acme alice",),
    "namespace transfer": ("mcpz namespace transfer acme bob",),
    "namespace rotate-key": ("mcpz namespace rotate-key",),
    "config": ("mcpz config set registry https://registry.example.com",),
    "config get": ("mcpz config get registry",),
    "config set": ("mcpz config set call_timeout 60",),
    "config unset": ("mcpz config unset call_timeout",),
    "config list": ("mcpz config list",),
    "config path": ("mcpz config path",),
    # operators
    "registry": ("mcpz registry serve --port 8080",),
    "registry serve": ("mcpz registry serve --host 0.0.0.0 --port 8080",),
    "registry migrate": ("mcpz registry migrate",),
    "registry account": ("mcpz registry account create acme",),
    "registry account create": ("mcpz registry account create acme",),
    "registry token": (_TOKEN,),
    "registry token create": (_TOKEN,),
    "registry payouts": ("mcpz registry payouts run --wait 600",),
    "registry payouts run": ("mcpz registry payouts run", "mcpz registry payouts run --wait 600 --json"),
    "registry payouts list": ("mcpz registry payouts list",),
    "registry payouts reconcile": ("mcpz registry payouts reconcile",),
    "registry tier": ("mcpz registry tier acme", "mcpz registry tier acme pro"),
    "registry credit": (
        'mcpz registry credit acme 25 --reason "welcome credit" --expires 30d',
        "mcpz registry credit 0x8ba1f109551bD432803012645Ac136ddd64DBA72 100 --key deposit-42",
    ),
    "registry refund": ('mcpz registry refund 01JD0S... --reason "agent was down"',),
    "registry close-period": ("mcpz registry close-period 2026-11",),
    "cache": ("mcpz cache clean --dry-run",),
    "cache clean": ("mcpz cache clean --dry-run", "mcpz cache clean --json"),
    "node gc": ("mcpz node gc --dry-run", "mcpz node gc --data /var/lib/mcpz/node --grace 10m"),
    "registry gc": ("mcpz registry gc --dry-run", "mcpz registry gc --grace now --json"),
    "demo": ("mcpz demo",),
}


def epilog(path: str) -> str | None:
    """The epilog of command `path` ("deploy apply"): its examples, kept as typed (`\\b`)."""
    lines = EXAMPLES.get(path)
    if not lines:
        return None
    example = "\b\nExample:\n" + "\n".join(f"  {line}" for line in lines)
    return example + "\n\n" + GLOBAL_FLAGS


GLOBAL_FLAGS = "Global options, anywhere on the line: --json (machine output), -v/--verbose, -q/--quiet."
