"""The usage recorder on real databases: idempotent writes, conflicts, the journal across crashes.

A crash is a real one: a child process records events and SIGKILLs itself; a database failure is
a real one too (the table is renamed away under the recorder, then back).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import text

from mcpz.errors import McpzError, UsageError
from registry_server.accounts import service as accounts
from registry_server.settings import RegistrySettings
from registry_server.state import RegistryState
from registry_server.usage.events import Outcome, UsageEvent
from registry_server.usage.service import BATCH_SIZE, UsageRecorder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclasses.dataclass
class Setup:
    data_dir: Path
    database_url: str | None
    state: RegistryState
    account_id: int

    def settings(self, **kw: object) -> RegistrySettings:
        env = {"MCPZ_DATABASE_URL": self.database_url} if self.database_url else {}
        return RegistrySettings.load(data_dir=self.data_dir, env=env, **kw)

    def recorder(self, flush_interval: float = 3600.0, batch_size: int = BATCH_SIZE) -> UsageRecorder:
        """A recorder whose flusher, by default, only writes when asked (or on a full batch)."""
        settings = self.settings(usage_flush_interval=flush_interval)
        return UsageRecorder(RegistryState(settings, self.state.db, self.state.repos), batch_size=batch_size)

    def rows(self) -> dict[str, str]:
        with self.state.db.session() as session:
            return dict(session.execute(text("SELECT id, digest FROM usage_events")).all())

    def count(self) -> int:
        with self.state.db.session() as session:
            return int(session.execute(text("SELECT count(*) FROM usage_events")).scalar_one())

    def files(self) -> list[str]:
        return sorted(p.name for p in (self.data_dir / "usage").iterdir() if p.name.startswith("journal"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    env = {"MCPZ_DATABASE_URL": url} if url else {}
    state = RegistryState.open(RegistrySettings.load(data_dir=tmp_path / "registry", env=env))
    with state.db.session() as session:
        account_id = accounts.create_account(session, "acme").id
    yield Setup(tmp_path / "registry", url, state, account_id)
    state.close()


def event(setup: Setup, n: int, **changes: object) -> UsageEvent:
    base = UsageEvent(
        id=f"ev-{n:06d}",
        account_id=setup.account_id,
        token_id=None,
        agent="acme/echo",
        version="1.0.0",
        tool="echo",
        deployment="acme/echo",
        replica_id="r1",
        node_id="n1",
        started_us=1_700_000_000_000_000 + n,
        duration_us=1500,
        outcome=Outcome.OK,
        bytes_in=100,
        bytes_out=200,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def running(setup: Setup) -> AsyncIterator[UsageRecorder]:
    recorder = setup.recorder()
    await recorder.start()
    yield recorder
    await recorder.stop()


# --- record_many: the idempotent write ---------------------------------------------------------------


def test_the_same_event_twice_is_stored_once(setup: Setup) -> None:
    recorder = setup.recorder()
    first = recorder.record_many([event(setup, 1), event(setup, 2)])
    assert (first.inserted, first.duplicates, first.conflicts) == (2, 0, [])
    again = recorder.record_many([event(setup, 1), event(setup, 2), event(setup, 2), event(setup, 3)])
    assert (again.inserted, again.duplicates, again.conflicts) == (1, 3, [])
    assert setup.rows() == {f"ev-{n:06d}": event(setup, n).digest() for n in (1, 2, 3)}
    assert (recorder.stats.written, recorder.stats.duplicates, recorder.stats.conflicts) == (3, 3, 0)


def test_an_id_reused_with_another_payload_is_refused_and_kept(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = setup.recorder()
    recorder.record_many([event(setup, 1)])
    forged = event(setup, 1, bytes_out=999_999)
    outcome = recorder.record_many([forged, event(setup, 2)])
    assert (outcome.inserted, outcome.duplicates, outcome.conflicts) == (1, 0, ["ev-000001"])
    # Within one batch too: the first of an id wins, a different second is refused.
    inside = recorder.record_many([event(setup, 3), event(setup, 3, tool="other")])
    assert (inside.inserted, inside.conflicts) == (1, ["ev-000003"])

    assert recorder.stats.conflicts == 2
    assert setup.rows()["ev-000001"] == event(setup, 1).digest()  # the stored event is untouched
    kept = [
        json.loads(line) for line in (setup.data_dir / "usage" / "conflicts.jsonl").read_text().splitlines()
    ]
    assert [k["event"] for k in kept] == [forged.to_dict(), event(setup, 3, tool="other").to_dict()]
    assert kept[0]["stored_digest"] == event(setup, 1).digest()
    assert kept[0]["digest"] == forged.digest()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [getattr(r, "event_id", None) for r in errors] == ["ev-000001", "ev-000003"]


def test_large_batches_are_written_in_chunks(setup: Setup) -> None:
    recorder = setup.recorder()
    events = [event(setup, n) for n in range(1234)]
    assert recorder.record_many(events).inserted == 1234
    assert recorder.record_many(events).duplicates == 1234
    assert setup.count() == 1234


# --- record, flush, stop ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_recorded_events_reach_the_database_once_on_flush_and_stop(setup: Setup) -> None:
    recorder = setup.recorder()
    await recorder.start()
    for n in range(10):
        recorder.record(event(setup, n))
    recorder.record(event(setup, 3))  # a retried record counts once
    assert recorder.stats.pending == 11
    assert (setup.data_dir / "usage" / "journal").read_bytes().count(b"\n") == 11
    assert setup.count() == 0  # nothing is written on the call path

    assert await recorder.flush()
    assert setup.count() == 10
    assert (recorder.stats.recorded, recorder.stats.written, recorder.stats.duplicates) == (11, 10, 1)
    assert recorder.stats.pending == 0
    assert setup.files() == ["journal"]

    for n in range(10, 15):
        recorder.record(event(setup, n))
    await recorder.stop()
    assert setup.count() == 15
    assert setup.files() == []  # an empty journal is removed on stop


@pytest.mark.anyio
async def test_the_flusher_writes_on_its_own(setup: Setup) -> None:
    recorder = setup.recorder(flush_interval=0.05)
    await recorder.start()
    try:
        for n in range(20):
            recorder.record(event(setup, n))
        with anyio.fail_after(5):
            while recorder.stats.written < 20:
                await anyio.sleep(0.01)
        assert setup.count() == 20
    finally:
        await recorder.stop()


@pytest.mark.anyio
async def test_a_full_batch_wakes_the_flusher_before_its_interval(setup: Setup) -> None:
    recorder = setup.recorder(batch_size=50)  # the interval is an hour
    await recorder.start()
    try:
        for n in range(50):
            recorder.record(event(setup, n))
        with anyio.fail_after(5):
            while recorder.stats.written < 50:
                await anyio.sleep(0.01)
    finally:
        await recorder.stop()


@pytest.mark.anyio
async def test_record_works_from_another_thread(running: UsageRecorder, setup: Setup) -> None:
    def work() -> None:
        for n in range(100):
            running.record(event(setup, n))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert await running.flush()
    assert setup.count() == 100
    assert running.stats.duplicates == 300


@pytest.mark.anyio
async def test_record_needs_a_started_recorder(setup: Setup) -> None:
    recorder = setup.recorder()
    with pytest.raises(McpzError, match="not running"):
        recorder.record(event(setup, 1))
    await recorder.start()
    await recorder.stop()
    with pytest.raises(McpzError, match="not running"):
        recorder.record(event(setup, 1))


@pytest.mark.anyio
async def test_two_recorders_never_share_a_journal(running: UsageRecorder, setup: Setup) -> None:
    second = setup.recorder()
    with pytest.raises(UsageError, match=f"another registry process \\(pid {os.getpid()}\\)") as caught:
        await second.start()
    assert caught.value.hint and "MCPZ_REGISTRY_DATA" in caught.value.hint
    running.record(event(setup, 1))  # the first one goes on


# --- crashes and database failures --------------------------------------------------------------------

CRASH = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from registry_server.settings import RegistrySettings
    from registry_server.state import RegistryState
    from registry_server.usage.service import UsageRecorder
    from registry_server.usage.events import UsageEvent

    async def main() -> None:
        data_dir, account_id = Path(sys.argv[1]), int(sys.argv[2])
        state = RegistryState.open(RegistrySettings.load(data_dir=data_dir, usage_flush_interval=3600))
        recorder = UsageRecorder(state)
        await recorder.start()
        for n in range(250):
            recorder.record(UsageEvent(
                id=f"ev-{n:06d}", account_id=account_id, token_id=None, agent="acme/echo",
                version="1.0.0", tool="echo", deployment="acme/echo", replica_id="r1", node_id="n1",
                started_us=1_700_000_000_000_000 + n, duration_us=1500, outcome="ok",
                bytes_in=100, bytes_out=200,
            ))
            if n == 99:
                assert await recorder.flush()  # the first hundred are in the database already
        print("recorded", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no stop(), no flush, no atexit

    asyncio.run(main())
    """
)


def test_a_killed_process_loses_no_recorded_event(setup: Setup) -> None:
    env = dict(os.environ)
    env.pop("MCPZ_DATABASE_URL", None)
    if setup.database_url:
        env["MCPZ_DATABASE_URL"] = setup.database_url
    done = subprocess.run(
        [sys.executable, "-c", CRASH, str(setup.data_dir), str(setup.account_id)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout == "recorded\n"
    assert setup.count() == 100
    assert setup.files() == ["journal"]

    async def restart() -> UsageRecorder:
        recorder = setup.recorder()
        await recorder.start()  # replays the dead process's journal before anything else
        assert setup.count() == 250
        assert setup.files() == ["journal"]  # the fresh one
        await recorder.stop()
        return recorder

    recorder = anyio.run(restart)
    assert setup.rows() == {f"ev-{n:06d}": event(setup, n).digest() for n in range(250)}
    assert (recorder.stats.written, recorder.stats.duplicates) == (150, 0)


@pytest.mark.anyio
async def test_a_crash_after_commit_before_cleanup_counts_each_event_once(setup: Setup) -> None:
    """The window between a batch's commit and its file's deletion: replay finds the rows there."""
    committed = [event(setup, n) for n in range(5)]
    setup.recorder().record_many(committed)
    usage = setup.data_dir / "usage"
    usage.mkdir(parents=True, exist_ok=True)
    lines = [e.canonical() for e in [*committed, event(setup, 5), event(setup, 6)]]
    (usage / "journal.7.flushing").write_bytes(b"\n".join(lines) + b"\n")
    (usage / "journal").write_bytes(event(setup, 7).canonical() + b"\n" + b'{"id": "torn')  # OS crash

    recorder = setup.recorder()
    await recorder.start()
    try:
        assert setup.count() == 8
        assert (recorder.stats.written, recorder.stats.duplicates, recorder.stats.pending) == (3, 5, 0)
        assert setup.files() == ["journal"]
        assert (usage / "damaged.jsonl").read_bytes() == b'{"id": "torn\n'
    finally:
        await recorder.stop()


def _rename_table(setup: Setup, old: str, new: str) -> None:
    with setup.state.db.session() as session:
        session.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


@pytest.mark.anyio
async def test_a_database_failure_keeps_every_event_for_the_next_round(
    running: UsageRecorder, setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(10):
        running.record(event(setup, n))
    _rename_table(setup, "usage_events", "usage_events_away")
    try:
        assert not await running.flush()
        running.record(event(setup, 10))
        assert not await running.flush()
        assert running.stats.pending == 11
        assert setup.files() == ["journal", "journal.1.flushing", "journal.2.flushing"]
    finally:
        _rename_table(setup, "usage_events_away", "usage_events")
    assert any("kept in the journal" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert await running.flush()
    assert setup.count() == 11
    assert running.stats.pending == 0
    assert setup.files() == ["journal"]


@pytest.mark.anyio
async def test_a_stop_while_the_database_fails_leaves_the_events_for_the_next_start(setup: Setup) -> None:
    recorder = setup.recorder()
    await recorder.start()
    for n in range(10):
        recorder.record(event(setup, n))
    _rename_table(setup, "usage_events", "usage_events_away")
    try:
        await recorder.stop()
    finally:
        _rename_table(setup, "usage_events_away", "usage_events")
    assert setup.count() == 0
    assert setup.files() == ["journal.1.flushing"]

    again = setup.recorder()
    await again.start()
    await again.stop()
    assert setup.count() == 10
    assert setup.files() == []


def test_batches_of_every_size_use_a_few_distinct_insert_statements(setup: Setup) -> None:
    # Each flush writes however many events came in since the last one. One multi-row INSERT per
    # batch size made one distinct statement per size, each prepared and kept in the driver's
    # statement cache of every pooled connection: under bench_gateway's load the registry's
    # SQLite memory grew ~2-4 MB per round. Batches are now split into power-of-two chunks.
    from sqlalchemy import event as sa_event

    statements: set[str] = set()

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO USAGE_EVENTS"):
            statements.add(statement)

    recorder = setup.recorder()
    sa_event.listen(setup.state.db.engine, "before_cursor_execute", seen)
    try:
        n = 0
        for size in range(1, 120):
            recorder.record_many([event(setup, n + i) for i in range(size)])
            n += size
    finally:
        sa_event.remove(setup.state.db.engine, "before_cursor_execute", seen)
    assert setup.count() == n
    assert len(statements) <= 8  # sizes 1, 2, 4, ..., 64 (CHUNK bounds the largest)
