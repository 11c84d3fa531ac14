"""Test-only fault injection: die with SIGKILL at a named step of a push.

`MCPZ_TEST_CRASH_AT=after-refs-moved` (one of `STEPS`) makes the registry process kill itself
the first time a push reaches that step, exactly as `kill -9` would, so tests can prove that
start-up recovery (registry_server.git.recovery) leaves every version fully published or fully
absent. The variable is read once, at import; unset (always, outside tests) the hook does nothing.
Never set it on a registry that serves anyone.
"""

from __future__ import annotations

import os
import signal

STEPS = (
    "after-unpack",
    "after-checks",
    "after-db-flush",
    "mid-packs-moved",
    "after-packs-moved",
    "after-refs-moved",
    "after-db-commit",
)

_CRASH_AT = os.environ.get("MCPZ_TEST_CRASH_AT", "")
if _CRASH_AT and _CRASH_AT not in STEPS:
    raise RuntimeError(f"MCPZ_TEST_CRASH_AT={_CRASH_AT!r} names no step; one of: {', '.join(STEPS)}")


def crash_point(step: str) -> None:
    """Die here, without cleanup of any kind, when the test hook names this step."""
    assert step in STEPS, step
    if step == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
