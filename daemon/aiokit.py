"""Small asyncio helpers: supervised root tasks and sleeps that a stop event interrupts.

After kopf's ``aiotime.sleep(delay, wakeup=...)`` and its guarded root tasks: a task that was
meant to run forever and returns is a misbehaviour, and is logged as one; shutdown never waits
out a poll interval because every sleep wakes on the stop event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger("spotd.tasks")


async def sleep(delay: float, *wakeups: asyncio.Event) -> bool:
    """Sleep ``delay`` seconds or until any event is set. True if woken by an event."""
    if any(e.is_set() for e in wakeups):
        return True
    if delay <= 0:
        return False
    waiters = [asyncio.ensure_future(e.wait()) for e in wakeups]
    try:
        done, _ = await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for w in waiters:
            w.cancel()


class Supervisor:
    """Owns named long-lived tasks; restarts a crashed one after a pause, stops all at once."""

    def __init__(self, stop: asyncio.Event, *, restart_delay: float = 1.0) -> None:
        self._stop = stop
        self._restart_delay = restart_delay
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def spawn(
        self,
        name: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        *,
        forever: bool = True,
        on_exit: Callable[[], None] | None = None,
    ) -> asyncio.Task[None]:
        """Run ``factory()`` as a named task and restart it when it crashes.

        ``forever``: the task should never return, so a return is logged and restarted too;
        otherwise a normal return ends it (a job worker whose job is over).
        """
        existing = self._tasks.get(name)
        if existing is not None and not existing.done():
            return existing
        task = asyncio.create_task(self._guard(name, factory, forever, on_exit), name=name)
        self._tasks[name] = task
        return task

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def names(self) -> list[str]:
        return sorted(n for n, t in self._tasks.items() if not t.done())

    async def _guard(
        self,
        name: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        forever: bool,
        on_exit: Callable[[], None] | None,
    ) -> None:
        try:
            while not self._stop.is_set():
                try:
                    await factory()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The one catch-all of a root task: a bug in one job's worker must not take
                    # the daemon or other jobs down. It is logged with its traceback, then retried.
                    log.exception("task crashed", task=name)
                    await sleep(self._restart_delay, self._stop)
                    continue
                if forever and not self._stop.is_set():
                    log.error("task meant to run forever returned; restarting", task=name)
                    await sleep(self._restart_delay, self._stop)
                    continue
                return
        finally:
            if self._tasks.get(name) is asyncio.current_task():
                del self._tasks[name]  # a finished job's or service's task is not kept
            if on_exit is not None:
                on_exit()

    async def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
