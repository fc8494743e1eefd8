"""Retention: what the daemon forgets, and when.

Events, zone events and the nodes' logs of jobs would otherwise grow for as long as a daemon
lives. Once an hour (``retention_interval``) the loop deletes:

- events older than ``retention_events_days`` (30 by default);
- zone events older than ``retention_zone_events_days`` (14), but never one younger than
  ``ZONE_HISTORY_SECONDS``: the job controller's placement reads a day of zone history, the
  replica planner an hour, and the risk model's memory is six hours, so a day is the floor;
- the attempt logs (``logs/j<job>-a<attempt>/``) of jobs that reached a terminal status more
  than ``retention_logs_days`` (14) ago. A job that is still running keeps every attempt's log.

0 days keeps that kind forever. Rows go in bounded batches (``spotd.store.events``), so a
first pass over a large backlog never holds the database's write lock for long.

Example: now = day 100, defaults → events before day 70 deleted, zone events before day 86,
logs of jobs that ended before day 86; with ``retention_zone_events_days: 0.5`` zone events
before day 99 (the one-day floor), not day 99.5.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from spotd.aiokit import sleep
from spotd.config import Settings
from spotd.store import AsyncStore
from spotd.store.events import PRUNE_BATCH

log = structlog.get_logger("spotd.control.retention")

DAY = 86400.0
ZONE_HISTORY_SECONDS = DAY  # the longest look back of any zone-history reader
MIN_INTERVAL = 0.1  # a retention_interval of 0 must not spin
ID_CHUNK = 500  # job ids per store query
_ATTEMPT_DIR = re.compile(r"j(\d+)-a\d+")


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Delete what is older than each cutoff (epoch seconds); None: keep that kind forever."""

    events: float | None
    zone_events: float | None
    logs: float | None  # logs of jobs that ended before this


def retention_plan(now: float, settings: Settings) -> Cutoffs:
    """The cutoffs of one retention pass (rules and an example in the module docstring)."""

    def cutoff(days: float, floor: float = 0.0) -> float | None:
        return None if days <= 0 else now - max(days * DAY, floor)

    return Cutoffs(
        events=cutoff(settings.retention_events_days),
        zone_events=cutoff(settings.retention_zone_events_days, ZONE_HISTORY_SECONDS),
        logs=cutoff(settings.retention_logs_days),
    )


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one pass deleted."""

    events: int = 0
    zone_events: int = 0
    log_dirs: int = 0


def attempt_log_dirs(logs_dir: Path) -> Mapping[int, list[Path]]:
    """The attempt log folders under ``logs_dir``, by job id (replica logs are not here)."""
    out: dict[int, list[Path]] = {}
    if not logs_dir.is_dir():
        return out
    for d in sorted(logs_dir.iterdir()):
        m = _ATTEMPT_DIR.fullmatch(d.name)
        if m and d.is_dir():
            out.setdefault(int(m.group(1)), []).append(d)
    return out


def _remove(dirs: list[Path]) -> None:
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


class Retention:
    """The retention loop; the job controller's supervisor runs it as ``retention``."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: AsyncStore,
        stop: asyncio.Event,
        clock: Callable[[], float],
        batch: int = PRUNE_BATCH,
    ) -> None:
        self._settings = settings
        self._store = store
        self._stop = stop
        self._clock = clock
        self._batch = batch

    async def run(self) -> None:
        while not self._stop.is_set():
            pruned = await self.once()
            if pruned != Pruned():
                log.info(
                    "retention pass",
                    events=pruned.events,
                    zone_events=pruned.zone_events,
                    log_dirs=pruned.log_dirs,
                )
            await sleep(max(self._settings.retention_interval, MIN_INTERVAL), self._stop)

    async def once(self) -> Pruned:
        """One pass over everything the plan says may go."""
        plan = retention_plan(self._clock(), self._settings)
        events = zone_events = log_dirs = 0
        if plan.events is not None:
            events = await self._drain(self._store.prune_events, plan.events)
        if plan.zone_events is not None:
            zone_events = await self._drain(self._store.prune_zone_events, plan.zone_events)
        if plan.logs is not None:
            log_dirs = await self._prune_logs(plan.logs)
        return Pruned(events=events, zone_events=zone_events, log_dirs=log_dirs)

    async def _drain(self, prune: Callable[..., Awaitable[int]], before: float) -> int:
        """Call a bounded ``prune`` until a batch comes back short (or the daemon stops)."""
        total = 0
        while not self._stop.is_set():
            n = await prune(before=before, limit=self._batch)
            total += n
            if n < self._batch:
                break
        return total

    async def _prune_logs(self, before: float) -> int:
        dirs = await asyncio.to_thread(attempt_log_dirs, self._settings.logs_dir)
        if not dirs:
            return 0
        ids = sorted(dirs)
        ended: list[int] = []
        for i in range(0, len(ids), ID_CHUNK):
            ended += await self._store.jobs_ended_before(ids[i : i + ID_CHUNK], before=before)
        doomed = [d for job_id in ended for d in dirs[job_id]]
        await asyncio.to_thread(_remove, doomed)
        return len(doomed)
