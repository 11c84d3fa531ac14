"""Shared set-up of billing tests on a real database: accounts, a namespace, usage events."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from registry_server.accounts import service as accounts
from registry_server.settings import RegistrySettings
from registry_server.state import RegistryState
from registry_server.usage.events import Outcome, UsageEvent

AGENT = "acme/echo"


@dataclasses.dataclass
class World:
    data_dir: Path
    database_url: str | None
    state: RegistryState
    creator: int
    consumer: int

    def settings(self, **kw: object) -> RegistrySettings:
        env = {"MCPZ_DATABASE_URL": self.database_url} if self.database_url else {}
        return RegistrySettings.load(data_dir=self.data_dir, env=env, **kw)


def open_world(data_dir: Path, database_url: str | None) -> World:
    env = {"MCPZ_DATABASE_URL": database_url} if database_url else {}
    state = RegistryState.open(RegistrySettings.load(data_dir=data_dir, env=env))
    with state.db.session() as session:
        creator = accounts.create_account(session, "acme").id
        consumer = accounts.create_account(session, "bob").id
    return World(data_dir, database_url, state, creator, consumer)


def usage_event(n: int, account_id: int, **changes: object) -> UsageEvent:
    base = UsageEvent(
        id=f"ev-{n:07d}",
        account_id=account_id,
        token_id=None,
        agent=AGENT,
        version="1.0.0",
        tool="echo",
        deployment=AGENT,
        replica_id="r1",
        node_id="n1",
        started_us=1_800_000_000_000_000 + n,
        duration_us=1500,
        outcome=Outcome.OK,
        bytes_in=100,
        bytes_out=200,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
