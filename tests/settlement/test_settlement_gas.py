"""Gas of the settlement contract on anvil: what one payout batch costs the platform and a creator.

Prints the figures (run with -s to see them); bench/bench_settlement.py will report them beside 0xSplits'.
What is asserted is the shape, not a number: committing a batch costs the same for 10 creators or 1,000.
"""

from __future__ import annotations

from typing import Any

import pytest
from chainutil import Settlement

from mcpz.keys.ethkeys import Account, LocalAccount
from mcpz.merkle import Leaf, MerkleTree

pytestmark = pytest.mark.slow

USDC = 1_000_000


def tree_for(addresses: list[str], amount: int = USDC) -> MerkleTree:
    return MerkleTree([Leaf(i, a, amount + i) for i, a in enumerate(addresses)])


def used(s: Settlement, call: Any, sender: LocalAccount) -> int:
    gas: int = s.send(call, sender)["gasUsed"]
    return gas


def total(tree: MerkleTree) -> int:
    return sum(leaf.amount for leaf in tree.leaves)


def test_gas_of_commit_claim_claim_many_and_push(settlement: Settlement) -> None:
    s = settlement
    c = s.contract.functions
    addresses = [Account.create().address for _ in range(1000)]
    big, small = tree_for(addresses), tree_for(addresses[:10])
    s.deposit(s.user, "consumers", 10 * (total(big) + total(small)))
    gas: dict[str, int] = {}

    # The first commit also turns `outstanding` from zero to non-zero (20,000 gas more); the two compared
    # below both find it non-zero.
    gas["commitBatch, nothing outstanding before"] = used(s, c.commitBatch(3, small.root, 1), s.operator)
    gas["commitBatch, 1,000 creators"] = used(s, c.commitBatch(1, big.root, total(big)), s.operator)
    gas["commitBatch, 10 creators"] = used(s, c.commitBatch(2, small.root, total(small)), s.operator)

    def claim(batch_id: int, tree: MerkleTree, i: int) -> int:
        leaf = tree.leaves[i]
        return used(s, c.claim(batch_id, leaf.index, leaf.account, leaf.amount, tree.proof(i)), s.user)

    # A creator who never held the token: the transfer creates their balance (the common case).
    gas["claim, new holder, first in bitmap word"] = claim(1, big, 0)
    gas["claim, new holder, bitmap word already used"] = claim(1, big, 1)
    s.mint(addresses[2], 1)
    gas["claim, existing holder, bitmap word already used"] = claim(1, big, 2)

    # claimMany: one creator's leaves in 10 batches (index 0 of each: every bitmap word is fresh).
    creator = s.new_account()
    trees = [tree_for([creator.address, *addresses[b * 3 : b * 3 + 3]]) for b in range(10)]
    for b, tree in enumerate(trees):
        s.send(c.commitBatch(100 + b, tree.root, total(tree)), s.operator)
    claims = [
        (100 + b, 0, creator.address, tree.leaves[0].amount, tree.proof(0)) for b, tree in enumerate(trees)
    ]
    gas["claimMany, 10 batches, one creator"] = used(s, c.claimMany(claims), creator)
    assert s.balance(creator.address) == sum(t.leaves[0].amount for t in trees)

    # The operator pushes to 100 creators who opted in.
    pushed = [s.new_account() for _ in range(100)]
    for person in pushed:
        s.send(c.setPushOptIn(True), person)
    push_tree = tree_for([p.address for p in pushed])
    s.send(c.commitBatch(200, push_tree.root, total(push_tree)), s.operator)
    entries = [
        (200, leaf.index, leaf.account, leaf.amount, push_tree.proof(i))
        for i, leaf in enumerate(push_tree.leaves)
    ]
    gas["pushPayouts, 100 creators"] = used(s, c.pushPayouts(200, entries), s.operator)
    assert all(s.balance(p.address) > 0 for p in pushed)

    # What paying each creator directly would cost: a plain ERC-20 transfer to a new holder.
    s.mint(s.admin.address, USDC)
    fresh = Account.create().address
    gas["ERC-20 transfer, new holder"] = used(s, s.token.functions.transfer(fresh, USDC // 2), s.admin)
    gas["ERC-20 transfer, existing holder"] = used(s, s.token.functions.transfer(fresh, USDC // 4), s.admin)

    for name, figure in gas.items():
        print(f"gas  {name:<50} {figure:>10,}")
    print(f"gas  {'pushPayouts per creator':<50} {gas['pushPayouts, 100 creators'] // 100:>10,}")
    print(f"gas  {'claimMany per batch':<50} {gas['claimMany, 10 batches, one creator'] // 10:>10,}")

    # The platform's cost per batch does not grow with the number of creators (calldata bytes of the
    # root and total differ by a few zero bytes at most).
    assert abs(gas["commitBatch, 1,000 creators"] - gas["commitBatch, 10 creators"]) < 200
