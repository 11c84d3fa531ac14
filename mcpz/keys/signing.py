"""Signed statements: releases, deployments and key rotations, signed with EIP-191 `personal_sign`.

A statement is a small, fixed text: a first line that names what it is and its format version
(domain separation: a release signature can never be read as a deployment or a login), then one
`key: value` line per field, in a fixed order, every line ending in LF. A field may not hold a line
break, so one text means one statement and one statement has one text:

    mcpz release v1
    registry: https://registry.example.com
    name: acme/weather
    version: 1.2.0
    commit: 3f0c...                       (40 or 64 lower-case hex digits: a git commit id)
    manifest-sha256: 9a1b...              (64 lower-case hex digits: sha256 of the mcpz.toml bytes)

    mcpz deployment v1
    registry: https://registry.example.com
    deployment: acme/weather
    release: acme/weather@1.2.0
    commit: 3f0c...
    replicas: 3
    revision: 7                           (only grows; a node refuses a lower one than it has seen)

    mcpz release v2                       (v1 and one more line: the tools pinned at publish)
    ...                                   (the five lines of v1)
    tools: sha256:5e8c...                 (mcpz.tooldefs.tools_digest of the tools/list)

    mcpz deployment v2                    (v1 and one more line; without it, no drift is allowed)
    ...                                   (the six lines of v1)
    allow-tool-drift: yes                 (nodes run replicas whose tools differ from those pinned)

    mcpz key-rotation v1
    registry: https://registry.example.com
    namespace: acme
    old-address: 0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B
    new-address: 0x14dC79964da2C08b23698B3D3cc7Ca32193d9955
    sequence: 1                           (signed by the *old* key)

The bytes signed are the UTF-8 (in fact ASCII) encoding of that text, under the EIP-191 prefix
`\\x19Ethereum Signed Message:\\n<length>` — what every Ethereum wallet's `personal_sign` does.

Errors (all from `mcpz.errors`' tree):

    McpzError
    ├── StatementError           a field is invalid, or a statement text does not parse
    └── AuthError
        └── SignatureError       (code "bad_signature")
            ├── MissingSignature     (code "unsigned")            no signature at all
            ├── MalformedSignature   (code "malformed_signature") not a 65-byte recoverable signature
            └── UnexpectedSigner     (code "unexpected_signer")   valid, but by another key

Everything here is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Self
from urllib.parse import urlsplit

from eth_keys.constants import SECPK1_N
from eth_keys.exceptions import BadSignature as _EthBadSignature
from eth_utils.address import is_checksum_address, to_checksum_address
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError as _EthValidationError
from packaging.version import InvalidVersion, Version

from mcpz.errors import AuthError, McpzError, UsageError
from mcpz.keys.ethkeys import Account, LocalAccount, encode_defunct
from mcpz.names import name_problem, part_problem

__all__ = [
    "DeploymentStatement",
    "InvalidPrivateKey",
    "KeyRotationStatement",
    "MalformedSignature",
    "MissingSignature",
    "PrivateKeyInput",
    "ReleaseStatement",
    "SignatureError",
    "Statement",
    "StatementError",
    "UnexpectedSigner",
    "address_of",
    "canonical_registry_url",
    "decode_signature",
    "personal_hash",
    "personal_recover",
    "personal_sign",
    "recover_signer",
    "sha256_hex",
    "sign_statement",
    "verify_rotation",
    "verify_statement",
]

PrivateKeyInput = str | bytes | LocalAccount
"""A private key: 32 raw bytes, their hex (with or without 0x), or an unlocked eth-account account."""


# ----------------------------------------------------------------------------------------- errors


class StatementError(McpzError):
    """A statement field is invalid, or a statement text is not in the canonical format."""

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


class SignatureError(AuthError):
    """A signature does not prove what it should. `code` is stable, for APIs and logs."""

    code: ClassVar[str] = "bad_signature"


class MissingSignature(SignatureError):
    code = "unsigned"


class MalformedSignature(SignatureError):
    code = "malformed_signature"


class UnexpectedSigner(SignatureError):
    """The signature is valid, but made by a key that is not allowed to sign this statement."""

    code = "unexpected_signer"

    def __init__(self, message: str, *, signer: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.signer = signer


class InvalidPrivateKey(UsageError):
    """The private key given is not a usable secp256k1 key (the key itself is never shown)."""


# ------------------------------------------------------------------------- EIP-191 personal_sign


def _account(private_key: PrivateKeyInput) -> LocalAccount:
    if isinstance(private_key, LocalAccount):
        return private_key
    try:
        account: LocalAccount = Account.from_key(private_key)
    except (ValueError, TypeError, _EthValidationError):
        # `from None`: the third-party message or traceback might carry key material.
        raise InvalidPrivateKey(
            "the private key is not valid: expected 32 bytes, or 64 hex digits",
            hint="check the wallet keystore; `mcpz wallet address` shows which key is in use",
        ) from None
    return account


def address_of(private_key: PrivateKeyInput) -> str:
    """The EIP-55 checksummed address of a private key."""
    return str(_account(private_key).address)


def personal_hash(data: bytes) -> bytes:
    """The 32-byte EIP-191 (version 0x45) hash of `data`: what an EIP-1271 contract is asked about."""
    return bytes(keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode("ascii") + data))


def personal_sign(data: bytes, private_key: PrivateKeyInput) -> str:
    """Sign `data` as wallets' `personal_sign` does; returns the 65-byte signature as 0x-hex (v 27/28)."""
    signed = _account(private_key).sign_message(encode_defunct(primitive=data))
    return "0x" + bytes(signed.signature).hex()


_HEX_SIGNATURE = re.compile(r"(?:0[xX])?((?:[0-9a-fA-F]{2})*)")


def decode_signature(signature: str | bytes) -> bytes:
    """The bytes of a signature given as 0x-hex text (or as bytes already); MalformedSignature if not hex.

    Length is not checked here: contract wallets (EIP-1271) sign with any number of bytes.
    """
    if isinstance(signature, bytes):
        raw = signature
    elif isinstance(signature, str):
        match = _HEX_SIGNATURE.fullmatch(signature.strip())
        if match is None:
            raise MalformedSignature(
                "the signature is not hexadecimal (expected 0x followed by an even number of hex digits)"
            )
        raw = bytes.fromhex(match.group(1))
    else:
        raise MalformedSignature(f"the signature must be hex text, not {type(signature).__name__}")
    if not raw:
        raise MissingSignature("the signature is empty")
    return raw


def _recover(data: bytes, raw: bytes) -> str | None:
    """The address whose key made the 65-byte signature `raw` over `data`, or None if it is not one."""
    if len(raw) != 65:
        return None
    v = raw[64]
    if v in (27, 28):
        v -= 27
    elif v not in (0, 1):
        return None
    r = int.from_bytes(raw[0:32], "big")
    s = int.from_bytes(raw[32:64], "big")
    if not (0 < r < SECPK1_N and 0 < s < SECPK1_N):
        return None
    try:
        address = Account.recover_message(
            encode_defunct(primitive=data), signature=raw[:64] + bytes([v + 27])
        )
    except (_EthBadSignature, _EthValidationError, ValueError):
        return None
    return str(address)


def personal_recover(data: bytes, signature: str | bytes) -> str:
    """The checksummed address that `personal_sign`ed `data`; MalformedSignature if it cannot be recovered.

    Any well-formed signature recovers to *some* address: compare the result with the one expected
    (or use `verify_statement`). v may be 27/28 or 0/1; high-s signatures are accepted, as
    eth-account and wallets' verifiers do.
    """
    raw = decode_signature(signature)
    address = _recover(data, raw)
    if address is None:
        raise MalformedSignature(
            f"the signature is not a recoverable secp256k1 signature ({len(raw)} bytes; expected 65: r, s, v)"
        )
    return address


def sha256_hex(data: bytes) -> str:
    """Lower-case hex sha256 of `data` (for `manifest_sha256`: the exact bytes of mcpz.toml at the commit)."""
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ field checks

_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOOLS_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_LINE = re.compile(r"[!-~](?:[ -~]*[!-~])?")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_registry_url(url: str) -> str:
    """The one spelling of a registry's base URL that statements carry.

    Lower-case scheme (http or https) and host, no default port, no userinfo, query or fragment,
    no trailing slash: `HTTPS://Registry.Example.com:443/` -> `https://registry.example.com`.
    Registry, CLI and nodes must all sign and check with this form of the registry's *public* URL.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise StatementError(f"registry URL {url!r} is not valid: {e}", field="registry") from e
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise StatementError(
            f"registry URL {url!r} must start with https:// (or http:// for local development)",
            field="registry",
        )
    if parts.username is not None or parts.password is not None:
        raise StatementError(f"registry URL {url!r} may not carry a user name or password", field="registry")
    if parts.query or parts.fragment:
        raise StatementError(f"registry URL {url!r} may not have a query or fragment", field="registry")
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if not _HOST.fullmatch(host):
        raise StatementError(
            f"registry URL {url!r} has no valid host (IDN hosts must be written in punycode)",
            field="registry",
        )
    path = parts.path.rstrip("/")
    if not _PATH.fullmatch(path):
        raise StatementError(f"registry URL {url!r} has an invalid path", field="registry")
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{netloc}{path}"


def _check_registry(value: str) -> None:
    canonical = canonical_registry_url(value) if isinstance(value, str) else None
    if canonical != value:
        raise StatementError(
            f"registry {value!r} is not in canonical form",
            field="registry",
            hint=f"use canonical_registry_url(): {canonical!r}" if canonical else None,
        )


def _check_name(value: str, field: str) -> None:
    problem = name_problem(value) if isinstance(value, str) else "must be a string"
    if problem:
        raise StatementError(f"{field} {value!r} {problem}", field=field)


def _check_version(value: str, field: str = "version") -> None:
    if not isinstance(value, str):
        raise StatementError(f"{field} must be a string", field=field)
    try:
        normal = str(Version(value))
    except InvalidVersion:
        raise StatementError(f"{field} {value!r} is not a PEP 440 version", field=field) from None
    if normal != value:
        raise StatementError(
            f"{field} {value!r} is not in PEP 440 normal form", field=field, hint=f"write {normal!r}"
        )


def _check_hex(value: str, pattern: re.Pattern[str], field: str, what: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise StatementError(f"{field} {value!r} must be {what}", field=field)


def _check_count(value: int, field: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StatementError(f"{field} must be an integer >= {minimum}, not {value!r}", field=field)


def _check_address(value: str, field: str) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"0x[0-9a-fA-F]{40}", value):
        raise StatementError(
            f"{field} {value!r} is not an Ethereum address (0x and 40 hex digits)", field=field
        )
    if not is_checksum_address(value):
        raise StatementError(
            f"{field} {value!r} is not EIP-55 checksummed",
            field=field,
            hint=f"write {to_checksum_address(value)}",
        )


# ------------------------------------------------------------------------------- statements


class Statement:
    """What the three statement kinds share: the canonical text, its bytes and a strict parser."""

    HEADER: ClassVar[str]
    KEYS: ClassVar[tuple[str, ...]]
    FORMATS: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Further formats this kind is read in (header -> keys), besides `HEADER` and `KEYS`: a newer
    format version with more fields. Which one an instance is written in is `_format()`."""

    def _format(self) -> tuple[str, tuple[str, ...]]:
        """(header, keys) this statement is written with."""
        return self.HEADER, self.KEYS

    def _values(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _check_lines(self) -> None:
        # The field checks are strict already; this is the invariant the format rests on, kept
        # in one place (a `$` in a field's regular expression would let a trailing LF through).
        for key, value in zip(self._format()[1], self._values(), strict=True):
            if not isinstance(value, str) or not _LINE.fullmatch(value):
                raise StatementError(
                    f"{key} {value!r} must be printable ASCII without line breaks or surrounding spaces",
                    field=key,
                )

    @classmethod
    def _from_values(cls, values: tuple[str, ...]) -> Self:
        raise NotImplementedError

    def to_text(self) -> str:
        header, keys = self._format()
        lines = [header, *(f"{k}: {v}" for k, v in zip(keys, self._values(), strict=True))]
        return "".join(line + "\n" for line in lines)

    def to_bytes(self) -> bytes:
        """The exact bytes that are signed (before the EIP-191 prefix)."""
        return self.to_text().encode("ascii")

    @classmethod
    def parse(cls, text: str | bytes) -> Self:
        """Read a statement back from its canonical text; anything else is a StatementError."""
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise StatementError(f"a {cls.HEADER!r} statement is ASCII text") from None
        if not text.endswith("\n"):
            raise StatementError(f"a {cls.HEADER!r} statement ends with a line feed")
        lines = text[:-1].split("\n")
        formats = {cls.HEADER: cls.KEYS, **cls.FORMATS}
        keys = formats.get(lines[0])
        if keys is None:
            expected = " or ".join(repr(h) for h in formats)
            raise StatementError(f"expected the first line {expected}, found {lines[0][:60]!r}")
        if len(lines) != len(keys) + 1:
            raise StatementError(
                f"a {lines[0]!r} statement has {len(keys)} field lines, found {len(lines) - 1}"
            )
        values = []
        for number, (key, line) in enumerate(zip(keys, lines[1:], strict=True), start=2):
            prefix = f"{key}: "
            if not line.startswith(prefix):
                raise StatementError(f"line {number}: expected {prefix!r}, found {line[:60]!r}", field=key)
            values.append(line[len(prefix) :])
        statement = cls._from_values(tuple(values))
        if statement.to_text() != text:  # e.g. "replicas: 03": the same value spelled another way
            raise StatementError(f"the {cls.HEADER!r} statement is not in canonical form")
        return statement


def _int_field(value: str, field: str) -> int:
    if not _DECIMAL.fullmatch(value):
        raise StatementError(
            f"{field} {value!r} must be a decimal integer without leading zeros", field=field
        )
    return int(value)


@dataclass(frozen=True, kw_only=True)
class ReleaseStatement(Statement):
    """`name@version` is the commit `commit`, whose mcpz.toml has sha256 `manifest_sha256`, and
    (format v2) whose tools, as `tools/list` answered at publish, have the digest `tools`
    (`mcpz.tooldefs.tools_digest`). A statement without `tools` is written as v1, as before."""

    registry: str
    name: str
    version: str
    commit: str
    manifest_sha256: str
    tools: str | None = None

    HEADER: ClassVar[str] = "mcpz release v1"
    KEYS: ClassVar[tuple[str, ...]] = ("registry", "name", "version", "commit", "manifest-sha256")
    HEADER_V2: ClassVar[str] = "mcpz release v2"
    FORMATS: ClassVar[dict[str, tuple[str, ...]]] = {HEADER_V2: (*KEYS, "tools")}

    def __post_init__(self) -> None:
        self._check_lines()
        _check_registry(self.registry)
        _check_name(self.name, "name")
        _check_version(self.version)
        _check_hex(self.commit, _COMMIT, "commit", "a git commit id: 40 or 64 lower-case hex digits")
        _check_hex(self.manifest_sha256, _SHA256, "manifest-sha256", "64 lower-case hex digits")
        if self.tools is not None:
            _check_hex(self.tools, _TOOLS_DIGEST, "tools", "sha256: and 64 lower-case hex digits")

    def _format(self) -> tuple[str, tuple[str, ...]]:
        if self.tools is None:
            return self.HEADER, self.KEYS
        return self.HEADER_V2, self.FORMATS[self.HEADER_V2]

    def _values(self) -> tuple[str, ...]:
        values = (self.registry, self.name, self.version, self.commit, self.manifest_sha256)
        return values if self.tools is None else (*values, self.tools)

    @classmethod
    def _from_values(cls, values: tuple[str, ...]) -> Self:
        registry, name, version, commit, manifest_sha256, *tools = values
        return cls(
            registry=registry,
            name=name,
            version=version,
            commit=commit,
            manifest_sha256=manifest_sha256,
            tools=tools[0] if tools else None,
        )


@dataclass(frozen=True, kw_only=True)
class DeploymentStatement(Statement):
    """Deployment `deployment` runs `replicas` of `name@version` (= `commit`), as revision `revision`.

    Format v2 adds the line `allow-tool-drift: yes`: nodes run its replicas even when their
    `tools/list` differs from the tools signed with the release. Without it (and in every v1
    statement) a replica whose tools changed is failed (`tools-changed`)."""

    registry: str
    deployment: str
    name: str
    version: str
    commit: str
    replicas: int
    revision: int
    allow_tool_drift: bool = False

    HEADER: ClassVar[str] = "mcpz deployment v1"
    KEYS: ClassVar[tuple[str, ...]] = ("registry", "deployment", "release", "commit", "replicas", "revision")
    HEADER_V2: ClassVar[str] = "mcpz deployment v2"
    FORMATS: ClassVar[dict[str, tuple[str, ...]]] = {HEADER_V2: (*KEYS, "allow-tool-drift")}

    def _format(self) -> tuple[str, tuple[str, ...]]:
        if not self.allow_tool_drift:
            return self.HEADER, self.KEYS
        return self.HEADER_V2, self.FORMATS[self.HEADER_V2]

    def __post_init__(self) -> None:
        self._check_lines()
        _check_registry(self.registry)
        _check_name(self.deployment, "deployment")
        _check_name(self.name, "release name")
        _check_version(self.version, "release version")
        _check_hex(self.commit, _COMMIT, "commit", "a git commit id: 40 or 64 lower-case hex digits")
        _check_count(self.replicas, "replicas", 0)
        _check_count(self.revision, "revision", 1)
        if not isinstance(self.allow_tool_drift, bool):
            raise StatementError("allow-tool-drift must be a bool", field="allow-tool-drift")

    @property
    def release(self) -> str:
        return f"{self.name}@{self.version}"

    def _values(self) -> tuple[str, ...]:
        values = (
            self.registry,
            self.deployment,
            self.release,
            self.commit,
            str(self.replicas),
            str(self.revision),
        )
        return (*values, "yes") if self.allow_tool_drift else values

    @classmethod
    def _from_values(cls, values: tuple[str, ...]) -> Self:
        registry, deployment, release, commit, replicas, revision, *drift = values
        name, at, version = release.partition("@")
        if not at:
            raise StatementError(f"release {release!r} must be NAME@VERSION", field="release")
        if drift and drift[0] != "yes":
            raise StatementError(
                f"allow-tool-drift {drift[0]!r} must be `yes` (a statement without it allows no drift)",
                field="allow-tool-drift",
            )
        return cls(
            registry=registry,
            deployment=deployment,
            name=name,
            version=version,
            commit=commit,
            replicas=_int_field(replicas, "replicas"),
            revision=_int_field(revision, "revision"),
            allow_tool_drift=bool(drift),
        )


@dataclass(frozen=True, kw_only=True)
class KeyRotationStatement(Statement):
    """Namespace `namespace` moves from key `old_address` to `new_address`; signed by the old key."""

    registry: str
    namespace: str
    old_address: str
    new_address: str
    sequence: int

    HEADER: ClassVar[str] = "mcpz key-rotation v1"
    KEYS: ClassVar[tuple[str, ...]] = ("registry", "namespace", "old-address", "new-address", "sequence")

    def __post_init__(self) -> None:
        self._check_lines()
        _check_registry(self.registry)
        problem = part_problem(self.namespace) if isinstance(self.namespace, str) else "must be a string"
        if problem:
            raise StatementError(f"namespace {self.namespace!r}: {problem}", field="namespace")
        _check_address(self.old_address, "old-address")
        _check_address(self.new_address, "new-address")
        if self.old_address == self.new_address:
            raise StatementError("old-address and new-address are the same key", field="new-address")
        _check_count(self.sequence, "sequence", 1)

    def _values(self) -> tuple[str, ...]:
        return (self.registry, self.namespace, self.old_address, self.new_address, str(self.sequence))

    @classmethod
    def _from_values(cls, values: tuple[str, ...]) -> Self:
        registry, namespace, old_address, new_address, sequence = values
        return cls(
            registry=registry,
            namespace=namespace,
            old_address=old_address,
            new_address=new_address,
            sequence=_int_field(sequence, "sequence"),
        )


# ------------------------------------------------------------------------ sign and verify


def sign_statement(statement: Statement, private_key: PrivateKeyInput) -> str:
    """The 0x-hex EIP-191 signature of `statement` by `private_key`."""
    return personal_sign(statement.to_bytes(), private_key)


def recover_signer(statement: Statement, signature: str | bytes | None) -> str:
    """The checksummed address that signed `statement`; MissingSignature / MalformedSignature otherwise."""
    if signature is None or (isinstance(signature, str | bytes) and not signature):
        raise MissingSignature(
            f"the {statement.HEADER.split()[1]} is not signed",
            hint="nodes run only signed releases and deployments "
            "(`mcpz node run --allow-unsigned` is for local development only)",
        )
    return personal_recover(statement.to_bytes(), signature)


def verify_statement(
    statement: Statement, signature: str | bytes | None, *, signers: str | Iterable[str]
) -> str:
    """The signer of `statement` if it is one of `signers` (addresses, any case); UnexpectedSigner if not.

    A signature over a statement that differs in any field recovers to an unrelated address,
    so a changed field shows up here as UnexpectedSigner.
    """
    allowed = {signers.lower()} if isinstance(signers, str) else {s.lower() for s in signers}
    signer = recover_signer(statement, signature)
    if signer.lower() not in allowed:
        kind = statement.HEADER.split()[1]
        raise UnexpectedSigner(
            f"the {kind} signature was made by {signer}, which may not sign it",
            signer=signer,
            hint="the statement was changed after signing, or signed with another wallet",
        )
    return signer


def verify_rotation(statement: KeyRotationStatement, signature: str | bytes | None) -> str:
    """Check that the *old* key signed the rotation; returns the old address."""
    return verify_statement(statement, signature, signers=statement.old_address)
