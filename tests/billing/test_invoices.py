"""Invoices, credit notes, creator statements and subscription renewals on real databases (SQLite
and PostgreSQL): a month closes once even under racing closers, numbers run without gaps."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from billingutil import AGENT, World, open_world, usage_event

from mcpz.errors import NotFoundError, UsageError
from registry_server.accounts import service as accounts
from registry_server.billing import invoices, ledger, periods, refunds, service, statements
from registry_server.billing.models import Invoice, Subscription
from registry_server.billing.pricing import Pricing
from registry_server.usage.events import UsageEvent
from registry_server.usage.service import UsageRecorder

FEE = 2000
DAY = service.DAY_US
WINDOW = 7 * DAY
# usage_event(n) happens at 1_800_000_000 s + n us: 2027-01-15.
JANUARY = "2027-01"
IN_FEBRUARY = invoices.period_bounds("2027-02")[0] + DAY
IN_JANUARY = invoices.period_bounds(JANUARY)[0] + 20 * DAY  # inside the refund window of the calls


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    w = open_world(tmp_path / "registry", url)
    yield w
    w.state.close()


def calls(world: World, events: list[UsageEvent]) -> None:
    UsageRecorder(world.state).record_many(events)
    service.rate_all(world.state.db, FEE)


def new_account(world: World, name: str) -> int:
    with world.state.db.session() as session:
        account_id = accounts.create_account(session, name).id
        service.credit(session, account_id, 100_000_000)
    return account_id


def ledger_ok(world: World) -> None:
    with world.state.db.session() as session:
        assert service.verify_ledger(session).ok


def test_the_draft_grows_with_usage_and_the_closed_month_is_final(world: World) -> None:
    calls(world, [usage_event(n, world.consumer, price=2_000, plan="per-call") for n in range(3)])
    calls(world, [usage_event(9, world.consumer, price=5_000, plan="per-call", tool="search")])
    with world.state.db.session() as session:
        draft = invoices.draft(session, world.consumer, IN_JANUARY)
    assert (draft.number, draft.period, draft.total, draft.calls) == (None, JANUARY, 11_000, 4)
    assert [(x.tool, x.calls, x.amount) for x in draft.lines] == [("echo", 3, 6_000), ("search", 1, 5_000)]
    assert draft.to_dict()["status"] == "draft"

    with pytest.raises(UsageError, match="not over yet"), world.state.db.session() as session:
        invoices.close_period(session, JANUARY, IN_JANUARY)
    with world.state.db.session() as session:
        assert invoices.close_period(session, JANUARY, IN_FEBRUARY) == [1]
    calls(world, [usage_event(10, world.consumer, price=2_000, plan="per-call")])  # late: not on it
    with world.state.db.session() as session:
        assert invoices.close_period(session, JANUARY, IN_FEBRUARY + 1) == []  # closes once
        final = invoices.invoice_by_number(session, world.consumer, 1)
        with pytest.raises(NotFoundError):  # another account's number is nobody's
            invoices.invoice_by_number(session, world.creator, 1)
    out = final.to_dict()
    assert (out["kind"], out["status"], out["total"], out["paid"], out["paid_from"], out["amount_due"]) == (
        "invoice",
        "final",
        11_000,
        True,
        "balance",
        0,
    )


def test_racing_closers_make_one_invoice_per_account_and_numbers_without_gaps(world: World) -> None:
    consumers = [world.consumer] + [new_account(world, f"user{i}") for i in range(5)]
    calls(
        world,
        [
            usage_event(i * 100 + n, who, id=f"ev-{i}-{n}", price=1_000 * (i + 1), plan="per-call")
            for i, who in enumerate(consumers)
            for n in range(3)
        ],
    )
    closers = 6
    barrier = threading.Barrier(closers)
    made: list[list[int]] = []
    failed: list[BaseException] = []

    def close() -> None:
        try:
            barrier.wait(timeout=30)
            with world.state.db.session() as session:
                made.append(invoices.close_period(session, JANUARY, IN_FEBRUARY))
        except BaseException as e:
            failed.append(e)

    threads = [threading.Thread(target=close) for _ in range(closers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failed, failed
    assert sorted(n for numbers in made for n in numbers) == list(range(1, len(consumers) + 1))
    assert sum(1 for numbers in made if numbers) == 1  # one closer did it all; the rest found it done
    with world.state.db.session() as session:
        assert invoices.all_numbers(session) == list(range(1, len(consumers) + 1))
        for i, who in enumerate(consumers):
            [mine] = invoices.invoices_of(session, who)
            assert (mine.period, mine.total) == (JANUARY, 3 * 1_000 * (i + 1))


def test_a_refund_before_closing_shows_on_the_invoice_and_after_it_as_a_credit_note(world: World) -> None:
    calls(world, [usage_event(n, world.consumer, price=10_000, plan="per-call") for n in range(3)])
    before = service.balance_of
    with world.state.db.session() as session:
        start = before(session, world.consumer).available
        done = refunds.refund(session, "ev-0000000", WINDOW, reason="agent was down", at_us=IN_JANUARY)
        assert (done.amount, done.new, done.credit_note) == (10_000, True, None)
        assert before(session, world.consumer).available == start + 10_000
        assert before(session, world.creator).pending == 2 * 8_000
    with world.state.db.session() as session:
        again = refunds.refund(session, "ev-0000000", WINDOW, at_us=IN_JANUARY)
        assert not again.new
        assert invoices.close_period(session, JANUARY, IN_FEBRUARY) == [1]
        invoice = invoices.invoice_by_number(session, world.consumer, 1)
    assert invoice.total == 20_000
    assert [(x.kind, x.calls, x.amount) for x in invoice.lines] == [
        ("charge", 3, 30_000),
        ("refund", -1, -10_000),
    ]

    with world.state.db.session() as session:  # after closing: a credit note, numbered next
        done = refunds.refund(session, "ev-0000001", WINDOW, at_us=IN_JANUARY + 1)
        assert done.credit_note == 2
    with world.state.db.session() as session:
        assert refunds.refund(session, "ev-0000001", WINDOW, at_us=IN_JANUARY + 2).credit_note == 2
        note = invoices.invoice_by_number(session, world.consumer, 2)
        assert invoices.invoice_by_number(session, world.consumer, 1).total == 20_000  # never edited
        listed = [(x.number, x.kind) for x in invoices.invoices_of(session, world.consumer)]
    assert (note.kind, note.period, note.refers_to, note.total) == ("credit-note", JANUARY, 1, -10_000)
    assert note.lines[0].event == "ev-0000001"
    assert listed == [(2, "credit-note"), (1, "invoice")]
    ledger_ok(world)


def test_a_refund_after_the_window_is_refused(world: World) -> None:
    calls(world, [usage_event(0, world.consumer, price=10_000, plan="per-call")])
    with pytest.raises(UsageError, match="past the refund window"), world.state.db.session() as session:
        refunds.refund(session, "ev-0000000", WINDOW, at_us=IN_FEBRUARY + 30 * DAY)
    with world.state.db.session() as session:  # earnings matured: refused at any time after
        service.mature_earnings(session, WINDOW, IN_FEBRUARY + 30 * DAY)
    with pytest.raises(UsageError, match="past the refund window"), world.state.db.session() as session:
        refunds.refund(session, "ev-0000000", WINDOW, at_us=IN_JANUARY)
    with pytest.raises(NotFoundError), world.state.db.session() as session:
        refunds.refund(session, "ev-nope", WINDOW, at_us=IN_JANUARY)
    ledger_ok(world)


def test_the_statement_sums_earnings_fees_and_refunds_per_agent_and_tool(world: World) -> None:
    partner = new_account(world, "partner")
    with world.state.db.session() as session:
        service.set_splits(session, AGENT, [(world.creator, 7_500), (partner, 2_500)])
    calls(world, [usage_event(n, world.consumer, price=10_000, plan="per-call") for n in range(4)])
    calls(world, [usage_event(9, world.consumer, price=1_000, plan="per-call", tool="search")])
    with world.state.db.session() as session:
        refunds.refund(session, "ev-0000000", WINDOW, at_us=IN_JANUARY)
        mine = statements.statement(session, world.creator, JANUARY)
        theirs = statements.statement(session, partner, JANUARY)
        nothing = statements.statement(session, world.consumer, JANUARY)
    # 10,000 a call: 2,000 fee, 8,000 to creators, 6,000 / 2,000 by the split.
    assert [(x.tool, x.calls, x.earnings, x.fees, x.refunds) for x in mine.lines] == [
        ("echo", 4, 24_000, 6_000, 6_000),
        ("search", 1, 600, 150, 0),
    ]
    assert (theirs.earnings, theirs.fees, theirs.refunds) == (8_200, 2_050, 2_000)
    assert mine.fees + theirs.fees == 4 * 2_000 + 200  # pro rata sums to the fees when it divides
    out = mine.to_dict()
    assert (out["net"], out["payouts"]) == (24_600 - 6_000, 0)
    assert "not yet available" in out["payouts_note"]
    assert nothing.lines == []


def test_subscriptions_renew_at_the_month_turn_or_end_when_the_balance_falls_short(world: World) -> None:
    poor = new_account(world, "poor")
    with world.state.db.session() as session:
        service.set_prices(
            session, AGENT, Pricing(monthly_fee=5_000_000), by=world.creator, notice_us=0, at_us=1
        )
        service.credit(session, world.consumer, 20_000_000)
        rich = service.subscribe(session, world.consumer, AGENT, "monthly", FEE, IN_JANUARY).id
        short = service.subscribe(session, poor, AGENT, "monthly", FEE, IN_JANUARY).id
    with world.state.db.session() as session:
        service.post(
            session,
            ledger.transfer("test:drain", "test", ledger.consumer_available(poor), "test:sink", 94_000_000),
        )
    with world.state.db.session() as session:
        assert periods.renew_subscriptions(session, FEE, IN_FEBRUARY) == periods.Renewals(1, 1)
    with world.state.db.session() as session:  # again: nothing more
        assert periods.renew_subscriptions(session, FEE, IN_FEBRUARY + 1) == periods.Renewals(0, 0)
        kept = session.get(Subscription, rich)
        gone = session.get(Subscription, short)
        assert kept is not None and gone is not None
        assert (kept.paid_through, kept.ended_us) == ("2027-02", None)
        assert gone.ended_us == IN_FEBRUARY
        assert service.balance_of(session, world.consumer).available == 20_000_000 - 2 * 5_000_000
        assert invoices.close_period(session, JANUARY, IN_FEBRUARY) == [1, 2]
        feb = invoices.draft(session, world.consumer, IN_FEBRUARY)
    assert [(x.agent, x.tool, x.plan, x.amount) for x in feb.lines] == [(AGENT, "", "monthly", 5_000_000)]
    ledger_ok(world)


def test_the_month_closes_after_a_grace_at_its_turn() -> None:
    start = invoices.period_bounds("2027-02")[0]
    assert periods.month_closing_due(start + 1) is None
    assert periods.month_closing_due(start + periods.CLOSE_GRACE_US) == JANUARY
    assert invoices.previous_period(invoices.period_bounds("2027-01")[0]) == "2026-12"
    with pytest.raises(UsageError, match="YYYY-MM"):
        invoices.period_bounds("2027-13")


def test_invoice_lines_are_stored_as_json_that_reads_back(world: World) -> None:
    calls(world, [usage_event(0, world.consumer, price=3, plan="per-call")])
    with world.state.db.session() as session:
        invoices.close_period(session, JANUARY, IN_FEBRUARY)
        row = session.get(Invoice, 1)
        view = invoices.invoice_by_number(session, world.consumer, 1)
    assert row is not None and json.loads(row.lines)[0]["amount"] == 3
    assert view.lines[0].to_dict() == {
        "kind": "charge",
        "agent": AGENT,
        "tool": "echo",
        "plan": "per-call",
        "calls": 1,
        "amount": 3,
    }


def test_a_refund_racing_the_close_lands_on_the_invoice_or_on_a_credit_note_never_both(world: World) -> None:
    calls(world, [usage_event(n, world.consumer, price=10_000, plan="per-call") for n in range(3)])
    barrier = threading.Barrier(2)
    failed: list[BaseException] = []

    def close() -> None:
        try:
            barrier.wait(timeout=30)
            with world.state.db.session() as session:
                invoices.close_period(session, JANUARY, IN_FEBRUARY)
        except BaseException as e:
            failed.append(e)

    def refund() -> None:
        try:
            barrier.wait(timeout=30)
            with world.state.db.session() as session:
                refunds.refund(session, "ev-0000002", 60 * DAY, at_us=IN_FEBRUARY)
        except BaseException as e:
            failed.append(e)

    threads = [threading.Thread(target=close), threading.Thread(target=refund)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failed, failed
    with world.state.db.session() as session:
        issued = invoices.invoices_of(session, world.consumer)
        assert invoices.all_numbers(session) == list(range(1, len(issued) + 1))
    invoice = next(i for i in issued if i.kind == "invoice")
    notes = [i for i in issued if i.kind == "credit-note"]
    refund_lines = [x for x in invoice.lines if x.kind == "refund"]
    assert len(notes) + len(refund_lines) == 1  # the refund is recorded exactly once
    assert invoice.total + sum(n.total for n in notes) == 20_000
    ledger_ok(world)


def test_two_operator_processes_closing_at_once_make_one_invoice_each(world: World) -> None:
    import os
    import subprocess
    import sys

    october = invoices.period_bounds("2026-10")[0] + DAY
    consumers = [world.consumer] + [new_account(world, f"proc{i}") for i in range(4)]
    calls(
        world,
        [
            usage_event(0, who, id=f"ev-p{i}", price=1_000, plan="per-call", started_us=october)
            for i, who in enumerate(consumers)
        ],
    )
    env = dict(os.environ)
    env.pop("MCPZ_DATABASE_URL", None)
    if world.database_url:
        env["MCPZ_DATABASE_URL"] = world.database_url
    argv = [sys.executable, "-m", "mcpz", "--json", "registry", "close-period", "2026-10", "--data"]
    procs = [
        subprocess.Popen(
            [*argv, str(world.data_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    made = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        made.append(json.loads(out)["invoices"])
    assert sorted(n for numbers in made for n in numbers) == list(range(1, len(consumers) + 1))
    with world.state.db.session() as session:
        assert invoices.all_numbers(session) == list(range(1, len(consumers) + 1))
