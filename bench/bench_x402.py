"""x402: what paying per call with a signed stablecoin authorization costs, beside the prepaid path.

On a fresh anvil (npm @foundry-rs/anvil, started as the settlement tests start it) the committed
TestToken (EIP-3009) and McpzSettlement are deployed; a registry (in this process's threads, SQLite)
settles on it with x402's relayer key, a node runs the python template's agent `acme/tiny`, priced
per call (0.002 TUSD) with x402 accepted. Measured, one client on loopback, after `--warmup` calls
of each kind:

- **wall time per call**: a paid call as an x402 agent makes it with no account (the call answered
  with the payment requirements, the EIP-3009 signature, the paid call: verified on chain, run,
  settled by the registry and mined, answered with the settlement and the receipt), beside a call to
  the same agent by an account with a prepaid balance (the billing gate: no chain); `--calls` of
  each, interleaved, every answer checked (the paid ones' settlements and the payer's balance after);
- **gas per call**: the gas of each x402 settlement (`transferWithAuthorization`, the relayer
  pays it), beside the prepaid path's gas for `--prepaid-calls` calls (one approve and deposit by the
  consumer, one commitBatch for the creator, one claim), divided by that many calls.

The issue quotes 61,000-90,000 gas per x402 payment elsewhere; there is no peer program to run.
Goals (issue 20): every paid call settled exactly once (the payer's balance moves by exactly the
prices); the prepaid path costs under a tenth of x402's gas per call at 1,000 calls.

    python bench/bench_x402.py [--calls 20] [--warmup 2] [--prepaid-calls 1000] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The chain, the registry and the mesh are started as the x402 tests start them.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _goals as g
import _registry as rb

PRICE = 2_000
PAID_GOAL = "every paid call settled exactly once"
GAS_GOAL = "the prepaid path under a tenth of x402's gas per call at {n:,} calls"


def chain_missing() -> str | None:
    from chainutil import anvil_binary

    return None if anvil_binary() is not None else "anvil is not installed: run `npm ci --prefix contracts`"


def run(calls: int, warmup: int, prepaid_calls: int) -> dict[str, Any]:
    import httpx2
    from chainutil import CHAIN_ID, deploy_settlement, start_anvil
    from conftest import start_registry
    from meshutil import AGENT, FAST, Mesh

    from mcpz.client.x402 import Payer, required_of
    from mcpz.merkle import Leaf, MerkleTree
    from registry_server.billing import service
    from registry_server.db import Database
    from registry_server.settlement.operator import KEY_VAR, RELAYER_KEY_VAR

    tmp = Path(tempfile.mkdtemp(prefix="bench-x402-"))
    anvil = start_anvil()
    reg = mesh = None
    try:
        s = deploy_settlement(anvil)
        os.environ[KEY_VAR] = s.operator.key.hex()
        os.environ[RELAYER_KEY_VAR] = s.new_account().key.hex()  # x402's relayer submits settlements
        try:
            reg = start_registry(
                tmp / "registry", **FAST, price_notice_days=0.0, settlement_rpc=anvil.rpc_url,
                settlement_chain_id=CHAIN_ID, settlement_contract=s.contract.address,
                settlement_confirmations=1, settlement_poll_interval=1.0,
            )  # fmt: skip
        finally:
            os.environ.pop(KEY_VAR, None)
            os.environ.pop(RELAYER_KEY_VAR, None)
        mesh = Mesh(tmp, reg)
        mesh.publish("1.0.0")
        mesh.node("node-0")
        mesh.connected(1)
        mesh.deploy("1.0.0", replicas=1)
        mesh.settled(1, "1.0.0")
        with mesh.http as http:
            priced = http.put(f"/v1/billing/plans/{AGENT}", json={"per_call": PRICE, "x402": True})
            assert priced.status_code == 200, priced.text
        buyer = reg.account("buyer", "read,call")
        db = Database(reg.database_url)
        try:
            with db.session() as session:
                service.credit(session, service.account_id_of(session, "buyer"), 10**9, reason="bench")
        finally:
            db.dispose()

        url = f"{reg.url}/mcp/{AGENT}"
        hello = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "b", "version": "1"},
        }
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello}
        headers = {"Accept": "application/json, text/event-stream"}
        anonymous = httpx2.Client(headers=headers, timeout=60)
        prepaid = httpx2.Client(headers={**headers, "Authorization": f"Bearer {buyer}"}, timeout=60)
        for client in (anonymous, prepaid):
            answer = client.post(url, json=init)
            assert answer.status_code == 200, answer.text
            client.headers["Mcp-Session-Id"] = answer.headers["mcp-session-id"]

        key = s.new_account()
        s.mint(key.address, (calls + warmup + 1) * PRICE)
        start_balance = s.balance(key.address)
        payer = Payer(key, max_price=PRICE)
        ids = iter(range(1, 10**9))

        def tools_call(client: httpx2.Client, a: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
            params: dict[str, Any] = {"name": "add", "arguments": {"a": a, "b": 1}}
            if meta is not None:
                params["_meta"] = meta
            body = {"jsonrpc": "2.0", "id": next(ids), "method": "tools/call", "params": params}
            answer = client.post(url, json=body)
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()["result"]
            return result

        def paid_call(a: int) -> tuple[float, str]:
            started = time.perf_counter()
            required = required_of(tools_call(anonymous, a))
            assert required is not None, "the gateway asked for no payment"
            result = tools_call(anonymous, a, {"x402/payment": payer.authorize(AGENT, required)})
            took = time.perf_counter() - started
            assert result.get("isError") is not True and result["content"][0]["text"] == str(a + 1), result
            settled = result["_meta"]["x402/payment-response"]
            assert settled["success"] is True
            return took, settled["transaction"]

        def prepaid_call(a: int) -> float:
            started = time.perf_counter()
            result = tools_call(prepaid, a)
            took = time.perf_counter() - started
            assert result.get("isError") is not True and result["content"][0]["text"] == str(a + 1), result
            return took

        txs: list[str] = []
        for i in range(warmup):
            txs.append(paid_call(i)[1])
            prepaid_call(i)
        paid_times: list[float] = []
        prepaid_times: list[float] = []
        for i in range(calls):
            took, tx = paid_call(100 + i)
            paid_times.append(took)
            txs.append(tx)
            prepaid_times.append(prepaid_call(100 + i))
        settled_once = (
            len(set(txs)) == len(txs) and s.balance(key.address) == start_balance - len(txs) * PRICE
        )
        x402_gas = [int(anvil.w3.eth.get_transaction_receipt(tx)["gasUsed"]) for tx in txs]

        # The prepaid path's chain work for `prepaid_calls` calls: one deposit, one batch, one claim.
        consumer, creator = s.new_account(), s.new_account()
        total = prepaid_calls * PRICE
        s.mint(consumer.address, total)
        approve = s.send(s.token.functions.approve(s.contract.address, total), consumer)
        deposit = s.send(s.contract.functions.deposit("consumer", total), consumer)
        earned = total - total * 2000 // 10_000
        tree = MerkleTree([Leaf(0, creator.address, earned)])
        commit = s.send(s.contract.functions.commitBatch(1, tree.root, earned), s.operator)
        claim = s.send(s.contract.functions.claim(1, 0, creator.address, earned, tree.proof(0)), creator)
        prepaid_gas = {
            "approve": int(approve["gasUsed"]), "deposit": int(deposit["gasUsed"]),
            "commitBatch": int(commit["gasUsed"]), "claim": int(claim["gasUsed"]),
        }  # fmt: skip
        anonymous.close()
        prepaid.close()
        return {
            "paid": paid_times,
            "prepaid": prepaid_times,
            "settled_once": settled_once,
            "x402_gas": x402_gas,
            "prepaid_gas": prepaid_gas,
        }
    finally:
        if mesh is not None:
            mesh.close()
        if reg is not None:
            reg.stop()
        anvil.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="paid and prepaid calls timed (each)")
    parser.add_argument("--warmup", type=int, default=2, help="calls of each kind before timing")
    parser.add_argument(
        "--prepaid-calls", type=int, default=1000, help="calls the prepaid path's gas is spread over"
    )
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.calls, args.warmup = 2, 1
    info = rb.print_machine("x402: a paid call's wall time and gas, beside the prepaid path (anvil)")
    load_before = g.load()
    started = time.perf_counter()
    gas_goal = GAS_GOAL.format(n=args.prepaid_calls)
    missing = chain_missing()
    if missing is not None and not args.smoke:
        raise g.PeerMissing(f"bench_x402: {missing}")
    figures: dict[str, object] = {"calls": args.calls, "prepaid_calls": args.prepaid_calls, "price": PRICE}
    goals: list[g.Goal] = []
    if missing is not None:
        print(f"no chain: {missing}")
        goals += [g.unmeasured(PAID_GOAL, missing), g.unmeasured(gas_goal, missing)]
    else:
        try:
            out = run(args.calls, args.warmup, args.prepaid_calls)
        except Exception as e:  # a wrong answer, a revert, a chain that did not start: no figure
            why = (str(e).splitlines() or [type(e).__name__])[0][:300]
            print(f"the run failed: {why}")
            goals += [g.failed(PAID_GOAL, why), g.failed(gas_goal, why)]
        else:
            paid, prepaid = out["paid"], out["prepaid"]
            x402_gas = statistics.median(out["x402_gas"])
            prepaid_total = sum(out["prepaid_gas"].values())
            per_call = prepaid_total / args.prepaid_calls

            def ms(values: list[float]) -> list[str]:
                return [f"{statistics.median(values) * 1000:.1f}", f"{max(values) * 1000:.1f}"]

            rows = [
                ["x402, no account (402, sign, verify, run, settle)", *ms(paid), f"{x402_gas:,.0f}"],
                ["prepaid balance (billing gate, no chain per call)", *ms(prepaid),
                 f"{per_call:,.1f} (over {args.prepaid_calls:,} calls)"],
            ]  # fmt: skip
            print(rb.table(["call", "p50 ms", "max ms", "gas per call"], rows))
            parts = ", ".join(f"{k} {v:,}" for k, v in out["prepaid_gas"].items())
            print(f"prepaid chain work: {parts} = {prepaid_total:,} gas for {args.prepaid_calls:,} calls")
            figures.update(
                paid_ms=[round(t * 1000, 2) for t in paid],
                prepaid_ms=[round(t * 1000, 2) for t in prepaid],
                x402_gas=out["x402_gas"],
                prepaid_gas=out["prepaid_gas"],
                prepaid_gas_per_call=round(per_call, 2),
            )
            goals.append(g.holds(PAID_GOAL, out["settled_once"], f"{len(out['x402_gas'])} settlements"))
            goals.append(
                g.below(gas_goal, per_call, x402_gas / 10, f"{per_call:,.1f} vs {x402_gas:,.0f} gas per call")
            )
    print(f"{time.perf_counter() - started:.0f} s in all")
    g.finish("x402", info, load_before, goals, figures, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
