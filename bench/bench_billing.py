"""Billing: rating usage exactly once on SQLite and PostgreSQL beside a naive rater, what billing adds
to a call through the gateway, and the time to verify a ledger of 1,000,000 entries.

- **rating**: `--events` priced usage events (10 consumers each under one hold, 3 agents, one of
  them split between two creators) are stored through `UsageRecorder.record_many` into a fresh,
  migrated database (not timed); then `registry_server.billing.service.rate_all` (ours: each
  database transaction claims a batch of events with one UPDATE, posts one ledger transaction and
  writes the batch's charges) is timed, `--rounds` times on fresh databases (the median shown).
  Beside it, on another fresh database with `--naive-events` of the same events, once, a naive
  rater: one database transaction per event (read the event, claim it, post its own ledger
  transaction, write its charges, update the balances).
  After each run it is checked that every event was rated once (no unrated event, one charge row
  per event and creator, the prices summed), that the ledger verifies in SQL, that money was only
  moved (consumers' reserved money down by the total, fees + earnings up by it) and that rating
  again rates nothing. A run that fails a check is FAILED, whatever its time.
- **gateway**: a registry process, one node process and the python template deployed twice
  (`bench/free`, no price: billing off; `bench/paid`, a per-call price of 0.002 USDC, a credited
  caller, receipts on), one replica each. One client, one keep-alive HTTP/1.1 connection and MCP
  session per agent; `--calls` sequential `tools/call add` on each, interleaved (free, paid, paid,
  free, ...) after `--warmup` calls each, every answer checked, and every paid answer's receipt
  verified against `/v1/billing/receipt-key`. Afterwards the caller's balance and usage must show
  exactly the paid calls. Added latency = p50(paid) - p50(free).
- **ledger verification**: `--entries` entries (transactions of 4 entries: a consumer pays, the
  platform's fee, two creators' earnings) and their balances bulk-loaded (executemany on SQLite,
  COPY on PostgreSQL; not timed), then `service.verify_ledger` timed; then one entry's amount is
  changed and the check must find it (also timed).

Goals (issue 15): rating at least 50,000 events/s on each database, exactly once; the gateway adds
under 0.5 ms at p50 with billing on. PostgreSQL is 127.0.0.1:5432 (database `test`, trust) or
MCPZ_TEST_POSTGRES_URL; a fresh database is made and dropped per run; without it its rows print
as unmeasured.

    python bench/bench_billing.py [--events 100000] [--rounds 3] [--naive-events 5000] [--calls 1000]
        [--entries 1000000] [--no-postgres] [--skip-gateway] [--keep] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _goals as g
import _mesh as mesh
import _registry as rb
from _postgres import postgres_base, scratch_database
from bench_gateway import GatewaySession, add_request, cpu_seconds

GOAL_EVENTS_PER_S = 50_000
GOAL_ADDED_P50_MS = 0.5
FEE_BPS = 2000
PRICE = 2_000  # 0.002 USDC
CONSUMERS = 10
AGENTS = ("acme/alpha", "acme/beta", "acme/gamma")  # gamma's creator share is split in two


# --- databases ------------------------------------------------------------------------------------


@contextmanager
def fresh_state(work: rb.Workdir, backend: str, pg_base: str | None, tag: str) -> Iterator[Any]:
    """A migrated registry database (RegistryState) on `backend`, in its own data folder."""
    from registry_server.settings import RegistrySettings
    from registry_server.state import RegistryState

    data = work.path / f"{backend}-{tag}"

    @contextmanager
    def url() -> Iterator[str | None]:
        if backend == "postgres":
            assert pg_base is not None
            with scratch_database(pg_base, "billing") as pg:
                yield pg
        else:
            yield None

    with url() as database_url:
        env = {"MCPZ_DATABASE_URL": database_url} if database_url else {}
        state = RegistryState.open(RegistrySettings.load(data_dir=data, env=env))
        try:
            yield state
        finally:
            state.close()


# --- rating ---------------------------------------------------------------------------------------


@dataclass
class World:
    consumers: list[int]
    holds: list[str]
    creators: list[int]
    held: int  # money moved into the consumers' reserved accounts
    priced: int = 0  # the sum of the events' prices
    events: list[str] = field(default_factory=list)


def populate(state: Any, count: int) -> World:
    """Accounts, a split, a hold per consumer, then `count` priced usage events stored (not timed)."""
    from registry_server.accounts import service as accounts
    from registry_server.billing import service
    from registry_server.usage.events import Outcome, UsageEvent
    from registry_server.usage.service import UsageRecorder

    with state.db.session() as session:
        creators = [accounts.create_account(session, "acme").id, accounts.create_account(session, "bea").id]
        consumers = [accounts.create_account(session, f"user{i}").id for i in range(CONSUMERS)]
    held = count * 1_100 + 10**6  # more than the events will cost
    holds = []
    with state.db.session() as session:
        service.set_splits(session, AGENTS[2], [(creators[0], 7_000), (creators[1], 3_000)])
        for consumer in consumers:
            service.credit(session, consumer, held, key=f"credit:bench:{consumer}")
            hold = service.take_hold(session, "bench", consumer, held, 1, 1)
            assert hold is not None
            holds.append(hold.id)
    world = World(consumers, holds, creators, held * CONSUMERS)
    recorder = UsageRecorder(state)
    base = 1_800_000_000_000_000
    batch: list[UsageEvent] = []
    for n in range(count):
        k = n % CONSUMERS
        price = 1_000 + n % 97  # varied, so splits and sums are not all alike
        event = UsageEvent(
            id=f"ev-{n:09d}",
            account_id=consumers[k],
            token_id=None,
            agent=AGENTS[n % len(AGENTS)],
            version="1.0.0",
            tool="add",
            deployment=AGENTS[n % len(AGENTS)],
            replica_id="r1",
            node_id="n1",
            started_us=base + n,
            duration_us=1500,
            outcome=Outcome.OK,
            bytes_in=100,
            bytes_out=200,
            price=price,
            plan="per-call",
            hold=holds[k],
        )
        world.priced += price
        world.events.append(event.id)
        batch.append(event)
        if len(batch) == 20_000:
            recorder.record_many(batch)
            batch = []
    if batch:
        recorder.record_many(batch)
    if state.db.engine.dialect.name == "postgresql":
        # What autovacuum does to a table of this size on its own: the planner's statistics.
        with state.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    return world


def naive_rate(db: Any, fee_bps: int) -> int:
    """One database transaction per event: what a rater without batching does."""
    from sqlalchemy import insert, select, update

    from registry_server.billing import ledger, service
    from registry_server.billing.models import Charge
    from registry_server.usage.models import UsageEventRow

    table: Any = UsageEventRow.__table__
    c = table.c
    with db.session() as session:
        ids = list(session.scalars(select(c.id).where(c.price > 0, c.rated.is_(None)).order_by(c.started_us)))
        shares = service.splits_of(session, AGENTS)  # looked up once: only the transactions are naive
    rated = 0
    for event_id in ids:
        with db.session() as session:
            row = session.execute(
                select(c.id, c.account_id, c.token_id, c.agent, c.version, c.tool, c.plan, c.started_us,
                       c.price, c.hold).where(c.id == event_id, c.rated.is_(None))
            ).one_or_none()  # fmt: skip
            if row is None:
                continue
            key = f"usage:{event_id}"
            claimed = session.execute(
                update(table).where(c.id == event_id, c.rated.is_(None)).values(rated=key)
            ).rowcount  # type: ignore[attr-defined]
            if claimed != 1:
                continue
            fee, parts = ledger.split(row.price, fee_bps, shares[row.agent])
            source = (
                ledger.consumer_reserved(row.account_id)
                if row.hold
                else ledger.consumer_available(row.account_id)
            )
            legs = [(source, -row.price), (ledger.PLATFORM_FEES, fee)]
            legs += [(ledger.creator_pending(creator), part) for creator, part in parts]
            service.post(session, ledger.transaction(key, "usage", legs), service.now_us())
            columns = ("event_id", "seq", "consumer_id", "token_id", "creator_id", "agent", "version",
                       "tool", "plan", "started_us", "price", "fee", "earning", "txn", "settled")  # fmt: skip
            rows = [
                (row.id, seq, row.account_id, row.token_id or 0, creator, row.agent, row.version,
                 row.tool, row.plan, row.started_us, row.price if seq == 0 else 0, fee if seq == 0 else 0,
                 part, key, None)
                for seq, (creator, part) in enumerate(parts)
            ]  # fmt: skip
            session.execute(insert(Charge), [dict(zip(columns, r, strict=True)) for r in rows])
            rated += 1
    return rated


def check_rated(state: Any, world: World, count: int, rate_again: Callable[[], int]) -> list[str]:
    """Every event rated exactly once and the money where it belongs; the problems found."""
    from sqlalchemy import func, select

    from registry_server.billing import ledger, service
    from registry_server.billing.models import Charge
    from registry_server.usage.models import UsageEventRow

    problems = []
    u, ch = UsageEventRow, Charge
    split_events = sum(1 for n in range(count) if AGENTS[n % len(AGENTS)] == AGENTS[2])
    with state.db.session() as session:
        unrated = session.scalar(select(func.count()).where(u.price > 0, u.rated.is_(None)))
        charges = session.scalar(select(func.count()).select_from(ch))
        events = session.scalar(select(func.count(func.distinct(ch.event_id))))
        paid = session.scalar(select(func.coalesce(func.sum(ch.price), 0)).where(ch.seq == 0))
        check = service.verify_ledger(session)
        names = [ledger.consumer_reserved(k) for k in world.consumers]
        reserved = sum(service.balances(session, names).values())
        earned = service.balances(
            session, [ledger.PLATFORM_FEES, *(ledger.creator_pending(k) for k in world.creators)]
        )
    if unrated:
        problems.append(f"{unrated} events left unrated")
    if events != count or charges != count + split_events:
        problems.append(
            f"{events} events charged in {charges} rows, expected {count} in {count + split_events}"
        )
    if paid != world.priced:
        problems.append(f"charged {paid}, the events cost {world.priced}")
    if not check.ok:
        problems.append(f"the ledger does not verify: {check.to_dict()}")
    if reserved != world.held - world.priced:
        problems.append(f"reserved {reserved}, expected {world.held - world.priced}")
    if sum(earned.values()) != world.priced:
        problems.append(f"fees and earnings {sum(earned.values())}, expected {world.priced}")
    again = rate_again()
    if again:
        problems.append(f"rating again rated {again} more events")
    return problems


def rating(
    work: rb.Workdir, backend: str, pg_base: str | None, events: int, naive_events: int, rounds: int
) -> dict[str, Any]:
    """Ours `rounds` times (the median shown; a shared machine moves single runs by a third), the
    naive rater once; each run on a fresh database."""
    from registry_server.billing import service

    out: dict[str, Any] = {}
    for method, count, times in (("ours", events, rounds), ("naive", naive_events, 1)):
        runs: list[float] = []
        problems: list[str] = []
        stored = 0.0
        for round_ in range(times):
            with fresh_state(work, backend, pg_base, f"{method}-{round_}") as state:
                started = time.perf_counter()
                world = populate(state, count)
                stored = time.perf_counter() - started
                gc.collect()  # what earlier runs left behind is not this run's to collect
                started = time.perf_counter()
                if method == "ours":
                    done = service.rate_all(state.db, FEE_BPS).events
                else:
                    done = naive_rate(state.db, FEE_BPS)
                seconds = time.perf_counter() - started
                again = (
                    (lambda: service.rate_all(state.db, FEE_BPS).events)
                    if method == "ours"
                    else (lambda: naive_rate(state.db, FEE_BPS))
                )
                wrong = ([] if done == count else [f"rated {done} of {count}"]) + check_rated(
                    state, world, count, again
                )
            problems += wrong
            runs.append(seconds)
            print(
                f"{backend} {method}: {count:,} events rated in {seconds:.2f} s "
                f"({count / seconds:,.0f}/s; stored in {stored:.1f} s)"
                + ("" if not wrong else f" WRONG: {wrong}"),
                flush=True,
            )
        seconds = rb.median(runs)
        out[method] = {
            "events": count,
            "seconds": round(seconds, 3),
            "events_per_s": round(count / seconds) if seconds else None,
            "runs_events_per_s": [round(count / r) for r in runs],
            "store_seconds": round(stored, 2),
            "exactly_once": not problems,
            "problems": problems,
        }
    return out


# --- the ledger's verification ----------------------------------------------------------------------


def load_ledger(state: Any, entries: int) -> tuple[int, float]:
    """Bulk-load balanced transactions of 4 entries and their balances; (transactions, seconds)."""
    from registry_server.billing import ledger

    txns = entries // 4
    started = time.perf_counter()
    txn_rows = [(f"usage:bench:{i:09d}", "usage", 1_800_000_000_000_000 + i, "") for i in range(txns)]
    entry_rows: list[tuple[str, str, int]] = []
    balances: dict[str, int] = {}
    for i in range(txns):
        price = 1_000 + i % 997
        fee = price * FEE_BPS // 10_000
        first = (price - fee) * 7 // 10
        key = txn_rows[i][0]
        legs = (
            (ledger.consumer_reserved(1_000 + i % 1000), -price),
            (ledger.PLATFORM_FEES, fee),
            (ledger.creator_pending(i % 100), first),
            (ledger.creator_pending(100 + i % 7), price - fee - first),
        )
        for account, amount in legs:
            entry_rows.append((key, account, amount))
            balances[account] = balances.get(account, 0) + amount
    balance_rows = sorted(balances.items())
    engine = state.db.engine
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            cursor = conn.connection.driver_connection.cursor()
            for table, columns, rows in (
                ("ledger_transactions", "key, kind, created_us, memo", txn_rows),
                ("ledger_entries", "txn, account, amount", entry_rows),
                ("ledger_balances", "account, balance", balance_rows),
            ):
                with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        else:
            conn.exec_driver_sql(
                "INSERT INTO ledger_transactions (key, kind, created_us, memo) VALUES (?, ?, ?, ?)", txn_rows
            )
            conn.exec_driver_sql(
                "INSERT INTO ledger_entries (txn, account, amount) VALUES (?, ?, ?)", entry_rows
            )
            conn.exec_driver_sql("INSERT INTO ledger_balances (account, balance) VALUES (?, ?)", balance_rows)
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    return txns, time.perf_counter() - started


def verification(work: rb.Workdir, backend: str, pg_base: str | None, entries: int) -> dict[str, Any]:
    from registry_server.billing import service

    with fresh_state(work, backend, pg_base, "ledger") as state:
        txns, load_s = load_ledger(state, entries)
        started = time.perf_counter()
        with state.db.session() as session:
            check = service.verify_ledger(session)
        seconds = time.perf_counter() - started
        with state.db.engine.begin() as conn:  # one entry changed behind the ledger's back
            conn.exec_driver_sql(
                "UPDATE ledger_entries SET amount = amount + 1 "
                "WHERE id = (SELECT min(id) FROM ledger_entries)"
            )
        started = time.perf_counter()
        with state.db.session() as session:
            tampered = service.verify_ledger(session)
        tampered_s = time.perf_counter() - started
    right = check.ok and check.entries == txns * 4 and check.transactions == txns
    found = not tampered.ok and len(tampered.unbalanced) == 1 and len(tampered.mismatched) == 1
    print(
        f"{backend} ledger: {check.entries:,} entries, {check.transactions:,} transactions, "
        f"{check.accounts:,} accounts loaded in {load_s:.1f} s; verified in {seconds:.2f} s "
        f"({'ok' if right else 'WRONG'}); one changed entry found in {tampered_s:.2f} s "
        f"({'yes' if found else 'NO'})",
        flush=True,
    )
    return {
        "entries": check.entries,
        "transactions": check.transactions,
        "accounts": check.accounts,
        "load_seconds": round(load_s, 2),
        "verify_seconds": round(seconds, 3),
        "verify_tampered_seconds": round(tampered_s, 3),
        "right": right,
        "tampering_found": found,
    }


# --- the gateway ----------------------------------------------------------------------------------

FREE_AGENT = "bench/free"
PAID_AGENT = "bench/paid"


async def call(gw: GatewaySession, a: int, receipt_key: str | None) -> tuple[float, str]:
    """One timed `tools/call add`; (seconds, problem or "")."""
    from mcpz.keys import receipts

    request_id = next(gw.ids)
    started = time.perf_counter()
    status, _, data = await gw.post(add_request(request_id, a))
    seconds = time.perf_counter() - started
    if status != 200:
        return seconds, f"HTTP {status}: {data[:200]!r}"
    message = json.loads(data)
    result = message.get("result") or {}
    text = (result.get("content") or [{}])[0].get("text")
    if message.get("id") != request_id or result.get("isError") or text != str(a + 7):
        return seconds, f"wrong answer: {data[:300]!r}"
    meta = result.get("_meta") or {}
    if receipt_key is None:
        if "mcpz/receipt" in meta:
            return seconds, "a free call carries a receipt"
    else:
        try:
            receipt = receipts.verify_result(result, receipt_key)
        except Exception as e:  # the problem is the figure's: a paid call without a good receipt
            return seconds, f"receipt: {e}"
        if receipt.price != PRICE or receipt.agent != PAID_AGENT:
            return seconds, f"receipt for {receipt.agent} at {receipt.price}"
    return seconds, ""


async def interleaved(port: int, caller: str, key: str, warmup: int, calls: int) -> dict[str, Any]:
    free = GatewaySession(port, f"/mcp/{FREE_AGENT}", caller)
    paid = GatewaySession(port, f"/mcp/{PAID_AGENT}", caller)
    deadline = time.monotonic() + 60
    await free.open(deadline)
    await paid.open(deadline)
    times: dict[str, list[float]] = {"free": [], "paid": []}
    problems: list[str] = []
    try:
        for i in range(warmup + calls):
            order = [("free", free, None), ("paid", paid, key)]
            if i % 2:
                order.reverse()  # neither side always goes first
            for label, gw, receipt_key in order:
                seconds, problem = await call(gw, i, receipt_key)
                if problem:
                    problems.append(f"{label}: {problem}")
                if i >= warmup:
                    times[label].append(seconds)
    finally:
        free.close()
        paid.close()
    return {"times": times, "problems": problems, "reconnects": free.reconnects + paid.reconnects}


async def cpu_per_call(port: int, caller: str, key: str, calls: int, registry_pid: int) -> dict[str, float]:
    """The registry's CPU milliseconds per call, free calls alone then paid calls alone: what
    billing costs the registry, steadier than wall time on a busy machine."""
    out: dict[str, float] = {}
    for label, agent, receipt_key in (("free", FREE_AGENT, None), ("paid", PAID_AGENT, key)):
        gw = GatewaySession(port, f"/mcp/{agent}", caller)
        await gw.open(time.monotonic() + 60)
        try:
            before = cpu_seconds(registry_pid)
            for i in range(calls):
                _, problem = await call(gw, i, receipt_key)
                if problem:
                    raise RuntimeError(f"{label}: {problem}")
            out[label] = round((cpu_seconds(registry_pid) - before) / calls * 1000, 3)
        finally:
            gw.close()
    return out


def gateway(work: rb.Workdir, warmup: int, calls: int) -> dict[str, Any]:
    from registry_server.billing import service
    from registry_server.db import Database

    credit = 10**9  # 1,000 USDC
    reg = mesh.start_registry(
        work, MCPZ_REGISTRY_PRICE_NOTICE_DAYS="0", MCPZ_REGISTRY_USAGE_FLUSH_INTERVAL="0.2"
    )
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        tok = mesh.token(reg, "bench", "read,publish,deploy,node")
        caller = mesh.token(reg, "caller", "read,call")
        for name in (FREE_AGENT, PAID_AGENT):
            folder = work.path / name.split("/")[1]
            mesh.agent(folder, name, "1.0.0", work.env)
            mesh.release(folder, reg, name, "1.0.0", tok)
        nodes.append(mesh.start_node(work, reg, tok, "node-1"))
        mesh.connected(reg, tok, 1)
        for name in (FREE_AGENT, PAID_AGENT):
            post(reg, tok, "POST", "/v1/deployments", {"agent": name, "version": "1.0.0", "replicas": 1})
        for name in (FREE_AGENT, PAID_AGENT):
            mesh.wait(
                lambda n=name: mesh.api(reg, tok, f"/v1/deployments/{n}")["state"] == "ready",
                120,
                f"{name} running",
            )
        post(reg, tok, "PUT", f"/v1/billing/plans/{PAID_AGENT}", {"per_call": PRICE})
        db = Database(f"sqlite:///{reg.data / 'registry.db'}")
        try:
            with db.session() as session:
                service.credit(session, service.account_id_of(session, "caller"), credit, reason="bench")
        finally:
            db.dispose()
        key = mesh.api(reg, tok, "/v1/billing/receipt-key")["key"]
        run = asyncio.run(interleaved(reg.port, caller, key, warmup, calls))
        try:
            run["registry_cpu_ms_per_call"] = asyncio.run(cpu_per_call(reg.port, caller, key, calls, reg.pid))
        except RuntimeError as e:
            run["problems"].append(str(e))
        paid_calls = warmup + 2 * calls
        balance = mesh.api(reg, caller, "/v1/billing/balance")
        usage = mesh.api(reg, caller, "/v1/billing/usage")
        spent = credit - balance["available"] - balance["reserved"]
        if spent != paid_calls * PRICE:
            run["problems"].append(f"the caller paid {spent}, expected {paid_calls * PRICE}")
        if (usage["calls"], usage["total"]) != (paid_calls, paid_calls * PRICE):
            run["problems"].append(
                f"usage shows {usage['calls']} calls for {usage['total']}, expected {paid_calls}"
            )
    finally:
        mesh.stop_nodes(nodes)
        reg.stop()
    times = run.pop("times")
    figures: dict[str, Any] = {"calls": calls, "warmup": warmup, **run}
    for label in ("free", "paid"):
        ms = [t * 1000 for t in times[label]]
        figures[label] = {
            "p50_ms": round(rb.percentile(ms, 50), 3),
            "p99_ms": round(rb.percentile(ms, 99), 3),
            "mean_ms": round(sum(ms) / len(ms), 3),
        }
    figures["added_p50_ms"] = round(figures["paid"]["p50_ms"] - figures["free"]["p50_ms"], 3)
    figures["added_p99_ms"] = round(figures["paid"]["p99_ms"] - figures["free"]["p99_ms"], 3)
    return figures


def post(reg: rb.Registry, tok: str, method: str, path: str, body: dict[str, Any]) -> Any:
    import urllib.request

    request = urllib.request.Request(
        reg.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


# --- the run ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events rated by ours, per database")
    parser.add_argument("--naive-events", type=int, default=5_000, help="events rated by the naive rater")
    parser.add_argument(
        "--calls", type=int, default=1000, help="sequential calls per agent through the gateway"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of our rater per database (median)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--entries", type=int, default=1_000_000, help="ledger entries to verify")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--skip-gateway", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    g.add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.events, args.naive_events, args.calls, args.warmup, args.entries = 400, 100, 20, 5, 4_000
        args.rounds = 1
    info = rb.print_machine("billing: rating exactly once, what billing adds to a call, verifying the ledger")
    load_before = g.load()
    pg_base = None if args.no_postgres else postgres_base()
    backends = ["sqlite"] + (["postgres"] if pg_base else [])
    if pg_base is None:
        print("PostgreSQL: not reachable (or --no-postgres): its rows are unmeasured")
    rated: dict[str, dict[str, Any]] = {}
    verified: dict[str, dict[str, Any]] = {}
    gw: dict[str, Any] | None = None
    with rb.Workdir("bench-billing", keep=args.keep) as work:
        for backend in backends:
            rated[backend] = rating(work, backend, pg_base, args.events, args.naive_events, args.rounds)
        for backend in backends:
            verified[backend] = verification(work, backend, pg_base, args.entries)
        if not args.skip_gateway:
            gw = gateway(work, args.warmup, args.calls)
        if args.keep:
            print(f"kept: {work.path}")

    print()
    rows = []
    for backend, r in rated.items():
        for method in ("ours", "naive"):
            m = r[method]
            rows.append([backend, "batched claim (ours)" if method == "ours" else "one transaction per event",
                         f"{m['events']:,}", f"{m['seconds']:.2f}", f"{m['events_per_s']:,}",
                         "yes" if m["exactly_once"] else "NO"])  # fmt: skip
    print(rb.table(["db", "rater", "events", "seconds", "events/s", "exactly once"], rows))
    for backend, r in rated.items():
        print(
            f"{backend}: ours rates {r['ours']['events_per_s'] / r['naive']['events_per_s']:.0f}x "
            "the naive rater's events/s"
        )
    print()
    rows = [
        [b, f"{v['entries']:,}", f"{v['transactions']:,}", f"{v['accounts']:,}", f"{v['verify_seconds']:.2f}",
         "yes" if v["tampering_found"] else "NO", f"{v['verify_tampered_seconds']:.2f}"]
        for b, v in verified.items()
    ]  # fmt: skip
    headers = ["db", "entries", "transactions", "accounts", "verify s", "tampered found", "tampered verify s"]
    print(rb.table(headers, rows))
    if gw is not None:
        print()
        print(rb.table(
            ["gateway tools/call", "p50 ms", "p99 ms", "mean ms"],
            [[f"{label} ({'billing off' if label == 'free' else 'billing on: price, hold, receipt'})",
              gw[label]["p50_ms"], gw[label]["p99_ms"], gw[label]["mean_ms"]] for label in ("free", "paid")],
        ))  # fmt: skip
        print(f"added by billing: p50 {gw['added_p50_ms']:.3f} ms, p99 {gw['added_p99_ms']:.3f} ms "
              f"({gw['calls']} calls each, interleaved, after {gw['warmup']} each)")  # fmt: skip
        cpu = gw.get("registry_cpu_ms_per_call")
        if cpu:
            print(
                f"registry CPU per call ({gw['calls']} calls each, not interleaved): "
                f"free {cpu['free']:.3f} ms, paid {cpu['paid']:.3f} ms: "
                f"billing costs {cpu['paid'] - cpu['free']:.3f} ms of CPU per paid call"
            )
        for problem in gw["problems"][:5]:
            print(f"  problem: {problem}")

    goals = []
    for backend in ("sqlite", "postgres"):
        text = f"{backend}: rating >= {GOAL_EVENTS_PER_S:,} events/s, exactly once"
        mine = rated.get(backend)
        if mine is None:
            goals.append(g.unmeasured(text, "PostgreSQL not reachable (or --no-postgres)"))
        elif not mine["ours"]["exactly_once"]:
            goals.append(g.failed(text, "; ".join(mine["ours"]["problems"])[:300]))
        else:
            rate = mine["ours"]["events_per_s"]
            naive = mine["naive"]
            detail = f"{rate:,}/s over {mine['ours']['events']:,} events; naive {naive['events_per_s']:,}/s"
            if not naive["exactly_once"]:
                detail += " (naive WRONG)"
            goals.append(g.holds(text, rate >= GOAL_EVENTS_PER_S, detail))
    text = f"gateway: billing adds < {GOAL_ADDED_P50_MS} ms at p50"
    if gw is None:
        goals.append(g.unmeasured(text, "--skip-gateway"))
    elif gw["problems"]:
        goals.append(g.failed(text, gw["problems"][0][:300]))
    else:
        paid, free = gw["paid"]["p50_ms"], gw["free"]["p50_ms"]
        detail = f"{gw['added_p50_ms']:.3f} ms: {paid:.3f} vs {free:.3f} ms"
        goals.append(g.below(text, gw["added_p50_ms"], GOAL_ADDED_P50_MS, detail))
    for backend in ("sqlite", "postgres"):
        text = f"{backend}: verifying the ledger's invariants over {args.entries:,} entries (time shown)"
        v = verified.get(backend)
        if v is None:
            goals.append(g.unmeasured(text, "PostgreSQL not reachable (or --no-postgres)"))
        elif not (v["right"] and v["tampering_found"]):
            goals.append(g.failed(text, f"right {v['right']}, a changed entry found {v['tampering_found']}"))
        else:
            detail = (
                f"{v['verify_seconds']:.2f} s; a changed entry found in {v['verify_tampered_seconds']:.2f} s"
            )
            goals.append(g.holds(text, True, detail))
    g.finish(
        "billing",
        info,
        load_before,
        goals,
        {"events": args.events, "naive_events": args.naive_events, "entries": args.entries,
         "rating": rated, "verification": verified, "gateway": gw},
        smoke=args.smoke,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
