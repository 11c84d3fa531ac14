"""One writer per repository across registry replicas, through the database.

Replicas share the repositories' folder (any shared filesystem), and file locks are not a rule
every shared filesystem keeps, so a push serializes on PostgreSQL instead:
`pg_advisory_xact_lock` on a 64-bit hash of the repository's name, taken in the transaction that
records the push's releases and held until it commits or rolls back. The push checks its refs,
moves packs and refs, and commits inside it, so of two pushes of one repository through two
replicas the second sees the refs the first moved and is refused ("stale info: fetch first").
Start-up recovery and gc's repack swap take the same lock before they touch a repository.

On SQLite (one process) the lock is the process's: `RepoStore.lock` (flock, and a thread lock),
which every writer holds too; this adds nothing there.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def hold_push_lock(session: Session, name: str) -> None:
    """Block until this transaction is the only writer of repository `name` (PostgreSQL; a
    no-op on SQLite). Released when the transaction ends."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"push:{name}"})
