"""mcpz.keys.trust: what a node accepts — pinned keys, signed rotations, release signatures, revisions."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from eth_account import Account

from mcpz.keys import signing, trust

REGISTRY = "https://registry.example.com"
OWNER = Account.from_key("0x" + "11" * 32)
NEXT = Account.from_key("0x" + "22" * 32)
THIRD = Account.from_key("0x" + "33" * 32)
MALLORY = Account.from_key("0x" + "44" * 32)
COMMIT = "a" * 40
MANIFEST = b'[agent]\nname = "acme/weather"\nversion = "1.0.0"\n'


def rotation(old: object, new: object, sequence: int, *, signer: object = None) -> trust.SignedRotation:
    statement = signing.KeyRotationStatement(
        registry=REGISTRY,
        namespace="acme",
        old_address=old.address,  # type: ignore[attr-defined]
        new_address=new.address,  # type: ignore[attr-defined]
        sequence=sequence,
    )
    return trust.SignedRotation(statement, signing.sign_statement(statement, signer or old))  # type: ignore[arg-type]


def keys(owner: object, *rotations: trust.SignedRotation) -> trust.NamespaceKeys:
    return trust.NamespaceKeys("acme", owner.address, rotations)  # type: ignore[attr-defined]


def release(version: str = "1.0.0", commit: str = COMMIT) -> signing.ReleaseStatement:
    return signing.ReleaseStatement(
        registry=REGISTRY,
        name="acme/weather",
        version=version,
        commit=commit,
        manifest_sha256=signing.sha256_hex(MANIFEST),
    )


def deployment(revision: int, replicas: int = 2) -> signing.DeploymentStatement:
    return signing.DeploymentStatement(
        registry=REGISTRY,
        deployment="acme/weather",
        name="acme/weather",
        version="1.0.0",
        commit=COMMIT,
        replicas=replicas,
        revision=revision,
    )


@pytest.fixture
def verifier(tmp_path: Path) -> trust.Verifier:
    return trust.Verifier(REGISTRY, trust.TrustStore(tmp_path / "trust.json"))


# --- pure decisions ----------------------------------------------------------------------------


def test_first_use_pins_the_owner_and_the_last_rotation() -> None:
    assert trust.advance_pin(REGISTRY, None, keys(OWNER)) == trust.Pin(OWNER.address, 0)
    history = keys(NEXT, rotation(OWNER, NEXT, 1))
    assert trust.advance_pin(REGISTRY, None, history) == trust.Pin(NEXT.address, 1)


def test_a_pinned_key_moves_only_along_signed_rotations() -> None:
    pinned = trust.Pin(OWNER.address, 0)
    chain = keys(THIRD, rotation(OWNER, NEXT, 1), rotation(NEXT, THIRD, 2))
    assert trust.advance_pin(REGISTRY, pinned, chain) == trust.Pin(THIRD.address, 2)
    # The same chain from the middle.
    assert trust.advance_pin(REGISTRY, trust.Pin(NEXT.address, 1), chain) == trust.Pin(THIRD.address, 2)


@pytest.mark.parametrize(
    ("served", "why"),
    [
        (keys(MALLORY), "owner changed with no rotation"),
        (keys(NEXT, rotation(OWNER, NEXT, 1, signer=MALLORY)), "rotation signed by another key"),
        (keys(NEXT, rotation(MALLORY, NEXT, 1)), "rotation from a key that is not the pinned one"),
        (keys(THIRD, rotation(NEXT, THIRD, 2)), "a gap in the sequence"),
        (keys(MALLORY, rotation(OWNER, NEXT, 1)), "the chain does not end at the owner named"),
    ],
)
def test_a_key_change_without_a_valid_chain_is_refused(served: trust.NamespaceKeys, why: str) -> None:
    with pytest.raises(trust.KeyChangeRefused):
        trust.advance_pin(REGISTRY, trust.Pin(OWNER.address, 0), served)


def test_a_revoked_key_cannot_come_back_by_rolling_the_history_back() -> None:
    pinned = trust.Pin(NEXT.address, 1)
    with pytest.raises(trust.KeyChangeRefused):
        trust.advance_pin(REGISTRY, pinned, keys(OWNER))
    with pytest.raises(trust.KeyChangeRefused):
        trust.advance_pin(REGISTRY, pinned, keys(OWNER, rotation(OWNER, NEXT, 1)))
    # ...but the key it moved to may sign a way back.
    back = keys(OWNER, rotation(OWNER, NEXT, 1), rotation(NEXT, OWNER, 2))
    assert trust.advance_pin(REGISTRY, pinned, back) == trust.Pin(OWNER.address, 2)


def test_rotations_for_another_registry_do_not_count() -> None:
    statement = signing.KeyRotationStatement(
        registry="https://other.example", namespace="acme", old_address=OWNER.address,
        new_address=NEXT.address, sequence=1,
    )  # fmt: skip
    other = trust.SignedRotation(statement, signing.sign_statement(statement, OWNER))
    with pytest.raises(trust.KeyChangeRefused):
        trust.advance_pin(REGISTRY, trust.Pin(OWNER.address, 0), keys(NEXT, other))


def test_a_namespace_without_an_owner_key_cannot_be_trusted() -> None:
    with pytest.raises(trust.NoNamespaceKey):
        trust.advance_pin(REGISTRY, None, trust.NamespaceKeys("acme", None))


def test_check_release_wants_a_signature_by_the_trusted_key() -> None:
    statement = release()
    good = signing.sign_statement(statement, OWNER)
    assert trust.check_release(
        statement, [None, signing.sign_statement(statement, MALLORY), good], OWNER.address
    )
    with pytest.raises(trust.UnsignedRelease) as unsigned:
        trust.check_release(statement, [], OWNER.address)
    assert unsigned.value.code == "unsigned"
    with pytest.raises(trust.UntrustedSigner) as other:
        trust.check_release(statement, signing.sign_statement(statement, MALLORY), OWNER.address)
    assert MALLORY.address in other.value.message
    # A signature over the same release at another commit.
    swapped = release(commit="b" * 40)
    with pytest.raises(trust.UntrustedSigner):
        trust.check_release(swapped, good, OWNER.address)
    with pytest.raises(trust.UntrustedSigner):
        trust.check_release(statement, "0xnot-hex", OWNER.address)


def test_check_revision() -> None:
    seen = (5, signing.sha256_hex(deployment(5).to_bytes()))
    trust.check_revision(None, deployment(1))
    trust.check_revision(seen, deployment(5))
    trust.check_revision(seen, deployment(6))
    with pytest.raises(trust.StaleRevision):
        trust.check_revision(seen, deployment(4))
    with pytest.raises(trust.RevisionConflict):
        trust.check_revision(seen, deployment(5, replicas=9))


# --- the verifier and its store ----------------------------------------------------------------


def test_verify_release_pins_then_holds_to_the_pin(verifier: trust.Verifier, tmp_path: Path) -> None:
    signature = signing.sign_statement(release(), OWNER)
    done = verifier.verify_release(
        name="acme/weather", version="1.0.0", commit=COMMIT, manifest=MANIFEST,
        signatures=[signature], keys=keys(OWNER),
    )  # fmt: skip
    assert (done.signer, done.signed) == (OWNER.address, True)
    path = tmp_path / "trust.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # A new verifier on the same file remembers the pin: an owner swap is refused.
    again = trust.Verifier(REGISTRY.upper(), trust.TrustStore(path))
    forged = signing.sign_statement(release(), MALLORY)
    with pytest.raises(trust.KeyChangeRefused):
        again.verify_release(
            name="acme/weather", version="1.0.0", commit=COMMIT, manifest=MANIFEST,
            signatures=[forged], keys=keys(MALLORY),
        )  # fmt: skip
    # Other manifest bytes at the commit: not what was signed.
    with pytest.raises(trust.UntrustedSigner):
        again.verify_release(
            name="acme/weather", version="1.0.0", commit=COMMIT, manifest=MANIFEST + b"#\n",
            signatures=[signature], keys=keys(OWNER),
        )  # fmt: skip
    # Forgetting the pin (after an out-of-band check) re-pins on the next use.
    assert again.forget("acme")
    assert again.namespace_key(keys(MALLORY)) == MALLORY.address


def test_verify_release_follows_a_rotation(verifier: trust.Verifier) -> None:
    assert verifier.namespace_key(keys(OWNER)) == OWNER.address
    rotated = keys(NEXT, rotation(OWNER, NEXT, 1))
    statement = release("1.1.0")
    done = verifier.verify_release_statement(statement, signing.sign_statement(statement, NEXT), keys=rotated)
    assert done.signer == NEXT.address
    # The old key is revoked: its signatures no longer count.
    with pytest.raises(trust.UntrustedSigner):
        verifier.verify_release_statement(statement, signing.sign_statement(statement, OWNER), keys=rotated)


def test_unsigned_allowed_lets_only_unsigned_through(tmp_path: Path) -> None:
    lax = trust.Verifier(REGISTRY, trust.TrustStore(tmp_path / "t.json"), allow_unsigned=True)
    assert lax.verify_release_statement(release(), None, keys=keys(OWNER)).signed is False
    with pytest.raises(trust.UntrustedSigner):
        lax.verify_release_statement(release(), signing.sign_statement(release(), MALLORY), keys=keys(OWNER))


def test_deployments_are_signed_and_their_revision_only_grows(
    verifier: trust.Verifier, tmp_path: Path
) -> None:
    def accept(statement: signing.DeploymentStatement, key: object = OWNER) -> trust.VerifiedDeployment:
        signature = signing.sign_statement(statement, key)  # type: ignore[arg-type]
        return verifier.verify_deployment(statement, signature, keys=keys(OWNER))

    assert accept(deployment(3)).revision == 3
    assert accept(deployment(3)).revision == 3  # the same statement again: a re-delivery
    with pytest.raises(trust.StaleRevision) as stale:
        accept(deployment(2))
    assert stale.value.code == "stale_revision"
    with pytest.raises(trust.RevisionConflict):
        accept(deployment(3, replicas=5))
    with pytest.raises(trust.UntrustedSigner):
        accept(deployment(4), MALLORY)
    with pytest.raises(trust.UnsignedRelease):
        verifier.verify_deployment(deployment(4), None, keys=keys(OWNER))
    accept(deployment(7))
    # Remembered across restarts.
    restarted = trust.Verifier(REGISTRY, trust.TrustStore(tmp_path / "trust.json"))
    with pytest.raises(trust.StaleRevision):
        restarted.verify_deployment(
            deployment(6), signing.sign_statement(deployment(6), OWNER), keys=keys(OWNER)
        )


def test_namespace_keys_from_the_registry_json() -> None:
    r = rotation(OWNER, NEXT, 1)
    body = {
        "registry": REGISTRY,
        "namespace": "acme",
        "owner_address": NEXT.address,
        "rotations": [{"statement": r.statement.to_text(), "signature": r.signature, "sequence": 1}],
    }
    parsed = trust.NamespaceKeys.from_json(body)
    assert parsed == trust.NamespaceKeys("acme", NEXT.address, (r,))
    with pytest.raises(trust.KeyChangeRefused):
        trust.NamespaceKeys.from_json({**body, "rotations": [{"statement": "garbage", "signature": "0x"}]})


def test_a_corrupt_store_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match="unreadable"):
        trust.TrustStore(path).pin(REGISTRY, "acme")
