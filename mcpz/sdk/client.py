"""`mcpz.Client`: the Python SDK's front door, one object for an agent's life on a registry.

Each method does what the `mcpz` command of the same name does, with the same defaults, and
returns a typed value (`mcpz.client.models`, `mcpz.client.publish.PushResult`,
`mcpz.deps.flows.LockResult`, `mcpz.local.session.ToolInfo` / `ToolResult`); errors are
`mcpz.McpzError`s with the exit code the CLI would use. Methods are synchronous: each enters the
event loop once, as a command does. Async code uses `Client.connect()`, the `RegistryClient`
(whose methods are the async twins), and the async functions of `mcpz.client.deploy` and
`mcpz.client.gateway`.

    client = mcpz.Client("https://registry.example", token=os.environ["MCPZ_TOKEN"])
    client.push("weather")                          # signed by your wallet, as `mcpz push`
    client.deploy("acme/weather@0.1.0", replicas=2, wait=True)
    print(client.call("acme/weather", "forecast", {"city": "Oslo"}).text)

Signing: the releases `push` publishes and the changes `deploy`/`scale`/`rollback` make are signed
with the key `signer` provides (default: the user's wallet, unlocked from MCPZ_WALLET_PASSPHRASE or
the OS keyring, never by a prompt; no wallet: unsigned). Pass `sign=False` to a method, or
`signer=None`, to go unsigned; pass `signer=lambda: account` to sign with a key you hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mcpz.errors import AuthError, UsageError

if TYPE_CHECKING:
    from mcpz.client.market import ListingInfo, SearchResults
    from mcpz.client.models import AgentInfo, Deployment, Release, SessionToken, Usage, WhoAmI
    from mcpz.client.publish import ProgressFn, PushResult
    from mcpz.client.registry import RegistryClient
    from mcpz.deps.flows import LockResult
    from mcpz.keys.ethkeys import LocalAccount
    from mcpz.keys.wallet import KeyProvider
    from mcpz.local.session import ToolInfo, ToolResult

__all__ = ["DEFAULT", "Client"]

T = TypeVar("T")


class _Default:
    """The `signer` default: the user's wallet (`mcpz.keys.wallet.wallet_key()`), looked up when needed."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


class Client:
    """A registry, a token, and a signing key: `push`, `info`, `lock`, `deploy`, `call`, `usage`, ...

    `registry`: its URL (default: MCPZ_REGISTRY, else the user config, as the CLI). `token`: an
    API or session token (default: MCPZ_TOKEN, else what `mcpz login` stored for that registry).
    `signer`: see the module docstring. `timeout`: seconds for one MCP call through the gateway.
    """

    def __init__(
        self,
        registry: str | None = None,
        token: str | None = None,
        *,
        signer: KeyProvider | None = DEFAULT,
        timeout: float | None = None,
    ) -> None:
        from mcpz.config import Settings

        settings = Settings.load({"registry": registry})
        self.url: str = settings.registry
        self.timeout: float = settings.call_timeout if timeout is None else timeout
        self._token = token
        self._token_looked_up = token is not None
        self._signer = signer

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the token

    # --- credentials ----------------------------------------------------------------------------

    @property
    def token(self) -> str | None:
        """The token in use: the one given, else MCPZ_TOKEN or the stored one (looked up once)."""
        if not self._token_looked_up:
            from mcpz.credentials import get_token

            self._token = get_token(self.url)
            self._token_looked_up = True
        return self._token

    def login(
        self, token: str | None = None, *, wallet: LocalAccount | None = None, store: bool = False
    ) -> WhoAmI | SessionToken:
        """Use `token` (checked against the registry: `WhoAmI`), or sign in with `wallet`
        (Sign-In with Ethereum: `SessionToken`); with `store`, keep the token and make this
        registry the default, as `mcpz login` does."""
        if (token is None) == (wallet is None):
            raise UsageError("log in with a token or a wallet (one of them)")
        answer: WhoAmI | SessionToken
        if wallet is not None:
            from mcpz.client.signin import sign_in

            session = self._run(lambda client: sign_in(client, wallet), token=None)
            secret, answer = session.token, session
        else:
            assert token is not None
            secret = token
            answer = self._run(lambda client: client.whoami(), token=secret)
        self._token, self._token_looked_up = secret, True
        if store:
            from mcpz.client.signin import finish_login

            finish_login(self.url, secret, answer.account)
        return answer

    def whoami(self) -> WhoAmI:
        """The account, its namespaces, and the token's scopes and expiry."""
        return self._run(lambda client: client.whoami(), need_token=True)

    # --- publishing -------------------------------------------------------------------------------

    def push(
        self,
        path: str | Path = ".",
        *,
        sign: bool = True,
        force: bool = False,
        progress: ProgressFn | None = None,
        tools: bool = True,
        tools_timeout: float | None = None,
    ) -> PushResult:
        """`mcpz push`: push the current branch; publish the manifest's version if it is new, signed,
        with the agent's tools pinned (`tools=False`: `--no-tools`)."""
        from mcpz.client.publish import push

        signer = self._key_provider() if sign else None
        return push(
            Path(path),
            self.url,
            self.token,
            signer=signer,
            force=force,
            progress=progress,
            tools=tools,
            tools_timeout=tools_timeout,
        )

    def info(self, name: str) -> AgentInfo:
        """`mcpz info`: an agent's description and every published version."""
        from mcpz.names import AgentName

        AgentName.parse(name)
        return self._run(lambda client: client.agent(name))

    def release(self, name: str, version: str) -> Release:
        """One published release: commit, dependencies, yank state, signatures."""
        return self._run(lambda client: client.release(name, version))

    # --- dependencies -----------------------------------------------------------------------------

    def lock(
        self,
        path: str | Path = ".",
        *,
        upgrade: bool = False,
        upgrade_packages: Sequence[str] = (),
        check: bool = False,
        offline: bool = False,
    ) -> LockResult:
        """`mcpz lock`: resolve the agent's dependencies against this registry; write mcpz.lock."""
        import anyio

        from mcpz.config import cache_dir
        from mcpz.deps import flows as deps

        project = deps.open_project(Path(path))
        remote = deps.Remote(
            registry=self.url,
            token=self._token,
            cache_root=cache_dir(),
            offline=offline,
            token_lookup=lambda: self.token,
        )

        async def go() -> LockResult:
            return await deps.lock(
                project, remote, upgrade=upgrade, upgrade_packages=upgrade_packages, check=check
            )

        return anyio.run(go)

    # --- deployments ------------------------------------------------------------------------------

    def deploy(
        self,
        spec: str,
        *,
        replicas: int | None = None,
        selector: Mapping[str, str] | Sequence[str] | None = None,
        memory: int | str | None = None,
        open_files: int | None = None,
        sign: bool = True,
        wait: bool = False,
        timeout: float = 300.0,
    ) -> Deployment:
        """`mcpz deploy NAME[@VERSION]`: the desired state, signed; with `wait`, until it settles.

        `selector`: `{"region": "eu"}` or `["region=eu"]`; `memory`: bytes or `"512M"`. None
        leaves a setting as it is. A deployment that fails while waited for is returned, not raised
        (its `state` is "failed"), so the caller can read its replicas' `detail`."""
        from mcpz.client import deploy
        from mcpz.names import AgentName

        name, _, version = spec.partition("@")
        name = str(AgentName.parse(name))
        nodes: dict[str, str] | None = None
        if selector is not None:
            nodes = dict(selector) if isinstance(selector, Mapping) else deploy.parse_selector(selector)
        limits = None
        if memory is not None or open_files is not None:
            size = deploy.parse_size(memory) if isinstance(memory, str) else memory
            limits = {"memory_bytes": size, "open_files": open_files}
        account = self._account(sign)

        async def change(client: RegistryClient) -> Deployment:
            view = await deploy.deploy(
                client,
                name,
                version or None,
                replicas=replicas,
                selector=nodes,
                limits=limits,
                account=account,
            )
            return await client.wait_deployment(name, timeout=timeout) if wait else view

        return self._run(change, need_token=True)

    def scale(
        self, name: str, replicas: int, *, sign: bool = True, wait: bool = False, timeout: float = 300.0
    ) -> Deployment:
        """`mcpz deploy scale`: how many replicas run (a new revision, signed)."""
        from mcpz.client import deploy

        account = self._account(sign)

        async def change(client: RegistryClient) -> Deployment:
            view = await deploy.scale(client, name, replicas, account=account)
            return await client.wait_deployment(name, timeout=timeout) if wait else view

        return self._run(change, need_token=True)

    def rollback(
        self,
        name: str,
        revision: int | None = None,
        *,
        sign: bool = True,
        wait: bool = False,
        timeout: float = 300.0,
    ) -> Deployment:
        """`mcpz deploy rollback`: back to `revision` (default: the previous one), signed."""
        from mcpz.client import deploy

        account = self._account(sign)

        async def change(client: RegistryClient) -> Deployment:
            view = await deploy.rollback(client, name, revision, account=account)
            return await client.wait_deployment(name, timeout=timeout) if wait else view

        return self._run(change, need_token=True)

    def deployment(self, name: str) -> Deployment:
        """`mcpz deploy status`: a deployment, its replicas and revisions."""
        return self._run(lambda client: client.deployment(name))

    def deployments(self) -> list[Deployment]:
        """`mcpz deployments`: the deployments this token can see."""
        return self._run(lambda client: client.deployments())

    # --- the marketplace ----------------------------------------------------------------------------

    def search(
        self,
        query: str = "",
        *,
        kind: str | None = None,
        tag: str | None = None,
        free: bool | None = None,
        min_rating: float | None = None,
        namespace: str | None = None,
        sort: str = "relevance",
        limit: int = 20,
        offset: int = 0,
    ) -> SearchResults:
        """`mcpz market search`: one page of listings (`more`: another follows at offset + limit)."""
        from mcpz.client.market import Market

        return self._run(
            lambda client: Market(client).search(
                query,
                kind=kind,
                tag=tag,
                free=free,
                min_rating=min_rating,
                namespace=namespace,
                sort=sort,
                limit=limit,
                offset=offset,
            )
        )

    def listing(self, name: str) -> ListingInfo:
        """`mcpz market info`: an agent's listing: description, tools, pricing, ratings."""
        from mcpz.client.market import Market

        return self._run(lambda client: Market(client).info(name))

    # --- calling agents ---------------------------------------------------------------------------

    def tools(self, name: str) -> list[ToolInfo]:
        """`mcpz tools NAME`: the tools of a deployed agent (`NAME[@VERSION]`), through the gateway."""
        import anyio

        from mcpz.client.gateway import list_remote_tools

        token = self._need_token()
        return anyio.run(
            lambda: list_remote_tools(name, registry=self.url, token=token, timeout=self.timeout)
        )

    def call(
        self,
        name: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        key_values: Sequence[str] = (),
        check: bool = True,
    ) -> ToolResult:
        """`mcpz call NAME TOOL k=v ...`: one metered tools/call through the gateway.

        `arguments` as JSON values, and/or `key_values` as the CLI takes them (`["city=Oslo"]`,
        converted by the tool's input schema). With `check`, a tool error raises `AgentError`."""
        import anyio

        from mcpz.client.gateway import call_remote_tool

        token = self._need_token()

        async def go() -> ToolResult:
            return await call_remote_tool(
                name,
                tool,
                arguments,
                key_values=key_values,
                registry=self.url,
                token=token,
                timeout=self.timeout,
                check=check,
            )

        return anyio.run(go)

    def usage(
        self,
        *,
        agent: str | None = None,
        since: str | None = None,
        until: str | None = None,
        events: int = 0,
    ) -> Usage:
        """`mcpz usage`: calls through the gateway, summed per agent and tool. `since`/`until`:
        `30m`, `1h`, `7d`, Unix seconds or ISO 8601; `agent`: every caller of your agent."""
        from mcpz.instants import parse_since
        from mcpz.names import AgentName

        who = str(AgentName.parse(agent)) if agent is not None else None
        start = parse_since(since) if since is not None else None
        end = parse_since(until) if until is not None else None
        return self._run(
            lambda client: client.usage(agent=who, since=start, until=end, events=events), need_token=True
        )

    # --- async ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[RegistryClient]:
        """The async `RegistryClient` for this registry and token (its methods are the async twins)."""
        from mcpz.client.registry import connect

        async with connect(self.url, self.token) as client:
            yield client

    # --- helpers ----------------------------------------------------------------------------------

    def _key_provider(self) -> KeyProvider | None:
        if self._signer is DEFAULT:
            from mcpz.keys.wallet import wallet_key

            return wallet_key()
        signer: KeyProvider | None = self._signer
        return signer

    def _account(self, sign: bool) -> LocalAccount | None:
        """The signing key, asked for before anything changes (a locked wallet stops the change)."""
        provider = self._key_provider() if sign else None
        return provider() if provider is not None else None

    def _need_token(self) -> str:
        token = self.token
        if token is None:
            raise AuthError(f"no token for {self.url}", hint="pass token=, set MCPZ_TOKEN, or `mcpz login`")
        return token

    def _run(
        self,
        fn: Callable[[RegistryClient], Awaitable[T]],
        *,
        need_token: bool = False,
        token: str | _Default | None = DEFAULT,
    ) -> T:
        import anyio

        from mcpz.client.registry import connect

        secret = (self._need_token() if need_token else self.token) if token is DEFAULT else token
        assert not isinstance(secret, _Default)

        async def go() -> T:
            async with connect(self.url, secret) as client:
                return await fn(client)

        return anyio.run(go)
