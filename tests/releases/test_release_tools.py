"""Tool definitions pinned to releases: canonical digest, and the store's write-once rule."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from mcpz.errors import RefusedError
from mcpz.tooldefs import ToolDefinitionsError, canonical_tools, tools_digest
from registry_server.accounts.models import Account, Namespace
from registry_server.db import Database
from registry_server.releases.models import Agent, Release
from registry_server.releases.tools import record_tools, tools_for_releases

ADD = {"name": "add", "description": "Add", "inputSchema": {"type": "object"}, "extra": 1}
ECHO = {"name": "echo", "description": "Echo", "inputSchema": {"type": "object"}}


def test_digest_ignores_order_and_unknown_fields() -> None:
    assert tools_digest([ADD, ECHO]) == tools_digest([ECHO, {**ADD, "extra": 2}])
    assert tools_digest([ADD]) != tools_digest([{**ADD, "description": "Add two numbers"}])
    assert [tool["name"] for tool in canonical_tools([ECHO, ADD])] == ["add", "echo"]
    assert tools_digest([]).startswith("sha256:")


@pytest.mark.parametrize("bad", [[{"description": "x"}], [ADD, ADD], [{"name": ""}]])
def test_refuses_unnamed_or_repeated_tools(bad: list[dict[str, object]]) -> None:
    with pytest.raises(ToolDefinitionsError):
        tools_digest(bad)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    from registry_server.db import migrate

    migrate(db.engine)
    yield db
    db.dispose()


def _release(session: Session, version: str) -> int:
    now = datetime.now(UTC)
    agent = session.query(Agent).filter_by(name="acme/calc").one_or_none()
    if agent is None:
        account = Account(name="alice", created_at=now)
        session.add(account)
        session.flush()
        session.add(Namespace(name="acme", owner_id=account.id, created_at=now))
        agent = Agent(name="acme/calc", namespace="acme", created_at=now)
        session.add(agent)
        session.flush()
    release = Release(
        agent_id=agent.id, version=version, commit="0" * 40, manifest="", publisher_id=1, published_at=now
    )
    session.add(release)
    session.flush()
    return release.id


def test_signed_tools_are_written_once(database: Database) -> None:
    with database.session() as session:
        first = _release(session, "1.0.0")
        stored = record_tools(session, first, [ADD], observed=False)
        assert stored.digest == tools_digest([ADD]) and not stored.observed
        assert record_tools(session, first, [ADD], observed=False).digest == stored.digest
        with pytest.raises(RefusedError):
            record_tools(session, first, [ADD, ECHO], observed=False)
        # An observation never replaces what is stored.
        assert record_tools(session, first, [ECHO], observed=True).digest == stored.digest
    with database.session() as session:
        second = _release(session, "1.1.0")
        assert record_tools(session, second, [ECHO], observed=True).observed
        sets = tools_for_releases(session, [first, second, 999])
        assert sorted(sets) == [first, second]
        assert [tool["name"] for tool in sets[first].tools] == ["add"]
        assert "extra" not in sets[first].tools[0]
