"""The daemon's wall clock: the host's, or with several daemons the database's.

Several daemons compare each other's times: an agent's heartbeat is stamped by whichever
daemon it reached and judged by the daemon that runs the job, and an event's time by whoever
reads it. Stamped with each host's own clock, daemons whose clocks differ by a minute declare
healthy instances lost. So with several daemons every wall time the daemon stamps or compares
is the database's clock, as near as one round trip tells: each lease renewal reads the
database's time, and ``offset`` is how far it is from this host's (the middle of the round
trip; one slower than ``TRUSTED_RTT`` is not used, and after ``UNTRUSTED_WARN`` such readings
in a row the daemon says so: its offset is then stale, or never measured). One daemon alone
keeps its host's clock (the offset stays 0).

Durations that must not jump (timeouts, "no renewal for a whole lease") keep
``time.monotonic``; only wall times go through here. Modules take ``clock=now`` as their
default, so a test passes its fake clock instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

__all__ = ["TRUSTED_RTT", "UNTRUSTED_WARN", "WARN_SKEW", "WallClock", "now", "wall"]

log = structlog.get_logger("spotd.clock")

TRUSTED_RTT = 0.5  # seconds: a reading that took longer says too little about the offset
WARN_SKEW = 2.0  # seconds between this host's clock and the database's worth a warning
UNTRUSTED_WARN = 10  # slow readings in a row (a renewal every lease/3 s) worth a warning


class WallClock:
    """The host's clock moved by ``offset`` (the database's clock minus the host's)."""

    def __init__(self, host: Callable[[], float] = time.time) -> None:
        self.host = host  # the host's wall clock (a test passes a fake)
        self.offset = 0.0
        self._warned = False
        self._untrusted = 0  # slow readings since the last one used

    def __call__(self) -> float:
        return self.host() + self.offset

    def observe(self, *, sent: float, db_time: float, received: float) -> bool:
        """A reading of the database's clock, ``db_time``, taken between the host times
        ``sent`` and ``received``; whether it was used."""
        rtt = received - sent
        if not 0.0 <= rtt <= TRUSTED_RTT:
            self._untrusted += 1
            if self._untrusted == UNTRUSTED_WARN:
                log.warning(
                    "the database's clock could not be read in time: the offset is stale",
                    readings=self._untrusted,
                    last_round_trip_seconds=round(rtt, 3),
                    offset_seconds=round(self.offset, 3),
                )
            return False
        self._untrusted = 0
        self.offset = db_time - (sent + received) / 2
        skewed = abs(self.offset) >= WARN_SKEW
        if skewed and not self._warned:
            log.warning(
                "this host's clock differs from the database's: daemons stamp the database's",
                offset_seconds=round(self.offset, 3),
            )
        self._warned = skewed
        return True


wall = WallClock()


def now() -> float:
    """The daemon's wall time now (module docstring)."""
    return wall()
