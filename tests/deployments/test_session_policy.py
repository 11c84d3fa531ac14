"""A revision's session policy (the manifest's `[run] sessions`) is kept with its template: in the
limits column's JSON, so no migration; a shared policy, the default, writes nothing new."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from mcpz.mesh import SessionPolicy
from registry_server.deployments.records import Limits, Revision, Template
from registry_server.deployments.store import revision_row, row_template


def template(sessions: SessionPolicy) -> Template:
    return Template(
        agent="acme/tiny",
        version="1.0.0",
        commit="a" * 40,
        command=("python", "server.py"),
        limits=Limits(memory_bytes=1 << 30),
        sessions=sessions,
    )


def test_an_isolated_policy_survives_the_database_row() -> None:
    policy = SessionPolicy(mode="isolated", max_processes=4, idle=30.0)
    row = revision_row("acme/tiny", Revision(1, template(policy), datetime.now(UTC)))
    assert row_template(row) == template(policy)
    assert json.loads(row.limits)["memory_bytes"] == 1 << 30


def test_a_shared_policy_writes_the_limits_as_before() -> None:
    row = revision_row("acme/tiny", Revision(1, template(SessionPolicy()), datetime.now(UTC)))
    assert json.loads(row.limits) == {"memory_bytes": 1 << 30, "open_files": None}
    assert row_template(row).sessions == SessionPolicy()
