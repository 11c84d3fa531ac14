"""x402 across a registry that dies mid-call: `mcpz registry serve` as its own process, killed
(SIGKILL) after a payment was verified and while its call runs, then started again on the same data
folder and port. The payment's record must not answer "still settling" forever: once it is older
than any call runs it is released (the authorization was never sent) and the payer's retry is
verified afresh, run and settled, charging the price exactly once.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chainutil import CHAIN_ID, Anvil, Settlement, deploy_settlement, start_anvil
from conftest import isolate
from gitutil import api
from meshutil import AGENT, Mesh, until
from registryproc import RegistryProcess, start_restartable
from x402util import Anonymous, pay

from registry_server.settlement.operator import KEY_VAR, RELAYER_KEY_VAR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG"),
]

PRICE = 30_000
CALL_TIMEOUT = 3  # seconds: a record still `verified` is released this long plus 30 s after its claim

TOOLS = '''

import os as _os
import time as _time


@mcp.tool()
def slow(marker: str) -> str:
    """Write the marker, sleep a second, return the marker."""
    with open(_os.path.join(_os.environ["MARKERS"], marker), "a") as out:
        out.write("ran\\n")
    _time.sleep(1.0)
    return marker
'''


@dataclass
class Stack:
    registry: RegistryProcess
    mesh: Mesh
    anvil: Anvil
    chain: Settlement
    markers: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("x402-restart")
    anvil = start_anvil()
    chain = deploy_settlement(anvil)
    markers = tmp / "markers"
    markers.mkdir()
    env = {
        "MCPZ_REGISTRY_HEARTBEAT_INTERVAL": "0.3",
        "MCPZ_REGISTRY_HEARTBEAT_GRACE": "2",
        "MCPZ_REGISTRY_RESYNC_INTERVAL": "1",
        "MCPZ_REGISTRY_PRICE_NOTICE_DAYS": "0",
        "MCPZ_REGISTRY_CALL_TIMEOUT": str(CALL_TIMEOUT),
        "MCPZ_REGISTRY_SETTLEMENT_RPC": anvil.rpc_url,
        "MCPZ_REGISTRY_SETTLEMENT_CHAIN_ID": str(CHAIN_ID),
        "MCPZ_REGISTRY_SETTLEMENT_CONTRACT": chain.contract.address,
        "MCPZ_REGISTRY_SETTLEMENT_CONFIRMATIONS": "1",
        KEY_VAR: chain.operator.key.hex(),
        RELAYER_KEY_VAR: chain.new_account().key.hex(),
    }
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, tmp_path_factory.mktemp("home"))
        registry, reg = start_restartable(tmp, env)
        mesh = Mesh(tmp, reg)
        try:
            mesh.write_agent(tools=TOOLS, env={"MARKERS": str(markers)})
            mesh.serve_one("1.0.0")
            priced = api(reg, f"/v1/billing/plans/{AGENT}", mesh.token, method="PUT",
                         json={"per_call": PRICE, "x402": True})  # fmt: skip
            assert priced.status_code == 200, priced.text
            yield Stack(registry, mesh, anvil, chain, markers)
        finally:
            mesh.close()
            registry.stop()
            anvil.stop()


def post(session: Anonymous, request_id: int, payment: dict[str, Any], marker: str) -> dict[str, Any]:
    params = {"name": "slow", "arguments": {"marker": marker}, "_meta": {"x402/payment": payment}}
    answer = session.http.post(
        session.url, json={"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_a_payment_whose_registry_died_mid_call_is_verified_afresh_on_the_retry(stack: Stack) -> None:
    s = stack
    key = s.chain.new_account()
    s.chain.mint(key.address, 10 * PRICE)
    url = f"{s.registry.url}/mcp/{AGENT}"
    session = Anonymous(url)
    required = session.call("slow", marker="x")["result"]["structuredContent"]
    payment = pay(required, key, payment_id=f"pay_{secrets.token_hex(12)}")
    marker = f"killed-{secrets.token_hex(4)}"
    claimed = time.monotonic()
    lost: list[BaseException] = []

    def doomed() -> None:
        try:
            post(session, 3, payment, marker)
        except BaseException as e:  # the registry died under it
            lost.append(e)

    thread = threading.Thread(target=doomed)
    thread.start()
    until(lambda: (s.markers / marker).exists(), what="the agent to run the paid call")
    s.registry.kill()  # verified, running, never settled: the record stays `verified`
    thread.join(30)
    s.registry.start()
    s.mesh.connected(1)
    s.mesh.settled(1, "1.0.0", timeout=90)
    again = Anonymous(url)
    early = post(again, 4, payment, marker)
    assert early["error"]["code"] == -32023  # it might still run on another replica: not yet released
    assert s.chain.balance(key.address) == 10 * PRICE
    time.sleep(max(0.0, claimed + CALL_TIMEOUT + 30 + 1 - time.monotonic()))
    result = post(again, 5, payment, marker)["result"]
    assert result["content"][0]["text"] == marker
    assert result["_meta"]["x402/payment-response"]["success"] is True
    assert "mcpz/receipt" in result["_meta"]
    assert s.chain.balance(key.address) == 9 * PRICE
    assert (s.markers / marker).read_text().splitlines() == ["ran", "ran"]  # run again, paid once
