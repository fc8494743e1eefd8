"""The job's process group: the agent signals and waits for the whole group, not only the
shell it started (``setup`` and ``run`` run in a new session, so the group is the shell's pid).
A ``run`` of several commands leaves the shell a parent that dies at once on SIGTERM, while the
trainer it started is still saving its checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

__all__ = ["group_gone", "signal_group"]


def signal_group(group: int, sig: signal.Signals) -> None:
    """Send ``sig`` to every process of ``group`` (none left: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


async def group_gone(group: int, within: float) -> bool:
    """Wait up to ``within`` seconds for process group ``group`` to have no process left."""
    end = time.monotonic() + within
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # someone's: it exists
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(0.05)
