"""x402's relayer nonces across replicas: two registry states on one database (PostgreSQL, and
SQLite) settle payments with one relayer key, each signing at a nonce taken under the database's row
lock, on anvil. No two settlements share a nonce, none takes the operator's, and a settlement
recorded but never broadcast (its replica died in between) is broadcast again by the next one, so
the relayer's later transactions do not wait behind a gap for ever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chainutil import Settlement, settlement_chain

from mcpz.keys import eip3009
from mcpz.keys.ethkeys import LocalAccount
from registry_server.accounts.service import Principal
from registry_server.billing.pricing import Pricing
from registry_server.settings import RegistrySettings
from registry_server.settlement import x402
from registry_server.settlement.x402_desk import PaidCall, X402Desk
from registry_server.state import RegistryState

pytestmark = pytest.mark.slow

PRICE = 7_000
ANONYMOUS = Principal(account_id=0, account_name="", token_id=0, scopes=frozenset({"call"}), expires_at=None)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def replicas(
    request: pytest.FixtureRequest, tmp_path: Path, settlement: Settlement
) -> Iterator[tuple[list[X402Desk], LocalAccount]]:
    """Two replicas' desks on one database, settling with one relayer."""
    url = (
        request.getfixturevalue("postgres_url")
        if request.param == "postgres"
        else f"sqlite:///{tmp_path / 'shared.db'}"
    )
    relayer = settlement.new_account()
    states = [
        RegistryState.open(RegistrySettings.load(data_dir=tmp_path / f"r{i}", env={"MCPZ_DATABASE_URL": url}))
        for i in range(2)
    ]
    desks = [X402Desk(s, x402.Facilitator(settlement_chain(settlement), relayer)) for s in states]
    yield desks, relayer
    for s in states:
        s.close()


def paid_call(desk: X402Desk, s: Settlement) -> PaidCall:
    key = s.new_account()
    s.mint(key.address, PRICE)
    offer = desk.facilitator.offer(PRICE)
    auth = eip3009.Authorization(
        sender=key.address, to=offer.pay_to, value=PRICE, valid_after=0,
        valid_before=int(time.time()) + 300, nonce=eip3009.new_nonce(),
    )  # fmt: skip
    payment = x402.parse(
        {
            "x402Version": 2,
            "accepted": offer.requirement(),
            "payload": {"authorization": auth.to_json(), "signature": eip3009.sign(key, offer.domain, auth)},
        }
    )
    desk.facilitator.verify(offer, payment)
    paid = PaidCall(payment, offer, Pricing(per_call=PRICE, x402=True), ANONYMOUS, "acme/tiny", "1.0.0", "t")
    assert desk._claim(paid)
    return paid


ANSWER = b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'


def test_replicas_sign_at_distinct_nonces_and_a_lost_broadcast_is_sent_again(
    replicas: tuple[list[X402Desk], LocalAccount], settlement: Settlement
) -> None:
    desks, relayer = replicas
    s = settlement
    w3 = s.anvil.w3
    operator_nonce = w3.eth.get_transaction_count(s.operator.address)
    calls = [(desks[i % 2], paid_call(desks[i % 2], s)) for i in range(6)]
    signed: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def settle(desk: X402Desk, paid: PaidCall) -> None:
        try:
            signed.append(desk._sign_and_record(paid, ANSWER))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=settle, args=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    chain = desks[0].facilitator.chain
    for _, raw in signed:
        chain.broadcast(raw)
    assert all(desks[0].facilitator.outcome(tx) is True for tx, _ in signed)
    sent = [w3.eth.get_transaction(tx) for tx, _ in signed]  # type: ignore[arg-type]
    assert sorted(t["nonce"] for t in sent) == list(range(6))  # one each, in a row, whichever replica
    assert {t["from"] for t in sent} == {relayer.address}

    # A replica signs and records one, and dies before broadcasting it ...
    lost_tx, _ = desks[0]._sign_and_record(paid_call(desks[0], s), ANSWER)
    # ... the other replica's next settlement sends it again before its own: neither waits for ever.
    next_tx, next_raw = desks[1]._sign_and_record(paid_call(desks[1], s), ANSWER)
    chain.broadcast(next_raw)
    assert desks[1].facilitator.outcome(lost_tx) is True
    assert desks[1].facilitator.outcome(next_tx) is True
    assert w3.eth.get_transaction_count(relayer.address) == 8
    assert w3.eth.get_transaction_count(s.operator.address) == operator_nonce
