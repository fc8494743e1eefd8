"""This daemon's place among several on one PostgreSQL (``SPOTD_HA``).

The protocol is in :mod:`spotd.store.leases`; this module runs it:

- **join** before anything starts: a new epoch, and every write of this daemon fenced by it;
- **renew** every ``lease/3`` seconds on the store's lease thread (never behind the store
  thread's queue), reading the database's clock for :mod:`spotd.clock`. A renewal refused —
  the lease lapsed, or another daemon took the work over — or none that succeeded for a whole
  lease by this daemon's own clock (it was paused, or the database was unreachable) means the
  lease is **lost**: the daemon stops at once and exits with :data:`LEASE_LOST_EXIT`, for its
  supervisor (systemd, Kubernetes) to restart it with a fresh view. Its writes were refused
  from the moment the lease lapsed, whatever it believed;
- **take over** every second its share of the work of daemons whose lease expired, and start
  the workers for it;
- **even the load** every ``REBALANCE_SECONDS``: a daemon holding more than its share of the
  active jobs (:func:`surplus`) hands some of its RUNNING jobs over (``on_release``); the
  daemons below their share claim them at their next takeover pass. So a daemon that joins
  takes its share of long-running jobs too, not only new submissions, and after a restart the
  others give back what they took over. Services stay where they are: their load balancer's
  address is the endpoint users hold;
- **listen** for wake-ups other daemons send about the jobs and services this one runs (a
  cancel through another daemon's API, an agent's heartbeat that reached another daemon).

Any daemon serves the API: reads come from the shared database, a status change is a
compare-and-set there, and the owner hears of it through a wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

import structlog

from spotd.aiokit import Supervisor, sleep
from spotd.clock import wall
from spotd.config import Settings
from spotd.store import AsyncStore
from spotd.store.errors import Fenced
from spotd.store.leases import Takeover
from spotd.store.listen import wake_notifications

__all__ = [
    "LEASE_LOST_EXIT",
    "REBALANCE_SECONDS",
    "TAKEOVER_SECONDS",
    "Cluster",
    "surplus",
    "wake_target",
]

log = structlog.get_logger("spotd.control.cluster")

LEASE_LOST_EXIT = 75  # EX_TEMPFAIL: restart me
TAKEOVER_SECONDS = 1.0  # how often a daemon looks for work whose owner's lease expired
REBALANCE_SECONDS = 10.0  # how often a daemon compares what it runs with its share
RELEASE_AT_ONCE = 50  # jobs handed over per look, at most: the others claim them in a pass


def surplus(mine: int, total: int, live: int, *, at_most: int = RELEASE_AT_ONCE) -> int:
    """How many of its ``mine`` active jobs (of ``total``, over ``live`` daemons) a daemon
    hands over now: what it holds beyond its fair share ``ceil(total / live)``, once that is
    more than a tenth of the share (and more than one job), so the load is evened without the
    last few jobs going back and forth; at most ``at_most``."""
    fair = math.ceil(total / max(1, live))
    extra = mine - fair
    return min(extra, at_most) if extra > max(1, fair // 10) else 0


def wake_target(payload: str) -> tuple[str, int] | None:
    """``"j12"`` -> ("j", 12); ``"s3"`` -> ("s", 3); None for anything else."""
    kind, rest = payload[:1], payload[1:]
    if kind in ("j", "s") and rest.isdigit():
        return kind, int(rest)
    return None


class Cluster:
    """Joins, renews, takes over and listens; sets ``lost`` when the lease is lost."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: AsyncStore,
        on_takeover: Callable[[Takeover], None],
        on_wake: Callable[[str, int], None],
        on_release: Callable[[list[int], str], None] | None = None,
        url: str = "",
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_takeover = on_takeover
        self.on_wake = on_wake
        self.on_release = on_release  # hand these jobs over, saying why
        self.url = url
        self.lost = asyncio.Event()
        self.reason = ""
        self.live: tuple[str, ...] = ()  # the daemons alive at the last takeover pass
        self._renewed = time.monotonic()
        self._sending: set[asyncio.Task[None]] = set()  # wake-ups in flight (held: the loop
        # keeps only weak references to tasks, and one collected mid-send is lost silently)

    @property
    def daemon_id(self) -> str:
        return self.settings.daemon_id

    async def join(self) -> None:
        fence = await self.store.join_cluster(
            self.daemon_id, url=self.url, lease_seconds=self.settings.lease_seconds
        )
        await self._renew(self.settings.lease_seconds)  # the database's clock, before any stamp
        self._renewed = time.monotonic()
        log.info("joined the cluster", daemon=self.daemon_id, epoch=fence.epoch)

    def leading(self) -> bool:
        """Whether this daemon runs the cluster's singletons (pools' upkeep): the live daemon
        with the smallest id. Its writes are fenced like any other, so a leader that lost its
        lease but does not know yet cannot act on it."""
        return bool(self.live) and min(self.live) == self.daemon_id and not self.lost.is_set()

    def others_take_over(self) -> bool:
        """Whether a clean stop now hands this daemon's work to another ready daemon (at the
        last takeover pass); not after the lease was lost, nor for the last daemon standing."""
        return not self.lost.is_set() and bool(set(self.live) - {self.daemon_id})

    def keep_lease(self, sup: Supervisor) -> None:
        """Renew the lease and hear wake-ups: right after ``join``, so a long start-up (ten
        thousand jobs adopted) never lets the lease lapse."""
        sup.spawn("cluster:lease", self._renew_loop)
        sup.spawn("cluster:listen", self._listen_loop)

    def take_work(self, sup: Supervisor) -> None:
        """Take over dead daemons' work: once the controllers have started."""
        sup.spawn("cluster:takeover", self._takeover_loop)

    async def leave(self) -> None:
        """A clean stop: hand the work over at once (not after the lease runs out)."""
        if self.lost.is_set():
            return
        with contextlib.suppress(Exception):
            await self.store.leave_cluster()
            log.info("left the cluster: the others take my work over now")

    def wake_elsewhere(self, kind: str, oid: int) -> None:
        """Tell the daemon that runs ``kind``/``oid`` to look at it now (fire and forget)."""
        task = asyncio.get_running_loop().create_task(self._notify(f"{kind}{oid}"))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    # -- the loops ---------------------------------------------------------------------------

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            self.reason = why
            log.error("lease lost: stopping, to be restarted with a fresh view", why=why)
            self.lost.set()

    async def _renew_loop(self) -> None:
        lease = self.settings.lease_seconds
        while not self.lost.is_set():
            await sleep(lease / 3, self.lost)
            if time.monotonic() - self._renewed > lease:
                # paused, or the database away, for a whole lease: whatever the database says
                # now, the others may have taken over; never act on a view that old
                self._lose(f"no renewal for {time.monotonic() - self._renewed:.1f} s")
                return
            try:
                await self._renew(lease)
            except Fenced as exc:
                self._lose(str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - the database away: retry until a lease
                log.warning("renewing the lease failed", error=str(exc))
                continue
            self._renewed = time.monotonic()

    async def _renew(self, lease: float) -> None:
        """Renew the lease, and read the database's clock from it (``spotd.clock``)."""
        sent = time.time()
        expires = await self.store.renew_lease(lease)
        wall.observe(sent=sent, db_time=expires - lease, received=time.time())

    async def _takeover_loop(self) -> None:
        looked = time.monotonic()
        while not self.lost.is_set():
            if self.on_release is not None and time.monotonic() - looked >= REBALANCE_SECONDS:
                looked = time.monotonic()
                await self._even_the_load(self.on_release)
            try:
                taken = await self.store.take_over()
            except Fenced as exc:
                self._lose(str(exc))
                return
            self.live = taken.live
            if taken.jobs or taken.services:
                log.warning(
                    "took work over",
                    jobs=len(taken.jobs),
                    services=len(taken.services),
                    from_=list(taken.from_),
                )
                self.on_takeover(taken)
            await sleep(TAKEOVER_SECONDS, self.lost)

    async def _even_the_load(self, release: Callable[[list[int], str], None]) -> None:
        shares = await self.store.job_shares()
        n = surplus(shares.mine, shares.total, shares.live)
        if n:
            ids = await self.store.movable_jobs(n)
            why = (
                f"evening the load: it ran {shares.mine} of {shares.total} active jobs "
                f"over {shares.live} daemons"
            )
            log.info("handing jobs over", jobs=len(ids), why=why)
            release(ids, why)

    async def _listen_loop(self) -> None:
        async for payload in wake_notifications(self.settings.db_url):
            target = wake_target(payload)
            if target is not None:
                self.on_wake(*target)
        raise ConnectionError("the wake-up connection closed")  # the supervisor reconnects

    async def _notify(self, payload: str) -> None:
        await self.store.notify_wake(payload)

    def _sent(self, task: asyncio.Task[None]) -> None:
        """A wake-up that could not be sent: the owner looks again at its next period anyway."""
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("wake-up not sent", error=str(task.exception()))
