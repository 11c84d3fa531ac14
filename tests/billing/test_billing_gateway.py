"""Paid calls end to end: a live registry, a real node, a real agent process that writes down every
call it receives. A refused call never reaches it; a failed call is not charged; a spend cap holds
under 20 concurrent callers; each paid call's result carries a receipt that verifies."""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from gitutil import api
from meshutil import AGENT, FAST, Mesh, until

from mcpz.keys import receipts
from registry_server.billing import service
from registry_server.db import Database

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and PR_SET_PDEATHSIG"),
]

PRICE = 2_000  # 0.002 USDC
REFUSED = -32020

# The agent appends each call's text to a file: what reached it, independent of the registry.
LOGGING_TOOL = '''

import os as _os


@mcp.tool()
def note(text: str) -> str:
    """Write the text down and return it."""
    with open(_os.environ.get("CALL_LOG", "/dev/null"), "a") as log:
        log.write(text + "\\n")
    return text
'''


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Path]]:
    from conftest import start_registry

    tmp = tmp_path_factory.mktemp("billing-gateway")
    log = tmp / "calls.log"
    log.touch()
    reg = start_registry(tmp / "registry", **FAST, price_notice_days=0.0, usage_flush_interval=0.2)
    mesh = Mesh(tmp, reg)
    mesh.write_agent(tools=LOGGING_TOOL, env={"CALL_LOG": str(log)})
    try:
        mesh.serve_one("1.0.0")
        priced = api(reg, f"/v1/billing/plans/{AGENT}", mesh.token, method="PUT", json={"per_call": PRICE})
        assert priced.status_code == 200, priced.text
        yield mesh, log
    finally:
        mesh.close()
        reg.stop()


class McpSession:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.http = httpx2.Client(
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
            timeout=30,
        )
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        answer = self.http.post(url, json=init)
        assert answer.status_code == 200, answer.text
        self.http.headers["Mcp-Session-Id"] = answer.headers["mcp-session-id"]
        self.next = 1

    def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        self.next += 1
        params = {"name": tool, "arguments": arguments}
        answer = self.http.post(
            self.url, json={"jsonrpc": "2.0", "id": self.next, "method": "tools/call", "params": params}
        )
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


def consumer(mesh: Mesh, credit: int = 0) -> tuple[str, int]:
    """A new account with a call token, credited `credit` units (as the operator would)."""
    name = f"buyer-{secrets.token_hex(3)}"
    token = mesh.reg.account(name, "read,call,admin")
    db = Database(mesh.reg.database_url)
    try:
        with db.session() as session:
            account_id = service.account_id_of(session, name)
            if credit:
                service.credit(session, account_id, credit, reason="test")
    finally:
        db.dispose()
    return token, account_id


def calls_logged(log: Path) -> list[str]:
    return log.read_text().splitlines()


def balance(mesh: Mesh, token: str) -> dict[str, Any]:
    answer = api(mesh.reg, "/v1/billing/balance", token)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def endpoint(mesh: Mesh) -> str:
    return f"{mesh.reg.url}/mcp/{AGENT}"


def test_a_call_without_balance_is_refused_before_the_agent_runs(paid: tuple[Mesh, Path]) -> None:
    mesh, log = paid
    token, _ = consumer(mesh)
    marker = f"refused-{secrets.token_hex(4)}"
    answer = McpSession(endpoint(mesh), token).call("note", text=marker)
    error = answer["error"]
    assert error["code"] == REFUSED
    assert "balance does not cover" in error["message"] and "0.002 USDC" in error["message"]
    assert error["data"]["fix"] and error["data"]["agent"] == AGENT
    # A free tool list still works, and nothing reached the agent.
    assert marker not in calls_logged(log)
    assert balance(mesh, token)["available"] == 0


def test_paid_calls_are_charged_once_split_and_carry_receipts(paid: tuple[Mesh, Path]) -> None:
    mesh, log = paid
    token, _ = consumer(mesh, credit=1_000_000)
    creator_before = balance(mesh, mesh.token)["earnings"]["pending"]
    session = McpSession(endpoint(mesh), token)
    results = [session.call("note", text=f"paid-{i}")["result"] for i in range(3)]
    assert [f"paid-{i}" for i in range(3)] == [t for t in calls_logged(log) if t.startswith("paid-")]
    key = api(mesh.reg, "/v1/billing/receipt-key").json()["key"]
    events = set()
    for i, result in enumerate(results):
        receipt = receipts.verify_result(result, key, {"name": "note", "arguments": {"text": f"paid-{i}"}})
        assert (receipt.agent, receipt.tool, receipt.price, receipt.currency) == (
            AGENT,
            "note",
            PRICE,
            "USDC",
        )
        events.add(receipt.event)
        tampered = json.loads(json.dumps(result))
        tampered["content"][0]["text"] = "forged"
        with pytest.raises(receipts.ReceiptMismatch):
            receipts.verify_result(tampered, key)
    assert len(events) == 3
    mine = balance(mesh, token)
    assert mine["available"] + mine["reserved"] == 1_000_000 - 3 * PRICE
    creator = balance(mesh, mesh.token)["earnings"]["pending"] - creator_before
    assert creator == 3 * PRICE * 8 // 10  # the platform keeps 20 %
    usage = api(mesh.reg, "/v1/billing/usage", token).json()
    assert (usage["calls"], usage["total"]) == (3, 3 * PRICE)
    assert {c["event"] for c in usage["charges"]} == events


def test_a_failed_call_is_not_charged(paid: tuple[Mesh, Path]) -> None:
    mesh, _ = paid
    token, _ = consumer(mesh, credit=100_000)
    failed = McpSession(endpoint(mesh), token).call("divide", a=1, b=0)
    assert failed["result"]["isError"] is True
    assert "mcpz/receipt" not in (failed["result"].get("_meta") or {})
    mine = balance(mesh, token)
    assert mine["available"] + mine["reserved"] == 100_000
    assert api(mesh.reg, "/v1/billing/usage", token).json()["calls"] == 0


def test_a_spend_cap_holds_under_twenty_concurrent_callers(paid: tuple[Mesh, Path]) -> None:
    mesh, log = paid
    token, _ = consumer(mesh, credit=1_000_000)
    capped = api(
        mesh.reg,
        "/v1/billing/caps",
        token,
        method="PUT",
        json={"period": "day", "amount": 5 * PRICE + PRICE // 2},
    )
    assert capped.status_code == 200, capped.text
    sessions = [McpSession(endpoint(mesh), token) for _ in range(20)]
    answers: list[dict[str, Any]] = []
    marker = secrets.token_hex(4)
    barrier = threading.Barrier(20)

    def one(i: int) -> None:
        barrier.wait()
        answers.append(sessions[i].call("note", text=f"cap-{marker}-{i}"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [a for a in answers if "result" in a]
    refused = [a for a in answers if "error" in a]
    assert len(ok) == 5 and len(refused) == 15
    assert all(a["error"]["code"] == REFUSED and "spend cap" in a["error"]["message"] for a in refused)
    assert len([t for t in calls_logged(log) if t.startswith(f"cap-{marker}-")]) == 5
    mine = balance(mesh, token)
    assert mine["available"] + mine["reserved"] == 1_000_000 - 5 * PRICE
    until(lambda: api(mesh.reg, "/v1/billing/usage", token).json()["total"] == 5 * PRICE, what="5 charges")


def test_mcpz_call_says_why_a_paid_call_was_refused_and_what_fixes_it(
    paid: tuple[Mesh, Path], tmp_path: Path
) -> None:
    import os
    import subprocess

    mesh, log = paid
    token, _ = consumer(mesh)
    env = {**os.environ, "MCPZ_CONFIG_DIR": str(tmp_path / "config"), "MCPZ_DATA_DIR": str(tmp_path / "data")}
    marker = f"cli-{secrets.token_hex(4)}"
    argv = [sys.executable, "-m", "mcpz", "call", AGENT, "note", f"text={marker}"]
    done = subprocess.run(
        [*argv, "--registry", mesh.reg.url, "--token", token],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 8, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "balance does not cover" in line and "add funds" in line and "Traceback" not in done.stderr
    assert marker not in calls_logged(log)


def test_the_receipt_of_mcpz_call_json_verifies_offline(paid: tuple[Mesh, Path], tmp_path: Path) -> None:
    import os
    import subprocess

    mesh, _ = paid
    token, _ = consumer(mesh, credit=100_000)
    env = {**os.environ, "MCPZ_CONFIG_DIR": str(tmp_path / "config"), "MCPZ_DATA_DIR": str(tmp_path / "data")}
    argv = [sys.executable, "-m", "mcpz", "call", AGENT, "note", "text=receipt", "--json"]
    done = subprocess.run(
        [*argv, "--registry", mesh.reg.url, "--token", token],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "call.json"
    saved.write_text(done.stdout)
    key = api(mesh.reg, "/v1/billing/receipt-key").json()["key"]
    verify = [sys.executable, "-m", "mcpz", "billing", "verify-receipt", str(saved), "--key", key]
    checked = subprocess.run(verify, capture_output=True, text=True, env=env, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "receipt valid" in checked.stdout and "0.002 USDC" in checked.stdout
    forged = json.loads(done.stdout)
    forged["result"]["content"][0]["text"] = "forged"
    saved.write_text(json.dumps(forged))
    refused = subprocess.run(verify, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 4, refused.stdout + refused.stderr
