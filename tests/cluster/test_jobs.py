"""Jobs that run once across replicas: two `mcpz registry serve --replica` processes on one
PostgreSQL database and one data folder; each job runs on the replica holding its lease, and a
leader stopped with SIGSTOP past its lease makes no write once resumed (registry_server.leases)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from billingutil import usage_event
from meshutil import until
from registryproc import RegistryProcess
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from registry_server.accounts import service as accounts
from registry_server.db import Database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

JOBS = ("gc", "market", "billing", "usage-orphans", "deployments")
GC_RAN = '"msg": "scheduled gc"'  # the log line of each scheduled collection


def replica(tmp_path: Path, postgres_url: str, name: str, **settings: str) -> RegistryProcess:
    env = {
        "MCPZ_REGISTRY_REPLICA": "true",
        "MCPZ_REGISTRY_REPLICA_NAME": name,
        "MCPZ_REGISTRY_LEASE_TTL": "2",
        "MCPZ_REGISTRY_GC_INTERVAL": "0.3",
        "MCPZ_REGISTRY_MARKET_REFRESH_INTERVAL": "0.3",
    } | {f"MCPZ_REGISTRY_{k.upper()}": v for k, v in settings.items()}
    return RegistryProcess(tmp_path / "data", tmp_path / f"{name}.log", env=env, database=postgres_url)


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_engine(postgres_url)
    yield engine
    engine.dispose()


def leases(engine: Engine) -> dict[str, tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, holder, epoch FROM leases"))
        return {name: (holder, epoch) for name, holder, epoch in rows}


def log_of(registry: RegistryProcess) -> str:
    return registry.log.read_text(errors="replace")


def stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP): state T in /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def test_each_job_runs_on_one_replica_while_both_live_then_moves(
    tmp_path: Path, postgres_url: str, engine: Engine
) -> None:
    a = replica(tmp_path, postgres_url, "a")
    b = replica(tmp_path, postgres_url, "b")
    try:
        a.start()
        until(lambda: all(leases(engine).get(j) == ("a", 1) for j in JOBS), 30, "replica a to lead every job")
        b.start()
        # a keeps collecting while b runs beside it; b never does.
        seen = log_of(a).count(GC_RAN)
        until(lambda: log_of(a).count(GC_RAN) >= seen + 5, 30, "a's gc to run on")
        assert leases(engine) == {j: ("a", 1) for j in JOBS}
        assert GC_RAN not in log_of(b)
        assert "lease won" not in log_of(b)
        # a stops in order, giving its leases up: b takes every one, with the next epoch.
        a.stop()
        until(lambda: all(leases(engine).get(j) == ("b", 2) for j in JOBS), 30, "replica b to lead every job")
        until(lambda: GC_RAN in b.tail(), 30, "b's gc to run")
    finally:
        a.stop()
        b.stop()


def test_a_leader_paused_past_its_lease_makes_no_write_when_resumed(
    tmp_path: Path, postgres_url: str, engine: Engine
) -> None:
    """a stops itself (SIGSTOP) inside its gc run, just before deleting expired sign-in nonces;
    b takes the lease "gc" (epoch 2) but collects only hourly; a nonce that expired is added; a
    resumes (SIGCONT) where it stopped: the fence refuses its delete, and the nonce stays."""
    # a's first collection comes after it answers /healthz (and leads: it starts first).
    a = replica(tmp_path, postgres_url, "a", gc_interval="3")
    a.env["MCPZ_TEST_PAUSE_AT"] = "gc-before-rows"
    b = replica(tmp_path, postgres_url, "b", gc_interval="3600")
    try:
        a.start()
        until(lambda: leases(engine).get("gc") == ("a", 1), 30, "replica a to lead gc")
        b.start()
        assert a.proc is not None
        until(lambda: stopped(a.proc.pid), 30, "replica a to stop itself inside gc")  # type: ignore[union-attr]
        until(lambda: leases(engine).get("gc") == ("b", 2), 30, "replica b to take the lease over")
        past = datetime.now(UTC) - timedelta(hours=1)
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO auth_nonces (nonce, created_at, expires_at) VALUES ('n1', :t, :t)"),
                {"t": past},
            )
        os.kill(a.proc.pid, signal.SIGCONT)
        # Refused by the fence, or (paused inside a fenced transaction) cut off by the server once
        # idle for the lease's time (registry_server.leases.fence): either way nothing lands.
        until(
            lambda: any(
                why in a.tail()
                for why in (
                    "lease 'gc' epoch 1 is no longer held by a",
                    "server closed the connection",  # the server's termination, as psycopg saw it
                    "idle-in-transaction timeout",
                )
            ),
            30,
            "a's write to be refused",
        )
        # a goes on serving, and does not collect again: b holds the lease.
        until(lambda: a.tail().count("lease lost") >= 1, 30, "a to notice the lease is lost")
        assert a.proc.poll() is None
        with engine.connect() as conn:
            assert conn.execute(text("SELECT nonce FROM auth_nonces")).scalars().all() == ["n1"]
        assert leases(engine)["gc"] == ("b", 2)
        assert GC_RAN not in log_of(a)
    finally:
        if a.proc is not None and a.proc.poll() is None:
            os.kill(a.proc.pid, signal.SIGCONT)
        a.stop()
        b.stop()


def test_a_dead_replicas_usage_journal_is_written_by_a_survivor(
    tmp_path: Path, postgres_url: str, engine: Engine
) -> None:
    """b is killed (-9) with events in its journal not yet in the database; a, holding the lease
    "usage-orphans", finds b's folder unlocked and writes them, once; then b starts again cleanly."""
    a = replica(tmp_path, postgres_url, "a")
    b = replica(tmp_path, postgres_url, "b")
    try:
        a.start()
        b.start()
        db = Database(postgres_url)
        try:
            with db.session() as session:
                account_id = accounts.create_account(session, "acme").id
        finally:
            db.dispose()
        b.kill()
        folder = tmp_path / "data" / "usage" / "replicas" / "b"
        # What b journaled before it died: the lines its recorder appends, never flushed.
        events = [
            usage_event(n, account_id, id=f"ev-{n}", started_us=1_700_000_000_000_000 + n) for n in range(3)
        ]
        with (folder / "journal").open("ab") as f:
            f.write(b"".join(e.canonical() + b"\n" for e in events))

        def written() -> list[str]:
            with engine.connect() as conn:
                return list(conn.execute(text("SELECT id FROM usage_events ORDER BY id")).scalars())

        until(lambda: written() == ["ev-0", "ev-1", "ev-2"], 30, "a to write b's journal")
        assert leases(engine)["usage-orphans"] == ("a", 1)
        until(lambda: not any(p.name.startswith("journal") for p in folder.iterdir()), 30, "b's journal gone")
        b.start()  # its folder is free again: b takes it back
        assert written() == ["ev-0", "ev-1", "ev-2"]
        assert "replayed a dead replica's usage journal" in log_of(a)
    finally:
        a.stop()
        b.stop()
