"""The backoff of failed replicas (pure): `registry_server.deployments.retries`."""

from __future__ import annotations

from registry_server.deployments.retries import Backoff, RetryBook


def test_backoff_doubles_from_base_up_to_cap() -> None:
    backoff = Backoff(base=5.0, cap=60.0)
    assert [backoff.delay(n) for n in range(0, 7)] == [0.0, 5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert backoff.delay(10_000) == 60.0


def test_a_failed_replica_is_due_after_its_backoff_and_not_before() -> None:
    book = RetryBook(Backoff(base=5.0, cap=60.0))
    assert book.failed("r1", now=100.0) == 105.0
    assert book.due(104.9) == set() and book.due(105.0) == {"r1"}
    assert book.next_due() == 105.0
    book.retried("r1")
    assert book.due(1000.0) == set() and book.next_due() is None
    assert book.failed("r1", now=200.0) == 210.0  # the second failure in a row waits twice as long
    assert book.failures("r1") == 2


def test_force_makes_it_due_now_and_restart_forgets_the_count() -> None:
    book = RetryBook(Backoff(base=5.0, cap=60.0))
    book.failed("r1", now=0.0)
    book.failed("r1", now=10.0)
    book.force(["r1"], now=11.0)
    assert book.due(11.0) == {"r1"} and book.failures("r1") == 2
    book.force(["r1"], now=12.0, reset=True)
    assert book.failures("r1") == 0
    assert book.failed("r1", now=13.0) == 18.0


def test_a_long_run_resets_the_count_and_forget_drops_it() -> None:
    book = RetryBook(Backoff(base=5.0, cap=60.0, reset_after=100.0))
    book.failed("r1", now=0.0)
    book.failed("r1", now=10.0)
    book.running("r1", now=20.0)
    assert book.due(1000.0) == set()
    assert book.failed("r1", now=50.0) == 50.0 + 20.0  # ran 30 s: the count goes on (3rd failure)
    book.running("r1", now=60.0)
    assert book.failed("r1", now=200.0) == 205.0  # ran 140 s: counted from zero again
    book.forget("r1")
    assert book.failures("r1") == 0 and book.due_at("r1") is None
