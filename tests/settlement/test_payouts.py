"""The payout job on a real anvil: batches built from creators' earnings, committed once, claimed by
every creator with the proofs the registry hands out, a second claim refused; kill -9 of the job at
each step and a restart pay every creator exactly once and leave the ledger equal to the chain; a
stuck commit replaced at the same nonce; a batch past the contract's unallocated balance waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from billingutil import World, open_world
from chainutil import CHAIN_ID, Settlement, settlement_chain

from mcpz.keys.ethkeys import Account, LocalAccount
from registry_server.accounts import service as accounts
from registry_server.accounts.models import Account as AccountRow
from registry_server.billing import ledger, service
from registry_server.settlement import deposits, payouts
from registry_server.settlement.batches import BatchState, Policy
from registry_server.settlement.models import PayoutAttempt, PayoutBatch
from registry_server.settlement.operator import Operator
from registry_server.settlement.reconcile import reconcile

pytestmark = pytest.mark.slow

USDC = 1_000_000
CONFIRMATIONS = 2
EARNINGS = (3 * USDC, 5 * USDC + 1, 7 * USDC, 11 * USDC, 1 * USDC)
# anvil's `finalized` block trails the head by two epochs of 32 slots.
TO_FINAL = 2 * 32 + 1


@dataclass
class Creators:
    ids: list[int]
    wallets: list[LocalAccount]


@pytest.fixture
def world(tmp_path: Path) -> Any:
    w = open_world(tmp_path / "registry", None)
    yield w
    w.state.close()


chain_of = settlement_chain


def operator_of(s: Settlement) -> Operator:
    return Operator(s.operator, "env")


def mine(s: Settlement, blocks: int) -> None:
    s.anvil.w3.provider.make_request("anvil_mine", [hex(blocks)])


def policy(stuck_after: float = 300.0) -> Policy:
    return Policy(confirmations=CONFIRMATIONS, stuck_after=stuck_after)


def fund_and_earn(world: World, s: Settlement, earnings: tuple[int, ...] = EARNINGS) -> Creators:
    """Bob deposits on chain what the creators earn (credited after confirmations), and his balance
    moves to the creators' available earnings, as rated and matured calls would move it."""
    total = sum(earnings)
    s.deposit(s.user, "bob", total)
    mine(s, CONFIRMATIONS)
    assert deposits.scan(world.state.db, chain_of(s), CONFIRMATIONS).credited
    wallets: list[LocalAccount] = [Account.create() for _ in earnings]
    ids = []
    with world.state.db.session() as session:
        for i, (wallet, amount) in enumerate(zip(wallets, earnings, strict=True)):
            row = accounts.create_account(session, f"creator{i}")
            row.address = wallet.address
            ids.append(row.id)
            session.flush()
            service.post(
                session,
                ledger.transfer(
                    f"earned:{i}", "test-earnings", ledger.consumer_available(world.consumer),
                    ledger.creator_available(row.id), amount,
                ),
            )  # fmt: skip
    for wallet in wallets:
        s.anvil.fund(wallet.address)
    return Creators(ids, wallets)


def drive_to_final(world: World, s: Settlement, *, build: bool = True) -> payouts.Progress:
    """Run the job as the schedule would, mining blocks between runs, until the batch is final."""
    progress = None
    for _ in range(10):
        progress = payouts.run(world.state.db, chain_of(s), operator_of(s), _settings(world), build_new=build)
        assert progress is not None
        if progress.final:
            return progress
        mine(s, TO_FINAL)
    raise AssertionError(f"the batch did not become final: {progress}")


def _settings(world: World) -> Any:
    return world.settings(
        settlement_rpc="http://unused", settlement_chain_id=CHAIN_ID, settlement_contract="0x" + "1" * 40,
        settlement_confirmations=CONFIRMATIONS, settlement_payout_minimum=1,
    )  # fmt: skip


def claim_all(world: World, s: Settlement, creators: Creators) -> None:
    with world.state.db.session() as session:
        for account_id, wallet in zip(creators.ids, creators.wallets, strict=True):
            for p in payouts.payouts_of(session, CHAIN_ID, account_id):
                proof = [bytes.fromhex(h[2:]) for h in p.proof]
                s.send(s.contract.functions.claim(p.batch_id, p.index, p.address, p.amount, proof), wallet)


def commits_on_chain(s: Settlement) -> list[Any]:
    return list(s.contract.events.BatchCommitted().get_logs(from_block=0))


def test_a_batch_is_committed_once_and_every_creator_claims_once(
    world: World, settlement: Settlement
) -> None:
    creators = fund_and_earn(world, settlement)
    progress = drive_to_final(world, settlement)
    assert progress.batch_id == 1
    commits = commits_on_chain(settlement)
    assert [c["args"]["batchId"] for c in commits] == [1]
    assert commits[0]["args"]["total"] == sum(EARNINGS)
    with world.state.db.session() as session:
        batch = session.get(PayoutBatch, (CHAIN_ID, 1))
        assert batch is not None and batch.state == BatchState.FINAL.value and batch.leaves == len(EARNINGS)
        assert service.balances(session, [ledger.CHAIN_PAYOUTS]) == {ledger.CHAIN_PAYOUTS: sum(EARNINGS)}
        for account_id in creators.ids:
            assert (
                service.balances(session, [ledger.creator_available(account_id)]).get(
                    ledger.creator_available(account_id), 0
                )
                == 0
            )
        assert service.verify_ledger(session).ok
    claim_all(world, settlement, creators)
    for wallet, amount in zip(creators.wallets, EARNINGS, strict=True):
        assert settlement.balance(wallet.address) == amount
    # A second claim of a paid leaf is refused by the contract.
    with world.state.db.session() as session:
        first = payouts.payouts_of(session, CHAIN_ID, creators.ids[0])[0]
    proof = [bytes.fromhex(h[2:]) for h in first.proof]
    call = settlement.contract.functions.claim(
        first.batch_id, first.index, first.address, first.amount, proof
    )
    settlement.reverts("AlreadyClaimed", call, creators.wallets[0])
    # Nothing is owed any more: the next run builds nothing.
    assert (
        payouts.run(world.state.db, chain_of(settlement), operator_of(settlement), _settings(world)) is None
    )
    mine(settlement, CONFIRMATIONS)
    report = reconcile(world.state.db, chain_of(settlement), CONFIRMATIONS)
    assert report.ok, report
    assert report.claimed == sum(EARNINGS)


def test_earnings_that_arrive_later_go_in_the_next_batch(world: World, settlement: Settlement) -> None:
    creators = fund_and_earn(world, settlement, (2 * USDC, 4 * USDC))
    drive_to_final(world, settlement)
    # More earnings for the first creator after the first batch was built.
    settlement.deposit(settlement.user, "bob", 3 * USDC)
    mine(settlement, CONFIRMATIONS)
    deposits.scan(world.state.db, chain_of(settlement), CONFIRMATIONS)
    with world.state.db.session() as session:
        service.post(
            session,
            ledger.transfer(
                "earned:later", "test-earnings", ledger.consumer_available(world.consumer),
                ledger.creator_available(creators.ids[0]), 3 * USDC,
            ),
        )  # fmt: skip
    second = drive_to_final(world, settlement)
    assert second.batch_id == 2
    claim_all(world, settlement, creators)
    assert settlement.balance(creators.wallets[0].address) == 5 * USDC
    assert settlement.balance(creators.wallets[1].address) == 4 * USDC
    assert reconcile(world.state.db, chain_of(settlement), 1).ok


def test_creators_without_a_wallet_or_below_the_minimum_wait(world: World, settlement: Settlement) -> None:
    creators = fund_and_earn(world, settlement, (2 * USDC, 4 * USDC))
    with world.state.db.session() as session:
        row = session.get(AccountRow, creators.ids[1])
        assert row is not None
        row.address = None
        plan = payouts.plan(session, 3 * USDC)
        assert plan.payable == [] and plan.no_wallet == [creators.ids[1]]
        plan = payouts.plan(session, 1 * USDC)
        assert [c.account_id for c in plan.payable] == [creators.ids[0]]


def test_a_batch_past_the_unallocated_balance_waits_for_deposits(
    world: World, settlement: Settlement
) -> None:
    # Earnings from operator credit: the contract holds no tokens for them.
    wallet: LocalAccount = Account.create()
    with world.state.db.session() as session:
        row = accounts.create_account(session, "creator")
        row.address = wallet.address
        session.flush()
        service.post(
            session,
            ledger.transfer(
                "earned", "test-earnings", ledger.PLATFORM_CREDIT, ledger.creator_available(row.id), 4 * USDC
            ),
        )
    op = operator_of(settlement)
    nonce_before = settlement.anvil.w3.eth.get_transaction_count(op.address)
    progress = payouts.run(world.state.db, chain_of(settlement), op, _settings(world))
    assert progress is not None and progress.state == BatchState.PENDING.value
    assert "unallocated" in progress.note and "needs 4000000" in progress.note
    assert settlement.anvil.w3.eth.get_transaction_count(op.address) == nonce_before
    assert commits_on_chain(settlement) == []
    # Tokens arrive (a deposit kept for an unknown account is unallocated too): the batch goes on.
    settlement.deposit(settlement.user, "someone-else", 4 * USDC)
    assert drive_to_final(world, settlement, build=False).final


def test_two_drivers_at_once_commit_the_batch_once(world: World, settlement: Settlement) -> None:
    fund_and_earn(world, settlement)
    batch_id = payouts.build(world.state.db, CHAIN_ID, settlement.contract.address, 1)
    assert batch_id == 1
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            payouts.drive(world.state.db, chain_of(settlement), operator_of(settlement), 1, policy())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=drive) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(commits_on_chain(settlement)) == 1
    assert drive_to_final(world, settlement, build=False).final
    assert len(commits_on_chain(settlement)) == 1


def test_a_stuck_commit_is_replaced_at_the_same_nonce(world: World, settlement: Settlement) -> None:
    fund_and_earn(world, settlement)
    w3 = settlement.anvil.w3
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        first = payouts.run(world.state.db, chain_of(settlement), operator_of(settlement), _settings(world))
        assert first is not None and first.steps[-1] == "Wait"
        again = payouts.drive(
            world.state.db, chain_of(settlement), operator_of(settlement), 1, policy(stuck_after=0.0)
        )
        assert "Replace" in again.steps
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
    with world.state.db.session() as session:
        attempts = session.query(PayoutAttempt).order_by(PayoutAttempt.sent_us).all()
        assert len(attempts) == 2
        assert attempts[1].max_fee >= attempts[0].max_fee * 1125 // 1000
        batch = session.get(PayoutBatch, (CHAIN_ID, 1))
        assert batch is not None and batch.nonce is not None
    mine(settlement, 1)
    assert drive_to_final(world, settlement, build=False).final
    # Both were signed at one nonce: exactly one of them is in a block, the replacement.
    mined = [a.tx_hash for a in attempts if chain_of(settlement).receipt(a.tx_hash) is not None]
    assert mined == [attempts[1].tx_hash]
    assert len(commits_on_chain(settlement)) == 1


def test_a_commit_reorganised_away_is_sent_again(world: World, settlement: Settlement) -> None:
    fund_and_earn(world, settlement)
    w3 = settlement.anvil.w3
    snap = w3.provider.make_request("evm_snapshot", [])["result"]
    progress = payouts.run(world.state.db, chain_of(settlement), operator_of(settlement), _settings(world))
    assert progress is not None
    with world.state.db.session() as session:
        batch = session.get(PayoutBatch, (CHAIN_ID, 1))
        assert batch is not None and batch.receipt_tx is not None
    assert w3.provider.make_request("evm_revert", [snap])["result"] is True
    assert commits_on_chain(settlement) == []
    assert drive_to_final(world, settlement, build=False).final
    assert len(commits_on_chain(settlement)) == 1


# --- kill -9 at each step ----------------------------------------------------------------------


def _cli_env(world: World, s: Settlement, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "MCPZ_REGISTRY_SETTLEMENT_RPC": s.anvil.rpc_url,
        "MCPZ_REGISTRY_SETTLEMENT_CHAIN_ID": str(CHAIN_ID),
        "MCPZ_REGISTRY_SETTLEMENT_CONTRACT": s.contract.address,
        "MCPZ_REGISTRY_SETTLEMENT_CONFIRMATIONS": str(CONFIRMATIONS),
        "MCPZ_REGISTRY_SETTLEMENT_PAYOUT_MINIMUM": "1",
        "MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY": s.operator.key.hex(),
        **extra,
    }
    env.pop("MCPZ_TEST_PAYOUT_KILL", None)
    env.update(extra)
    return env


def _payouts_cli(world: World, s: Settlement, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpz", "--json", "registry", "payouts", *args, "--data", str(world.data_dir)],
        env=_cli_env(world, s, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("point", ["built", "signed", "sent", "mined", "confirmed", "final"])
def test_kill_9_at_each_step_then_restart_pays_every_creator_exactly_once(
    world: World, settlement: Settlement, point: str
) -> None:
    creators = fund_and_earn(world, settlement)
    # The job runs until it reaches `point`, mining between runs, and is killed there.
    for _ in range(6):
        done = _payouts_cli(world, settlement, "run", MCPZ_TEST_PAYOUT_KILL=point)
        if done.returncode == -9:
            break
        assert done.returncode == 0, done.stderr
        mine(settlement, TO_FINAL)
    else:
        raise AssertionError(f"the job never reached {point}")
    # Restarted: the job finishes the batch it had, and builds no second one.
    for _ in range(6):
        done = _payouts_cli(world, settlement, "run")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        if shown["batch"] is None or shown["batch"]["state"] == "final":
            break
        mine(settlement, TO_FINAL)
    assert [c["args"]["batchId"] for c in commits_on_chain(settlement)] == [1]
    with world.state.db.session() as session:
        assert [b.state for b in session.query(PayoutBatch).all()] == ["final"]
        assert service.verify_ledger(session).ok
    claim_all(world, settlement, creators)
    for wallet, amount in zip(creators.wallets, EARNINGS, strict=True):
        assert settlement.balance(wallet.address) == amount
    mine(settlement, CONFIRMATIONS)
    reconciled = _payouts_cli(world, settlement, "reconcile")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    report = json.loads(reconciled.stdout)
    assert report["ok"] and all(r["difference"] == 0 for r in report["rows"])
