"""A creator's side of payouts, end to end: a live registry's payout job commits a batch on a real
anvil; `mcpz billing payouts --proof` shows the leaf and its proof, `mcpz billing verify-payout`
checks it against the chain alone, `mcpz billing claim` pays the creator's wallet once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chainutil import Miner, Settlement, settlement_registry, user_wallet
from conftest import LiveRegistry

from mcpz import exit_codes
from mcpz.client import chain
from mcpz.client.chain import Leaf
from mcpz.keys.ethkeys import Account, LocalAccount
from registry_server.accounts import service as accounts
from registry_server.billing import ledger, service
from registry_server.db import Database

pytestmark = pytest.mark.slow

USDC = 1_000_000
CONFIRMATIONS = 2


@pytest.fixture
def payout_registry(
    tmp_path: Path, settlement: Settlement, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveRegistry]:
    # The registry runs in this process: it reads the operator key from this environment.
    monkeypatch.setenv("MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY", settlement.operator.key.hex())
    reg = settlement_registry(
        tmp_path / "registry",
        settlement,
        CONFIRMATIONS,
        settlement_payout_interval=0.5,
        settlement_payout_minimum=1,
    )
    yield reg
    reg.stop()


@pytest.fixture
def creator_wallet(monkeypatch: pytest.MonkeyPatch, settlement: Settlement) -> LocalAccount:
    return user_wallet(monkeypatch, settlement)


def earn(reg: LiveRegistry, settlement: Settlement, creator: str, wallet: str, amount: int) -> None:
    """Tokens deposited on chain for a consumer, and the consumer's balance moved to the creator's
    available earnings (as rated, matured calls would move it)."""
    reg.account("dora")
    settlement.deposit(settlement.user, "dora", amount)
    db = Database(reg.database_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            with db.session() as session:
                dora = accounts.account_by_name(session, "dora")
                if service.balance_of(session, dora.id).available >= amount:
                    break
            assert time.monotonic() < deadline, "the deposit was not credited"
            settlement.anvil.w3.provider.make_request("anvil_mine", ["0x1"])
            time.sleep(0.1)
        with db.session() as session:
            row = accounts.account_by_name(session, creator)
            row.address = wallet
            service.post(
                session,
                ledger.transfer(
                    f"earned:{creator}", "test-earnings", ledger.consumer_available(dora.id),
                    ledger.creator_available(row.id), amount,
                ),
            )  # fmt: skip
    finally:
        db.dispose()


def test_a_creator_sees_verifies_and_claims_a_payout(
    cli: Any, payout_registry: LiveRegistry, settlement: Settlement, creator_wallet: LocalAccount
) -> None:
    reg = payout_registry
    token = reg.account("cara")
    earn(reg, settlement, "cara", creator_wallet.address, 7 * USDC)
    common = ("--registry", reg.url, "--token", token)
    rpc = ("--rpc", settlement.anvil.rpc_url)
    with Miner(settlement):
        deadline = time.monotonic() + 60
        while True:
            shown = cli("--json", "billing", "payouts", "--proof", *common)
            assert shown.exit_code == 0, shown.stderr
            found = json.loads(shown.stdout)
            if found["payouts"] and found["payouts"][0]["state"] in ("confirmed", "final"):
                break
            assert time.monotonic() < deadline, f"no confirmed payout: {found}"
            time.sleep(0.3)
    payout = found["payouts"][0]
    assert (payout["amount"], payout["address"]) == (7 * USDC, creator_wallet.address)
    assert payout["proof"] is not None and found["contract"] == settlement.contract.address

    verified = cli("--json", "billing", "verify-payout", str(payout["batch_id"]), *common, *rpc)
    assert verified.exit_code == 0, verified.stderr
    check = json.loads(verified.stdout)
    assert check["ok"] and check["committed"] and check["proof_ok"] and not check["claimed"]
    assert check["root_on_chain"] == payout["root"]

    claimed = cli("--json", "billing", "claim", *common, *rpc)
    assert claimed.exit_code == 0, claimed.stderr
    assert json.loads(claimed.stdout)["amount"] == 7 * USDC
    assert settlement.balance(creator_wallet.address) == 7 * USDC

    again = cli("billing", "claim", *common, *rpc)
    assert again.exit_code == 0 and "nothing to claim" in again.stdout
    assert settlement.balance(creator_wallet.address) == 7 * USDC
    after = json.loads(
        cli("--json", "billing", "verify-payout", str(payout["batch_id"]), *common, *rpc).stdout
    )
    assert after["claimed"] is True

    plain = cli("billing", "payouts", *common)
    assert plain.exit_code == 0 and "7.00" in plain.stdout

    missing = cli("billing", "verify-payout", "999", *common, *rpc)
    assert missing.exit_code == exit_codes.USAGE and "no payout in batch 999" in missing.stderr


def test_a_leaf_the_chain_does_not_hold_fails_verification(settlement: Settlement) -> None:
    """verify_payout reads only the chain: a leaf in no committed batch, or with a forged amount, fails."""
    from mcpz.merkle import Leaf as MerkleLeaf
    from mcpz.merkle import MerkleTree, to_hex

    wallet = Account.create()
    leaves = [MerkleLeaf(0, wallet.address, 5 * USDC), MerkleLeaf(1, settlement.user.address, USDC)]
    tree = MerkleTree(leaves)
    proof = tuple(to_hex(p) for p in tree.proof(0))
    url, contract = settlement.anvil.rpc_url, settlement.contract.address
    before = chain.verify_payout(url, contract, Leaf(41, 0, wallet.address, 5 * USDC, proof))
    assert not before.committed and not before.ok
    settlement.mint(settlement.contract.address, 6 * USDC)
    settlement.send(settlement.contract.functions.commitBatch(41, tree.root, 6 * USDC), settlement.operator)
    good = chain.verify_payout(url, contract, Leaf(41, 0, wallet.address, 5 * USDC, proof))
    assert good.ok and good.root == to_hex(tree.root)
    forged = chain.verify_payout(url, contract, Leaf(41, 0, wallet.address, 5 * USDC + 1, proof))
    assert forged.committed and not forged.proof_ok and not forged.ok
