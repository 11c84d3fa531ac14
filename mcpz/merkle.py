"""Merkle trees of payouts, laid out exactly as OpenZeppelin's StandardMerkleTree lays them out.

A leaf is (index, account, amount) with Solidity types (uint256, address, uint256), hashed as
`keccak256(bytes.concat(keccak256(abi.encode(index, account, amount))))`: the double hash keeps a
leaf's 64-byte preimage from passing for an inner node. Inner nodes hash their two children in sorted
order, so a proof is a plain list of siblings and the settlement contract checks it with OpenZeppelin's
`MerkleProof`. Leaves are sorted by hash and stored with the inner nodes in one array (root first,
children of node i at 2i+1 and 2i+2), so the root and every proof equal what
`StandardMerkleTree.of(values, ["uint256", "address", "uint256"])` gives for the same values; a tree
dumped by either side can be checked by the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_hash.auto import keccak as _keccak

_WORD = 2**256
_ADDRESS_PAD = bytes(12)


def keccak256(data: bytes) -> bytes:
    return _keccak(data)


@dataclass(frozen=True)
class Leaf:
    index: int
    account: str
    amount: int

    def __post_init__(self) -> None:
        for name, value in (("index", self.index), ("amount", self.amount)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _WORD:
                raise ValueError(f"leaf {name} must be an integer in [0, 2**256), got {value!r}")
        _address_bytes(self.account)

    def hash(self) -> bytes:
        return leaf_hash(self.index, self.account, self.amount)


def _address_bytes(account: str) -> bytes:
    if not (isinstance(account, str) and len(account) == 42 and account[:2] in ("0x", "0X")):
        raise ValueError(f"leaf account must be a 0x-prefixed 20-byte hex address, got {account!r}")
    try:
        return bytes.fromhex(account[2:])
    except ValueError:
        raise ValueError(f"leaf account must be a 0x-prefixed 20-byte hex address, got {account!r}") from None


def leaf_hash(index: int, account: str, amount: int) -> bytes:
    encoded = index.to_bytes(32, "big") + _ADDRESS_PAD + _address_bytes(account) + amount.to_bytes(32, "big")
    return keccak256(keccak256(encoded))


def node_hash(a: bytes, b: bytes) -> bytes:
    return keccak256(a + b if a < b else b + a)


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root a leaf hash and its proof lead to (OpenZeppelin's `MerkleProof.processProof`)."""
    node = leaf
    for sibling in proof:
        node = node_hash(node, sibling)
    return node


def verify(root: bytes, leaf: Leaf, proof: Sequence[bytes]) -> bool:
    return process_proof(leaf.hash(), proof) == root


class MerkleTree:
    """A payout batch's tree. `proof(i)` and `tree_index(i)` take the position of a leaf in the list the
    tree was built from, as OpenZeppelin's `getProof(i)` does."""

    def __init__(self, leaves: Sequence[Leaf]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        seen: set[int] = set()
        for leaf in leaves:
            # The contract marks leaves paid by index: a second leaf with the same index could never be paid.
            if leaf.index in seen:
                raise ValueError(f"leaf index {leaf.index} appears twice; each leaf needs its own index")
            seen.add(leaf.index)
        self.leaves: tuple[Leaf, ...] = tuple(leaves)
        hashes = [leaf.hash() for leaf in self.leaves]
        order = sorted(range(len(hashes)), key=hashes.__getitem__)
        size = 2 * len(hashes) - 1
        nodes: list[bytes] = [b""] * size
        self._tree_index: list[int] = [0] * len(hashes)
        for position, value_index in enumerate(order):
            slot = size - 1 - position
            nodes[slot] = hashes[value_index]
            self._tree_index[value_index] = slot
        for i in range(size - 1 - len(hashes), -1, -1):
            nodes[i] = node_hash(nodes[2 * i + 1], nodes[2 * i + 2])
        self.nodes: tuple[bytes, ...] = tuple(nodes)

    @property
    def root(self) -> bytes:
        return self.nodes[0]

    def tree_index(self, i: int) -> int:
        return self._tree_index[i]

    def proof(self, i: int) -> list[bytes]:
        node = self._tree_index[i]
        out: list[bytes] = []
        while node > 0:
            out.append(self.nodes[node + 1 if node % 2 == 1 else node - 1])
            node = (node - 1) // 2
        return out

    def __len__(self) -> int:
        return len(self.leaves)


def to_hex(value: bytes) -> str:
    return "0x" + value.hex()


def from_hex(value: str) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"a Merkle hash is 32 bytes, got {len(raw)} in {value!r}")
    return raw
