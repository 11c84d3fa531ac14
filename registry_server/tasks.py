"""Stopping the registry's background tasks (workers, sweepers, lease keepers): cancel them and
wait until each has ended, so nothing of theirs runs after its owner's `stop`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task (None: none to stop), then wait for each; a task's CancelledError is the
    end asked for, any other error it raises passes."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
