"""Deposits on a real anvil, credited to the ledger after confirmations, exactly once; reorganised
deposits never; deposits naming no account kept and reported. The first, the reorganisation and the
live registry run on the embedded EVM too (`either_settlement`): the watcher reads it as it reads anvil."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from billingutil import World
from chainutil import CHAIN_ID, Settlement, _free_port, settlement_chain
from conftest import start_registry
from gitutil import api
from meshutil import until

from mcpz.errors import NetworkError, UsageError
from registry_server.billing import ledger, service
from registry_server.db import Database
from registry_server.settlement import deposits
from registry_server.settlement.chain import SettlementChain
from registry_server.settlement.models import CREDITED, DROPPED, SEEN, UNKNOWN_ACCOUNT, Cursor

pytestmark = pytest.mark.slow

USDC = 1_000_000
CONFIRMATIONS = 3


@pytest.fixture
def world(billing_world: World) -> World:
    return billing_world


chain_of = settlement_chain


def mine(s: Settlement, blocks: int) -> None:
    s.anvil.w3.provider.make_request("anvil_mine", [hex(blocks)])


def snapshot(s: Settlement) -> str:
    return str(s.anvil.w3.provider.make_request("evm_snapshot", [])["result"])


def revert(s: Settlement, snap: str) -> None:
    assert s.anvil.w3.provider.make_request("evm_revert", [snap])["result"] is True


def available(w: World, account_id: int) -> int:
    with w.state.db.session() as session:
        return service.balance_of(session, account_id).available


def states(w: World) -> list[str]:
    with w.state.db.session() as session:
        return [d.state for d in deposits.deposits_of(session, CHAIN_ID)]


def scan(w: World, s: Settlement, **kw: Any) -> deposits.Scanned:
    return deposits.scan(w.state.db, chain_of(s), CONFIRMATIONS, **kw)


def test_a_deposit_is_credited_once_after_its_confirmations(
    world: World, either_settlement: Settlement
) -> None:
    settlement = either_settlement
    settlement.deposit(settlement.user, "bob", 5 * USDC)  # its block is its first confirmation
    first = scan(world, settlement)
    assert first.seen == 1 and first.credited == []
    assert states(world) == [SEEN] and available(world, world.consumer) == 0
    mine(settlement, CONFIRMATIONS - 2)
    assert scan(world, settlement).credited == []
    assert available(world, world.consumer) == 0
    mine(settlement, 1)
    done = scan(world, settlement)
    assert len(done.credited) == 1 and done.credited[0].startswith(f"deposit:{CHAIN_ID}:0x")
    assert available(world, world.consumer) == 5 * USDC
    mine(settlement, 5)
    assert scan(world, settlement).credited == []
    assert available(world, world.consumer) == 5 * USDC
    assert states(world) == [CREDITED]
    with world.state.db.session() as session:
        assert service.balances(session, [ledger.CHAIN_DEPOSITS]) == {ledger.CHAIN_DEPOSITS: -5 * USDC}
        assert service.verify_ledger(session).ok


def test_two_scanners_at_once_credit_once(world: World, settlement: Settlement) -> None:
    for amount in (1, 2, 3):
        settlement.deposit(settlement.user, "bob", amount * USDC)
    mine(settlement, CONFIRMATIONS)
    results: list[deposits.Scanned] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(scan(world, settlement))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(len(r.credited) for r in results) == 3
    assert available(world, world.consumer) == 6 * USDC
    assert states(world) == [CREDITED] * 3


def test_a_bounded_range_catches_up_over_several_scans(world: World, settlement: Settlement) -> None:
    mine(settlement, 10)
    settlement.deposit(settlement.user, "bob", USDC)
    mine(settlement, CONFIRMATIONS)
    head = settlement.anvil.w3.eth.block_number
    calls, credited = 0, 0
    while True:
        calls += 1
        result = scan(world, settlement, max_range=4)
        assert result.scanned_to - (result.rewound_to or 0) <= head
        credited += len(result.credited)
        if result.caught_up:
            break
    assert calls == (head + 1 + 3) // 4  # blocks 0..head, four a call
    assert credited == 1 and available(world, world.consumer) == USDC


def test_a_reorganised_deposit_is_never_credited(world: World, either_settlement: Settlement) -> None:
    settlement = either_settlement
    before = snapshot(settlement)
    settlement.deposit(settlement.user, "bob", 7 * USDC)
    assert scan(world, settlement).seen == 1
    revert(settlement, before)  # the deposit's blocks are gone; new ones take their heights
    mine(settlement, CONFIRMATIONS + 2)
    result = scan(world, settlement)
    assert len(result.dropped) == 1 and result.rewound_to is not None
    assert states(world) == [DROPPED]
    mine(settlement, 10)
    assert scan(world, settlement).credited == []
    assert available(world, world.consumer) == 0
    # A deposit made on the chain as it now is still counts.
    settlement.deposit(settlement.user, "bob", 2 * USDC)
    mine(settlement, CONFIRMATIONS)
    assert len(scan(world, settlement).credited) == 1
    assert available(world, world.consumer) == 2 * USDC


def test_a_deposit_in_blocks_rescanned_after_a_reorganisation_is_found(
    world: World, settlement: Settlement
) -> None:
    s = settlement
    s.mint(s.user.address, 4 * USDC)
    s.send(s.token.functions.approve(s.contract.address, 4 * USDC), s.user)
    before = snapshot(s)
    mine(s, CONFIRMATIONS - 1)
    scanned = scan(world, s).scanned_to  # the cursor is at a height the new chain reuses
    revert(s, before)
    receipt = s.send(s.contract.functions.deposit("bob", 4 * USDC), s.user)
    assert receipt["blockNumber"] <= scanned  # below the cursor: found only if it moves back
    mine(s, CONFIRMATIONS)
    result = scan(world, s)
    assert result.rewound_to is not None and result.rewound_to < receipt["blockNumber"]
    assert len(result.credited) == 1
    assert available(world, world.consumer) == 4 * USDC


def test_a_deposit_mined_again_after_a_reorganisation_is_credited_once(
    world: World, settlement: Settlement
) -> None:
    s = settlement
    s.mint(s.user.address, 6 * USDC)
    s.send(s.token.functions.approve(s.contract.address, 6 * USDC), s.user)
    w3 = s.anvil.w3
    tx = s.contract.functions.deposit("bob", 6 * USDC).build_transaction(
        {"from": s.user.address, "nonce": w3.eth.get_transaction_count(s.user.address), "chainId": CHAIN_ID}
    )
    raw = s.user.sign_transaction(tx).raw_transaction
    before = snapshot(s)
    first = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw))
    assert scan(world, s).seen == 1
    revert(s, before)
    mine(s, 1)  # the same transaction lands one block later, in a block of another hash
    again = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw))
    assert again["transactionHash"] == first["transactionHash"]
    assert again["blockNumber"] == first["blockNumber"] + 1
    mine(s, CONFIRMATIONS)
    result = scan(world, s)
    assert len(result.dropped) == 1 and len(result.credited) == 1
    assert result.dropped == result.credited  # the same (transaction, log index): one deposit
    with world.state.db.session() as session:
        (row,) = deposits.deposits_of(session, CHAIN_ID)
        assert (row.state, row.block_number) == (CREDITED, again["blockNumber"])
    assert available(world, world.consumer) == 6 * USDC


def test_blocks_before_the_start_block_are_not_read(world: World, settlement: Settlement) -> None:
    settlement.deposit(settlement.user, "bob", USDC)
    start = settlement.anvil.w3.eth.block_number + 1
    settlement.deposit(settlement.user, "bob", 2 * USDC)
    mine(settlement, CONFIRMATIONS)
    result = scan(world, settlement, start_block=start)
    assert len(result.credited) == 1
    assert available(world, world.consumer) == 2 * USDC


def test_a_deposit_to_an_unknown_account_is_kept_and_reported(world: World, settlement: Settlement) -> None:
    settlement.deposit(settlement.user, "nobody-here", 3 * USDC)
    mine(settlement, CONFIRMATIONS)
    result = scan(world, settlement)
    assert result.credited == [] and len(result.unknown) == 1
    with world.state.db.session() as session:
        (kept,) = deposits.deposits_of(session, CHAIN_ID, UNKNOWN_ACCOUNT)
        assert (kept.account, kept.amount, kept.account_id) == ("nobody-here", 3 * USDC, None)
        assert kept.sender == settlement.user.address
        assert service.balances(session, [ledger.CHAIN_DEPOSITS]) == {ledger.CHAIN_DEPOSITS: 0}


# --- a live registry watching the chain -------------------------------------------------------


def test_a_live_registry_credits_a_deposit_to_the_balance(
    tmp_path: Path, either_settlement: Settlement
) -> None:
    settlement = either_settlement
    reg = start_registry(
        tmp_path / "registry",
        settlement_rpc=settlement.anvil.rpc_url,
        settlement_chain_id=CHAIN_ID,
        settlement_contract=settlement.contract.address,
        settlement_confirmations=CONFIRMATIONS,
        settlement_poll_interval=0.1,
    )
    try:
        token = reg.account("carol")
        info = api(reg, "/v1/billing/settlement").json()
        assert info == {
            "chain_id": CHAIN_ID,
            "contract": settlement.contract.address,
            "token": settlement.token.address,
            "decimals": 6,
            "confirmations": CONFIRMATIONS,
        }
        settlement.deposit(settlement.user, "carol", 9 * USDC)

        def balance() -> int:
            answer = api(reg, "/v1/billing/balance", token)
            assert answer.status_code == 200, answer.text
            return int(answer.json()["available"])

        # Seen, not yet confirmed: not spendable.
        until(lambda: _states(reg) == [SEEN], what="the deposit seen")
        assert balance() == 0
        mine(settlement, CONFIRMATIONS - 1)
        assert until(balance, what="the deposit credited") == 9 * USDC
        mine(settlement, 3)
        until(lambda: _cursor(reg) >= settlement.anvil.w3.eth.block_number, what="the cursor at the head")
        assert balance() == 9 * USDC
    finally:
        reg.stop()


def test_settlement_is_404_when_not_configured(sqlite_registry: Any) -> None:
    answer = api(sqlite_registry, "/v1/billing/settlement")
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "settlement is not configured on this registry"


def _states(reg: Any) -> list[str]:
    db = Database(reg.database_url)
    try:
        with db.session() as session:
            return [d.state for d in deposits.deposits_of(session, CHAIN_ID)]
    finally:
        db.dispose()


def _cursor(reg: Any) -> int:
    db = Database(reg.database_url)
    try:
        with db.session() as session:
            cursor = session.get(Cursor, CHAIN_ID)
            return -1 if cursor is None else cursor.block
    finally:
        db.dispose()


def test_chain_failures_are_one_line_errors(settlement: Settlement) -> None:
    down = SettlementChain(
        f"http://127.0.0.1:{_free_port()}", settlement.contract.address, CHAIN_ID, timeout=2
    )
    with pytest.raises(NetworkError, match="failed on eth_blockNumber") as caught:
        down.head()
    assert "\n" not in str(caught.value)
    wrong = SettlementChain(settlement.anvil.rpc_url, settlement.contract.address, 1)
    with pytest.raises(UsageError, match="is chain 31337, not settlement_chain_id 1"):
        wrong.check()
    not_a_contract = SettlementChain(settlement.anvil.rpc_url, settlement.user.address, CHAIN_ID)
    with pytest.raises(UsageError, match="could not answer token"):
        not_a_contract.token()
    with pytest.raises(UsageError, match="is not an address"):
        SettlementChain(settlement.anvil.rpc_url, "0x1234", CHAIN_ID)


def test_a_registry_whose_chain_is_down_answers_503_and_keeps_serving(tmp_path: Path) -> None:
    reg = start_registry(
        tmp_path / "registry",
        settlement_rpc=f"http://127.0.0.1:{_free_port()}",
        settlement_chain_id=CHAIN_ID,
        settlement_contract="0x" + "11" * 20,
        settlement_poll_interval=0.1,
    )
    try:
        answer = api(reg, "/v1/billing/settlement")
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "chain_unavailable"
        token = reg.account("dave")
        assert api(reg, "/v1/billing/balance", token).json()["available"] == 0
    finally:
        reg.stop()


def test_an_api_key_in_the_rpc_url_stays_out_of_errors(settlement: Settlement) -> None:
    url = f"http://user:pass@127.0.0.1:{_free_port()}/v3/secret-api-key?token=hidden"
    down = SettlementChain(url, settlement.contract.address, CHAIN_ID, timeout=2)
    with pytest.raises(NetworkError) as caught:
        down.head()
    shown = str(caught.value) + repr(down)
    assert "secret-api-key" not in shown and "hidden" not in shown and "pass" not in shown
    assert "http://127.0.0.1:" in shown
