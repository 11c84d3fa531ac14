"""Signed statements: canonical text, round trips, and signatures that any changed field breaks."""

from __future__ import annotations

import dataclasses
import string
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import defunct_hash_message, encode_defunct
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpz.errors import AuthError
from mcpz.keys import signing
from mcpz.keys.signing import (
    DeploymentStatement,
    KeyRotationStatement,
    ReleaseStatement,
    Statement,
    StatementError,
)

REGISTRY = "https://registry.example.com"
COMMIT = "3f0c6b1d2e4a5968778695a4b3c2d1e0f9e8d7c6"
COMMIT_SHA256 = "ab" * 32
MANIFEST = signing.sha256_hex(b'[agent]\nname = "acme/weather"\nversion = "1.2.0"\n')
OWNER = Account.from_key(b"\x31" * 32)
NEW_OWNER = Account.from_key(b"\x32" * 32)
STRANGER = Account.from_key(b"\x33" * 32)

RELEASE = ReleaseStatement(
    registry=REGISTRY, name="acme/weather", version="1.2.0", commit=COMMIT, manifest_sha256=MANIFEST
)
DEPLOYMENT = DeploymentStatement(
    registry=REGISTRY,
    deployment="acme/weather",
    name="acme/weather",
    version="1.2.0",
    commit=COMMIT,
    replicas=3,
    revision=7,
)
ROTATION = KeyRotationStatement(
    registry=REGISTRY,
    namespace="acme",
    old_address=OWNER.address,
    new_address=NEW_OWNER.address,
    sequence=1,
)


def test_canonical_texts() -> None:
    assert RELEASE.to_text() == (
        "mcpz release v1\n"
        "registry: https://registry.example.com\n"
        "name: acme/weather\n"
        "version: 1.2.0\n"
        f"commit: {COMMIT}\n"
        f"manifest-sha256: {MANIFEST}\n"
    )
    assert DEPLOYMENT.to_text() == (
        "mcpz deployment v1\n"
        "registry: https://registry.example.com\n"
        "deployment: acme/weather\n"
        "release: acme/weather@1.2.0\n"
        f"commit: {COMMIT}\n"
        "replicas: 3\n"
        "revision: 7\n"
    )
    assert ROTATION.to_text() == (
        "mcpz key-rotation v1\n"
        "registry: https://registry.example.com\n"
        "namespace: acme\n"
        f"old-address: {OWNER.address}\n"
        f"new-address: {NEW_OWNER.address}\n"
        "sequence: 1\n"
    )
    assert RELEASE.to_bytes() == RELEASE.to_text().encode("ascii")


@pytest.mark.parametrize("statement", [RELEASE, DEPLOYMENT, ROTATION], ids=lambda s: s.HEADER)
def test_sign_recover_verify(statement: Statement) -> None:
    signature = signing.sign_statement(statement, OWNER.key)
    # The same bytes eth-account signs with personal_sign: any wallet can produce or check it.
    expected = Account.sign_message(encode_defunct(primitive=statement.to_bytes()), OWNER.key).signature
    assert signature == "0x" + bytes(expected).hex()
    assert signing.recover_signer(statement, signature) == OWNER.address
    assert signing.verify_statement(statement, signature, signers=OWNER.address.lower()) == OWNER.address
    assert (
        signing.verify_statement(statement, signature, signers=[STRANGER.address, OWNER.address])
        == OWNER.address
    )
    with pytest.raises(signing.UnexpectedSigner) as caught:
        signing.verify_statement(statement, signature, signers=[STRANGER.address])
    assert caught.value.signer == OWNER.address
    assert caught.value.code == "unexpected_signer"
    assert isinstance(caught.value, AuthError)


def _other_values() -> dict[str, Any]:
    return {
        "registry": "https://evil.example.com",
        "name": "acme/wether",
        "version": "1.2.1",
        "commit": COMMIT[:-1] + "7",
        "manifest_sha256": MANIFEST[:-1] + ("0" if MANIFEST[-1] != "0" else "1"),
        "deployment": "acme/weather-prod",
        "replicas": 4,
        "revision": 6,
        "namespace": "acme2",
        "old_address": STRANGER.address,
        "new_address": STRANGER.address,
        "sequence": 2,
        "tools": "sha256:" + "5" * 64,  # a v1 statement given a tools digest becomes v2
        "allow_tool_drift": True,  # likewise a deployment statement that allows drift
    }


CHANGES = [
    (statement, field.name)
    for statement in (RELEASE, DEPLOYMENT, ROTATION)
    for field in dataclasses.fields(statement)
]


@pytest.mark.parametrize(("statement", "field"), CHANGES, ids=[f"{s.HEADER}-{f}" for s, f in CHANGES])
def test_changing_any_field_breaks_verification(statement: Statement, field: str) -> None:
    signature = signing.sign_statement(statement, OWNER.key)
    changed = dataclasses.replace(statement, **{field: _other_values()[field]})  # type: ignore[type-var]
    assert changed.to_bytes() != statement.to_bytes()
    with pytest.raises(signing.UnexpectedSigner):
        signing.verify_statement(changed, signature, signers=OWNER.address)


def test_a_release_signature_is_not_a_deployment_signature() -> None:
    # Domain separation: the first line differs, so the bytes never coincide.
    assert not DEPLOYMENT.to_text().startswith(ReleaseStatement.HEADER)
    with pytest.raises(StatementError, match="first line"):
        DeploymentStatement.parse(RELEASE.to_text())


def test_rotation_must_be_signed_by_the_old_key() -> None:
    assert signing.verify_rotation(ROTATION, signing.sign_statement(ROTATION, OWNER.key)) == OWNER.address
    with pytest.raises(signing.UnexpectedSigner):
        signing.verify_rotation(ROTATION, signing.sign_statement(ROTATION, NEW_OWNER.key))


@pytest.mark.parametrize("signature", [None, "", b""])
def test_a_missing_signature_is_its_own_error(signature: str | bytes | None) -> None:
    with pytest.raises(signing.MissingSignature, match="not signed") as caught:
        signing.verify_statement(RELEASE, signature, signers=OWNER.address)
    assert caught.value.code == "unsigned"


@pytest.mark.parametrize(
    "signature",
    [
        "0xzz",
        "0x123",
        "0x" + "11" * 64,
        "0x" + "11" * 64 + "1d",
        "0x" + "00" * 32 + "11" * 32 + "1b",
        "11" * 66,
    ],
)
def test_malformed_signatures(signature: str) -> None:
    with pytest.raises(signing.MalformedSignature) as caught:
        signing.verify_statement(RELEASE, signature, signers=OWNER.address)
    assert caught.value.code == "malformed_signature"


def test_personal_sign_primitives_agree_with_eth_account() -> None:
    data = b"any bytes \x00\xff"
    signature = signing.personal_sign(data, OWNER)
    assert signing.personal_recover(data, signature) == OWNER.address
    raw = bytes.fromhex(signature[2:])
    assert signing.personal_recover(data, raw[:64] + bytes([raw[64] - 27])) == OWNER.address
    assert signing.personal_hash(data) == bytes(defunct_hash_message(primitive=data))
    assert signing.address_of(OWNER.key.hex()) == OWNER.address
    assert signing.decode_signature("0X" + raw.hex().upper()) == raw


# ----------------------------------------------------------------------------- field checks


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("registry", "https://Registry.example.com", "canonical"),
        ("registry", "https://registry.example.com/", "canonical"),
        ("registry", "https://registry.example.com:443", "canonical"),
        ("registry", "ftp://registry.example.com", "https://"),
        ("registry", "https://registry.example.com\n", "line breaks"),
        ("name", "acme/weather\n", "line breaks"),
        ("name", "Acme/Weather", "lower-case"),
        ("name", "weather", "namespace/name"),
        ("version", "1.2.0-rc1", "normal form"),
        ("version", "v1.2.0", "normal form"),
        ("version", "one", "PEP 440"),
        ("version", "1.2.0\n", "line breaks"),
        ("commit", COMMIT.upper(), "lower-case hex"),
        ("commit", COMMIT[:-1], "40 or 64"),
        ("manifest_sha256", MANIFEST[:-1], "64 lower-case hex"),
        ("manifest_sha256", " " + MANIFEST, "surrounding spaces"),
    ],
)
def test_release_fields_are_checked(field: str, value: Any, says: str) -> None:
    with pytest.raises(StatementError, match=says) as caught:
        dataclasses.replace(RELEASE, **{field: value})
    assert caught.value.field is not None


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("replicas", -1, ">= 0"),
        ("replicas", True, ">= 0"),
        ("replicas", "3", ">= 0"),
        ("revision", 0, ">= 1"),
        ("deployment", "acme/weather\r", "line breaks"),
    ],
)
def test_deployment_fields_are_checked(field: str, value: Any, says: str) -> None:
    with pytest.raises(StatementError, match=says):
        dataclasses.replace(DEPLOYMENT, **{field: value})
    assert dataclasses.replace(DEPLOYMENT, replicas=0).replicas == 0  # scaled to zero is a valid state


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("old_address", OWNER.address.lower(), "EIP-55"),
        ("new_address", NEW_OWNER.address[:-1], "40 hex digits"),
        ("new_address", OWNER.address, "same key"),
        ("namespace", "Acme", "lower-case"),
        ("namespace", "acme/x", "namespace"),
        ("sequence", 0, ">= 1"),
    ],
)
def test_rotation_fields_are_checked(field: str, value: Any, says: str) -> None:
    with pytest.raises(StatementError, match=says):
        dataclasses.replace(ROTATION, **{field: value})


def test_an_address_namespace_is_valid() -> None:
    # Each account owns the namespace spelled as its lower-case address.
    assert dataclasses.replace(ROTATION, namespace=OWNER.address.lower()).namespace == OWNER.address.lower()


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("https://registry.example.com", "https://registry.example.com"),
        ("HTTPS://Registry.Example.COM:443/", "https://registry.example.com"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://localhost:80", "http://localhost"),
        ("https://example.com/mcpz/", "https://example.com/mcpz"),
        ("https://[::1]:8443", "https://[::1]:8443"),
    ],
)
def test_canonical_registry_url(url: str, canonical: str) -> None:
    assert signing.canonical_registry_url(url) == canonical


@pytest.mark.parametrize(
    "url",
    [
        "registry.example.com",
        "wss://registry.example.com",
        "https://user:pw@registry.example.com",
        "https://registry.example.com/?q=1",
        "https://registry.example.com/#x",
        "https://reg istry.example.com",
        "https://bücher.example",
        "https://registry.example.com:99999",
        "https://",
    ],
)
def test_not_a_registry_url(url: str) -> None:
    with pytest.raises(StatementError):
        signing.canonical_registry_url(url)


# ----------------------------------------------------------------------------- strict parsing


@pytest.mark.parametrize("statement", [RELEASE, DEPLOYMENT, ROTATION], ids=lambda s: s.HEADER)
def test_parse_round_trip(statement: Statement) -> None:
    assert type(statement).parse(statement.to_text()) == statement
    assert type(statement).parse(statement.to_bytes()) == statement


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (DEPLOYMENT.to_text().replace("replicas: 3", "replicas: 03"), "leading zeros"),
        (DEPLOYMENT.to_text().replace("replicas: 3", "replicas: +3"), "leading zeros"),
        (
            DEPLOYMENT.to_text().replace("release: acme/weather@1.2.0", "release: acme/weather"),
            "NAME@VERSION",
        ),
        (DEPLOYMENT.to_text().rstrip("\n"), "ends with a line feed"),
        (DEPLOYMENT.to_text() + "note: hi\n", "6 field lines"),
        (
            DEPLOYMENT.to_text().replace("replicas: 3\nrevision: 7", "revision: 7\nreplicas: 3"),
            "expected 'replicas: '",
        ),
        (DEPLOYMENT.to_text().replace("replicas: 3", "replicas:3"), "expected 'replicas: '"),
        (DEPLOYMENT.to_text().replace("\n", "\r\n"), "first line"),
        (DEPLOYMENT.to_text().replace("mcpz deployment v1", "mcpz deployment v3"), "first line"),
        # v2 exists (allow-tool-drift), but only with its extra line
        (DEPLOYMENT.to_text().replace("mcpz deployment v1", "mcpz deployment v2"), "7 field lines"),
        (
            DEPLOYMENT.to_text().replace("deployment: acme/weather", "deployment: acme/weather "),
            "surrounding",
        ),
    ],
)
def test_parse_is_strict(text: str, says: str) -> None:
    with pytest.raises(StatementError, match=says):
        DeploymentStatement.parse(text)


def test_parse_refuses_non_ascii_bytes() -> None:
    with pytest.raises(StatementError, match="ASCII"):
        ReleaseStatement.parse(RELEASE.to_bytes().replace(b"acme", "äcme".encode()))


# ------------------------------------------------------------------ round trips (hypothesis)

names = st.from_regex(
    r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?/[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True
)
versions = st.builds(
    lambda parts, pre: ".".join(map(str, parts)) + pre,
    st.lists(st.integers(0, 999), min_size=1, max_size=4),
    st.sampled_from(["", "a1", "b2", "rc3", ".post1", ".dev4"]),
)
commits = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40) | st.text(
    alphabet="0123456789abcdef", min_size=64, max_size=64
)
sha256s = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
registries = st.builds(
    lambda scheme, host, port, path: signing.canonical_registry_url(f"{scheme}://{host}{port}{path}"),
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True),
    st.sampled_from(["", ":8080", ":443", ":80"]),
    st.sampled_from(["", "/", "/mcpz", "/a/b/"]),
)
addresses = st.binary(min_size=20, max_size=20).map(lambda b: signing.address_of(b"\x01" * 12 + b))
checksummed = st.binary(min_size=20, max_size=20).map(
    lambda b: str(Account.from_key(b"\x07" * 12 + b).address)
)

releases = st.builds(
    ReleaseStatement,
    registry=registries,
    name=names,
    version=versions,
    commit=commits,
    manifest_sha256=sha256s,
)
deployments = st.builds(
    DeploymentStatement,
    registry=registries,
    deployment=names,
    name=names,
    version=versions,
    commit=commits,
    replicas=st.integers(0, 10_000),
    revision=st.integers(1, 2**63),
)
rotations = st.builds(
    KeyRotationStatement,
    registry=registries,
    namespace=st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
    old_address=addresses,
    new_address=checksummed,
    sequence=st.integers(1, 2**63),
)


@settings(max_examples=60)
@given(st.one_of(releases, deployments, rotations))
def test_statement_round_trip(statement: Statement) -> None:
    text = statement.to_text()
    assert type(statement).parse(text) == statement
    assert text.count("\n") == len(statement.KEYS) + 1 and text.isascii()


@settings(max_examples=200)
@given(st.text(alphabet=string.printable, max_size=300))
def test_parse_never_crashes_on_garbage(text: str) -> None:
    for kind in (ReleaseStatement, DeploymentStatement, KeyRotationStatement):
        try:
            kind.parse(text)
        except StatementError:
            pass
