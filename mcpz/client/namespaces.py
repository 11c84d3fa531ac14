"""Namespaces and keys from the client side: transfers and key rotations (signed by the wallet),
signing published releases, and checking a release's signature as a node would.

These are what `mcpz namespace ...`, `mcpz sign` and `mcpz verify` call; each takes an open
`RegistryClient` and the unlocked wallet key where one is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_utils.address import is_address, to_checksum_address

from mcpz.client.models import NamespaceInfo, Release, RotationResult
from mcpz.client.registry import RegistryClient
from mcpz.config import data_dir
from mcpz.errors import RefusedError, UsageError
from mcpz.keys import signing, trust

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mcpz.keys.ethkeys import LocalAccount
    from mcpz.keys.wallet import Wallet


def trust_store(env: Mapping[str, str] | None = None) -> trust.TrustStore:
    """The user's own trust store (pins and revisions), in the user data folder."""
    return trust.TrustStore(data_dir(env) / "trust.json")


def _checksum(address: str) -> str:
    return str(to_checksum_address(address))


def _require_owner_key(info: NamespaceInfo, account: LocalAccount, what: str) -> str:
    owner = info.owner_address
    if owner and _checksum(owner) != account.address:
        raise UsageError(
            f'{what}: "{info.name}" is owned by {owner}, but this wallet is {account.address}',
            hint="only the namespace owner's wallet can sign this",
        )
    return str(owner) if owner else ""


async def transfer(
    client: RegistryClient, namespace: str, to: str, account: LocalAccount | None
) -> NamespaceInfo:
    """Hand `namespace` to `to`. When it has an owner key, that key signs the rotation to `to`'s key."""
    info = await client.namespace(namespace)
    signature = None
    if info.owner_address:
        if account is None:
            raise UsageError("transferring a namespace with a key needs the owner's wallet")
        old = _require_owner_key(info, account, "transfer")
        if not is_address(to):
            raise UsageError(
                f'name the new owner of "{namespace}" by its wallet address, not "{to}"',
                hint="the old key signs over the new key: see the new owner's `mcpz wallet address`",
            )
        statement = signing.KeyRotationStatement(
            registry=signing.canonical_registry_url(client.url),
            namespace=namespace,
            old_address=_checksum(old),
            new_address=_checksum(to),
            sequence=info.key_sequence + 1,
        )
        signature = signing.sign_statement(statement, account)
    return await client.transfer_namespace(namespace, to, signature)


@dataclass(frozen=True)
class PlannedRotation:
    """Signatures of one rotation per namespace, by the old key and by the new."""

    new_address: str
    signatures: dict[str, tuple[str, str]]


async def plan_rotation(
    client: RegistryClient, owned: list[str], old: LocalAccount, new: LocalAccount
) -> PlannedRotation:
    """Sign, with both keys, the rotation statement of every namespace in `owned`."""
    registry = signing.canonical_registry_url(client.url)
    signatures: dict[str, tuple[str, str]] = {}
    for namespace in owned:
        info = await client.namespace(namespace)
        _require_owner_key(info, old, "rotate-key")
        statement = signing.KeyRotationStatement(
            registry=registry,
            namespace=namespace,
            old_address=old.address,
            new_address=new.address,
            sequence=info.key_sequence + 1,
        )
        signatures[namespace] = (
            signing.sign_statement(statement, old),
            signing.sign_statement(statement, new),
        )
    return PlannedRotation(str(new.address), signatures)


@dataclass(frozen=True)
class RotatedKey:
    """A finished `rotate_wallet_key`: the registry's answer, and where the old keystore went."""

    old_address: str
    new_address: str
    result: RotationResult
    retired_keystore: Path

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "retired_keystore": str(self.retired_keystore)}


async def rotate_wallet_key(client: RegistryClient, current: Wallet, passphrase: str) -> RotatedKey:
    """`mcpz namespace rotate-key`: move the account to a new key, the old key signing the move of
    every namespace it owns; the wallet then holds the new key (same passphrase), the old keystore
    is kept as `retired-<address>.json`, and a passphrase kept in the keyring follows the new key.

    The new key is written (`pending-<address>.json`) before the registry hears of it. If the
    registry cannot be reached or fails, it may have applied the rotation, so that file is kept
    and the error's hint names it; any other failure removes it.
    """
    from mcpz.errors import NetworkError, RemoteError
    from mcpz.keys import wallet
    from mcpz.keys.ethkeys import Account

    old = current.unlock(passphrase)
    new = Account.create()
    staged = current.stage_successor(new, passphrase)
    try:
        owned = (await client.whoami()).namespaces
        plan = await plan_rotation(client, owned, old, new)
        result = await client.rotate_key(plan.new_address, plan.signatures)
    except (NetworkError, RemoteError) as e:
        kept = f"the new key is kept at {staged.path} in case the registry applied the rotation"
        e.hint = f"{kept}; {e.hint}" if e.hint else kept
        raise
    except BaseException:
        staged.path.unlink(missing_ok=True)
        raise
    _now, retired = current.replace_with(staged)
    if wallet.forget_passphrase(current.address):
        wallet.remember_passphrase(staged.address, passphrase)
    return RotatedKey(current.address, staged.address, result, retired)


async def sign_published(
    client: RegistryClient, name: str, version: str, repo: Path, account: LocalAccount
) -> Release:
    """Sign a published release, reading its manifest from the commit in the local repository `repo`.

    The signature attests the commit and manifest as this machine sees them, not as the registry
    describes them; the registry keeps it if the wallet is the namespace owner's or a member's.
    A release whose tools were pinned at publish is signed with their digest, recomputed here from
    the definitions the registry serves (see them with `mcpz info NAME@VERSION`).
    """
    from mcpz.client import publish
    from mcpz.tooldefs import tools_digest

    release = await client.release(name, version)
    commit = release.commit
    manifest = publish.manifest_bytes_at(repo, commit)
    digest = release.tools_digest or None
    if digest is not None:
        served = await client.release_tools(name, version)
        if served.observed or tools_digest(served.tools) != digest:
            raise RefusedError(
                f"the registry's tool definitions of {name} {version} do not match the digest it says "
                "was signed",
                hint="do not sign: the registry's record of this release looks tampered with",
            )
    statement = publish.release_statement(client.url, name, version, commit, manifest, digest)
    return await publish.sign_release(client, statement, account)


async def verify_published(
    client: RegistryClient, verifier: trust.Verifier, name: str, version: str
) -> trust.VerifiedRelease:
    """Check a published release's signature against its namespace's pinned key, as a node does.

    The manifest digest is the registry's (nodes hash the manifest bytes they fetched); the commit
    and that digest are both covered by the signature, so neither can be changed unnoticed. The
    registry's revoked-keys list is read first and remembered, as nodes do.
    """
    verifier.learn_revocations(await client.revoked_keys())
    release = await client.release(name, version)
    keys = trust.NamespaceKeys.from_json(await client.namespace_keys(name.split("/")[0]))
    statement = signing.ReleaseStatement(
        registry=verifier.registry,
        name=name,
        version=version,
        commit=release.commit,
        manifest_sha256=release.manifest_sha256,
        tools=release.tools_digest or None,
    )
    signatures: list[str | None] = [s.signature for s in release.signatures]
    return verifier.verify_release_statement(statement, signatures, keys=keys)
