"""Agents' keep-alives, written in batches.

Most heartbeats of a fleet at rest say nothing new: the same phase, no exit code, no notice,
no log. Each one used to cost the store thread a read (the instance, for its token) and a
write; at ten thousand instances those trips were most of the thread's work, and API calls
queued behind them. Here the daemon remembers the instance row its last heartbeat wrote, so
a keep-alive that matches it is checked against memory (its token too) and queued; one
transaction every ``FLUSH_SECONDS`` moves every queued instance's ``last_heartbeat_at``
forward. Anything else — news, a first heartbeat, an instance this daemon has not seen (with
several daemons, one whose heartbeats went elsewhere) — takes the full path, and the row it
writes is remembered.

The liveness evidence the detection reads is at most ``FLUSH_SECONDS`` late, and each
instance's time is the *earliest* keep-alive queued for it, so a flush never makes an instance
look fresher than it was.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass

import structlog

from spotd.aiokit import sleep
from spotd.store import AsyncStore, InstanceRow

__all__ = ["FLUSH_SECONDS", "KeepAlive", "KeepAlives"]

log = structlog.get_logger("spotd.control.keepalive")

FLUSH_SECONDS = 0.5
FORGET_SECONDS = 3600.0  # an instance unheard of this long is forgotten (it has ended)
PRUNE_EVERY = 120  # flushes between two walks of the remembered rows (a minute)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """What a heartbeat says, as far as "is this news?" goes."""

    key: str
    token: str
    phase: str | None
    exit_code: int | None
    notice_deadline: float | None
    log_offset: int
    log_bytes: int
    gpus: bool  # it carries GPU samples (they are written)


def is_keepalive(beat: KeepAlive, row: InstanceRow | None) -> bool:
    """Whether ``beat`` repeats what ``row`` (the last row written for it here) holds."""
    return (
        row is not None
        and bool(beat.token)
        and hmac.compare_digest(row.token.encode(), beat.token.encode())
        and beat.log_bytes == 0
        and not beat.gpus
        and beat.log_offset == row.log_offset
        and beat.phase is not None
        and beat.phase == row.phase
        and beat.exit_code == row.exit_code
        and (beat.notice_deadline is None or row.notice_deadline is not None)
    )


class KeepAlives:
    """The rows last written per instance, and the keep-alives waiting for the next flush."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store
        self._rows: dict[str, tuple[InstanceRow, float]] = {}  # key -> (row, heard at)
        self._pending: dict[str, float] = {}
        self._flushes = 0

    def known(self, key: str) -> InstanceRow | None:
        seen = self._rows.get(key)
        return None if seen is None else seen[0]

    def remember(self, row: InstanceRow, now: float) -> None:
        self._rows[row.key] = (row, now)

    def queue(self, key: str, now: float) -> None:
        self._pending[key] = min(now, self._pending.get(key, now))
        row = self._rows.get(key)
        if row is not None:
            self._rows[key] = (row[0], now)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every ``FLUSH_SECONDS`` until ``stop``."""
        while not stop.is_set():
            await sleep(FLUSH_SECONDS, stop)
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if batch:
            try:
                await self.store.record_keepalives(batch)
            except Exception as exc:  # noqa: BLE001 - the next keep-alives try again
                log.warning("keep-alives not written", count=len(batch), error=str(exc))
        self._flushes += 1
        if self._flushes % PRUNE_EVERY == 0:
            self._prune()

    def _prune(self) -> None:
        newest = max((at for _, at in self._rows.values()), default=0.0)
        for key in [k for k, (_, at) in self._rows.items() if at < newest - FORGET_SECONDS]:
            del self._rows[key]
