"""registry_server/settlement/batches.py: the payout batch state machine, step by step and under crashes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import event as note_kind
from hypothesis import given, settings
from hypothesis import strategies as st

from registry_server.settlement.batches import (
    MIN_FEE_BUMP_BPS,
    Adopted,
    AlreadyCommitted,
    Attempt,
    Batch,
    BatchState,
    Broadcast,
    ChainView,
    Commit,
    Confirmed,
    ConfirmedEvent,
    Failed,
    Final,
    Finalized,
    Mined,
    MinedEvent,
    Policy,
    Receipt,
    Reorged,
    ReorgedEvent,
    Replace,
    Sent,
    Sign,
    Step,
    TransitionError,
    Wait,
    apply,
    bump,
    hashes_to_look_up,
    next_step,
)

ROOT = "0x" + "ab" * 32
OTHER_ROOT = "0x" + "cd" * 32
POLICY = Policy(confirmations=3, stuck_after=60, fee_bump_bps=1250, max_fee=1000)
GWEI_VIEW = {"max_fee": 100, "priority_fee": 2}


def pending() -> Batch:
    return Batch(id=7, root=ROOT, total=5_000_000, leaves=2)


def sent(batch: Batch, tx: str, nonce: int = 4, max_fee: int = 100, prio: int = 2, at: float = 0) -> Batch:
    return apply(batch, Sent(nonce, Attempt(tx, max_fee, prio, at)))


def receipt(tx: str = "0xa", block: int = 10, block_hash: str = "0xb10", status: int = 1) -> Receipt:
    return Receipt(tx, block, block_hash, status)


def view(**kw: object) -> ChainView:
    base: dict[str, object] = {
        "head": 10,
        "finalized": None,
        "nonce_latest": 4,
        "nonce_pending": 4,
        **GWEI_VIEW,
    }
    base.update(kw)
    return ChainView(**base)  # type: ignore[arg-type]


# --- steps ---


def test_a_pending_batch_signs_at_the_pending_nonce_with_the_suggested_fees() -> None:
    assert next_step(pending(), view(nonce_pending=6), 0, POLICY) == Sign(6, 100, 2)


def test_signing_never_passes_the_policy_max_fee() -> None:
    assert next_step(pending(), view(max_fee=5000, priority_fee=3000), 0, POLICY) == Sign(4, 1000, 1000)


def test_a_recorded_transaction_the_node_does_not_know_is_broadcast_again() -> None:
    batch = sent(pending(), "0xa")
    assert next_step(batch, view(), 1, POLICY) == Broadcast("0xa")


def test_only_the_latest_attempt_is_broadcast_again() -> None:
    batch = sent(sent(pending(), "0xa"), "0xb", max_fee=113, prio=3)
    assert next_step(batch, view(in_pool=frozenset({"0xa"})), 1, POLICY) == Broadcast("0xb")


def test_a_transaction_in_the_pool_waits_until_it_is_stuck() -> None:
    batch = sent(pending(), "0xa", at=100)
    assert isinstance(next_step(batch, view(in_pool=frozenset({"0xa"})), 159, POLICY), Wait)


def test_a_stuck_transaction_is_replaced_at_the_same_nonce_with_fees_raised_by_an_eighth() -> None:
    batch = sent(pending(), "0xa", max_fee=100, prio=2, at=100)
    step = next_step(batch, view(in_pool=frozenset({"0xa"})), 160, POLICY)
    assert step == Replace(4, 113, 3)  # 112.5 and 2.25 rounded up


def test_a_replacement_follows_a_higher_suggestion() -> None:
    batch = sent(pending(), "0xa", max_fee=100, prio=2)
    step = next_step(batch, view(in_pool=frozenset({"0xa"}), max_fee=300, priority_fee=9), 60, POLICY)
    assert step == Replace(4, 300, 9)


def test_a_replacement_that_would_pass_the_max_fee_waits() -> None:
    batch = sent(pending(), "0xa", max_fee=900, prio=2)
    assert isinstance(next_step(batch, view(in_pool=frozenset({"0xa"})), 60, POLICY), Wait)


def test_a_replacement_may_go_up_to_the_max_fee_exactly() -> None:
    batch = sent(pending(), "0xa", max_fee=888, prio=2)
    assert next_step(batch, view(in_pool=frozenset({"0xa"})), 60, POLICY) == Replace(
        4, 999, 3
    )  # 888 * 1.125 = 999; 889 would need 1,001


def test_a_mined_attempt_is_recorded_whichever_it_was() -> None:
    batch = sent(sent(pending(), "0xa"), "0xb", max_fee=113, prio=3)
    r = receipt("0xa")
    assert next_step(batch, view(receipts={"0xa": r}), 1, POLICY) == Mined(r)
    mined = apply(batch, MinedEvent(r))
    assert mined.receipt == r and mined.state is BatchState.SUBMITTED


def test_confirmed_needs_the_confirmations_on_top_of_the_receipt_block() -> None:
    r = receipt("0xa", block=10)
    batch = apply(sent(pending(), "0xa"), MinedEvent(r))
    assert isinstance(next_step(batch, view(head=11, receipts={"0xa": r}), 1, POLICY), Wait)
    assert next_step(batch, view(head=12, receipts={"0xa": r}), 1, POLICY) == Confirmed("0xa", 10)


def test_a_vanished_or_moved_receipt_is_a_reorg() -> None:
    r = receipt("0xa", block=10)
    batch = apply(sent(pending(), "0xa"), MinedEvent(r))
    assert next_step(batch, view(head=20), 1, POLICY) == Reorged()
    moved = receipt("0xa", block=10, block_hash="0xother")
    assert next_step(batch, view(head=20, receipts={"0xa": moved}), 1, POLICY) == Reorged()
    confirmed = apply(batch, ConfirmedEvent())
    assert next_step(confirmed, view(head=20), 1, POLICY) == Reorged()
    back = apply(confirmed, ReorgedEvent())
    assert back.state is BatchState.SUBMITTED and back.receipt is None and back.nonce == 4


def test_final_when_the_receipt_block_is_finalized() -> None:
    r = receipt("0xa", block=10)
    batch = apply(apply(sent(pending(), "0xa"), MinedEvent(r)), ConfirmedEvent())
    assert isinstance(next_step(batch, view(head=20, finalized=9, receipts={"0xa": r}), 1, POLICY), Wait)
    assert next_step(batch, view(head=20, finalized=10, receipts={"0xa": r}), 1, POLICY) == Final()
    final = apply(batch, Finalized())
    assert final.final and final.state is BatchState.FINAL
    assert next_step(final, view(head=0), 1, POLICY) == Final()


def test_final_on_zksync_when_its_l1_batch_is_executed() -> None:
    r = receipt("0xa", block=10)
    batch = apply(apply(sent(pending(), "0xa"), MinedEvent(r)), ConfirmedEvent())
    assert (
        next_step(batch, view(head=20, receipts={"0xa": r}, executed=frozenset({"0xa"})), 1, POLICY)
        == Final()
    )


def test_a_batch_the_contract_holds_with_its_root_is_committed_whatever_our_records_say() -> None:
    theirs = receipt("0xelse", block=8)
    committed = Commit(ROOT, theirs)
    assert next_step(pending(), view(committed=committed), 0, POLICY) == AlreadyCommitted(theirs)
    batch = sent(pending(), "0xa")
    assert next_step(batch, view(committed=committed), 0, POLICY) == AlreadyCommitted(theirs)
    adopted = apply(batch, Adopted(theirs))
    assert adopted.receipt == theirs and adopted.nonce == 4
    assert "0xelse" in hashes_to_look_up(adopted)


def test_an_adopted_commit_reorganised_away_leaves_the_batch_pending_to_sign() -> None:
    adopted = apply(pending(), Adopted(receipt("0xelse", block=8)))
    assert adopted.state is BatchState.SUBMITTED and adopted.nonce is None
    back = apply(adopted, ReorgedEvent())
    assert back.state is BatchState.PENDING and back.receipt is None
    assert next_step(back, view(head=20), 0, POLICY) == Sign(4, 100, 2)


def test_a_finalized_receipt_is_confirmed_even_before_the_confirmation_count() -> None:
    r = receipt("0xa", block=10)
    batch = apply(sent(pending(), "0xa"), MinedEvent(r))
    strict = Policy(confirmations=100, stuck_after=60)
    assert next_step(batch, view(head=20, finalized=10, receipts={"0xa": r}), 1, strict) == Confirmed(
        "0xa", 10
    )


def test_our_reverted_attempt_against_a_commit_with_our_root_is_already_committed() -> None:
    batch = sent(pending(), "0xa")
    ours = receipt("0xa", block=9, status=0)
    theirs = receipt("0xelse", block=8)
    step = next_step(batch, view(receipts={"0xa": ours}, committed=Commit(ROOT, theirs)), 0, POLICY)
    assert step == AlreadyCommitted(theirs)


def test_our_own_commit_found_through_the_contract_is_recorded_as_mined() -> None:
    r = receipt("0xa", block=8)
    batch = sent(pending(), "0xa")
    assert next_step(batch, view(committed=Commit(ROOT, r)), 0, POLICY) == Mined(r)


def test_another_root_under_the_batch_id_fails_for_an_operator() -> None:
    step = next_step(pending(), view(committed=Commit(OTHER_ROOT, receipt("0xelse"))), 0, POLICY)
    assert isinstance(step, Failed) and "another root" in step.reason


def test_a_reverted_commit_with_nothing_on_chain_fails() -> None:
    batch = sent(pending(), "0xa")
    step = next_step(batch, view(receipts={"0xa": receipt("0xa", status=0)}), 0, POLICY)
    assert isinstance(step, Failed) and "reverted" in step.reason


def test_a_nonce_taken_by_another_transaction_fails_and_never_signs_at_another() -> None:
    batch = sent(pending(), "0xa", nonce=4)
    step = next_step(batch, view(nonce_latest=5, nonce_pending=5), 0, POLICY)
    assert isinstance(step, Failed) and "nonce 4" in step.reason


def test_two_mined_transactions_at_one_nonce_is_an_impossible_view() -> None:
    batch = sent(sent(pending(), "0xa"), "0xb", max_fee=113, prio=3)
    with pytest.raises(ValueError, match="two transactions"):
        next_step(batch, view(receipts={"0xa": receipt("0xa"), "0xb": receipt("0xb")}), 0, POLICY)


# --- transitions refused ---


def test_a_second_nonce_is_refused() -> None:
    with pytest.raises(TransitionError, match="nonce 4"):
        sent(sent(pending(), "0xa", nonce=4), "0xb", nonce=5)


def test_a_hash_recorded_twice_is_refused() -> None:
    with pytest.raises(TransitionError, match="already recorded"):
        sent(sent(pending(), "0xa"), "0xa")


def test_nothing_is_sent_once_mined() -> None:
    batch = apply(sent(pending(), "0xa"), MinedEvent(receipt("0xa")))
    with pytest.raises(TransitionError, match="mined"):
        sent(batch, "0xb")


def test_impossible_transitions_are_refused() -> None:
    batch = sent(pending(), "0xa")
    with pytest.raises(TransitionError, match="not one of its"):
        apply(batch, MinedEvent(receipt("0xz")))
    with pytest.raises(TransitionError, match="reverted"):
        apply(batch, MinedEvent(receipt("0xa", status=0)))
    with pytest.raises(TransitionError, match="cannot be confirmed"):
        apply(batch, ConfirmedEvent())
    with pytest.raises(TransitionError, match="only a confirmed"):
        apply(batch, Finalized())
    with pytest.raises(TransitionError, match="no receipt"):
        apply(batch, ReorgedEvent())
    mined = apply(batch, MinedEvent(receipt("0xa")))
    with pytest.raises(TransitionError, match="already mined"):
        apply(mined, Adopted(receipt("0xelse")))
    final = apply(apply(mined, ConfirmedEvent()), Finalized())
    with pytest.raises(TransitionError, match="final"):
        apply(final, ReorgedEvent())


def test_a_policy_with_a_bump_nodes_refuse_is_refused() -> None:
    with pytest.raises(ValueError, match="fee_bump_bps"):
        Policy(confirmations=1, stuck_after=1, fee_bump_bps=1249)


@given(st.integers(1, 10**15), st.integers(MIN_FEE_BUMP_BPS, 10_000))
def test_a_bump_is_never_below_an_eighth(fee: int, bps: int) -> None:
    assert bump(fee, bps) * 10_000 >= fee * (10_000 + MIN_FEE_BUMP_BPS)


@given(
    st.integers(1, 10**12),
    st.integers(0, 10**12),
    st.integers(1, 10**12),
    st.integers(0, 10**12),
    st.integers(1, 10**13),
    st.integers(MIN_FEE_BUMP_BPS, 5_000),
)
def test_replacement_fees_rise_by_an_eighth_and_stay_under_the_cap(
    max_fee: int, prio: int, suggested: int, suggested_prio: int, cap: int, bps: int
) -> None:
    prio = min(prio, max_fee)
    policy = Policy(confirmations=1, stuck_after=0, fee_bump_bps=bps, max_fee=cap)
    batch = sent(pending(), "0xa", max_fee=max_fee, prio=prio)
    v = view(in_pool=frozenset({"0xa"}), max_fee=suggested, priority_fee=suggested_prio)
    step = next_step(batch, v, 1, policy)
    if isinstance(step, Replace):
        assert step.nonce == 4
        assert step.max_fee * 10_000 >= max_fee * (10_000 + MIN_FEE_BUMP_BPS)
        assert step.priority_fee * 10_000 >= prio * (10_000 + MIN_FEE_BUMP_BPS)
        assert step.priority_fee <= step.max_fee <= cap
    else:
        assert isinstance(step, Wait)
        assert bump(max_fee, bps) > cap or bump(prio, bps) > cap


# --- a simulated chain, crashes and reorgs ---


@dataclass
class Tx:
    hash: str
    nonce: int
    max_fee: int
    priority_fee: int
    batch_id: int
    root: str


@dataclass
class Chain:
    """One account, one contract, blocks that can be reorganised down to the finalized one."""

    lag: int = 6  # the finalized block trails the head by this many
    blocks: list[tuple[str, list[Tx]]] = field(default_factory=list)
    pool: dict[int, Tx] = field(default_factory=dict)  # by nonce
    rivals: list[Tx] = field(default_factory=list)  # another process's commits, which it keeps re-sending
    serial: int = 0
    finalized_mark: int = -1

    def _fresh(self) -> str:
        self.serial += 1
        return f"0x{self.serial:x}"

    def replay(self) -> tuple[int, dict[int, tuple[str, str]], dict[str, Receipt]]:
        nonce, contract, receipts = 0, dict[int, tuple[str, str]](), dict[str, Receipt]()
        for number, (block_hash, txs) in enumerate(self.blocks):
            for tx in txs:
                nonce = tx.nonce + 1
                ok = tx.batch_id not in contract
                if ok:
                    contract[tx.batch_id] = (tx.root, tx.hash)
                receipts[tx.hash] = Receipt(tx.hash, number, block_hash, 1 if ok else 0)
        return nonce, contract, receipts

    @property
    def head(self) -> int:
        return len(self.blocks) - 1

    @property
    def finalized(self) -> int | None:
        # Never moves back: a reorganisation that shortens the chain leaves the finalized block as it was.
        self.finalized_mark = max(self.finalized_mark, self.head - self.lag)
        return self.finalized_mark if self.finalized_mark >= 0 else None

    def submit(self, tx: Tx) -> None:
        nonce = self.replay()[0]
        if tx.nonce < nonce:
            return  # nonce too low: the node refuses it
        old = self.pool.get(tx.nonce)
        if old is not None and (
            bump(old.max_fee, MIN_FEE_BUMP_BPS) > tx.max_fee
            or bump(old.priority_fee, MIN_FEE_BUMP_BPS) > tx.priority_fee
        ):
            return  # replacement underpriced
        self.pool[tx.nonce] = tx

    def mine(self) -> None:
        nonce = self.replay()[0]
        tx = self.pool.pop(nonce, None) or next((r for r in self.rivals if r.nonce == nonce), None)
        self.blocks.append((self._fresh(), [tx] if tx else []))

    def mine_rival(self, batch_id: int, root: str) -> None:
        """Another registry process commits the same batch at the account's next nonce, mined at once."""
        nonce = self.replay()[0]
        tx = Tx(self._fresh(), nonce, 100, 2, batch_id, root)
        self.rivals.append(tx)
        self.pool.pop(nonce, None)
        self.blocks.append((self._fresh(), [tx]))

    def reorg(self, depth: int) -> None:
        finalized = self.finalized
        keep = max(len(self.blocks) - depth, 0 if finalized is None else finalized + 1)
        for _, txs in self.blocks[keep:]:
            for tx in txs:
                self.pool.setdefault(tx.nonce, tx)
        del self.blocks[keep:]

    def view_for(self, batch: Batch) -> ChainView:
        nonce, contract, receipts = self.replay()
        wanted = hashes_to_look_up(batch)
        pool_hashes = {tx.hash for tx in self.pool.values()}
        held = contract.get(batch.id)
        return ChainView(
            head=self.head,
            finalized=self.finalized,
            receipts={h: receipts[h] for h in wanted if h in receipts},
            in_pool=frozenset(h for h in wanted if h in pool_hashes),
            committed=Commit(held[0], receipts[held[1]]) if held else None,
            nonce_latest=nonce,
            nonce_pending=max([nonce, *(n + 1 for n in self.pool)]),
            max_fee=100,
            priority_fee=2,
        )


@dataclass
class Driver:
    """The payout job as the next session may write it: persist, then act; a crash loses the unpersisted."""

    chain: Chain
    persisted: Batch
    signed: dict[str, Tx] = field(default_factory=dict)  # persisted with the batch, write-ahead
    now: float = 0
    nonces_broadcast: set[int] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)  # the steps met, for --hypothesis-show-statistics

    def run_once(self, crash_at: int | None) -> Step:
        batch = self.persisted
        step = next_step(batch, self.chain.view_for(batch), self.now, POLICY)
        self.kinds.add(type(step).__name__)
        if isinstance(step, Sign | Replace):
            assert self.chain.replay()[1].get(batch.id) is None, "signed a commit the contract already holds"
            tx = Tx(self.chain._fresh(), step.nonce, step.max_fee, step.priority_fee, batch.id, batch.root)
            new = apply(batch, Sent(step.nonce, Attempt(tx.hash, tx.max_fee, tx.priority_fee, self.now)))
            if crash_at == 0:
                return step  # signed, never recorded, never sent
            self.persisted, self.signed[tx.hash] = new, tx
            if crash_at == 1:
                return step  # recorded, not sent
            self._send(tx)
        elif isinstance(step, Broadcast):
            self._send(self.signed[step.tx_hash])
        elif isinstance(step, Mined | AlreadyCommitted):
            event = MinedEvent(step.receipt) if isinstance(step, Mined) else Adopted(step.receipt)
            self._persist(apply(batch, event), crash_at)
        elif isinstance(step, Confirmed):
            self._persist(apply(batch, ConfirmedEvent()), crash_at)
        elif isinstance(step, Reorged):
            self._persist(apply(batch, ReorgedEvent()), crash_at)
        elif isinstance(step, Final) and not batch.final:
            self._persist(apply(batch, Finalized()), crash_at)
        return step

    def _send(self, tx: Tx) -> None:
        self.nonces_broadcast.add(tx.nonce)
        self.chain.submit(tx)

    def _persist(self, batch: Batch, crash_at: int | None) -> None:
        if crash_at is None:
            self.persisted = batch


ACTIONS = st.one_of(
    st.tuples(st.just("run"), st.none() | st.integers(0, 1)),
    st.tuples(st.just("run"), st.none()),
    st.tuples(st.just("mine"), st.integers(1, 4)),
    st.tuples(st.just("reorg"), st.integers(1, 6)),
    st.tuples(st.just("drop"), st.just(0)),
    st.tuples(st.just("time"), st.integers(1, 120)),
    st.tuples(st.just("rival"), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTIONS, max_size=40))
def test_crashes_and_reorgs_never_pay_twice_and_always_end_final(
    actions: list[tuple[str, int | None]],
) -> None:
    chain = Chain()
    chain.mine()
    driver = Driver(chain, pending())
    for action, arg in actions:
        if action == "run":
            driver.run_once(arg)
        elif action == "mine":
            for _ in range(arg or 0):
                chain.mine()
        elif action == "reorg":
            chain.reorg(arg or 0)
        elif action == "drop":
            chain.pool.clear()  # the node forgets its pool (restart, eviction)
        elif action == "time":
            driver.now += arg or 0
        elif action == "rival":
            chain.mine_rival(driver.persisted.id, driver.persisted.root)
        assert len(driver.nonces_broadcast) <= 1
    # From here the chain behaves: a block every fourth look, 25 s apart, so slow enough to replace.
    for i in range(400):
        if driver.persisted.final:
            break
        step = driver.run_once(None)
        assert not isinstance(step, Failed), step
        driver.now += 25
        if i % 4 == 3:
            chain.mine()
    for kind in sorted(driver.kinds):
        note_kind(kind)
    batch = driver.persisted
    assert batch.final and batch.state is BatchState.FINAL
    _, contract, receipts = chain.replay()
    assert contract[batch.id][0] == ROOT
    assert batch.receipt is not None and receipts[batch.receipt.tx_hash] == batch.receipt
    assert len({tx.nonce for h, tx in driver.signed.items() if h in {a.tx_hash for a in batch.attempts}}) <= 1
    assert len({a.tx_hash for a in batch.attempts}) == len(batch.attempts)
