"""Test-only fault injection: stop this process (SIGSTOP) at a named step of a leased job.

`MCPZ_TEST_PAUSE_AT=gc-before-rows` (one of `STEPS`) makes the registry process stop itself the
first time a job reaches that step, exactly as `kill -STOP` would, so a test can let the lease run
out, have another replica take it, resume this one (`kill -CONT`) and prove that the write it was
about to make is refused by the lease's fence (registry_server.leases). The variable is read once,
at import; unset (always, outside tests) the hook does nothing. Never set it on a registry that
serves anyone.
"""

from __future__ import annotations

import os
import signal

STEPS = ("gc-before-rows",)

_PAUSE_AT = os.environ.get("MCPZ_TEST_PAUSE_AT", "")
if _PAUSE_AT and _PAUSE_AT not in STEPS:
    raise RuntimeError(f"MCPZ_TEST_PAUSE_AT={_PAUSE_AT!r} names no step; one of: {', '.join(STEPS)}")
_paused: set[str] = set()


def pause_point(step: str) -> None:
    """Stop here once, until SIGCONT, when the test hook names this step."""
    assert step in STEPS, step
    if step == _PAUSE_AT and step not in _paused:
        _paused.add(step)
        os.kill(os.getpid(), signal.SIGSTOP)
