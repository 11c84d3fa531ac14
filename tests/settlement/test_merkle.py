"""mcpz/merkle.py: the same roots and proofs as OpenZeppelin's StandardMerkleTree, checked without a chain."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpz.merkle import Leaf, MerkleTree, from_hex, leaf_hash, to_hex, verify

# StandardMerkleTree.of(VALUES, ["uint256", "address", "uint256"]) from @openzeppelin/merkle-tree 1.0.8
# (node, `tree.root`, `tree.getProof(i)`, `tree.dump().tree`), computed once and pasted here.
VALUES = [
    (0, "0x1111111111111111111111111111111111111111", 5_000_000),
    (1, "0x2222222222222222222222222222222222222222", 2_500_000),
    (2, "0x3333333333333333333333333333333333333333", 1),
    (3, "0x4444444444444444444444444444444444444444", 1_000_000_000_000),
    (4, "0x5555555555555555555555555555555555555555", 42),
]
OZ_ROOT = "0x6c5460bbb1d7a31e6f9dbb0eda6e0fda63aa25f6a3027473e5864ad3a1926f9a"
OZ_PROOFS = [
    [
        "0x28331af6559367a587c7e3e17acc76ee2b90db86bdf09f4f9998223f0ab0f30d",
        "0xb073825d500211f87b4403e77622a9c288e297f202335a9bfb1588e11ae8ee8b",
        "0xc644cc900dc68f97398c915386d36a59c712de7237db61705b04d9aa6af3ab5d",
    ],
    [
        "0x864aeed7b0b2280614a993529f60f945f555003ed8815ba2510661db9138c4e0",
        "0x3e3db99c8366bf162f0d0f1fbdcf07e2ed5821e6ddd54258e49d00a23edd4a8e",
    ],
    [
        "0x8b65bdb85318f306ba0529873f723563f96c88fafac3e515675a5996f32d3b78",
        "0x3e3db99c8366bf162f0d0f1fbdcf07e2ed5821e6ddd54258e49d00a23edd4a8e",
    ],
    [
        "0x2828794d9a4fffa701072b242a829630a66f10aef35f4846275fbfcdad7ab5a4",
        "0xb073825d500211f87b4403e77622a9c288e297f202335a9bfb1588e11ae8ee8b",
        "0xc644cc900dc68f97398c915386d36a59c712de7237db61705b04d9aa6af3ab5d",
    ],
    [
        "0x0cce7e7a1991fcb3dc4cd2e1fd16c7fd4b7b37b4af48cbbab21db8db7b1db314",
        "0xc644cc900dc68f97398c915386d36a59c712de7237db61705b04d9aa6af3ab5d",
    ],
]
OZ_TREE = [
    "0x6c5460bbb1d7a31e6f9dbb0eda6e0fda63aa25f6a3027473e5864ad3a1926f9a",
    "0x3e3db99c8366bf162f0d0f1fbdcf07e2ed5821e6ddd54258e49d00a23edd4a8e",
    "0xc644cc900dc68f97398c915386d36a59c712de7237db61705b04d9aa6af3ab5d",
    "0x0cce7e7a1991fcb3dc4cd2e1fd16c7fd4b7b37b4af48cbbab21db8db7b1db314",
    "0xb073825d500211f87b4403e77622a9c288e297f202335a9bfb1588e11ae8ee8b",
    "0x8b65bdb85318f306ba0529873f723563f96c88fafac3e515675a5996f32d3b78",
    "0x864aeed7b0b2280614a993529f60f945f555003ed8815ba2510661db9138c4e0",
    "0x28331af6559367a587c7e3e17acc76ee2b90db86bdf09f4f9998223f0ab0f30d",
    "0x2828794d9a4fffa701072b242a829630a66f10aef35f4846275fbfcdad7ab5a4",
]


def test_root_proofs_and_layout_equal_openzeppelins() -> None:
    tree = MerkleTree([Leaf(*v) for v in VALUES])
    assert to_hex(tree.root) == OZ_ROOT
    assert [[to_hex(h) for h in tree.proof(i)] for i in range(len(VALUES))] == OZ_PROOFS
    assert [to_hex(n) for n in tree.nodes] == OZ_TREE


def test_a_one_leaf_tree_is_its_leaf_with_an_empty_proof() -> None:
    tree = MerkleTree([Leaf(*VALUES[0])])
    # @openzeppelin/merkle-tree gives this root for the first value alone.
    assert to_hex(tree.root) == "0x2828794d9a4fffa701072b242a829630a66f10aef35f4846275fbfcdad7ab5a4"
    assert tree.proof(0) == []


def test_the_account_is_case_insensitive_and_checked() -> None:
    lower = leaf_hash(7, "0xabcdefabcdefabcdefabcdefabcdefabcdefabcd", 5)
    assert leaf_hash(7, "0xABCDEFabcdefABCDEFabcdefABCDEFabcdefABCD", 5) == lower
    for bad in ("0x1234", "abcdefabcdefabcdefabcdefabcdefabcdefabcdef", "0x" + "zz" * 20):
        with pytest.raises(ValueError, match="20-byte hex address"):
            Leaf(0, bad, 1)


@pytest.mark.parametrize(("index", "amount"), [(-1, 1), (0, -1), (2**256, 1), (0, 2**256), (True, 1)])
def test_leaf_numbers_must_fit_uint256(index: int, amount: int) -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\*\*256\)"):
        Leaf(index, VALUES[0][1], amount)


def test_an_empty_tree_and_a_repeated_index_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one leaf"):
        MerkleTree([])
    with pytest.raises(ValueError, match="index 3 appears twice"):
        MerkleTree([Leaf(3, VALUES[0][1], 1), Leaf(3, VALUES[1][1], 2)])


def test_hex_round_trip() -> None:
    assert to_hex(from_hex(OZ_ROOT)) == OZ_ROOT
    with pytest.raises(ValueError, match="32 bytes"):
        from_hex("0x1234")


leaves_strategy = st.lists(
    st.tuples(st.binary(min_size=20, max_size=20), st.integers(min_value=0, max_value=2**256 - 1)),
    min_size=1,
    max_size=70,
).map(lambda rows: [Leaf(i, "0x" + a.hex(), amount) for i, (a, amount) in enumerate(rows)])


@settings(max_examples=60, deadline=None)
@given(leaves=leaves_strategy, data=st.data())
def test_every_proof_verifies_and_a_changed_leaf_does_not(leaves: list[Leaf], data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    for i, leaf in enumerate(leaves):
        proof = tree.proof(i)
        assert verify(tree.root, leaf, proof)
        assert len(proof) <= len(leaves).bit_length()
    i = data.draw(st.integers(min_value=0, max_value=len(leaves) - 1))
    leaf = leaves[i]
    assert not verify(tree.root, Leaf(leaf.index, leaf.account, leaf.amount ^ 1), tree.proof(i))
    assert not verify(tree.root, Leaf(leaf.index + 1, leaf.account, leaf.amount), tree.proof(i))


def test_ten_thousand_leaves_build_and_prove() -> None:
    # Size only: the time is measured in the report's figures, not asserted (no timing asserts).
    leaves = [Leaf(i, "0x" + i.to_bytes(20, "big").hex(), i * 1000 + 1) for i in range(10_000)]
    tree = MerkleTree(leaves)
    assert len(tree.nodes) == 2 * 10_000 - 1
    assert verify(tree.root, leaves[9_999], tree.proof(9_999))
    assert len(tree.proof(0)) in (13, 14)
