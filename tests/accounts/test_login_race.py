"""Two (or more) first sign-ins of one wallet at the same moment: each gets a session, one account."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import httpx2
from conftest import LiveRegistry
from eth_account import Account
from gitutil import api

from mcpz.client.models import Challenge
from mcpz.client.signin import login_message
from mcpz.keys import siwe

CAROL = Account.from_key("0x" + "c4" * 32)
AT_ONCE = 12


def test_concurrent_first_logins_of_one_wallet_all_succeed(registry: LiveRegistry) -> None:
    # Every sign-in has its own nonce and signed message, made beforehand; then all are posted at once.
    bodies = []
    for _ in range(AT_ONCE):
        answer = api(registry, "/v1/auth/nonce", method="POST", json={"address": CAROL.address})
        challenge = Challenge.from_json(answer.json())
        message = login_message(registry.url, CAROL.address, challenge, datetime.now(UTC))
        bodies.append({"message": message.to_text(), "signature": siwe.sign(message, CAROL)})
    start = threading.Barrier(AT_ONCE)
    answers: list[Any] = [None] * AT_ONCE

    def sign_in(i: int) -> None:
        with httpx2.Client(base_url=registry.url, timeout=60) as http:
            start.wait(30)
            answers[i] = http.post("/v1/auth/login", json=bodies[i])

    threads = [threading.Thread(target=sign_in, args=(i,)) for i in range(AT_ONCE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert [a.status_code for a in answers] == [200] * AT_ONCE, [
        a.text for a in answers if a.status_code != 200
    ]
    accounts = {a.json()["account"] for a in answers}
    assert accounts == {CAROL.address.lower()}
    for answer in answers:  # each a working session of that account
        whoami = api(registry, "/v1/whoami", answer.json()["token"])
        assert whoami.status_code == 200 and whoami.json()["account"] == CAROL.address.lower()
