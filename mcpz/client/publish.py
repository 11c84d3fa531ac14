"""Moving agents between a local repository and a registry: push (which publishes), clone, pull.

`push` sends the current branch and, when the manifest's version has no release yet, the tag
`v{version}` on the branch's head: one command publishes. The local tag is only made once the
registry has accepted it, so a refused push leaves nothing behind to trip over next time.

Given a wallet account, `push` signs what it publishes. Before that it starts the agent from its
folder (as `mcpz tools` does), records its `tools/list` and pins it to the release: the digest
goes into the signed release statement (v2) and the definitions go up with the signature, so
nodes can refuse a replica whose tools were swapped after publishing (`tools=False`: not pinned).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcpz.errors import (
    AuthError,
    McpzError,
    NetworkError,
    NotFoundError,
    RefusedError,
    RepositoryError,
    UsageError,
)
from mcpz.manifest import MANIFEST_FILE, Manifest, parse_manifest
from mcpz.names import LATEST, AgentName

if TYPE_CHECKING:
    from mcpz.client.models import Release, ReleaseTools
    from mcpz.client.registry import RegistryClient
    from mcpz.keys import signing
    from mcpz.keys.ethkeys import LocalAccount
    from mcpz.keys.wallet import KeyProvider

ProgressFn = Callable[[str, int, int | None], None]  # (phase, done, total)


@dataclass(frozen=True)
class PushResult:
    name: str
    version: str
    commit: str
    branch: str
    published: bool
    already_published: bool
    refs: dict[str, str] = field(default_factory=dict)
    objects_sent: int = 0
    bytes_sent: int = 0
    remote_messages: list[str] = field(default_factory=list)
    signer: str | None = None  # the wallet that signed the release, once it is signed
    warnings: list[str] = field(default_factory=list)  # e.g. a version lower than one published
    tools: tuple[str, ...] | None = None  # the names of the tools pinned with the signature
    tools_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "commit": self.commit,
            "branch": self.branch,
            "published": self.published,
            "already_published": self.already_published,
            "objects_sent": self.objects_sent,
            "bytes_sent": self.bytes_sent,
            "signed": self.signer is not None,
            "signer": self.signer,
            "warnings": list(self.warnings),
            "tools": list(self.tools) if self.tools is not None else None,
            "tools_digest": self.tools_digest,
        }


def repo_url(registry: str, name: str) -> str:
    return f"{registry.rstrip('/')}/git/{name}.git"


def _client(registry: str, name: str, token: str | None) -> tuple[Any, str]:
    from dulwich.client import HttpGitClient

    url = repo_url(registry, name)
    client = HttpGitClient(url, username="mcpz" if token else None, password=token)
    return client, ""


def translate_transport(e: Exception, registry: str, token: str | None = None) -> Exception:
    """A dulwich transport error as the McpzError a user can act on."""
    from dulwich.client import HTTPUnauthorized
    from dulwich.errors import GitProtocolError, HangupException

    if isinstance(e, HTTPUnauthorized):
        if token:
            return AuthError(
                f"the registry at {registry} rejected the token (unknown, revoked or expired)",
                hint="log in again with `mcpz login`, or check MCPZ_TOKEN",
            )
        return AuthError(
            f"the registry at {registry} wants a token for this",
            hint="run `mcpz login` or set MCPZ_TOKEN",
        )
    text = str(e)
    if _unreachable(e):
        return NetworkError(
            f"cannot reach the registry at {registry}", hint="check --registry / MCPZ_REGISTRY"
        )
    if "403" in text or "Forbidden" in text:
        return AuthError(
            f"the registry refused: {text}", hint="check that your token has the scope and namespace"
        )
    if "404" in text or "Not Found" in text:
        return NotFoundError(f"not found in the registry at {registry}: {text}")
    if isinstance(e, (HangupException, GitProtocolError)):
        return RepositoryError(f"git protocol error talking to {registry}: {text}")
    return NetworkError(
        f"cannot reach the registry at {registry}: {text}", hint="check --registry / MCPZ_REGISTRY"
    )


def _unreachable(e: BaseException) -> bool:
    """Whether a transport error means "nobody answered" (refused, no route, DNS, timeout)."""
    seen: BaseException | None = e
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        name = type(seen).__name__
        if name in ("NewConnectionError", "MaxRetryError", "ConnectTimeoutError", "NameResolutionError"):
            return True
        if "Failed to establish a new connection" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def open_repo(path: Path) -> Any:
    from dulwich.errors import NotGitRepository
    from dulwich.repo import Repo

    try:
        return Repo.discover(str(path))
    except NotGitRepository:
        raise UsageError(
            f"{path} is not inside an agent repository", hint="run `mcpz init` or cd into an agent"
        ) from None


def head_manifest(repo: Any) -> tuple[bytes, str, Manifest]:
    """(branch ref, head commit id, manifest at head) of a repository."""
    try:
        head = repo.refs.read_ref(b"HEAD")
    except KeyError:
        head = None
    if not head or not head.startswith(b"ref: "):
        raise RepositoryError("HEAD is detached", hint="check out a branch before pushing")
    branch = head[5:].strip()
    try:
        commit_id = repo.refs[branch]
    except KeyError:
        raise RepositoryError("nothing committed yet", hint='run `mcpz commit -m "..."` first') from None
    commit = repo[commit_id]
    tree = repo[commit.tree]
    try:
        _mode, blob_id = tree[MANIFEST_FILE.encode()]
    except KeyError:
        raise RepositoryError(f"the last commit has no {MANIFEST_FILE}", hint="commit one first") from None
    manifest = parse_manifest(repo[blob_id].as_raw_string().decode("utf-8"), f"{MANIFEST_FILE} at HEAD")
    return branch, commit_id.decode(), manifest


def _check_committed_lock(repo: Any, commit_id: str, manifest: Manifest) -> None:
    """Refuse to publish what a lock at HEAD does not match: a release must be reproducible."""
    from mcpz.lockfile import LOCK_FILE, lock_problem

    tree = repo[repo[commit_id.encode()].tree]
    try:
        _mode, blob_id = tree[LOCK_FILE.encode()]
        text: str | None = repo[blob_id].as_raw_string().decode("utf-8")
    except KeyError:
        text = None
    problem = lock_problem(manifest.dependencies, text)
    if problem is not None:
        problem.message = f"cannot push: {problem.message} (in the last commit)"
        problem.hint = "run `mcpz lock`, commit mcpz.lock, then push"
        raise problem


def push(
    path: Path,
    registry: str,
    token: str | None,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
    sent: Callable[[int], None] | None = None,
    account: LocalAccount | None = None,
    signer: KeyProvider | None = None,
    tools: bool = True,
    tools_timeout: float | None = None,
) -> PushResult:
    """Push the current branch and publish the manifest's version if it is new; with `account`
    (or `signer`, the key provider that gives it), sign what it publishes, pinning the agent's tools
    unless `tools` is False: `mcpz push`, and `mcpz.push`. `progress` hears the objects packed,
    `sent(n)` each n bytes of pack data.

    Whether the version is already published is read from the refs the registry advertises at
    the start of the push, so publishing costs no request beyond git's own. Only when this push
    publishes, and before any object is sent, `signer` is called (the CLI unlocks the wallet there:
    a push that publishes nothing needs no passphrase) and the agent's tools are listed, so a
    missing passphrase or an agent that cannot start stops the push instead of leaving a release
    unsigned. When it answers None (no wallet), or there is neither `account` nor `signer`, the
    release is published unsigned (`PushResult.signer` is None; nodes refuse it).
    `mcpz.keys.wallet.wallet_key()` is the user's wallet, unlocked without prompting.
    """
    chosen: list[LocalAccount | None] = [account] if account is not None or signer is None else []
    pinned: list[list[dict[str, Any]]] = []

    def get_signer() -> LocalAccount | None:
        if not chosen:
            chosen.append(signer() if signer is not None else None)
        return chosen[0]

    def publishing() -> None:
        if get_signer() is not None and tools and not pinned:
            pinned.append(list_tool_definitions(path, timeout=tools_timeout))

    result = push_refs(
        path, registry, token, force=force, progress=progress, sent=sent, before_publish=publishing
    )
    if not result.published:
        return result
    key = get_signer()
    if key is None:
        return result
    if tools and not pinned:
        pinned.append(list_tool_definitions(path, timeout=tools_timeout))
    return sign_published(path, registry, token, result, key, pinned[0] if pinned else None)


def list_tool_definitions(path: Path, *, timeout: float | None = None) -> list[dict[str, Any]]:
    """Start the agent in `path` (as `mcpz tools` does), and return its `tools/list` definitions."""
    import anyio

    from mcpz.local.session import list_tools

    async def listed() -> list[dict[str, Any]]:
        return [tool.definition for tool in await list_tools(path, timeout=timeout)]

    try:
        return anyio.run(listed)
    except McpzError as e:
        e.message = f"cannot record the agent's tools to pin them: {e.message}"
        e.hint = "fix it and push again, or publish without pinned tools: `mcpz push --no-tools`"
        raise


def sign_published(
    path: Path,
    registry: str,
    token: str | None,
    result: PushResult,
    account: LocalAccount,
    tools: list[dict[str, Any]] | None,
) -> PushResult:
    """Sign the release `result` just published (with `tools` pinned, if given); on failure the
    error says how to sign it later."""
    import dataclasses

    import anyio

    from mcpz.client.registry import connect
    from mcpz.tooldefs import ToolDefinitionsError, canonical_tools, tools_digest

    try:
        digest = tools_digest(tools) if tools is not None else None
    except ToolDefinitionsError as e:
        raise UsageError(
            f"published {result.name} {result.version}, but its tools cannot be pinned: {e}",
            hint="fix the agent's tools/list, or sign without them: "
            f"`mcpz sign {result.name}@{result.version}`",
        ) from e
    statement = release_statement(
        registry, result.name, result.version, result.commit, manifest_bytes_at(path, result.commit), digest
    )

    async def call() -> Release:
        async with connect(registry, token) as client:
            return await sign_release(client, statement, account, tools=tools)

    try:
        anyio.run(call)
    except McpzError as e:
        e.message = f"published {result.name} {result.version}, but signing it failed: {e.message}"
        e.hint = e.hint or f"sign it with `mcpz sign {result.name}@{result.version}`"
        raise
    names = tuple(str(t["name"]) for t in canonical_tools(tools)) if tools is not None else None
    return dataclasses.replace(result, signer=str(account.address), tools=names, tools_digest=digest)


def push_refs(
    path: Path,
    registry: str,
    token: str | None,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
    sent: Callable[[int], None] | None = None,
    before_publish: Callable[[], None] | None = None,
) -> PushResult:
    """The git part of `push`: send the branch and, for a new version, its tag. Nothing is signed.
    `before_publish` runs only when the push publishes, before any object is sent."""
    from dulwich.errors import GitProtocolError, HangupException
    from dulwich.objects import ZERO_SHA

    repo = open_repo(path)
    try:
        branch, commit_id, manifest = head_manifest(repo)
        AgentName.parse(manifest.name)
        _check_committed_lock(repo, commit_id, manifest)
        tag_ref = f"refs/tags/v{manifest.version}".encode()
        local_tag = repo.refs.as_dict().get(tag_ref)
        # Decided in update_refs, once the registry's refs are known.
        decision = {"already": False, "send_tag": False}
        counters = {"objects": 0, "bytes": 0}
        messages: list[str] = []
        warnings: list[str] = []
        client, _ = _client(registry, manifest.name, token)

        def update_refs(remote: dict[bytes, bytes]) -> dict[bytes, bytes]:
            wanted = dict(remote)
            old = remote.get(branch)
            if old is not None and old != ZERO_SHA and old != commit_id.encode() and not force:
                if old not in repo.object_store or not _is_ancestor(repo, old, commit_id.encode()):
                    raise RefusedError(
                        f"the registry's {branch.decode()} has commits you do not have",
                        hint="run `mcpz pull` first, or push with --force",
                    )
            wanted[branch] = commit_id.encode()
            if tag_ref in remote:
                # Published already: by this very tag (a no-op) or by other code (bump to publish).
                decision["already"] = True
            else:
                if before_publish is not None:
                    before_publish()
                wanted[tag_ref] = local_tag or commit_id.encode()
                decision["send_tag"] = True
                from mcpz.client.remote_status import lower_than_published, published_versions

                lower = lower_than_published(manifest.version, list(published_versions(remote)))
                if lower:
                    warnings.append(lower)
            return wanted

        def generate(have: Any, want: Any, *, ofs_delta: bool = False, progress: Any = None) -> Any:
            count, records = repo.generate_pack_data(set(have), set(want), ofs_delta=ofs_delta)

            def counted() -> Iterator[Any]:
                for record in records:
                    size = sum(len(c) for c in (record.comp_chunks or [])) or (record.decomp_len or 0)
                    counters["objects"] += 1
                    counters["bytes"] += size
                    if sent is not None:
                        sent(size)
                    if progress_cb is not None:
                        progress_cb("objects", counters["objects"], count)
                    yield record

            return count, counted()

        progress_cb = progress

        def remote_progress(data: bytes) -> None:
            for line in data.decode("utf-8", "replace").replace("\r", "\n").splitlines():
                if line.strip():
                    messages.append(line.strip())

        try:
            result = client.send_pack(
                f"/git/{manifest.name}.git".encode(),
                update_refs,
                generate_pack_data=generate,
                progress=remote_progress,
            )
        except McpzError:
            raise  # ours, from update_refs: a refusal, or what `before_publish` raised
        except (GitProtocolError, HangupException, OSError, Exception) as e:
            raise translate_transport(e, registry, token) from e
        errors = {ref.decode(): err for ref, err in (result.ref_status or {}).items() if err}
        if errors:
            reasons = "; ".join(f"{ref}: {err}" for ref, err in errors.items())
            raise RefusedError(
                f"the registry refused the push: {reasons}", hint="fix what it names and push again"
            )
        published = decision["send_tag"]
        already = decision["already"]
        if published and local_tag is None:
            repo.refs.add_if_new(tag_ref, commit_id.encode())
        return PushResult(
            name=manifest.name,
            version=manifest.version,
            commit=commit_id,
            branch=branch.decode().removeprefix("refs/heads/"),
            published=published,
            already_published=already,
            objects_sent=counters["objects"],
            bytes_sent=counters["bytes"],
            remote_messages=messages,
            warnings=warnings,
        )
    finally:
        repo.close()


def _is_ancestor(repo: Any, ancestor: bytes, descendant: bytes) -> bool:
    from dulwich.graph import can_fast_forward

    return bool(can_fast_forward(repo, ancestor, descendant))


def _check_release(registry: str, name: str, version: str | None, token: str | None) -> str | None:
    """Say "no such agent/release" plainly, before git would say it obscurely; returns the version
    (`latest`: the newest release that is not yanked nor a pre-release)."""
    import httpx2

    from mcpz.client.models import AgentInfo
    from mcpz.client.registry import error_from_response

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx2.get(f"{registry.rstrip('/')}/v1/agents/{name}", headers=headers, timeout=30)
    except httpx2.TransportError as e:
        raise NetworkError(f"cannot reach the registry at {registry}: {e}", hint="check --registry") from e
    if response.status_code >= 400:
        raise error_from_response(response)
    info = AgentInfo.from_json(response.json())
    if version == LATEST:
        if not info.latest:
            raise NotFoundError(f"{name} has no release yet", hint=f"see `mcpz versions {name}`")
        return info.latest
    if version is not None and info.release(version) is None:
        raise NotFoundError(f"{name} has no release {version}", hint=f"see `mcpz versions {name}`")
    return version


@dataclass(frozen=True)
class ReleaseInfo:
    """A release as the registry serves it, and the tools pinned to it (None: none recorded yet)."""

    release: Release
    tools: ReleaseTools | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.release.to_dict(),
            "tools": self.tools.to_dict() if self.tools is not None else None,
        }


async def release_info(registry: str, token: str | None, name: str, version: str) -> ReleaseInfo:
    """A release as the registry serves it, and its pinned tools (`mcpz info NAME@VERSION`)."""
    from mcpz.client.registry import connect

    AgentName.parse(name)
    async with connect(registry, token) as client:
        release = await client.release(name, version)
        try:
            tools: ReleaseTools | None = await client.release_tools(name, version)
        except NotFoundError:
            tools = None
    return ReleaseInfo(release, tools)


def clone(
    registry: str,
    name: str,
    version: str | None,
    target: Path,
    token: str | None = None,
    *,
    received: Callable[[int], None] | None = None,
) -> str:
    """Clone `name` (at release `version`, `latest` for the newest, else its default branch) into
    `target`; return the commit. `received(n)` hears each n bytes of pack data fetched."""
    from dulwich.client import get_transport_and_path

    AgentName.parse(name)
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target} exists and is not empty", hint="choose another folder")
    version = _check_release(registry, name, version, token)
    url = repo_url(registry, name)
    try:
        # What `porcelain.clone` does, with the client at hand so the pack's bytes can be counted.
        client, path = get_transport_and_path(url, username="mcpz" if token else None, password=token)
        if received is not None:
            fetch_pack = client.fetch_pack

            def counted_fetch_pack(
                path: Any, determine_wants: Any, graph_walker: Any, pack_data: Any, *args: Any, **kw: Any
            ) -> Any:
                def write(data: bytes) -> None:
                    pack_data(data)
                    received(len(data))

                return fetch_pack(path, determine_wants, graph_walker, write, *args, **kw)

            client.fetch_pack = counted_fetch_pack  # type: ignore[method-assign]
        repo = client.clone(
            path,
            str(target),
            mkdir=not target.exists(),
            checkout=True,
            branch=f"v{version}" if version else None,
            progress=lambda _data: None,
            origin_url=url,
        )
    except Exception as e:  # dulwich raises many kinds; all are translated here
        raise translate_transport(e, registry, token) from e
    try:
        return repo.head().decode()  # type: ignore[no-any-return]
    finally:
        repo.close()


def pull(path: Path, token: str | None = None) -> tuple[str, str]:
    """Fast-forward the current branch from its registry; return (old, new) commit ids."""
    from dulwich import porcelain

    repo = open_repo(path)
    try:
        _check_pullable(repo)
        old = repo.head().decode()
        try:
            porcelain.pull(
                repo,
                errstream=io.BytesIO(),
                ff_only=True,
                username="mcpz" if token else None,
                password=token,
            )
        except porcelain.DivergedBranches:
            raise RepositoryError(
                "your branch and the registry's have diverged", hint="merge with git, then push"
            ) from None
        except porcelain.Error as e:
            raise RepositoryError(f"pull failed: {e}") from e
        return old, repo.head().decode()
    finally:
        repo.close()


def _check_pullable(repo: Any) -> None:
    """A branch checked out, and a registry to pull from: else one line saying what to do."""
    head = repo.refs.read_ref(b"HEAD") or b""
    if not head.startswith(b"ref: "):
        raise UsageError(
            "HEAD is detached (a clone of a release is), so there is no branch to fast-forward",
            hint="clone the agent without @VERSION to follow its branch, or switch to a branch with git",
        )
    try:
        repo.get_config().get((b"remote", b"origin"), b"url")
    except KeyError:
        raise UsageError(
            "this repository has no origin: it was not cloned from a registry",
            hint="publish it with `mcpz push`; to follow an agent, `mcpz clone NAME`",
        ) from None


# --- signing releases --------------------------------------------------------------------------


def manifest_bytes_at(path: Path, commit: str) -> bytes:
    """The exact bytes of mcpz.toml at `commit` in the repository at `path`."""
    repo = open_repo(path)
    try:
        try:
            tree = repo[repo[commit.encode()].tree]
            _mode, blob_id = tree[MANIFEST_FILE.encode()]
        except (KeyError, ValueError):
            raise RepositoryError(
                f"commit {commit[:12]} or its {MANIFEST_FILE} is not in {path}",
                hint="fetch it first: `mcpz pull` (or `mcpz clone NAME@VERSION`)",
            ) from None
        return bytes(repo[blob_id].as_raw_string())
    finally:
        repo.close()


def release_statement(
    registry: str, name: str, version: str, commit: str, manifest: bytes, tools: str | None = None
) -> signing.ReleaseStatement:
    """What a release signature is over: see `mcpz.keys.signing.ReleaseStatement` and docs/signing.md.
    `tools` is the digest of the tool definitions pinned with it (`mcpz.tooldefs.tools_digest`)."""
    from mcpz.keys import signing

    return signing.ReleaseStatement(
        registry=signing.canonical_registry_url(registry),
        name=name,
        version=version,
        commit=commit,
        manifest_sha256=signing.sha256_hex(manifest),
        tools=tools,
    )


async def sign_release(
    client: RegistryClient,
    statement: signing.ReleaseStatement,
    account: LocalAccount,
    *,
    tools: list[dict[str, Any]] | None = None,
) -> Release:
    """Sign `statement` with the wallet and hand the signature to the registry, which checks and keeps it.

    With `tools` (whose digest `statement.tools` must be), they are pinned to the release.
    Returns the release as the registry now serves it (with `signature` and `signer`).
    """
    from mcpz.keys import signing

    signature = signing.sign_statement(statement, account)
    return await client.sign_release(statement.name, statement.version, signature, tools=tools)
