"""`mcpz doctor`: is this machine ready to publish and deploy to its registry? One check per line.

Each check says ok, warn (not set up yet, or works with a caveat) or fail (broken), and what to do
next. The checks run in order and later ones use what earlier ones found: the registry must answer
before the token is tried; the namespace's owner key is compared with the wallet's address to say
whether pushes will carry a signature that nodes accept. A failed check carries the exit code of
docs/errors.md for its kind (6 unreachable, 4 token or passphrase refused, 5 namespace missing);
the command exits with the first one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from mcpz import exit_codes
from mcpz.client.models import NamespaceInfo
from mcpz.client.registry import RegistryClient
from mcpz.errors import AuthError, McpzError, NetworkError, NotFoundError

Status = Literal["ok", "warn", "fail"]
EXPIRY_WARNING = timedelta(days=3)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    hint: str = ""
    exit_code: int = exit_codes.SUCCESS

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "status": self.status,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }


def ok(name: str, message: str) -> Check:
    return Check(name, "ok", message)


def warn(name: str, message: str, hint: str) -> Check:
    return Check(name, "warn", message, hint)


def fail(name: str, message: str, hint: str, exit_code: int) -> Check:
    return Check(name, "fail", message, hint, exit_code)


@dataclass
class Findings:
    """What the checks learnt so far, for the checks after them."""

    reachable: bool = False
    account: str | None = None
    namespaces: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    address: str | None = None  # the wallet's, when there is one
    namespace: NamespaceInfo | None = None


@dataclass(frozen=True)
class WalletFacts:
    """The local wallet as the caller found it: its address (None: no wallet) and whether it unlocked.

    `unlock_error` is the refusal's message when the passphrase was wrong or not available.
    """

    address: str | None
    path: str
    unlocked: bool = False
    unlock_error: str = ""
    unlock_hint: str = ""
    refused: bool = False  # True: a wrong passphrase (fail); False with an error: none available (warn)


def wallet_facts(prompt: Callable[[str], Callable[[], str] | None] | None = None) -> WalletFacts:
    """Look at the user's wallet and try to unlock it (passphrase from the environment, the keyring,
    or `prompt(address)` when that gives a prompt)."""
    from mcpz.keys.wallet import NoPassphrase, Wallet, WrongPassphrase, get_passphrase, keystore_path

    path = keystore_path()
    if not Wallet.exists():
        return WalletFacts(None, str(path))
    wallet = Wallet.load()
    try:
        wallet.unlock(get_passphrase(wallet.address, prompt=prompt(wallet.address) if prompt else None))
    except NoPassphrase as e:
        return WalletFacts(wallet.address, str(path), unlock_error=e.message, unlock_hint=e.hint or "")
    except WrongPassphrase as e:
        return WalletFacts(
            wallet.address, str(path), unlock_error=e.message, unlock_hint=e.hint or "", refused=True
        )
    return WalletFacts(wallet.address, str(path), unlocked=True)


def exit_code(checks: list[Check]) -> int:
    """The exit code of the first failed check, or 0."""
    return next((c.exit_code for c in checks if c.status == "fail"), exit_codes.SUCCESS)


async def wait_for_registry(client: RegistryClient, seconds: float) -> None:
    """Poll `/healthz` until it answers or `seconds` pass (a registry started a moment ago)."""
    import anyio

    with anyio.move_on_after(seconds):
        while True:
            try:
                await client.request("GET", "/healthz")
                return
            except NetworkError:
                await anyio.sleep(0.2)


async def check_registry(client: RegistryClient, found: Findings) -> Check:
    try:
        await client.request("GET", "/healthz")
    except McpzError as e:
        return fail(
            "registry",
            f"{client.url} does not answer: {e.message}",
            "check --registry / MCPZ_REGISTRY, or start one: `mcpz registry serve`",
            exit_codes.NETWORK,
        )
    found.reachable = True
    return ok("registry", f"{client.url} answers")


def _expires(value: Any, now: datetime) -> tuple[str, bool]:
    if not value:
        return "never expires", False
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"expires {moment.isoformat(timespec='minutes')}", moment - now < EXPIRY_WARNING


async def check_token(client: RegistryClient, has_token: bool, found: Findings, now: datetime) -> Check:
    if not found.reachable:
        return warn("token", "not checked: the registry does not answer", "fix the registry first")
    if not has_token:
        return warn("token", f"not logged in to {client.url}", "log in: `mcpz login --wallet`")
    try:
        who = await client.whoami()
    except AuthError as e:
        return fail(
            "token",
            f"the registry refuses the token: {e.message}",
            "log in again: `mcpz login --wallet` (or unset a stale MCPZ_TOKEN)",
            exit_codes.AUTH,
        )
    found.account = who.account
    found.namespaces = list(who.namespaces)
    found.scopes = list(who.scopes)
    expiry, soon = _expires(who.raw.get("expires_at"), now)
    message = f"logged in as {found.account}; scopes {','.join(found.scopes) or '-'}; {expiry}"
    if soon:
        return warn("token", message, "log in again soon: `mcpz login --wallet`")
    return ok("token", message)


def check_wallet(wallet: WalletFacts, found: Findings) -> Check:
    if wallet.address is None:
        return warn(
            "wallet",
            f"no wallet at {wallet.path}: releases you push are unsigned, and nodes refuse them",
            "create one and sign in with it: `mcpz login --wallet --create-wallet`",
        )
    found.address = wallet.address
    if wallet.unlocked:
        return ok("wallet", f"{wallet.address} unlocks")
    if wallet.refused:
        return fail(
            "wallet",
            f"{wallet.address} does not unlock: {wallet.unlock_error}",
            wallet.unlock_hint or "check MCPZ_WALLET_PASSPHRASE",
            exit_codes.AUTH,
        )
    return warn(
        "wallet",
        f"{wallet.address} is present, but its passphrase is not at hand: {wallet.unlock_error}",
        wallet.unlock_hint or "set MCPZ_WALLET_PASSPHRASE, or run in a terminal to be asked",
    )


async def check_namespace(client: RegistryClient, namespace: str | None, found: Findings) -> Check:
    if found.account is None:
        return warn("namespace", "not checked: not logged in", "log in: `mcpz login --wallet`")
    if namespace is None:
        own = [n for n in found.namespaces if not n.startswith("0x")]
        if not own:
            return warn(
                "namespace",
                "no namespace of your own yet (only your account's)",
                "claim one: `mcpz namespace create NAME` (or pass --namespace, or run in an agent folder)",
            )
        namespace = own[0]
    try:
        info = await client.namespace(namespace)
    except NotFoundError:
        return fail(
            "namespace",
            f'namespace "{namespace}" does not exist',
            f"claim it: `mcpz namespace create {namespace}`",
            exit_codes.NOT_FOUND,
        )
    found.namespace = info
    if info.owner == found.account:
        return ok("namespace", f'you own "{namespace}"')
    role = next((m.role for m in info.members if m.account == found.account), None)
    if role:
        owner = info.owner
        return ok("namespace", f'you are a member of "{namespace}" ({role}); its owner is {owner}')
    return fail(
        "namespace",
        f'"{namespace}" belongs to {info.owner}, and you ({found.account}) are not a member',
        f"ask its owner: `mcpz namespace add-member {namespace} {found.account}`, or pick another namespace",
        exit_codes.AUTH,
    )


def _same_address(a: str | None, b: str | None) -> bool:
    return bool(a and b and a.lower() == b.lower())


def check_signing(found: Findings) -> Check:
    info = found.namespace
    if info is None:
        return warn("signing", "not checked: no namespace to check", "see the namespace check")
    name = info.name
    owner_key = info.owner_address
    if found.address is None:
        return warn(
            "signing",
            f'no wallet: pushes to "{name}" publish unsigned releases, which nodes refuse to run',
            "`mcpz login --wallet --create-wallet`",
        )
    if not owner_key:
        return fail(
            "signing",
            f'"{name}" has no owner key (its owner {info.owner} has no wallet): nodes cannot '
            "verify its releases",
            f"its owner hands it to a wallet: `mcpz namespace transfer {name} {found.address}`",
            exit_codes.ERROR,
        )
    if _same_address(owner_key, found.address):
        return ok("signing", f'pushes to "{name}" are signed by {found.address}, the key nodes check')
    return warn(
        "signing",
        f'your wallet {found.address} is not the owner key of "{name}" ({owner_key}): nodes check the '
        "owner's signature",
        f"the owner signs releases (`mcpz sign NAME@VERSION`), or transfers the namespace to {found.address}",
    )


async def check_nodes(client: RegistryClient, found: Findings) -> Check:
    if found.account is None:
        return warn("nodes", "not checked: not logged in", "log in: `mcpz login --wallet`")
    info = found.namespace
    try:
        nodes = await client.nodes()
    except McpzError as e:
        return warn("nodes", f"cannot list nodes: {e.message}", e.hint or "see `mcpz nodes`")
    connected = [n for n in nodes if n.connected]
    if info is not None:
        allowed = {info.owner} | {m.account for m in info.members}
        usable = [n for n in connected if n.shared or n.owner in allowed]
        where = f'for "{info.name}"'
    else:
        usable = connected
        where = "for you"
    if not usable:
        return warn(
            "nodes",
            f"no node connected {where}: deployments wait, pending",
            "start one: `MCPZ_TOKEN=$(mcpz keys create --scope node --name my-node) mcpz node run`",
        )
    free = sum(n.free for n in usable)
    return ok("nodes", f"{len(usable)} node(s) connected {where}, {free} free replica slot(s)")


async def diagnose(
    client: RegistryClient,
    *,
    has_token: bool,
    wallet: WalletFacts,
    namespace: str | None = None,
    wait: float = 0.0,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Check]:
    """Every check, in order, against `client`'s registry."""
    if wait > 0:
        await wait_for_registry(client, wait)
    found = Findings()
    checks = [await check_registry(client, found)]
    checks.append(await check_token(client, has_token, found, now()))
    checks.append(check_wallet(wallet, found))
    checks.append(await check_namespace(client, namespace, found))
    checks.append(check_signing(found))
    checks.append(await check_nodes(client, found))
    return checks
