"""mcpz.keys.trust: revoked keys stay refused, deployments signed by them too, and the store's revision
check holds across threads and processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from test_trust import MALLORY, NEXT, OWNER, REGISTRY, THIRD, deployment, keys, release, rotation

from mcpz.keys import signing, trust


def test_revoked_keys_are_those_rotated_away_from_and_not_back() -> None:
    assert trust.revoked_keys([]) == {}
    one = rotation(OWNER, NEXT, 1)
    assert set(trust.revoked_keys([one])) == {OWNER.address.lower()}
    chain = [one, rotation(NEXT, THIRD, 2)]
    assert set(trust.revoked_keys(chain)) == {OWNER.address.lower(), NEXT.address.lower()}
    # A namespace transferred away and back: the key it came back to is good again.
    back = [one, rotation(NEXT, OWNER, 2)]
    assert set(trust.revoked_keys(back)) == {NEXT.address.lower()}
    assert trust.revoked_keys([one])[OWNER.address.lower()].new_address == NEXT.address


def test_a_signature_by_a_revoked_key_is_refused_as_revoked(verifier: trust.Verifier) -> None:
    rotated = keys(NEXT, rotation(OWNER, NEXT, 1))
    statement = release()
    with pytest.raises(trust.RevokedKey) as refused:
        verifier.verify_release_statement(statement, signing.sign_statement(statement, OWNER), keys=rotated)
    assert refused.value.code == "revoked_key"
    assert "rotation #1" in refused.value.message
    # Still an UntrustedSigner, and a stranger's signature is only that.
    with pytest.raises(trust.UntrustedSigner) as stranger:
        verifier.verify_release_statement(statement, signing.sign_statement(statement, MALLORY), keys=rotated)
    assert not isinstance(stranger.value, trust.RevokedKey)
    signed = deployment(1)
    with pytest.raises(trust.RevokedKey):
        verifier.verify_deployment(signed, signing.sign_statement(signed, OWNER), keys=rotated)


def test_a_revocation_seen_once_outlives_a_registry_that_hides_it(tmp_path: Path) -> None:
    store = trust.TrustStore(tmp_path / "trust.json")
    node = trust.Verifier(REGISTRY, store)
    r = rotation(OWNER, NEXT, 1)
    body = {"registry": REGISTRY, "keys": [{"statement": r.statement.to_text(), "signature": r.signature}]}
    assert node.learn_revocations(body) == 1
    assert node.learn_revocations(body) == 0  # kept once
    # The registry now names the old key as the owner and shows no rotation: the node never pinned
    # "acme", yet it does not take the registry's word.
    with pytest.raises(trust.RevokedKey):
        node.namespace_key(keys(OWNER))
    # Another process (or a restarted node) reading the same store knows it as well.
    with pytest.raises(trust.RevokedKey):
        trust.Verifier(REGISTRY, trust.TrustStore(tmp_path / "trust.json")).namespace_key(keys(OWNER))
    # Forgetting the pin does not forget the revocation; the key it was rotated to is fine.
    node.forget("acme")
    assert node.namespace_key(keys(NEXT)) == NEXT.address


def test_forged_malformed_and_foreign_revocations_are_ignored(verifier: trust.Verifier) -> None:
    forged = rotation(OWNER, NEXT, 1, signer=MALLORY)  # nobody but OWNER can revoke OWNER
    foreign = signing.KeyRotationStatement(
        registry="https://elsewhere.example.com", namespace="acme",
        old_address=OWNER.address, new_address=NEXT.address, sequence=1,
    )  # fmt: skip
    body = {
        "keys": [
            {"statement": forged.statement.to_text(), "signature": forged.signature},
            {"statement": "mcpz key-rotation v1\nnot: this\n", "signature": "0x00"},
            {"statement": foreign.to_text(), "signature": signing.sign_statement(foreign, OWNER)},
            "not even an object",
        ]
    }
    assert verifier.learn_revocations(body) == 0
    assert verifier.namespace_key(keys(OWNER)) == OWNER.address


def test_two_different_rotations_with_one_number_are_refused(verifier: trust.Verifier) -> None:
    # The old key was stolen: its thief signed a rotation of its own, numbered like the real one.
    verifier.learn_rotations([rotation(OWNER, NEXT, 1)])
    with pytest.raises(trust.KeyChangeRefused, match="two different rotations #1"):
        verifier.namespace_key(keys(MALLORY, rotation(OWNER, MALLORY, 1)))


def test_unsigned_deployments_are_allowed_only_by_allow_unsigned_and_still_never_go_back(
    tmp_path: Path,
) -> None:
    lax = trust.Verifier(REGISTRY, trust.TrustStore(tmp_path / "trust.json"), allow_unsigned=True)
    signed = deployment(5)
    assert (
        lax.verify_deployment(signed, signing.sign_statement(signed, OWNER), keys=keys(OWNER)).revision == 5
    )
    assert lax.verify_deployment(deployment(6), None, keys=keys(OWNER)).signer is None
    with pytest.raises(trust.StaleRevision):
        lax.verify_deployment(deployment(4), [], keys=keys(OWNER))
    # Several signatures: one by the namespace's key is enough.
    seven = deployment(7)
    both = [signing.sign_statement(seven, MALLORY), signing.sign_statement(seven, OWNER)]
    assert lax.verify_deployment(seven, both, keys=keys(OWNER)).signer == OWNER.address


# --- the store under concurrency ---------------------------------------------------------------------


def _advance(path: str, revisions: list[int], go: Any) -> None:
    store = trust.TrustStore(Path(path))
    statements = [deployment(number) for number in revisions]
    go.wait(30)
    for statement in statements:
        try:
            store.advance_revision(REGISTRY, statement)
        except trust.StaleRevision:
            pass


def test_the_highest_revision_survives_concurrent_processes(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    # Each process climbs its own interleaved run of revisions, all at once; without one lock
    # around the check and the update, a slower process writes a lower revision over a higher one.
    top = 200
    workers = [
        context.Process(target=_advance, args=(str(path), list(range(start, top + 1, 4)), go))
        for start in range(1, 5)
    ]
    for worker in workers:
        worker.start()
    go.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    highest = trust.TrustStore(path).revision(REGISTRY, "acme/weather")
    assert highest is not None and highest[0] == top


@pytest.fixture
def verifier(tmp_path: Path) -> trust.Verifier:
    return trust.Verifier(REGISTRY, trust.TrustStore(tmp_path / "trust.json"))
