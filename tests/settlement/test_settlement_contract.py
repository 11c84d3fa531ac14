"""McpzSettlement against a real anvil: deposits, Merkle payout batches, claims, pushes, withdrawals, pause.

Proofs come from mcpz/merkle.py, so these tests also show that its trees verify with OpenZeppelin's
MerkleProof on chain.
"""

from __future__ import annotations

from typing import Any

import pytest
from chainutil import CHAIN_ID, Anvil, Settlement, deploy_settlement
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpz.keys.ethkeys import LocalAccount
from mcpz.merkle import Leaf, MerkleTree

pytestmark = pytest.mark.slow

USDC = 1_000_000  # base units per token (6 decimals)


def creators(s: Settlement, n: int) -> list[LocalAccount]:
    return [s.new_account() for _ in range(n)]


def payout_tree(accounts: list[LocalAccount], amounts: list[int]) -> MerkleTree:
    return MerkleTree(
        [Leaf(i, a.address, amount) for i, (a, amount) in enumerate(zip(accounts, amounts, strict=True))]
    )


def commit(s: Settlement, batch_id: int, tree: MerkleTree, total: int | None = None) -> Any:
    total = sum(leaf.amount for leaf in tree.leaves) if total is None else total
    return s.send(s.contract.functions.commitBatch(batch_id, tree.root, total), s.operator)


def claim_call(s: Settlement, batch_id: int, tree: MerkleTree, i: int) -> Any:
    leaf = tree.leaves[i]
    return s.contract.functions.claim(batch_id, leaf.index, leaf.account, leaf.amount, tree.proof(i))


def claim_struct(batch_id: int, tree: MerkleTree, i: int) -> tuple[int, int, str, int, list[bytes]]:
    leaf = tree.leaves[i]
    return (batch_id, leaf.index, leaf.account, leaf.amount, tree.proof(i))


def fund(s: Settlement, amount: int) -> None:
    """Tokens in the contract, as consumers' deposits put them there."""
    s.deposit(s.user, "consumer", amount)


def test_deposit_pulls_tokens_and_names_the_account(settlement: Settlement) -> None:
    s = settlement
    receipt = s.deposit(s.user, "alice", 5 * USDC)
    [event] = s.events(receipt, "Deposited")
    assert event["args"]["from"] == s.user.address
    assert event["args"]["account"] == "alice"
    assert event["args"]["amount"] == 5 * USDC
    assert s.balance(s.contract.address) == 5 * USDC
    assert s.contract.functions.unallocated().call() == 5 * USDC


def test_deposit_refuses_bad_account_names_and_zero(settlement: Settlement) -> None:
    s = settlement
    s.mint(s.user.address, USDC)
    s.send(s.token.functions.approve(s.contract.address, USDC), s.user)
    s.reverts("BadAccountName", s.contract.functions.deposit("", USDC), s.user)
    s.reverts("BadAccountName", s.contract.functions.deposit("a" * 65, USDC), s.user)
    s.reverts("ZeroAmount", s.contract.functions.deposit("alice", 0), s.user)
    s.send(s.contract.functions.deposit("a" * 64, USDC), s.user)


def test_deposit_with_permit_needs_no_approval(settlement: Settlement, anvil: Anvil) -> None:
    s = settlement
    s.mint(s.user.address, 3 * USDC)
    deadline = anvil.w3.eth.get_block("latest")["timestamp"] + 3600
    nonce = s.token.functions.nonces(s.user.address).call()
    signed = s.user.sign_typed_data(
        domain_data={
            "name": "mcpz Test USD",
            "version": "1",
            "chainId": CHAIN_ID,
            "verifyingContract": s.token.address,
        },
        message_types={
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ]
        },
        message_data={
            "owner": s.user.address,
            "spender": s.contract.address,
            "value": 3 * USDC,
            "nonce": nonce,
            "deadline": deadline,
        },
    )
    call = s.contract.functions.depositWithPermit(
        "bob", 3 * USDC, deadline, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
    )
    [event] = s.events(s.send(call, s.user), "Deposited")
    assert event["args"]["account"] == "bob"
    assert s.balance(s.contract.address) == 3 * USDC


def test_every_creator_claims_once_with_proofs_from_mcpz_merkle(settlement: Settlement) -> None:
    s = settlement
    people = creators(s, 7)
    amounts = [(i + 1) * 1_234_567 for i in range(7)]
    tree = payout_tree(people, amounts)
    fund(s, sum(amounts) + 5 * USDC)
    [event] = s.events(commit(s, 1, tree), "BatchCommitted")
    assert event["args"]["root"] == tree.root
    assert s.contract.functions.outstanding().call() == sum(amounts)
    assert s.contract.functions.unallocated().call() == 5 * USDC

    for i, person in enumerate(people):
        # Anyone may submit a claim; the tokens go to the leaf's account.
        submitter = person if i % 2 else s.user
        [claimed] = s.events(s.send(claim_call(s, 1, tree, i), submitter), "Claimed")
        assert claimed["args"]["account"] == person.address
        assert s.balance(person.address) == amounts[i]
        assert s.contract.functions.isClaimed(1, i).call()
    assert s.contract.functions.outstanding().call() == 0
    assert s.contract.functions.batches(1).call() == [tree.root, sum(amounts), sum(amounts)]

    s.reverts("AlreadyClaimed", claim_call(s, 1, tree, 3), people[3])


def test_a_wrong_amount_or_proof_is_refused(settlement: Settlement) -> None:
    s = settlement
    people = creators(s, 3)
    tree = payout_tree(people, [USDC, 2 * USDC, 3 * USDC])
    fund(s, 10 * USDC)
    commit(s, 9, tree)
    leaf = tree.leaves[0]
    s.reverts(
        "InvalidProof",
        s.contract.functions.claim(9, leaf.index, leaf.account, leaf.amount + 1, tree.proof(0)),
        s.user,
    )
    s.reverts(
        "InvalidProof", s.contract.functions.claim(9, 0, leaf.account, leaf.amount, tree.proof(1)), s.user
    )
    s.reverts("UnknownBatch", claim_call(s, 10, tree, 0), s.user)
    assert s.contract.functions.verifyLeaf(9, 0, leaf.account, leaf.amount, tree.proof(0)).call()
    assert not s.contract.functions.verifyLeaf(9, 0, leaf.account, leaf.amount - 1, tree.proof(0)).call()


def test_batch_ids_are_used_once_and_only_the_operator_commits(settlement: Settlement) -> None:
    s = settlement
    people = creators(s, 2)
    tree = payout_tree(people, [USDC, USDC])
    fund(s, 10 * USDC)
    commit(s, 42, tree)
    s.reverts("BatchExists", s.contract.functions.commitBatch(42, b"\x01" * 32, 1), s.operator)
    s.reverts("AccessControlUnauthorizedAccount", s.contract.functions.commitBatch(43, tree.root, 1), s.user)
    s.reverts("ZeroRoot", s.contract.functions.commitBatch(43, b"\x00" * 32, 1), s.operator)


def test_a_batch_larger_than_the_unallocated_balance_is_refused(settlement: Settlement) -> None:
    s = settlement
    people = creators(s, 2)
    fund(s, 10 * USDC)
    first = payout_tree(people, [3 * USDC, 4 * USDC])
    commit(s, 1, first)
    # 10 held, 7 committed: 3 left, whatever the second root says.
    second = payout_tree(people, [2 * USDC, 2 * USDC])
    s.reverts(
        "InsufficientUnallocated", s.contract.functions.commitBatch(2, second.root, 4 * USDC), s.operator
    )
    commit(s, 2, second, total=3 * USDC)
    # Claims take tokens out and the promise with them: the free part stays 0.
    s.send(claim_call(s, 1, first, 0), s.user)
    assert s.contract.functions.unallocated().call() == 0


def test_leaves_past_the_batch_total_are_not_paid_from_other_batches(settlement: Settlement) -> None:
    s = settlement
    people = creators(s, 2)
    fund(s, 10 * USDC)
    tree = payout_tree(people, [3 * USDC, 3 * USDC])
    commit(s, 1, tree, total=4 * USDC)  # a registry bug: the root promises 6
    s.send(claim_call(s, 1, tree, 0), s.user)
    s.reverts("BatchOverdrawn", claim_call(s, 1, tree, 1), s.user)


def test_claim_many_over_several_batches(settlement: Settlement) -> None:
    s = settlement
    people = creators(s, 3)
    fund(s, 100 * USDC)
    trees = [payout_tree(people, [(b + 1) * USDC, 2 * USDC, 3 * USDC]) for b in range(4)]
    for b, tree in enumerate(trees):
        commit(s, 100 + b, tree)
    mine = [claim_struct(100 + b, tree, 0) for b, tree in enumerate(trees)]
    receipt = s.send(s.contract.functions.claimMany(mine), people[0])
    assert len(s.events(receipt, "Claimed")) == 4
    assert s.balance(people[0].address) == (1 + 2 + 3 + 4) * USDC
    # Mixed accounts in one call, each paid their own.
    mixed = [claim_struct(100, trees[0], 1), claim_struct(101, trees[1], 2), claim_struct(102, trees[2], 1)]
    s.send(s.contract.functions.claimMany(mixed), s.user)
    assert s.balance(people[1].address) == 4 * USDC
    assert s.balance(people[2].address) == 3 * USDC
    # One already-claimed leaf refuses the whole call.
    s.reverts(
        "AlreadyClaimed", s.contract.functions.claimMany([claim_struct(103, trees[3], 1), mine[0]]), s.user
    )
    assert not s.contract.functions.isClaimed(103, 1).call()


def test_push_payouts_only_to_creators_who_opted_in(settlement: Settlement) -> None:
    s = settlement
    people = creators(s, 4)
    fund(s, 100 * USDC)
    tree = payout_tree(people, [USDC, 2 * USDC, 3 * USDC, 4 * USDC])
    commit(s, 7, tree)
    for person in people[:3]:
        s.send(s.contract.functions.setPushOptIn(True), person)
    everyone = [claim_struct(7, tree, i) for i in range(4)]
    s.reverts("NotOptedIn", s.contract.functions.pushPayouts(7, everyone), s.operator)
    s.reverts("AccessControlUnauthorizedAccount", s.contract.functions.pushPayouts(7, everyone[:3]), s.user)
    s.reverts("BatchMismatch", s.contract.functions.pushPayouts(8, everyone[:3]), s.operator)
    # A creator who claims first is skipped by the push, not paid twice.
    s.send(claim_call(s, 7, tree, 1), people[1])
    receipt = s.send(s.contract.functions.pushPayouts(7, everyone[:3]), s.operator)
    assert [e["args"]["index"] for e in s.events(receipt, "Claimed")] == [0, 2]
    assert [s.balance(p.address) for p in people] == [USDC, 2 * USDC, 3 * USDC, 0]
    # Opting out again is honoured.
    s.send(s.contract.functions.setPushOptIn(False), people[0])
    assert not s.contract.functions.pushOptIn(people[0].address).call()


def voucher(s: Settlement, signer: LocalAccount, account: str, amount: int, nonce: int, expiry: int) -> bytes:
    signed = signer.sign_typed_data(
        domain_data={
            "name": "McpzSettlement",
            "version": "1",
            "chainId": CHAIN_ID,
            "verifyingContract": s.contract.address,
        },
        message_types={
            "Withdrawal": [
                {"name": "account", "type": "address"},
                {"name": "amount", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "expiry", "type": "uint256"},
            ]
        },
        message_data={"account": account, "amount": amount, "nonce": nonce, "expiry": expiry},
    )
    return bytes(signed.signature)


def test_a_withdrawal_voucher_is_used_once(settlement: Settlement, anvil: Anvil) -> None:
    s = settlement
    fund(s, 10 * USDC)
    before = s.balance(s.user.address)
    expiry = anvil.w3.eth.get_block("latest")["timestamp"] + 600
    signature = voucher(s, s.operator, s.user.address, 4 * USDC, 1, expiry)
    [event] = s.events(
        s.send(s.contract.functions.withdraw(4 * USDC, 1, expiry, signature), s.user), "Withdrawn"
    )
    assert event["args"]["account"] == s.user.address
    assert s.balance(s.user.address) == before + 4 * USDC
    assert s.contract.functions.nonceUsed(s.user.address, 1).call()
    s.reverts("NonceUsed", s.contract.functions.withdraw(4 * USDC, 1, expiry, signature), s.user)
    # The voucher names its account: someone else presenting it recovers a different signer.
    other = s.new_account()
    s.reverts("NotOperatorSignature", s.contract.functions.withdraw(4 * USDC, 2, expiry, signature), other)


def test_expired_and_non_operator_vouchers_are_refused(settlement: Settlement, anvil: Anvil) -> None:
    s = settlement
    fund(s, 10 * USDC)
    now = anvil.w3.eth.get_block("latest")["timestamp"]
    expired = voucher(s, s.operator, s.user.address, USDC, 1, now - 1)
    s.reverts("VoucherExpired", s.contract.functions.withdraw(USDC, 1, now - 1, expired), s.user)
    forged = voucher(s, s.user, s.user.address, USDC, 2, now + 600)
    s.reverts("NotOperatorSignature", s.contract.functions.withdraw(USDC, 2, now + 600, forged), s.user)


def test_withdrawals_come_only_out_of_the_unallocated_part(settlement: Settlement, anvil: Anvil) -> None:
    s = settlement
    people = creators(s, 1)
    fund(s, 10 * USDC)
    commit(s, 1, payout_tree(people, [8 * USDC]))
    expiry = anvil.w3.eth.get_block("latest")["timestamp"] + 600
    signature = voucher(s, s.operator, s.user.address, 3 * USDC, 5, expiry)
    s.reverts(
        "InsufficientUnallocated", s.contract.functions.withdraw(3 * USDC, 5, expiry, signature), s.user
    )


def test_paused_refuses_deposits_claims_and_withdrawals(settlement: Settlement, anvil: Anvil) -> None:
    s = settlement
    people = creators(s, 2)
    fund(s, 10 * USDC)
    tree = payout_tree(people, [USDC, USDC])
    commit(s, 1, tree)
    s.reverts("AccessControlUnauthorizedAccount", s.contract.functions.pause(), s.user)
    s.send(s.contract.functions.pause(), s.operator)
    s.mint(s.user.address, USDC)
    s.send(s.token.functions.approve(s.contract.address, USDC), s.user)
    s.reverts("EnforcedPause", s.contract.functions.deposit("alice", USDC), s.user)
    s.reverts("EnforcedPause", claim_call(s, 1, tree, 0), people[0])
    s.reverts("EnforcedPause", s.contract.functions.claimMany([claim_struct(1, tree, 0)]), people[0])
    expiry = anvil.w3.eth.get_block("latest")["timestamp"] + 600
    signature = voucher(s, s.operator, s.user.address, USDC, 1, expiry)
    s.reverts("EnforcedPause", s.contract.functions.withdraw(USDC, 1, expiry, signature), s.user)
    s.send(s.contract.functions.unpause(), s.operator)
    s.send(claim_call(s, 1, tree, 0), people[0])
    assert s.balance(people[0].address) == USDC


amounts_strategy = st.lists(st.integers(min_value=1, max_value=10**12), min_size=1, max_size=40)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=amounts_strategy, data=st.data())
def test_random_trees_verify_in_the_contract(anvil: Anvil, amounts: list[int], data: st.DataObject) -> None:
    s = deploy_settlement(anvil)
    addresses = data.draw(
        st.lists(
            # The zero address is excluded: the token refuses to pay it, which is the token's rule, not ours.
            st.binary(min_size=20, max_size=20).filter(any),
            min_size=len(amounts),
            max_size=len(amounts),
        )
    )
    from web3 import Web3

    leaves = [
        Leaf(i, Web3.to_checksum_address(a), amount)
        for i, (a, amount) in enumerate(zip(addresses, amounts, strict=True))
    ]
    tree = MerkleTree(leaves)
    fund(s, sum(amounts))
    s.send(s.contract.functions.commitBatch(1, tree.root, sum(amounts)), s.operator)
    for i, leaf in enumerate(leaves):
        assert s.contract.functions.verifyLeaf(1, leaf.index, leaf.account, leaf.amount, tree.proof(i)).call()
    # And one of them really pays.
    i = data.draw(st.integers(min_value=0, max_value=len(leaves) - 1))
    before = s.balance(leaves[i].account)
    s.send(claim_call(s, 1, tree, i), s.user)
    assert s.balance(leaves[i].account) == before + leaves[i].amount
