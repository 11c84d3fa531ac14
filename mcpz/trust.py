"""What a node (or `mcpz verify`) trusts: release and deployment signatures against pinned namespace keys.

A registry serves releases, deployments and who owns each namespace. A node must not take its
word for any of it: a tampered registry could re-point a release at other code, replay an older
deployment, or say a namespace now belongs to another key. So a node

1. pins each namespace's owner key the first time it sees the namespace (trust on first use),
   and afterwards accepts a new key only through a chain of rotation statements, each signed by
   the key before it (`mcpz namespace rotate-key`, `mcpz namespace transfer`);
2. runs a release only when the pinned key signed the release statement
   (registry, name, version, commit, sha256 of mcpz.toml) for the commit it is about to run,
   with the manifest bytes it read from that commit itself;
3. accepts a deployment only when the pinned key signed it, and never one whose revision is
   lower than the highest it has accepted for that deployment (nor a different statement under
   the same revision).

The decisions are pure functions (`advance_pin`, `check_release`, `check_revision`); `Verifier`
combines them with a small file-backed `TrustStore` that remembers pins and revisions.

    from mcpz import trust

    verifier = trust.Verifier(registry_url, trust.TrustStore(data_dir / "trust.json"))
    keys = trust.NamespaceKeys.from_json(get("/v1/namespaces/acme/keys"))
    release = get("/v1/agents/acme/weather/1.2.0")
    verifier.verify_release(
        name="acme/weather", version="1.2.0", commit=release["commit"],
        manifest=manifest_bytes_at(release["commit"]),        # read from the fetched objects
        signatures=[s["signature"] for s in release["signatures"]],
        keys=keys,
    )                                                          # raises a TrustError, or returns

Errors (all `AuthError`, exit code 4), each with a stable `code`:

    TrustError                 untrusted
    ├── UnsignedRelease        unsigned            no signature at all
    ├── UntrustedSigner        untrusted_signer    no signature by the namespace's pinned key
    ├── NoNamespaceKey         no_namespace_key    the namespace's owner has no wallet key
    ├── KeyChangeRefused       key_changed         the owner key changed without a signed rotation
    ├── StaleRevision          stale_revision      a deployment revision lower than one seen
    └── RevisionConflict       revision_conflict   another statement under a revision already seen
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from mcpz import signing
from mcpz.atomic import write_atomic
from mcpz.errors import AuthError, UsageError

__all__ = [
    "KeyChangeRefused",
    "NamespaceKeys",
    "NoNamespaceKey",
    "Pin",
    "RevisionConflict",
    "SignedRotation",
    "StaleRevision",
    "TrustError",
    "TrustStore",
    "UnsignedRelease",
    "UntrustedSigner",
    "VerifiedDeployment",
    "VerifiedRelease",
    "Verifier",
    "advance_pin",
    "check_release",
    "check_revision",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- errors


class TrustError(AuthError):
    code: ClassVar[str] = "untrusted"


class UnsignedRelease(TrustError):
    code = "unsigned"


class UntrustedSigner(TrustError):
    code = "untrusted_signer"


class NoNamespaceKey(TrustError):
    code = "no_namespace_key"


class KeyChangeRefused(TrustError):
    code = "key_changed"


class StaleRevision(TrustError):
    code = "stale_revision"


class RevisionConflict(TrustError):
    code = "revision_conflict"


# ------------------------------------------------------------------------ what the registry serves


@dataclass(frozen=True)
class SignedRotation:
    statement: signing.KeyRotationStatement
    signature: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SignedRotation:
        """From one entry of `rotations` in GET /v1/namespaces/{ns}/keys (or of GET /v1/revoked-keys)."""
        try:
            statement = signing.KeyRotationStatement.parse(str(data["statement"]))
        except (KeyError, signing.StatementError) as e:
            raise KeyChangeRefused(f"the registry served a malformed key rotation: {e}") from e
        return cls(statement, str(data.get("signature") or ""))


@dataclass(frozen=True)
class NamespaceKeys:
    """A namespace's owner key and the rotations that led to it, as the registry claims them."""

    namespace: str
    owner_address: str | None
    rotations: tuple[SignedRotation, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NamespaceKeys:
        """From the body of GET /v1/namespaces/{ns}/keys."""
        return cls(
            namespace=str(data["namespace"]),
            owner_address=data.get("owner_address") or None,
            rotations=tuple(SignedRotation.from_json(r) for r in data.get("rotations") or ()),
        )


@dataclass(frozen=True)
class Pin:
    """The key a namespace is pinned to, and the sequence of the last rotation that led to it."""

    address: str
    sequence: int = 0


@dataclass(frozen=True)
class VerifiedRelease:
    name: str
    version: str
    commit: str
    signer: str | None  # None only when unsigned releases are allowed and this one is unsigned

    @property
    def signed(self) -> bool:
        return self.signer is not None


@dataclass(frozen=True)
class VerifiedDeployment:
    deployment: str
    revision: int
    signer: str | None


# ------------------------------------------------------------------------------ pure decisions


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def advance_pin(registry: str, pinned: Pin | None, keys: NamespaceKeys) -> Pin:
    """The key to trust for `keys.namespace` now, given the one pinned before (None: first use).

    From a pinned key, follow the rotations with higher sequence numbers, in order, each of which
    must be from the key reached so far, numbered one more than the last, and signed by that old
    key; the key reached must be the owner the registry names. Anything else: KeyChangeRefused.
    """
    namespace = keys.namespace
    if keys.owner_address is None:
        raise NoNamespaceKey(
            f'the owner of "{namespace}" has no wallet key, so its releases cannot be checked',
            hint="the namespace owner signs in with `mcpz login --wallet` and signs its releases",
        )
    chain = sorted(
        (r for r in keys.rotations if (r.statement.namespace, r.statement.registry) == (namespace, registry)),
        key=lambda r: r.statement.sequence,
    )
    if pinned is None:
        last = chain[-1].statement.sequence if chain else 0
        return Pin(keys.owner_address, last)
    current = pinned
    for rotation in chain:
        statement = rotation.statement
        if statement.sequence <= current.sequence:
            continue
        if statement.sequence != current.sequence + 1 or not _same(statement.old_address, current.address):
            raise KeyChangeRefused(
                f'"{namespace}": key rotation #{statement.sequence} goes from {statement.old_address}, '
                f"but the key trusted here is {current.address} (after rotation #{current.sequence})",
                hint="the registry's key history does not continue from the key pinned on this machine",
            )
        try:
            signing.verify_rotation(statement, rotation.signature)
        except signing.SignatureError as e:
            raise KeyChangeRefused(
                f'"{namespace}": key rotation #{statement.sequence} is not signed by {statement.old_address}'
            ) from e
        current = Pin(statement.new_address, statement.sequence)
    if not _same(current.address, keys.owner_address):
        raise KeyChangeRefused(
            f'the registry says {keys.owner_address} owns "{namespace}", but the key trusted here is '
            f"{current.address} and no rotation signed by it leads there",
            hint="a namespace's key changes only through `mcpz namespace rotate-key` or `transfer`; "
            "if you know the change is genuine, forget the pin (`mcpz verify --forget NAME@VERSION`)",
        )
    return current


def _signature_list(signatures: str | Iterable[str | None] | None) -> list[str]:
    if signatures is None:
        return []
    if isinstance(signatures, str):
        return [signatures] if signatures else []
    return [s for s in signatures if s]


def check_release(
    statement: signing.ReleaseStatement, signatures: str | Iterable[str | None] | None, trusted: str
) -> str:
    """The signer, if one of `signatures` is by the key `trusted` over `statement`; else a TrustError."""
    found = _signature_list(signatures)
    what = f"{statement.name} {statement.version}"
    if not found:
        raise UnsignedRelease(
            f"{what} is not signed",
            hint="the publisher signs it with `mcpz sign` (push signs when a wallet exists)",
        )
    signers = []
    for signature in found:
        try:
            return signing.verify_statement(statement, signature, signers=trusted)
        except signing.UnexpectedSigner as e:
            signers.append(e.signer)
        except signing.SignatureError:
            signers.append("(not a signature)")
    raise UntrustedSigner(
        f"{what} at commit {statement.commit[:12]} is not signed by the namespace key {trusted} "
        f"(signatures recover to: {', '.join(signers)})",
        hint="the release was changed after signing (e.g. its commit), or signed by a key that is not "
        "the namespace owner's",
    )


def check_revision(highest: tuple[int, str] | None, statement: signing.DeploymentStatement) -> None:
    """Refuse a revision below `highest` = (revision, statement digest), or another statement at it."""
    if highest is None:
        return
    revision, digest = highest
    if statement.revision < revision:
        raise StaleRevision(
            f"deployment {statement.deployment} revision {statement.revision} is older than revision "
            f"{revision} already seen",
            hint="a registry serving an old deployment is stale or tampered with",
        )
    if statement.revision == revision and signing.sha256_hex(statement.to_bytes()) != digest:
        raise RevisionConflict(
            f"deployment {statement.deployment} revision {revision} was seen before with other contents"
        )


# -------------------------------------------------------------------------------- the store


class TrustStore:
    """Pins and highest revisions, per registry, in one JSON file (mode 0600, atomic writes).

    Safe for the threads of one process; one node process owns its store.
    """

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": self.VERSION, "registries": {}}
        except (OSError, ValueError) as e:
            raise UsageError(
                f"the trust store {self.path} is unreadable: {e}",
                hint="it holds pinned namespace keys: restore it from a backup rather than delete it",
            ) from e
        if not isinstance(data, dict) or data.get("version") != self.VERSION:
            raise UsageError(f"the trust store {self.path} has an unknown format")
        return data

    def _save(self, data: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True), mode=0o600)

    def _section(self, data: dict[str, Any], registry: str, kind: str) -> dict[str, Any]:
        registries: dict[str, Any] = data.setdefault("registries", {})
        section: dict[str, Any] = registries.setdefault(registry, {}).setdefault(kind, {})
        return section

    def pin(self, registry: str, namespace: str) -> Pin | None:
        with self._lock:
            entry = self._section(self._load(), registry, "namespaces").get(namespace)
        return None if entry is None else Pin(str(entry["address"]), int(entry["sequence"]))

    def set_pin(self, registry: str, namespace: str, pin: Pin) -> None:
        with self._lock:
            data = self._load()
            self._section(data, registry, "namespaces")[namespace] = {
                "address": pin.address,
                "sequence": pin.sequence,
                "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            self._save(data)

    def forget_pin(self, registry: str, namespace: str) -> bool:
        with self._lock:
            data = self._load()
            removed = self._section(data, registry, "namespaces").pop(namespace, None) is not None
            if removed:
                self._save(data)
        return removed

    def revision(self, registry: str, deployment: str) -> tuple[int, str] | None:
        with self._lock:
            entry = self._section(self._load(), registry, "deployments").get(deployment)
        return None if entry is None else (int(entry["revision"]), str(entry["digest"]))

    def set_revision(self, registry: str, deployment: str, revision: int, digest: str) -> None:
        with self._lock:
            data = self._load()
            entry = {"revision": revision, "digest": digest}
            self._section(data, registry, "deployments")[deployment] = entry
            self._save(data)


# ------------------------------------------------------------------------------ the verifier


class Verifier:
    """Trust decisions for one registry, remembered in a TrustStore.

    `registry` is the registry's public URL (any spelling; it is put in canonical form): it is
    part of every statement, so signatures made for another registry never verify here.
    `allow_unsigned` (local development only) lets *unsigned* releases and deployments through,
    with `signer=None`; a signature that is present but wrong is refused all the same.
    """

    def __init__(self, registry: str, store: TrustStore, *, allow_unsigned: bool = False) -> None:
        self.registry = signing.canonical_registry_url(registry)
        self.store = store
        self.allow_unsigned = allow_unsigned

    def namespace_key(self, keys: NamespaceKeys) -> str:
        """The namespace's key to check signatures against: pinned on first use, moved only by rotations."""
        pinned = self.store.pin(self.registry, keys.namespace)
        current = advance_pin(self.registry, pinned, keys)
        if current != pinned:
            if pinned is None:
                log.info("pinned %s to %s", keys.namespace, current.address)
            else:
                log.info("%s rotated from %s to %s", keys.namespace, pinned.address, current.address)
            self.store.set_pin(self.registry, keys.namespace, current)
        return current.address

    def verify_release(
        self,
        *,
        name: str,
        version: str,
        commit: str,
        manifest: bytes,
        signatures: str | Sequence[str | None] | None,
        keys: NamespaceKeys,
    ) -> VerifiedRelease:
        """Check that the namespace's key signed `name@version` at `commit` with this manifest.

        `commit` is the commit about to be run and `manifest` the exact bytes of its mcpz.toml, as
        read from the fetched objects, never as the registry describes them.
        """
        statement = signing.ReleaseStatement(
            registry=self.registry,
            name=name,
            version=version,
            commit=commit,
            manifest_sha256=signing.sha256_hex(manifest),
        )
        return self.verify_release_statement(statement, signatures, keys=keys)

    def verify_release_statement(
        self,
        statement: signing.ReleaseStatement,
        signatures: str | Sequence[str | None] | None,
        *,
        keys: NamespaceKeys,
    ) -> VerifiedRelease:
        """`verify_release` for a statement built by the caller (e.g. from a served manifest digest)."""
        if statement.registry != self.registry:
            raise UntrustedSigner(f"the release statement is for {statement.registry}, not {self.registry}")
        if keys.namespace != statement.name.split("/")[0]:
            raise UsageError(
                f"the keys given are for {keys.namespace!r}, not for {statement.name}'s namespace"
            )
        if self.allow_unsigned and not _signature_list(signatures):
            log.warning(
                "accepting unsigned release %s %s (unsigned allowed)", statement.name, statement.version
            )
            return VerifiedRelease(statement.name, statement.version, statement.commit, None)
        signer = check_release(statement, signatures, self.namespace_key(keys))
        return VerifiedRelease(statement.name, statement.version, statement.commit, signer)

    def verify_deployment(
        self, statement: signing.DeploymentStatement, signature: str | None, *, keys: NamespaceKeys
    ) -> VerifiedDeployment:
        """Check the deployment's signature by its namespace's key and that its revision only grows.

        A deployment accepted here raises the highest revision remembered for it. Verify the
        release it names with `verify_release` as well.
        """
        if statement.registry != self.registry:
            raise UntrustedSigner(f"the deployment was signed for {statement.registry}, not {self.registry}")
        namespace = statement.deployment.split("/")[0]
        if keys.namespace != namespace:
            raise UsageError(f"the keys given are for {keys.namespace!r}, not for {statement.deployment}")
        highest = self.store.revision(self.registry, statement.deployment)
        if self.allow_unsigned and not signature:
            check_revision(highest, statement)
            log.warning("accepting unsigned deployment %s (unsigned allowed)", statement.deployment)
            return VerifiedDeployment(statement.deployment, statement.revision, None)
        trusted = self.namespace_key(keys)
        try:
            signer = signing.verify_statement(statement, signature, signers=trusted)
        except signing.MissingSignature as e:
            raise UnsignedRelease(f"deployment {statement.deployment} is not signed") from e
        except signing.SignatureError as e:
            raise UntrustedSigner(
                f"deployment {statement.deployment} revision {statement.revision} is not signed by the "
                f"namespace key {trusted}"
            ) from e
        check_revision(highest, statement)
        if highest is None or statement.revision > highest[0]:
            digest = signing.sha256_hex(statement.to_bytes())
            self.store.set_revision(self.registry, statement.deployment, statement.revision, digest)
        return VerifiedDeployment(statement.deployment, statement.revision, signer)

    def forget(self, namespace: str) -> bool:
        """Drop a namespace's pin (after checking a key change out of band); the next use pins again."""
        return self.store.forget_pin(self.registry, namespace)
