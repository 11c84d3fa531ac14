"""When a failed replica is tried again. Pure: times come in as arguments (monotonic seconds).

A replica that failed on its node (its agent kept crashing, its release did not verify, its node
refused it) is placed again at a new epoch:

- at once when what failed it may have changed: a new signature or a deploy of the same release
  (`force`), a node joining the mesh (`force_all`), or `mcpz deploy restart NAME`;
- otherwise after a backoff that doubles with each failure in a row, from `base` up to `cap`.

A replica that then ran for `reset_after` seconds starts counting its failures from zero again.
A new revision needs no retry: its replicas are new ones (see `scheduler`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Backoff", "RetryBook"]


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 5.0
    cap: float = 300.0
    reset_after: float = 600.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before the retry that follows the `failures`-th failure in a row."""
        if failures < 1:
            return 0.0
        return min(self.cap, self.base * (1 << min(failures - 1, 32)))


@dataclass(slots=True)
class _Record:
    failures: int = 0
    due: float | None = None  # when the failed replica may be tried again; None: not failed now
    running_since: float | None = None


@dataclass(slots=True)
class RetryBook:
    """Per replica: failures in a row, and when a failed one is due for another try."""

    backoff: Backoff = Backoff()
    _records: dict[str, _Record] = field(default_factory=dict)

    def failed(self, replica_id: str, now: float) -> float:
        """Record a failure; returns when the replica is due for its retry."""
        record = self._records.setdefault(replica_id, _Record())
        if record.running_since is not None and now - record.running_since >= self.backoff.reset_after:
            record.failures = 0
        record.running_since = None
        record.failures += 1
        record.due = now + self.backoff.delay(record.failures)
        return record.due

    def running(self, replica_id: str, now: float) -> None:
        record = self._records.setdefault(replica_id, _Record())
        record.due = None
        if record.running_since is None:
            record.running_since = now

    def retried(self, replica_id: str) -> None:
        """The replica was placed again: no longer due (its count of failures stays)."""
        record = self._records.get(replica_id)
        if record is not None:
            record.due = None
            record.running_since = None

    def postpone(self, replica_id: str, now: float) -> None:
        """A due retry found no node: due again after the backoff of its failures so far."""
        record = self._records.get(replica_id)
        if record is not None and record.due is not None:
            record.due = now + self.backoff.delay(max(1, record.failures))

    def force(self, replica_ids: Iterable[str], now: float, *, reset: bool = False) -> None:
        """Make failed replicas due now (`reset`: and forget their failures, as a restart does)."""
        for replica_id in replica_ids:
            record = self._records.setdefault(replica_id, _Record(failures=1))
            record.due = now
            if reset:
                record.failures = 0

    def forget(self, replica_id: str) -> None:
        self._records.pop(replica_id, None)

    def failures(self, replica_id: str) -> int:
        record = self._records.get(replica_id)
        return record.failures if record is not None else 0

    def due_at(self, replica_id: str) -> float | None:
        record = self._records.get(replica_id)
        return record.due if record is not None else None

    def due(self, now: float) -> set[str]:
        """The failed replicas whose retry is due at `now`."""
        return {r for r, record in self._records.items() if record.due is not None and record.due <= now}

    def next_due(self) -> float | None:
        dues = [record.due for record in self._records.values() if record.due is not None]
        return min(dues) if dues else None
