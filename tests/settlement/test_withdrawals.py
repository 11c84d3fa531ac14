"""Withdrawal vouchers on a real anvil: issued against the ledger, used once on chain, settled once by
the watcher at confirmed blocks; an expired one's amount returns to the consumer once, never both."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from billingutil import World
from chainutil import CHAIN_ID, Settlement, settlement_chain

from mcpz.errors import RefusedError, UsageError
from mcpz.keys.ethkeys import LocalAccount
from registry_server.accounts import service as accounts
from registry_server.accounts.models import Account
from registry_server.accounts.namespaces import account_for_address
from registry_server.billing import ledger, service
from registry_server.settlement import withdrawals
from registry_server.settlement.models import (
    VOUCHER_EXPIRED,
    VOUCHER_ISSUED,
    VOUCHER_WITHDRAWN,
    Withdrawal,
)
from registry_server.settlement.operator import Operator

pytestmark = pytest.mark.slow

USDC = 1_000_000
CONFIRMATIONS = 3
TTL = 600


@pytest.fixture
def world(billing_world: World) -> World:
    return billing_world


chain_of = settlement_chain


def domain_of(s: Settlement) -> withdrawals.VoucherDomain:
    return withdrawals.VoucherDomain(CHAIN_ID, s.contract.address)


def mine(s: Settlement, blocks: int) -> None:
    s.anvil.w3.provider.make_request("anvil_mine", [hex(blocks)])


def chain_now(s: Settlement) -> int:
    return int(s.anvil.w3.eth.get_block("latest")["timestamp"])


def wallet_account(w: World, s: Settlement, balance: int) -> tuple[LocalAccount, int]:
    """A consumer signed in with a fresh wallet, `balance` available, and that much in the contract."""
    key = s.new_account()
    with w.state.db.session() as session:
        account_id = account_for_address(session, key.address).id
        if balance:
            service.credit(session, account_id, balance)
    if balance:
        s.deposit(s.admin, "funds", balance)  # the contract holds what the ledger owes
    return key, account_id


def issue(w: World, s: Settlement, account_id: int, amount: int, **kw: Any) -> Withdrawal:
    now_us = kw.pop("now_us", chain_now(s) * 1_000_000)
    with w.state.db.session() as session:
        account = session.get(Account, account_id)
        assert account is not None
        return withdrawals.issue(
            session, account, amount, Operator(s.operator, "test"), domain_of(s), now_us, ttl=TTL, **kw
        )


def use(s: Settlement, key: LocalAccount, v: Withdrawal) -> Any:
    call = s.contract.functions.withdraw(v.amount, v.id, v.expiry, bytes.fromhex(v.signature[2:]))
    return s.send(call, key)


def use_refused(s: Settlement, error: str, key: LocalAccount, v: Withdrawal) -> None:
    call = s.contract.functions.withdraw(v.amount, v.id, v.expiry, bytes.fromhex(v.signature[2:]))
    s.reverts(error, call, key)


def balances(w: World, account_id: int) -> dict[str, int]:
    names = [
        ledger.consumer_available(account_id),
        ledger.SETTLEMENT_WITHDRAWALS,
        ledger.CHAIN_WITHDRAWALS,
    ]
    with w.state.db.session() as session:
        found = service.balances(session, names)
        assert service.verify_ledger(session).ok
    return {"available": found[names[0]], "held": found[names[1]], "out": found[names[2]]}


def state_of(w: World, voucher_id: int) -> str:
    with w.state.db.session() as session:
        row = session.get(Withdrawal, voucher_id)
        assert row is not None
        return row.state


def test_a_voucher_holds_its_amount_and_is_signed_by_the_operator(
    world: World, settlement: Settlement
) -> None:
    key, me = wallet_account(world, settlement, 5 * USDC)
    v = issue(world, settlement, me, 2 * USDC)
    assert (v.state, v.address, v.amount, v.chain_id) == (VOUCHER_ISSUED, key.address, 2 * USDC, CHAIN_ID)
    assert v.expiry == chain_now(settlement) + TTL and len(v.signature) == 132
    assert balances(world, me) == {"available": 3 * USDC, "held": 2 * USDC, "out": 0}
    # The contract's own digest of this voucher recovers to the operator.
    from web3 import Web3

    typehash = settlement.contract.functions.WITHDRAWAL_TYPEHASH().call()
    struct = Web3.keccak(
        Web3.to_bytes(typehash)
        + bytes(12) + bytes.fromhex(key.address[2:])
        + v.amount.to_bytes(32, "big") + v.id.to_bytes(32, "big") + v.expiry.to_bytes(32, "big")
    )  # fmt: skip
    separator = settlement.contract.functions.domainSeparator().call()
    digest = Web3.keccak(b"\x19\x01" + separator + struct)
    from mcpz.keys.ethkeys import Account

    signer = Account._recover_hash(digest, signature=bytes.fromhex(v.signature[2:]))
    assert signer == settlement.operator.address


def test_a_voucher_is_used_once_and_settled_once(world: World, settlement: Settlement) -> None:
    s = settlement
    key, me = wallet_account(world, s, 5 * USDC)
    watcher = withdrawals.Watcher(world.state.db, chain_of(s), CONFIRMATIONS)
    assert watcher.step().withdrawn == []
    v = issue(world, s, me, 2 * USDC)
    use(s, key, v)
    assert s.balance(key.address) == 2 * USDC
    use_refused(s, "NonceUsed", key, v)  # the contract takes a voucher once
    assert s.balance(key.address) == 2 * USDC
    assert watcher.step().withdrawn == []  # not yet confirmed
    assert state_of(world, v.id) == VOUCHER_ISSUED
    mine(s, CONFIRMATIONS)
    done = watcher.step()
    assert done.withdrawn == [f"withdrawn:{CHAIN_ID}:{v.id}"] and done.expired == []
    assert state_of(world, v.id) == VOUCHER_WITHDRAWN
    assert balances(world, me) == {"available": 3 * USDC, "held": 0, "out": 2 * USDC}
    # Again, from this watcher and from a new one (a restarted registry): nothing moves twice.
    mine(s, 2)
    assert watcher.step().withdrawn == []
    assert withdrawals.Watcher(world.state.db, chain_of(s), CONFIRMATIONS).step().withdrawn == []
    with world.state.db.session() as session:
        row = session.get(Withdrawal, v.id)
        assert row is not None and row.tx_hash is not None and row.tx_hash.startswith("0x")
    assert balances(world, me) == {"available": 3 * USDC, "held": 0, "out": 2 * USDC}


def test_a_new_watcher_finds_a_withdrawal_made_before_it_started(
    world: World, settlement: Settlement
) -> None:
    s = settlement
    key, me = wallet_account(world, s, 3 * USDC)
    v = issue(world, s, me, USDC, now_us=(chain_now(s) - 600) * 1_000_000)
    use(s, key, v)
    mine(s, 50)
    done = withdrawals.Watcher(world.state.db, chain_of(s), CONFIRMATIONS).step()
    assert done.withdrawn == [f"withdrawn:{CHAIN_ID}:{v.id}"]


def test_an_expired_voucher_returns_once_and_cannot_be_used(world: World, settlement: Settlement) -> None:
    s = settlement
    key, me = wallet_account(world, s, 5 * USDC)
    v = issue(world, s, me, 4 * USDC)
    watcher = withdrawals.Watcher(world.state.db, chain_of(s), CONFIRMATIONS)
    s.anvil.set_next_timestamp(v.expiry + 1)
    mine(s, 1)
    use_refused(s, "VoucherExpired", key, v)
    # The block past the expiry is not confirmed yet: the voucher waits.
    assert watcher.step().expired == []
    assert balances(world, me)["available"] == USDC
    mine(s, CONFIRMATIONS)
    done = watcher.step()
    assert done.expired == [f"withdraw-expired:{CHAIN_ID}:{v.id}"] and done.withdrawn == []
    assert state_of(world, v.id) == VOUCHER_EXPIRED
    assert balances(world, me) == {"available": 5 * USDC, "held": 0, "out": 0}
    mine(s, 2)
    assert watcher.step().expired == []
    assert withdrawals.Watcher(world.state.db, chain_of(s), CONFIRMATIONS).step().expired == []
    assert balances(world, me) == {"available": 5 * USDC, "held": 0, "out": 0}
    use_refused(s, "VoucherExpired", key, v)
    assert s.balance(key.address) == 0


def test_a_withdrawal_in_the_last_block_before_expiry_is_withdrawn_not_expired(
    world: World, settlement: Settlement
) -> None:
    s = settlement
    key, me = wallet_account(world, s, 5 * USDC)
    v = issue(world, s, me, 3 * USDC)
    s.anvil.set_next_timestamp(v.expiry)  # block.timestamp == expiry: still usable
    use(s, key, v)
    s.anvil.set_next_timestamp(v.expiry + 1)
    mine(s, CONFIRMATIONS + 2)
    # A watcher that never saw the voucher issued, looking only once every block is past the expiry.
    done = withdrawals.Watcher(world.state.db, chain_of(s), CONFIRMATIONS).step()
    assert done.withdrawn == [f"withdrawn:{CHAIN_ID}:{v.id}"] and done.expired == []
    assert state_of(world, v.id) == VOUCHER_WITHDRAWN
    assert balances(world, me) == {"available": 2 * USDC, "held": 0, "out": 3 * USDC}


def test_events_are_read_in_bounded_ranges(world: World, settlement: Settlement) -> None:
    s = settlement
    key, me = wallet_account(world, s, 2 * USDC)
    watcher = withdrawals.Watcher(world.state.db, chain_of(s), CONFIRMATIONS, max_range=3)
    watcher.step()
    v = issue(world, s, me, USDC)
    mine(s, 20)
    use(s, key, v)
    mine(s, CONFIRMATIONS)
    withdrawn = []
    for _ in range(5):
        done = watcher.step()
        withdrawn += done.withdrawn
        if done.caught_up:
            break
    assert done.caught_up and withdrawn == [f"withdrawn:{CHAIN_ID}:{v.id}"]


def test_over_the_balance_is_refused_and_nothing_is_held(world: World, settlement: Settlement) -> None:
    _key, me = wallet_account(world, settlement, 2 * USDC)
    with pytest.raises(service.InsufficientBalance, match=r"2\.00, is less than the 2\.000001 to withdraw"):
        issue(world, settlement, me, 2 * USDC + 1)
    with pytest.raises(UsageError):
        issue(world, settlement, me, 0)
    with world.state.db.session() as session:
        assert withdrawals.vouchers_of(session, me, CHAIN_ID) == []
    assert balances(world, me) == {"available": 2 * USDC, "held": 0, "out": 0}


def test_an_account_without_a_wallet_or_another_wallet_is_refused(
    world: World, settlement: Settlement
) -> None:
    with world.state.db.session() as session:
        service.credit(session, world.consumer, USDC)
    with pytest.raises(RefusedError, match='account "bob" has no wallet') as caught:
        issue(world, settlement, world.consumer, USDC)
    assert caught.value.hint is not None and "mcpz login --wallet" in caught.value.hint
    key, me = wallet_account(world, settlement, USDC)
    with pytest.raises(RefusedError, match=f"pays its wallet {key.address}, not"):
        issue(world, settlement, me, USDC, address=settlement.user.address)
    assert issue(world, settlement, me, USDC, address=key.address.lower()).address == key.address


def test_no_operator_key_is_refused(world: World, settlement: Settlement) -> None:
    _key, me = wallet_account(world, settlement, USDC)
    with world.state.db.session() as session:
        account = accounts.account_by_id(session, me)
        with pytest.raises(RefusedError, match="no settlement operator key"):
            withdrawals.issue(session, account, USDC, None, domain_of(settlement), 0, ttl=TTL)


def test_another_wallet_cannot_use_your_voucher(world: World, settlement: Settlement) -> None:
    s = settlement
    key, me = wallet_account(world, s, 3 * USDC)
    v = issue(world, s, me, 3 * USDC)
    thief = s.new_account()
    # The contract hashes msg.sender into the voucher: another sender recovers another signer.
    use_refused(s, "NotOperatorSignature", thief, v)
    assert s.balance(thief.address) == 0
    use(s, key, v)
    assert s.balance(key.address) == 3 * USDC


def test_a_withdrawal_matching_no_voucher_is_reported_not_settled(
    world: World, settlement: Settlement
) -> None:
    s = settlement
    key, me = wallet_account(world, s, 2 * USDC)
    v = issue(world, s, me, USDC)
    watcher = withdrawals.Watcher(world.state.db, chain_of(s), CONFIRMATIONS)
    watcher.step()
    # Signed with the operator's key but never recorded here (say, by another registry's database).
    stray = withdrawals.sign_voucher(s.operator, domain_of(s), key.address, USDC, 4242, v.expiry)
    s.send(s.contract.functions.withdraw(USDC, 4242, v.expiry, bytes.fromhex(stray[2:])), key)
    # And one with this voucher's nonce for another amount.
    other = withdrawals.sign_voucher(s.operator, domain_of(s), key.address, USDC // 2, v.id, v.expiry)
    s.send(s.contract.functions.withdraw(USDC // 2, v.id, v.expiry, bytes.fromhex(other[2:])), key)
    mine(s, CONFIRMATIONS)
    done = watcher.step()
    assert done.withdrawn == [] and len(done.unmatched) == 2
    assert state_of(world, v.id) == VOUCHER_ISSUED
    assert balances(world, me) == {"available": USDC, "held": USDC, "out": 0}


def test_two_watchers_at_once_settle_each_voucher_once(world: World, settlement: Settlement) -> None:
    s = settlement
    key, me = wallet_account(world, s, 5 * USDC)
    used = issue(world, s, me, 2 * USDC)
    unused = issue(world, s, me, USDC)
    use(s, key, used)
    s.anvil.set_next_timestamp(unused.expiry + 1)
    mine(s, CONFIRMATIONS)
    watchers = [withdrawals.Watcher(world.state.db, chain_of(s), CONFIRMATIONS) for _ in range(2)]
    results: list[withdrawals.Watched] = []
    errors: list[BaseException] = []

    def run(watcher: withdrawals.Watcher) -> None:
        try:
            results.append(watcher.step())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in watchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(k for r in results for k in r.withdrawn) == [f"withdrawn:{CHAIN_ID}:{used.id}"]
    assert sorted(k for r in results for k in r.expired) == [f"withdraw-expired:{CHAIN_ID}:{unused.id}"]
    assert balances(world, me) == {"available": 3 * USDC, "held": 0, "out": 2 * USDC}
