"""The agent's checkpoint syncs: the job's checkpoint directory into its store, soon after the
job writes one, at the run's end and at a notice; and the restore before the run.

A sync that fails (S3 away, a disk full, a file the job left unreadable) is said once in the
job's log and never raised: the periodic loop tries again, and the run's end is still reported.
Before, one failure ended the loop for the rest of the attempt, silently (its task died with
the exception), and a failure at the run's end left the agent reporting a run that had exited.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from spotd.agent.checkpoints import AsyncCheckpointStore, read_progress
from spotd.agent.gang import Gang
from spotd.aiokit import sleep

__all__ = ["RETRY_SECONDS", "Syncer", "signature"]

RETRY_SECONDS = 1.0  # a failed sync or restore is tried again after this at the soonest
_RETRIES = (RETRY_SECONDS, 2 * RETRY_SECONDS, 4 * RETRY_SECONDS)  # the last sync's
# the restore's: doubling to a minute, about 5 min in all (an S3 outage of minutes costs the
# attempt that long, not the job: it fails only then, and then as a setup failure)
_RESTORE_RETRIES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0)


def signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What a checkpoint directory holds now (names, sizes, mtimes): cheap to compare. An
    entry or a whole subdirectory removed during the walk (a trainer rotating ``checkpoint-N/``
    out) is left out: ``os.walk`` skips a directory it cannot list, where ``Path.rglob`` raised
    and ended the sync loop."""
    out = []
    for top, dirs, files in os.walk(directory, followlinks=True):
        for name in (*dirs, *files):
            p = os.path.join(top, name)
            try:
                st = os.stat(p)
            except OSError:  # gone, or a link to nothing: the sync itself says what is wrong
                continue
            out.append((os.path.relpath(p, directory), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


class Syncer:
    """One attempt's syncs of ``directory`` into ``store``; ``last_sync`` and ``progress`` are
    what the agent reports (the snapshot's time by the agent's clock, and the progress the job
    wrote beside it, read *before* the sync: the snapshot holds at least that much)."""

    def __init__(
        self, store: AsyncCheckpointStore, directory: Path, gang: Gang, say: Callable[[str], None]
    ) -> None:
        self.store, self.directory, self.gang, self.say = store, directory, gang, say
        self.last_sync: float | None = None
        self.progress: float | None = None
        self.failure: str | None = None  # why the last sync failed, until one works

    async def sync(self, *, final: bool = False) -> bool:
        """Snapshot the directory into the store (``final``: the notice's, marked for the
        replacement). False when that failed."""
        store, where = self.store, self.directory
        try:
            progress = await asyncio.to_thread(read_progress, where)
            if final:
                written = await store.sync(where, final=True)
            else:
                written = await self.gang.sync(store, where)
        except Exception as exc:  # noqa: BLE001 - whatever the store raised: the job goes on
            said = f"{type(exc).__name__}: {exc}"[:500]
            if said != self.failure:
                self.say(f"checkpoint sync failed, trying again: {said}")
            self.failure = said
            return False
        if self.failure is not None:
            self.say("checkpoint sync works again")
            self.failure = None
        if written:
            self.last_sync = time.time()
            self.progress = progress if progress is not None else self.progress
        return True

    async def loop(self, every: float, due: Callable[[], bool], stop: asyncio.Event) -> None:
        """Sync soon after the job writes a checkpoint (at most every ``every`` seconds), while
        ``due()``; so a preemption without notice loses about one checkpoint interval of work,
        not one sync interval. A failed sync is tried again, not before ``RETRY_SECONDS``."""
        synced = signature(self.directory)
        retry_at = 0.0
        # stat()ing a checkpoint directory is cheap: poll often, so a new checkpoint is off
        # the instance within ~50 ms of being written (woken: the agent is stopping)
        while not await sleep(min(0.05, every), stop):
            now = time.time()
            if not due() or now < retry_at or (self.last_sync and now - self.last_sync < every):
                continue
            sig = await asyncio.to_thread(signature, self.directory)  # never raises
            if sig == synced:
                continue
            if await self.sync():
                synced = sig
            else:
                retry_at = time.time() + max(RETRY_SECONDS, every)

    async def last(self, *, final: bool, until: float) -> bool:
        """The sync at the run's end or at a notice, tried again a few times (until
        ``until``) when it fails: what it writes is what a replacement restores."""
        async for _ in _tries(_RETRIES, until):
            if await self.sync(final=final):
                return True
        return False

    async def restore(self) -> bool | None:
        """The store's checkpoint into the directory (False: the store has none), tried again
        for about 5 min; None when it could not be read. The run must not start without it:
        its first sync (newest attempt wins) would replace the job's progress with none."""
        async for _ in _tries(_RESTORE_RETRIES):
            try:
                return await self.store.restore(self.directory)
            except Exception as exc:  # noqa: BLE001 - S3 away, a store unreadable
                self.say(f"restoring the checkpoint failed: {type(exc).__name__}: {exc}"[:600])
        return None


async def _tries(waits: Sequence[float], until: float = math.inf) -> AsyncIterator[None]:
    """One try at once, then one after each of ``waits``; none that would start after
    ``until`` (wall-clock time)."""
    yield
    for wait in waits:
        if time.time() + wait > until:
            return
        await asyncio.sleep(wait)
        yield
