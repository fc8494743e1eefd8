"""One supervised worker per object (a job, a service), each with its own wake-up event.

Events for one object are handled in order by its worker; different objects run in parallel
(kopf's queueing, in small). ``wake`` makes a worker look again at once instead of at its next
period; a worker that returns (its object is finished) is forgotten, and ``spawn`` starts a new
one if the object comes back to life.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import structlog

from spotd.aiokit import Supervisor, sleep

Work = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
SWEEP_SECONDS = 10.0  # how often the objects this daemon owns are checked for a worker
log = structlog.get_logger("spotd.control.workers")


class Workers:
    """Workers named ``<kind>:<id>`` on one supervisor."""

    def __init__(self, sup: Supervisor, kind: str) -> None:
        self._sup = sup
        self._kind = kind
        self._wakeups: dict[int, asyncio.Event] = {}

    def spawn(self, oid: int, work: Work) -> None:
        """Start ``work(wake_event)`` for ``oid`` unless its worker is running already."""
        wake = self._wakeups.setdefault(oid, asyncio.Event())

        def forget() -> None:
            self._wakeups.pop(oid, None)

        self._sup.spawn(f"{self._kind}:{oid}", lambda: work(wake), forever=False, on_exit=forget)

    def size(self) -> int:
        return len(self._wakeups)

    def runs(self, oid: int) -> bool:
        """Whether this process runs a worker for ``oid``."""
        return oid in self._wakeups

    def wake(self, oid: int) -> bool:
        """Wake ``oid``'s worker; False when this process runs none for it."""
        ev = self._wakeups.get(oid)
        if ev is None:
            return False
        ev.set()
        return True

    async def sweep(
        self,
        owned: Callable[[], Awaitable[Sequence[int]]],
        spawn: Callable[[int], None],
        stop: asyncio.Event,
    ) -> None:
        """Every ``SWEEP_SECONDS``, ``spawn`` a worker for each object this daemon owns
        (``owned()``) that has none. An object is owned before its worker starts (a launch, a
        takeover): a failure in between (the database lost mid-commit, an event not written)
        left one no daemon watched (a job PENDING, or RUNNING unwatched) until a restart."""
        while not await sleep(SWEEP_SECONDS, stop):  # woken: the daemon is stopping
            for oid in await owned():
                if not self.runs(oid):
                    log.warning("owned, with no worker: starting one", kind=self._kind, id=oid)
                    spawn(oid)
