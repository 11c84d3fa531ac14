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
   the same revision);
4. remembers every rotation it has seen signed by the key it revokes (from the namespace's keys
   and from the registry's revoked-keys list), and from then on refuses that key for that
   namespace: as the registry's owner, as a pin, and as the signer of anything — so a registry
   that later hides the rotation and names the old key again is not believed.

The decisions are pure functions (`advance_pin`, `check_release`, `check_revision`,
`revoked_keys`); `Verifier` combines them with a small file-backed `TrustStore` that remembers
pins, revisions and rotations.

    from mcpz.keys import trust

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
    │   └── RevokedKey         revoked_key         signed by (or naming) a key revoked for the namespace
    ├── NoNamespaceKey         no_namespace_key    the namespace's owner has no wallet key
    ├── KeyChangeRefused       key_changed         the owner key changed without a signed rotation
    ├── StaleRevision          stale_revision      a deployment revision lower than one seen
    └── RevisionConflict       revision_conflict   another statement under a revision already seen
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from mcpz.atomic import write_atomic
from mcpz.errors import AuthError, UsageError
from mcpz.keys import signing

__all__ = [
    "KeyChangeRefused",
    "NamespaceKeys",
    "NoNamespaceKey",
    "Pin",
    "RevisionConflict",
    "RevokedKey",
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
    "revoked_keys",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- errors


class TrustError(AuthError):
    code: ClassVar[str] = "untrusted"


class UnsignedRelease(TrustError):
    code = "unsigned"


class UntrustedSigner(TrustError):
    code = "untrusted_signer"


class RevokedKey(UntrustedSigner):
    code = "revoked_key"


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


def revoked_keys(rotations: Iterable[SignedRotation]) -> dict[str, signing.KeyRotationStatement]:
    """The keys that `rotations` (of one namespace, signatures checked) revoked, by lower-case address.

    A key is revoked by a rotation away from it, unless a later rotation moved the namespace back
    to it; the value is the rotation that revoked it. Only the revoked key can sign its own
    revocation, so a registry can withhold revocations but never forge one.
    """
    away: dict[str, signing.KeyRotationStatement] = {}
    back: dict[str, int] = {}
    for rotation in rotations:
        statement = rotation.statement
        old, new = statement.old_address.lower(), statement.new_address.lower()
        if old not in away or statement.sequence > away[old].sequence:
            away[old] = statement
        back[new] = max(back.get(new, 0), statement.sequence)
    return {key: statement for key, statement in away.items() if back.get(key, 0) < statement.sequence}


def _revoked_error(key: str, statement: signing.KeyRotationStatement, what: str) -> RevokedKey:
    return RevokedKey(
        f'{what} {key}, a key revoked for "{statement.namespace}" by its own signed rotation '
        f"#{statement.sequence} to {statement.new_address}",
        hint="the registry serves something the namespace's old key signed, or a key history that "
        "was rolled back: only the current key's signatures count",
    )


def check_release(
    statement: signing.ReleaseStatement,
    signatures: str | Iterable[str | None] | None,
    trusted: str,
    revoked: Mapping[str, signing.KeyRotationStatement] | None = None,
) -> str:
    """The signer, if one of `signatures` is by the key `trusted` over `statement`; else a TrustError
    (RevokedKey when a signature is by one of the `revoked` keys, from `revoked_keys`)."""
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
    for signer in signers:
        if revoked and signer.lower() in revoked:
            raise _revoked_error(signer, revoked[signer.lower()], f"{what} is signed by")
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
    """Pins, highest revisions and known rotations, per registry, in one JSON file (mode 0600,
    atomic writes).

    Safe for the threads of one process and for several processes: every read-modify-write holds
    an exclusive lock (`flock`) on the file `<name>.lock` beside it, so two `mcpz verify` runs or
    two threads of a node never lose each other's update. `locked()` holds that lock across
    several calls, for a check and its update.
    """

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._lock_fd = -1

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store (this thread, this process) until the block ends; re-entrant."""
        with self._lock:
            if self._depth == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fd, self._lock_fd = self._lock_fd, -1
                    os.close(fd)  # closing drops the flock

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
        with self.locked():
            entry = self._section(self._load(), registry, "namespaces").get(namespace)
        return None if entry is None else Pin(str(entry["address"]), int(entry["sequence"]))

    def set_pin(self, registry: str, namespace: str, pin: Pin) -> None:
        with self.locked():
            data = self._load()
            self._section(data, registry, "namespaces")[namespace] = {
                "address": pin.address,
                "sequence": pin.sequence,
                "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            self._save(data)

    def forget_pin(self, registry: str, namespace: str) -> bool:
        with self.locked():
            data = self._load()
            removed = self._section(data, registry, "namespaces").pop(namespace, None) is not None
            if removed:
                self._save(data)
        return removed

    def revision(self, registry: str, deployment: str) -> tuple[int, str] | None:
        with self.locked():
            entry = self._section(self._load(), registry, "deployments").get(deployment)
        return None if entry is None else (int(entry["revision"]), str(entry["digest"]))

    def set_revision(self, registry: str, deployment: str, revision: int, digest: str) -> None:
        with self.locked():
            data = self._load()
            entry = {"revision": revision, "digest": digest}
            self._section(data, registry, "deployments")[deployment] = entry
            self._save(data)

    def advance_revision(self, registry: str, statement: signing.DeploymentStatement) -> None:
        """`check_revision` against the highest revision kept, and keep this one if it is higher:
        one step under the lock, so two deploys checked at once never lower what is kept."""
        with self.locked():
            highest = self.revision(registry, statement.deployment)
            check_revision(highest, statement)
            if highest is None or statement.revision > highest[0]:
                digest = signing.sha256_hex(statement.to_bytes())
                self.set_revision(registry, statement.deployment, statement.revision, digest)

    def rotations(self, registry: str, namespace: str) -> list[SignedRotation]:
        """The rotations of `namespace` kept (each checked against its old key before it was kept)."""
        with self.locked():
            entries = self._section(self._load(), registry, "rotations").get(namespace) or []
        return [
            SignedRotation(signing.KeyRotationStatement.parse(e["statement"]), e["signature"])
            for e in entries
        ]

    def add_rotations(self, registry: str, rotations: Iterable[SignedRotation]) -> int:
        """Keep rotations not kept yet (check their signatures first); how many were new."""
        added = 0
        with self.locked():
            data = self._load()
            section = self._section(data, registry, "rotations")
            for rotation in rotations:
                entries: list[dict[str, str]] = section.setdefault(rotation.statement.namespace, [])
                text = rotation.statement.to_text()
                if any(e["statement"] == text for e in entries):
                    continue
                entries.append({"statement": text, "signature": rotation.signature})
                entries.sort(key=lambda e: signing.KeyRotationStatement.parse(e["statement"]).sequence)
                added += 1
            if added:
                self._save(data)
        return added


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
        self._revocations_lock = threading.Lock()
        self._revocations_at: float | None = None

    # -- rotations and revoked keys

    def learn_rotations(self, rotations: Iterable[SignedRotation]) -> int:
        """Remember the rotations for this registry that their old key really signed (any namespace);
        the others are skipped with a warning. Returns how many were new."""
        good = []
        for rotation in rotations:
            statement = rotation.statement
            if statement.registry != self.registry:
                continue
            try:
                signing.verify_rotation(statement, rotation.signature)
            except signing.SignatureError as e:
                log.warning(
                    '"%s": key rotation #%d is not signed by %s (%s); ignored',
                    statement.namespace, statement.sequence, statement.old_address, e,
                )  # fmt: skip
                continue
            good.append(rotation)
        return self.store.add_rotations(self.registry, good) if good else 0

    def learn_revocations(self, body: Mapping[str, Any]) -> int:
        """Remember the revocations in the body of GET /v1/revoked-keys (each one the rotation statement
        signed by the key it revokes); malformed or forged entries are skipped. Returns how many were new."""
        rotations = []
        for entry in body.get("keys") or ():
            try:
                rotations.append(SignedRotation.from_json(entry))
            except (KeyChangeRefused, TypeError, AttributeError) as e:
                log.warning("the registry's revoked-keys list has a malformed entry: %s", e)
        return self.learn_rotations(rotations)

    def revocations_due(self, max_age: float) -> bool:
        """Whether the registry's revoked-keys list should be fetched again (last fetched more than
        `max_age` seconds ago, or never); True claims the fetch, so concurrent callers fetch once."""
        with self._revocations_lock:
            now = time.monotonic()
            if self._revocations_at is not None and now - self._revocations_at < max_age:
                return False
            self._revocations_at = now
            return True

    def _trusted(self, keys: NamespaceKeys) -> tuple[str, dict[str, signing.KeyRotationStatement]]:
        """The namespace's key (pinned on first use, moved only by rotations) and its revoked keys."""
        namespace = keys.namespace
        with self.store.locked():
            self.learn_rotations(r for r in keys.rotations if r.statement.namespace == namespace)
            known = self.store.rotations(self.registry, namespace)
            by_sequence: dict[int, signing.KeyRotationStatement] = {}
            for rotation in known:
                other = by_sequence.setdefault(rotation.statement.sequence, rotation.statement)
                if other != rotation.statement:
                    raise KeyChangeRefused(
                        f'"{namespace}" has two different rotations #{other.sequence}, both signed by '
                        f"{other.old_address}: to {other.new_address} "
                        f"and to {rotation.statement.new_address}",
                        hint="the old key was used by two parties: check the namespace's key out of band",
                    )
            revoked = revoked_keys(known)
            seen = {r.statement.to_text() for r in keys.rotations}
            merged = NamespaceKeys(
                namespace,
                keys.owner_address,
                (*keys.rotations, *(r for r in known if r.statement.to_text() not in seen)),
            )
            pinned = self.store.pin(self.registry, namespace)
            current = advance_pin(self.registry, pinned, merged)
            if current.address.lower() in revoked:  # e.g. on first use, the registry names an old key
                raise _revoked_error(
                    current.address,
                    revoked[current.address.lower()],
                    f'the registry says "{namespace}" belongs to',
                )
            if current != pinned:
                if pinned is None:
                    log.info("pinned %s to %s", namespace, current.address)
                else:
                    log.info("%s rotated from %s to %s", namespace, pinned.address, current.address)
                self.store.set_pin(self.registry, namespace, current)
        return current.address, revoked

    def namespace_key(self, keys: NamespaceKeys) -> str:
        """The namespace's key to check signatures against: pinned on first use, moved only by
        rotations, never a key revoked for the namespace."""
        return self._trusted(keys)[0]

    # -- releases

    def verify_release(
        self,
        *,
        name: str,
        version: str,
        commit: str,
        manifest: bytes,
        signatures: str | Sequence[str | None] | None,
        keys: NamespaceKeys,
        tools: str | None = None,
    ) -> VerifiedRelease:
        """Check that the namespace's key signed `name@version` at `commit` with this manifest.

        `commit` is the commit about to be run and `manifest` the exact bytes of its mcpz.toml, as
        read from the fetched objects, never as the registry describes them. `tools` is the digest
        of the tool definitions the registry says were signed with the release (None: it says none
        were): the signature covers it, so a registry that changes, adds or drops it is refused.
        """
        statement = signing.ReleaseStatement(
            registry=self.registry,
            name=name,
            version=version,
            commit=commit,
            manifest_sha256=signing.sha256_hex(manifest),
            tools=tools,
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
        trusted, revoked = self._trusted(keys)
        signer = check_release(statement, signatures, trusted, revoked)
        return VerifiedRelease(statement.name, statement.version, statement.commit, signer)

    # -- deployments

    def verify_deployment(
        self,
        statement: signing.DeploymentStatement,
        signatures: str | Sequence[str | None] | None,
        *,
        keys: NamespaceKeys,
    ) -> VerifiedDeployment:
        """Check that the namespace's key signed the deployment, and that its revision only grows.

        One of `signatures` must be by the pinned key. A deployment accepted here raises the
        highest revision remembered for it (in one locked step with the check). Verify the
        release it names with `verify_release` as well.
        """
        if statement.registry != self.registry:
            raise UntrustedSigner(f"the deployment was signed for {statement.registry}, not {self.registry}")
        namespace = statement.deployment.split("/")[0]
        if keys.namespace != namespace:
            raise UsageError(f"the keys given are for {keys.namespace!r}, not for {statement.deployment}")
        found = _signature_list(signatures)
        what = f"deployment {statement.deployment} revision {statement.revision}"
        if self.allow_unsigned and not found:
            check_revision(self.store.revision(self.registry, statement.deployment), statement)
            log.warning("accepting unsigned deployment %s (unsigned allowed)", statement.deployment)
            return VerifiedDeployment(statement.deployment, statement.revision, None)
        if not found:
            raise UnsignedRelease(
                f"{what} is not signed",
                hint="`mcpz deploy` signs with your wallet when one exists (`mcpz wallet create`)",
            )
        trusted, revoked = self._trusted(keys)
        signer = None
        others = []
        for signature in found:
            try:
                signer = signing.verify_statement(statement, signature, signers=trusted)
                break
            except signing.UnexpectedSigner as e:
                others.append(e.signer)
            except signing.SignatureError:
                others.append("(not a signature)")
        if signer is None:
            for other in others:
                if other.lower() in revoked:
                    raise _revoked_error(other, revoked[other.lower()], f"{what} is signed by")
            raise UntrustedSigner(
                f"{what} is not signed by the namespace key {trusted} "
                f"(signatures recover to: {', '.join(others)})",
                hint="a deployment counts only when the namespace owner's wallet signed it "
                "(a member's signature is kept by the registry, but nodes check the owner's key)",
            )
        self.store.advance_revision(self.registry, statement)
        return VerifiedDeployment(statement.deployment, statement.revision, signer)

    def forget(self, namespace: str) -> bool:
        """Drop a namespace's pin (after checking a key change out of band); the next use pins again.
        Rotations seen stay remembered: a key revoked for the namespace stays refused."""
        return self.store.forget_pin(self.registry, namespace)
