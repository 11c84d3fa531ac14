"""Settlement: what a payout batch costs on chain, on anvil, beside paying each creator directly.

The committed McpzSettlement and TestToken are deployed on a fresh anvil (npm @foundry-rs/anvil,
started as the settlement tests start it: tests/chainutil.py), and one run measures the gas of:

- `commitBatch` of a Merkle root for 1,000 creators, and for 10 (what the platform pays per batch);
- a creator's `claim` (a new token holder; the first claim in a bitmap word, a later one, and a
  creator who already holds the token), with its breakdown: the 21,000 base, the calldata, the
  token transfer inside it, and the rest (proof check, claimed bitmap, accounting, event);
- a `claimMany` of one creator's leaves in 10 batches, and an operator push to 100 creators;
- a plain ERC-20 `transfer` to a new holder and to an existing one (paying each creator directly).

0xSplits' per-recipient cost per distribution (about 6,700-28,700 gas) is quoted as published (issue
16), not measured here. Every payout is checked (balances after claims and pushes), so a wrong answer
fails the goals instead of giving a figure. The payout tree is timed too: `mcpz.merkle.MerkleTree` of
10,000 creators and every proof (each proof then verified, untimed). And the payout job itself, on a
registry database (SQLite) holding 10,000 creators with available earnings: building the batch (the
plan, the tree, the leaf rows, the ledger transaction), committing it (signed, sent, mined: one
transaction), and every creator's proof as `GET /v1/billing/payouts` serves it (the database read
and the cached tree), each timed; then every leaf is checked against the committed root (untimed).

Goals (issue 16): the platform's cost per batch independent of the number of creators (commitBatch for
10 and 1,000 creators within 1 %); a claim under 60,000 gas (judged on the common claim: a new holder,
bitmap word already in use; the other claims are printed beside it).

anvil comes from `npm ci --prefix contracts --ignore-scripts` (or MCPZ_ANVIL names the binary); web3
is a dependency of mcpz. Without them the benchmark stops, saying so; a smoke run prints the gas goals as
unmeasured and still times the tree.

    python bench/bench_settlement.py [--creators 1000] [--batches 10] [--push 100] [--tree 10000] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The chain is started and the contract deployed as the settlement tests do (tests/chainutil.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _goals as g
import _registry as rb

from mcpz.merkle import Leaf, MerkleTree, from_hex, verify

USDC = 1_000_000
CHAIN_ID = 31337  # anvil's, as tests/chainutil.py starts it
BASE_GAS = 21_000
CLAIM_GOAL = 60_000
COMMIT_SPREAD = 0.01
SPLITS_PUBLISHED = (6_700, 28_700)
COMMIT_GOAL = "the platform's cost per batch independent of the number of creators (commitBatch, 10 vs {n:,})"
CLAIM_GOAL_TEXT = f"a claim under {CLAIM_GOAL:,} gas"
PAYOUT_JOB_CREATORS = 10_000


def calldata_gas(data: bytes) -> int:
    """EIP-2028: 4 gas per zero byte of calldata, 16 per other byte."""
    return sum(4 if b == 0 else 16 for b in data)


def random_address(rng: random.Random) -> str:
    from eth_utils import to_checksum_address

    return str(to_checksum_address("0x" + rng.randbytes(20).hex()))


def tree_for(addresses: list[str], amount: int = USDC) -> MerkleTree:
    return MerkleTree([Leaf(i, a, amount + i) for i, a in enumerate(addresses)])


def total(tree: MerkleTree) -> int:
    return sum(leaf.amount for leaf in tree.leaves)


# --- the payout tree ------------------------------------------------------------------------------


def time_tree(n: int, rounds: int) -> tuple[g.Run, int]:
    """The median time to build the tree of `n` creators and every proof, and the proof length; the
    proofs of the last round are all verified against the root (untimed)."""
    rng = random.Random(16)
    leaves = [Leaf(i, random_address(rng), rng.randrange(1, 10**9)) for i in range(n)]
    times: list[float] = []
    tree, proofs = None, []
    for _ in range(rounds):
        started = time.perf_counter()
        tree = MerkleTree(leaves)
        proofs = [tree.proof(i) for i in range(n)]
        times.append(time.perf_counter() - started)
    assert tree is not None
    ok = all(verify(tree.root, leaf, proof) for leaf, proof in zip(tree.leaves, proofs, strict=True))
    return g.Run(rb.median(times), ok, "" if ok else "a proof does not verify"), len(proofs[0])


# --- gas on anvil -------------------------------------------------------------------------------------


@dataclass
class Gas:
    figures: dict[str, int] = field(default_factory=dict)
    claim_calldata: int = 0
    claim_proof_len: int = 0
    transfer_calldata: int = 0


def measure_gas(creators: int, batches: int, push: int, job: int) -> tuple[Gas, dict[str, float]]:
    from chainutil import deploy_settlement, start_anvil

    chain = start_anvil()
    try:
        gas = _measure(chain, deploy_settlement(chain), creators, batches, push)
        return gas, time_payout_job(chain, deploy_settlement(chain), job)
    finally:
        chain.stop()


def _measure(chain: Any, s: Any, creators: int, batches: int, push: int) -> Gas:
    c = s.contract.functions
    rng = random.Random(1)
    out = Gas()
    gas = out.figures

    def used(call: Any, sender: Any, name: str) -> Any:
        receipt = s.send(call, sender)
        gas[name] = int(receipt["gasUsed"])
        return receipt

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise RuntimeError(f"wrong payout: {what}")

    addresses = [random_address(rng) for _ in range(creators)]
    big, small = tree_for(addresses), tree_for(addresses[:10])
    s.deposit(s.user, "consumers", 10 * (total(big) + total(small)) + push * 10 * USDC)

    # The first commit also turns `outstanding` from zero to non-zero (20,000 gas more); the two
    # compared both find it non-zero.
    used(c.commitBatch(3, small.root, 1), s.operator, "commitBatch, nothing outstanding before")
    used(c.commitBatch(1, big.root, total(big)), s.operator, f"commitBatch, {creators:,} creators")
    used(c.commitBatch(2, small.root, total(small)), s.operator, "commitBatch, 10 creators")

    def claim(i: int, name: str) -> Any:
        leaf = big.leaves[i]
        receipt = used(c.claim(1, leaf.index, leaf.account, leaf.amount, big.proof(i)), s.user, name)
        check(s.balance(leaf.account) >= leaf.amount, f"claim {i} did not pay {leaf.account}")
        return receipt

    claim(0, "claim, new holder, first in bitmap word")
    common = claim(1, "claim, new holder, bitmap word in use")
    s.mint(addresses[2], 1)
    claim(2, "claim, existing holder, bitmap word in use")
    out.claim_calldata = calldata_gas(bytes(chain.w3.eth.get_transaction(common["transactionHash"])["input"]))
    out.claim_proof_len = len(big.proof(1))

    # claimMany: one creator's leaves in several batches (index 0 of each: every bitmap word is fresh).
    creator = s.new_account()
    trees = [tree_for([creator.address, *addresses[b * 3 : b * 3 + 3]]) for b in range(batches)]
    for b, tree in enumerate(trees):
        s.send(c.commitBatch(100 + b, tree.root, total(tree)), s.operator)
    claims = [(100 + b, 0, creator.address, t.leaves[0].amount, t.proof(0)) for b, t in enumerate(trees)]
    used(c.claimMany(claims), creator, f"claimMany, {batches} batches, one creator")
    check(s.balance(creator.address) == sum(t.leaves[0].amount for t in trees), "claimMany paid wrong")

    # The operator pushes one batch to creators who opted in.
    pushed = [s.new_account() for _ in range(push)]
    for person in pushed:
        s.send(c.setPushOptIn(True), person)
    push_tree = tree_for([p.address for p in pushed])
    s.send(c.commitBatch(200, push_tree.root, total(push_tree)), s.operator)
    entries = [
        (200, leaf.index, leaf.account, leaf.amount, push_tree.proof(i))
        for i, leaf in enumerate(push_tree.leaves)
    ]
    used(c.pushPayouts(200, entries), s.operator, f"pushPayouts, {push} creators")
    check(
        all(s.balance(leaf.account) == leaf.amount for leaf in push_tree.leaves),
        "a pushed creator got the wrong amount",
    )

    # Paying each creator directly instead: a plain ERC-20 transfer.
    s.mint(s.admin.address, USDC)
    fresh = random_address(rng)
    transfer = used(s.token.functions.transfer(fresh, USDC // 2), s.admin, "ERC-20 transfer, new holder")
    used(s.token.functions.transfer(fresh, USDC // 4), s.admin, "ERC-20 transfer, existing holder")
    check(s.balance(fresh) == USDC // 2 + USDC // 4, "the ERC-20 transfers paid wrong")
    out.transfer_calldata = calldata_gas(
        bytes(chain.w3.eth.get_transaction(transfer["transactionHash"])["input"])
    )
    return out


# --- the payout job on a registry database ------------------------------------------------------------


def time_payout_job(chain: Any, s: Any, n: int) -> dict[str, float]:
    """Seconds to build a batch of `n` creators, commit it, and serve every creator's proof."""
    import tempfile

    from sqlalchemy import insert, select

    from registry_server.accounts.models import Account
    from registry_server.billing import ledger, service
    from registry_server.orm import utcnow
    from registry_server.settings import RegistrySettings
    from registry_server.settlement import payouts
    from registry_server.settlement.batches import Policy
    from registry_server.settlement.chain import SettlementChain
    from registry_server.settlement.operator import Operator
    from registry_server.state import RegistryState

    rng = random.Random(10)
    amounts = [rng.randrange(USDC, 100 * USDC) for _ in range(n)]
    with tempfile.TemporaryDirectory(prefix="mcpz-bench-payouts-") as tmp:
        settings = RegistrySettings.load(data_dir=Path(tmp), env={})
        state = RegistryState.open(settings)
        try:
            # Seeding, untimed: the creators, their wallets and earnings, and the tokens on chain.
            with state.db.session() as session:
                session.execute(
                    insert(Account),
                    [
                        {"name": f"creator{i}", "address": random_address(rng), "created_at": utcnow()}
                        for i in range(n)
                    ],
                )
                ids = list(session.scalars(select(Account.id).order_by(Account.id)))
                service.post(
                    session,
                    ledger.transaction(
                        "bench:earnings", "bench",
                        [(ledger.PLATFORM_CREDIT, -sum(amounts)),
                         *((ledger.creator_available(i), a) for i, a in zip(ids, amounts, strict=True))],
                    ),
                )  # fmt: skip
            s.deposit(s.user, "bench", sum(amounts))
            settlement = SettlementChain(chain.rpc_url, s.contract.address, CHAIN_ID)
            operator = Operator(s.operator, "bench")
            times: dict[str, float] = {}
            started = time.perf_counter()
            batch_id = payouts.build(state.db, CHAIN_ID, s.contract.address, 1)
            times["build"] = time.perf_counter() - started
            assert batch_id is not None
            started = time.perf_counter()
            progress = payouts.drive(
                state.db, settlement, operator, batch_id, Policy(confirmations=1, stuck_after=300.0)
            )
            times["commit"] = time.perf_counter() - started
            if progress.state not in ("confirmed", "submitted") or "Mined" not in progress.steps:
                raise RuntimeError(f"the payout batch was not committed: {progress}")
            started = time.perf_counter()
            served = []
            with state.db.session() as session:
                for account_id in ids:
                    served.extend(payouts.payouts_of(session, CHAIN_ID, account_id))
            times["proofs"] = time.perf_counter() - started
            root = bytes.fromhex(settlement.batch(batch_id).root[2:])
            wrong = [
                p
                for p in served
                if not verify(root, Leaf(p.index, p.address, p.amount), [from_hex(h) for h in p.proof])
            ]
            if len(served) != n or wrong:
                raise RuntimeError(f"{len(wrong)} of {len(served)} proofs do not lead to the committed root")
            times["total"] = times["build"] + times["commit"] + times["proofs"]
            return times
        finally:
            state.close()


def chain_missing() -> str | None:
    """Why the chain part cannot run, or None."""
    from chainutil import INSTALL_HINT, anvil_binary

    binary = anvil_binary()
    if binary is None or not binary.exists():
        return INSTALL_HINT if binary is None else f"{binary} (MCPZ_ANVIL) does not exist; {INSTALL_HINT}"
    try:
        import web3  # noqa: F401
    except ImportError:
        return "web3 is not installed: reinstall mcpz (`pip install -e '.[test]'`)"
    return None


# --- main ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creators", type=int, default=1000, help="creators in the large batch committed")
    parser.add_argument("--batches", type=int, default=10, help="batches in the claimMany")
    parser.add_argument("--push", type=int, default=100, help="creators in the operator's push")
    parser.add_argument("--tree", type=int, default=10_000, help="creators in the timed payout tree")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the tree timing (median shown)")
    parser.add_argument(
        "--job", type=int, default=PAYOUT_JOB_CREATORS, help="creators in the timed payout job"
    )
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.batches, args.push, args.tree, args.rounds, args.job = 3, 5, 1000, 1, 200

    info = rb.print_machine(
        "settlement: gas of payout batches on anvil, beside ERC-20 transfers and 0xSplits"
    )
    load_before = g.load()
    started = time.perf_counter()
    commit_goal = COMMIT_GOAL.format(n=args.creators)

    missing = chain_missing()
    if missing is not None and not args.smoke:
        raise g.PeerMissing(f"bench_settlement: {missing}")
    tree_run, proof_len = time_tree(args.tree, args.rounds)
    gas: Gas | None = None
    job: dict[str, float] = {}
    error = ""
    if missing is None:
        try:
            gas, job = measure_gas(args.creators, args.batches, args.push, args.job)
        except Exception as e:  # a revert, a wrong payout or a chain that did not start: no figure
            error = (str(e).splitlines() or [type(e).__name__])[0][:300]

    figures: dict[str, object] = {
        "creators": args.creators,
        "tree_creators": args.tree,
        "tree_and_proofs_s": tree_run.as_json(),
        "proof_length": proof_len,
        "splits_published_gas_per_recipient": list(SPLITS_PUBLISHED),
    }
    goals: list[g.Goal] = []
    print()
    if gas is not None:
        f = gas.figures
        big, small = f[f"commitBatch, {args.creators:,} creators"], f["commitBatch, 10 creators"]
        push_name = f"pushPayouts, {args.push} creators"
        many_name = f"claimMany, {args.batches} batches, one creator"
        per: dict[str, str] = {
            f"commitBatch, {args.creators:,} creators": f"{big / args.creators:,.0f} (platform)",
            "commitBatch, 10 creators": f"{small / 10:,.0f} (platform)",
            push_name: f"{f[push_name] / args.push:,.0f} (platform)",
            many_name: f"{f[many_name] / args.batches:,.0f} per batch (creator)",
            "ERC-20 transfer, new holder": f"{f['ERC-20 transfer, new holder']:,} (platform)",
            "ERC-20 transfer, existing holder": f"{f['ERC-20 transfer, existing holder']:,} (platform)",
        }
        for name, value in f.items():
            if name.startswith("claim, "):
                per[name] = f"{value:,} (creator)"
        rows: list[list[object]] = [[name, f"{value:,}", per.get(name, "")] for name, value in f.items()]
        lo, hi = SPLITS_PUBLISHED
        rows.append(["0xSplits distribution (published, not measured)", "", f"{lo:,}-{hi:,} (distributor)"])
        print(rb.table(["operation (one transaction)", "gas", "gas per creator (who pays)"], rows))

        claim = f["claim, new holder, bitmap word in use"]
        token = f["ERC-20 transfer, new holder"] - BASE_GAS - gas.transfer_calldata
        rest = claim - BASE_GAS - gas.claim_calldata - token
        breakdown = (
            f"{claim:,} = {BASE_GAS:,} base + {gas.claim_calldata:,} calldata ({gas.claim_proof_len} proof "
            f"hashes) + ~{token:,} token transfer to a new holder + {rest:,} proof check, bitmap, accounting "
            "and event"
        )
        print(f"claim breakdown: {breakdown}")
        claims = [v for k, v in f.items() if k.startswith("claim, ")]
        spread = abs(big - small) / small
        goals.append(
            g.holds(
                commit_goal,
                spread <= COMMIT_SPREAD,
                f"{big:,} gas for {args.creators:,} creators vs {small:,} for 10: {spread:.2%} apart",
            )
        )
        goals.append(
            g.below(
                CLAIM_GOAL_TEXT,
                claim,
                CLAIM_GOAL,
                f"{breakdown}; claims measured {min(claims):,}-{max(claims):,}",
            )
        )
        figures["gas"] = f
        figures["claim_breakdown"] = {
            "total": claim,
            "base": BASE_GAS,
            "calldata": gas.claim_calldata,
            "token_transfer": token,
            "rest": rest,
        }
    elif error:
        print(f"the chain run failed: {error}")
        goals += [g.failed(commit_goal, error), g.failed(CLAIM_GOAL_TEXT, error)]
    else:
        why = f"no chain: {missing}"
        print(why)
        goals += [g.unmeasured(commit_goal, why), g.unmeasured(CLAIM_GOAL_TEXT, why)]

    print(
        f"payout tree for {args.tree:,} creators (mcpz.merkle, tree + every proof, median of "
        f"{args.rounds}): {tree_run.cell()}; {proof_len} hashes per proof"
    )
    if job:
        figures["payout_job_s"] = {"creators": args.job, **{k: round(v, 3) for k, v in job.items()}}
        print(
            f"payout job for {args.job:,} creators (SQLite): {job['total']:.2f} s = build "
            f"{job['build']:.2f} s (plan, tree, leaves, ledger) + commit {job['commit']:.2f} s (sign, send, "
            f"mined) + every proof served {job['proofs']:.2f} s"
        )
    else:
        print(f"payout job wall time: not measured ({error or missing})")
    print(f"{time.perf_counter() - started:.0f} s in all")
    g.finish("settlement", info, load_before, goals, figures, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
