"""Partial recovery of a multi-node job: applying ``spotd.recovery.nodes``.

When a node of a gang job is lost and ``decide_node_loss`` says so, the healthy nodes are
kept, only the lost ranks are launched again in the attempt's zone, and the run restarts on
every node together, with the node list a torchrun-style launcher reads
(``SPOTD_NODE_RANK``/``SKYPILOT_NODE_RANK``, ``SPOTD_NODE_IPS``, ``SPOTD_NUM_NODES`` and
``SPOTD_GENERATION``).

How it is stored: the *same attempt*, with a node replaced — not a new attempt. An attempt is
one placement (provider, zone, instance type, market, price): the survivors never moved, so a
new attempt would claim a placement that did not happen, bill the kept nodes twice over the
hand-over, and make the checkpoint store (newest attempt wins) refuse the survivors' syncs.
So the attempt stays, goes back to PROVISIONING until every node runs again, and gains one
instance row per replaced rank, keyed ``j<job>-a<n>-n<rank>-g<generation>``; the lost row is
terminated and kept as history. ``generation`` counts the attempt's replacement rounds; the
attempt's current nodes are, per rank, its row of the highest generation (``current_nodes``).
The job counts one preemption and one recovery per round, and the event log says which node
was replaced and why (``node.replaced``).

The restart, through the heartbeat answer (``spotd.agent.gang`` is the agent's side):

1. ``replace``: the job goes to STARTING; one store transaction (``replace_nodes``) writes the
   replacements' rows (the intent, before any provider call), sets the survivors' phase to
   ``restarting`` and moves the attempt back to PROVISIONING; then the lost instance is
   terminated. The job worker launches rows without an instance id, as after any interrupted
   launch (the replacement is told its generation in ``SPOTD_GENERATION``).
2. Every heartbeat of an agent at an older generation is answered with ``restart`` (the
   generation, the node count and addresses): the agent stops its run (SIGTERM, the grace
   period, SIGKILL), syncs its checkpoint and reports ``waiting``. A survivor's row stays
   ``restarting`` until then (``record_heartbeat`` drops the old run's phase and exit code).
3. A ``waiting`` agent is answered ``go`` once every current node is ``waiting`` (or already
   running this generation): each starts its run again, and when every node runs the watch
   moves the attempt and the job to RUNNING.

If the replacement cannot be launched the attempt ends (PREEMPTED: it ran, and its cost
stays counted) and the whole job is placed again, as before.

A node under an interruption NOTICE is replaced the same way, make-before-break: its
replacement is launched at once, while the noticed node — not terminated — stops its run and
syncs its final checkpoint (``spotd.agent.main``'s notice path). The ``go`` waits for that
snapshot too: until the noticed node reported ``preempted`` (its final sync is in), is gone,
or its deadline passed (``drained``), no node runs again; then every node restores the
checkpoint store before it runs (``spotd.agent.gang.resume``), so all of them resume from the
final snapshot. ``settle`` terminates the noticed instance once it has drained.

A kept node that does not stop its run within ``restart_timeout`` seconds of the restart
order (its row still ``restarting``: an agent too old to know the order, a sync that hangs)
would hold every node back for ever: ``overdue`` ends the attempt and relaunches the whole
job instead, with a ``nodes.restart_timeout`` event naming the node.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

import structlog

from spotd.config import Settings
from spotd.control.attempts import Attempts
from spotd.control.memory import JobMemory
from spotd.control.node_keys import current_nodes, generation_of, replacement_key
from spotd.control.observer import FleetObserver
from spotd.metrics import DaemonMetrics
from spotd.providers.base import ProviderError
from spotd.recovery import detection, nodes
from spotd.recovery.watch import NodeReport
from spotd.store import AsyncStore, AttemptRow, InstanceRow, JobRow
from spotd.store.instances import RESTARTING
from spotd.types import FINAL_PHASES, EndReason, InstanceId, JobStatus, ZoneEventKind

__all__ = ["NodeLosses"]

HEARD_SECONDS = 5.0  # how long another daemon's attempt's rounds are taken as read
HEARD_MAX = 20_000  # attempts heard of that another daemon runs, kept at most

log = structlog.get_logger("spotd.control.node_replace")

REFUSAL_MEMORY = 300.0  # a launch refused in the zone this recently: no replacement there
NOTICE_FALLBACK = 120.0  # a notice without a deadline: EC2's two minutes
RESTART_TIMEOUT = 600.0  # a kept node has this long (after its grace) to stop and sync


def drained(row: InstanceRow, now: float, deadline: float | None = None) -> bool:
    """Whether a replaced node is done with this attempt: terminated, its agent finished (a
    noticed node reports ``preempted`` once its final checkpoint is synced), or no notice (or
    one run out) holds it here. ``deadline``: the notice's, when the provider told it first."""
    if row.terminated or row.phase in FINAL_PHASES:
        return True
    until = row.notice_deadline or deadline
    return until is None or until <= now


class NodeLosses:
    """What the job worker does when a node of a running attempt is lost: replace it (see the
    module docstring), or end the attempt and place the whole job again."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: AsyncStore,
        attempts: Attempts,
        observer: FleetObserver,
        metrics: DaemonMetrics,
        memory: JobMemory,
        restart_timeout: float | None = None,
    ) -> None:
        self.settings = settings
        self.restart_timeout = (
            restart_timeout
            if restart_timeout is not None
            else RESTART_TIMEOUT + float(settings.term_grace_seconds)
        )
        self.store = store
        self.attempts = attempts
        self.observer = observer
        self.metrics = metrics
        self.memory = memory
        self._generations: dict[str, int] = {}  # attempt id -> its replacement rounds
        # the same for attempts of jobs another daemon runs (heartbeats land anywhere), or
        # that ended: read again after HEARD_SECONDS (the owner may replace a node), at most
        # HEARD_MAX kept; kept for ever, they grew with every attempt heard and went stale
        self._heard: dict[str, tuple[int, float]] = {}
        self._notices: dict[str, float] = {}  # a replaced noticed node's key -> its deadline

    def forget_job(self, job_id: int) -> None:
        prefix = f"j{job_id}-a"
        for aid in [a for a in self._generations if a.startswith(prefix)]:
            del self._generations[aid]
        for key in [k for k in self._notices if k.startswith(prefix)]:
            del self._notices[key]

    async def generation(self, attempt_id: str, *, mine: bool = True) -> int:
        """The attempt's replacement rounds: read from the store once for a job this daemon
        runs (it makes the rounds itself), every ``HEARD_SECONDS`` for another's."""
        if mine:
            g = self._generations.get(attempt_id)
            if g is None:
                g = self._generations[attempt_id] = await self._read_generation(attempt_id)
            return g
        now = time.monotonic()
        heard = self._heard.pop(attempt_id, None)
        if heard is None or now - heard[1] >= HEARD_SECONDS:
            heard = (await self._read_generation(attempt_id), now)
        self._heard[attempt_id] = heard  # the newest last: the first is heard from longest ago
        if len(self._heard) > HEARD_MAX:
            del self._heard[next(iter(self._heard))]
        return heard[0]

    async def _read_generation(self, attempt_id: str) -> int:
        rows = await self.store.instances(attempt_id=attempt_id)
        return max((generation_of(r.key) for r in rows), default=0)

    async def _zone_refused(self, attempt: AttemptRow, now: float) -> bool:
        """Whether the attempt's zone refused a launch in the last ``REFUSAL_MEMORY`` s."""
        events = await self.store.zone_events(since=now - REFUSAL_MEMORY)
        return any(
            (e.provider, e.region, e.zone) == (attempt.provider, attempt.region, attempt.zone)
            and e.kind == ZoneEventKind.LAUNCH_FAILED.value
            for e in events
        )

    async def lost(
        self,
        job: JobRow,
        attempt: AttemptRow,
        reports: Sequence[NodeReport],
        node: NodeReport,
        now: float,
    ) -> float:
        """``node`` (the first of ``reports`` found lost) is gone or going: replace the lost
        nodes, or end the attempt; the job worker looks again at once."""
        if not await self.replace(job, attempt, reports, now):
            await self.attempt_lost(job, attempt, node, now)
        return 0.0

    async def replace(
        self, job: JobRow, attempt: AttemptRow, reports: Sequence[NodeReport], now: float
    ) -> bool:
        """Replace the lost nodes when ``decide_node_loss`` says so; False: relaunch all."""
        if len(reports) < 2:
            return False  # a single-node job: nothing to keep, and nothing to log
        rounds = await self.generation(attempt.id)
        decision = nodes.decide_node_loss(
            reports,
            rounds_so_far=rounds,
            max_rounds=int(self.settings.node_replacements),
            zone_refused=await self._zone_refused(attempt, now),
        )
        if isinstance(decision, nodes.RelaunchAll):
            lost = [
                n for n in reports if n.verdict.kind in nodes.GONE | {detection.VerdictKind.NOTICE}
            ]
            names = ", ".join(str(n.node_rank) for n in lost) or "?"
            await self.store.add_event(
                kind="nodes.relaunch",
                message=f"node {names} lost: relaunching every node ({decision.reason})",
                now=now,
                job_id=job.id,
                attempt_id=attempt.id,
            )
            return False
        gen = rounds + 1
        rows = {r.key: r for r in await self.store.instances(attempt_id=attempt.id)}
        lost_rows = [rows[n.key] for n in decision.lost]
        why = "; ".join(
            f"node {n.node_rank} ({n.key}) {n.verdict.kind.lower()}: {n.verdict.evidence}"
            for n in decision.lost
        )
        ranks = ", ".join(str(r) for r in decision.ranks)
        where = f"{attempt.region}/{attempt.zone}"
        noticed = ", ".join(str(r) for r in decision.noticed)
        if noticed:  # make-before-break: it drains its final checkpoint meanwhile
            why += (
                f"; node {noticed} got an interruption notice: replaced at once, the run "
                "resumes from its final checkpoint"
            )
        log.warning("replacing lost nodes", attempt_id=attempt.id, ranks=ranks, why=why)
        self.metrics.preemptions.labels(attempt.provider, attempt.region).inc()
        await self.store.add_zone_event(
            provider=attempt.provider,
            region=attempt.region,
            zone=attempt.zone,
            kind=ZoneEventKind.PREEMPTED.value,
            at=now,
            detail=why,
        )
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.STARTING, JobStatus.RUNNING],
            to=JobStatus.STARTING,
            reason=f"replacing node {ranks} in {where}, {decision.reason}: {why}",
            now=now,
            preemptions=job.preemptions + 1,
            recoveries=job.recoveries + 1,
            failed_launches=0,
            first_failure_at=None,
        )
        survivors = [n.key for n in reports if n.node_rank not in decision.ranks]
        await self.store.replace_nodes(
            attempt.id,
            lost=[r.key for r in lost_rows],
            replacements=[
                {
                    "key": replacement_key(attempt.id, rank, gen),
                    "node_rank": rank,
                    "token": secrets.token_urlsafe(24),
                }
                for rank in decision.ranks
            ],
            restart=survivors,
            reason=f"node {ranks} replaced in {where} ({why}); the run restarts on every node",
            now=now,
        )
        self._generations[attempt.id] = gen
        for n in decision.lost:  # the listing may have told the deadline before the agent
            if n.node_rank in decision.noticed:
                self._notices[n.key] = n.verdict.notice_deadline or now + NOTICE_FALLBACK
        self.memory.lost(job.id, now)
        gone = [
            r
            for r, n in zip(lost_rows, decision.lost, strict=True)
            if n.node_rank not in decision.noticed
        ]
        await self._terminate(attempt.provider, gone, now)
        return True

    async def settle(self, attempt: AttemptRow, every: Sequence[InstanceRow], now: float) -> None:
        """Terminate the replaced nodes that drained (a noticed node, once its final
        checkpoint is synced or its deadline passed); the others are left to finish."""
        current = {r.key for r in current_nodes(every)}
        done = [
            r
            for r in every
            if r.key not in current
            and not r.terminated
            and drained(r, now, self._notices.get(r.key))
        ]
        if done:
            await self._terminate(attempt.provider, done, now)
        for r in done:
            self._notices.pop(r.key, None)

    async def _terminate(self, provider_name: str, rows: Sequence[InstanceRow], now: float) -> None:
        provider = self.attempts.providers[provider_name]
        for row in rows:
            if row.instance_id is not None:
                try:
                    await provider.terminate(InstanceId(row.instance_id))
                except ProviderError as exc:
                    log.warning("terminate failed; the reaper retries", key=row.key, error=str(exc))
                    continue
            await self.store.mark_instance_terminated(row.key, now=now)

    async def overdue(
        self, job: JobRow, attempt: AttemptRow, rows: Sequence[InstanceRow], now: float
    ) -> bool:
        """A kept node still ``restarting`` ``restart_timeout`` s after the restart order:
        end the attempt and place the whole job again (True), rather than wait for ever."""
        if job.status != JobStatus.STARTING or await self.generation(attempt.id) == 0:
            return False
        current = max(generation_of(r.key) for r in rows)
        since = max((r.created_at for r in rows if generation_of(r.key) == current), default=now)
        stuck = [r for r in rows if r.phase == RESTARTING and now - since > self.restart_timeout]
        if not stuck:
            return False
        node = stuck[0]
        why = (
            f"node {node.node_rank} ({node.key}) did not stop its run within "
            f"{self.restart_timeout:.0f}s of the restart order"
        )
        log.warning("restart timed out", attempt_id=attempt.id, instance=node.key)
        await self.store.add_event(
            kind="nodes.restart_timeout",
            message=f"{why}: relaunching every node",
            now=now,
            job_id=job.id,
            attempt_id=attempt.id,
        )
        await self.attempts.end(attempt.id, EndReason.PREEMPTED, why, now)
        await self.attempts.terminate(attempt.id)
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.STARTING],
            to=JobStatus.RECOVERING,
            reason=f"{why}; relaunching every node",
            now=now,
            recoveries=job.recoveries + 1,
        )
        return True

    async def order_for(
        self, row: InstanceRow, generation: int, phase: str | None, *, mine: bool = True
    ) -> dict[str, object] | None:
        """What a heartbeat's answer tells the agent about restarting (None: nothing): see
        :func:`spotd.recovery.nodes.restart_order`. ``mine``: this daemon runs the job."""
        if row.terminated:
            return None  # a machine shutting down: nothing to restart, nothing to remember
        current = await self.generation(row.attempt_id, mine=mine)
        if current == 0 and (phase != "waiting" or generation != 0):
            return None  # the common case, a running first generation: nothing to read
        every = await self.store.instances(attempt_id=row.attempt_id)
        now_nodes = current_nodes(every)
        now_keys = {r.key for r in now_nodes}
        now = self.attempts.clock()
        listing = self.observer.latest(row.provider)
        listed = listing.instances if listing is not None else {}
        order = nodes.restart_order(
            row.key,
            generation,
            phase,
            current=current,
            nodes=[
                nodes.NodeView(r.key, r.phase, listed[r.key].address if r.key in listed else None)
                for r in now_nodes
            ],
            replaced_drained=all(
                drained(r, now, self._notices.get(r.key)) for r in every if r.key not in now_keys
            ),
        )
        return None if order is None else order.as_dict()

    async def attempt_lost(
        self, job: JobRow, attempt: AttemptRow, node: NodeReport, now: float
    ) -> None:
        """End the attempt (the whole gang), terminate its nodes unless a notice lets them
        checkpoint first, and send the job back to be placed again."""
        aid = attempt.id
        verdict = node.verdict
        evidence = verdict.evidence
        log.warning(
            "attempt lost",
            attempt_id=aid,
            instance=node.key,
            verdict=str(verdict.kind),
            evidence=evidence,
            region=attempt.region,
            zone=attempt.zone,
        )
        self.metrics.preemptions.labels(attempt.provider, attempt.region).inc()
        await self.store.add_zone_event(
            provider=attempt.provider,
            region=attempt.region,
            zone=attempt.zone,
            kind=ZoneEventKind.PREEMPTED.value,
            at=now,
            detail=evidence,
        )
        await self.attempts.end(aid, EndReason.PREEMPTED, evidence, now)
        if verdict.kind == detection.VerdictKind.NOTICE and verdict.notice_deadline:
            self.attempts.notices[aid] = verdict.notice_deadline
        if verdict.kind != detection.VerdictKind.NOTICE:
            await self.attempts.terminate(aid)
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.STARTING, JobStatus.RUNNING],
            to=JobStatus.RECOVERING,
            reason=f"preempted in {attempt.region}/{attempt.zone} (node {node.node_rank}): "
            f"{evidence}",
            now=now,
            preemptions=job.preemptions + 1,
            recoveries=job.recoveries + 1,
            failed_launches=0,
            first_failure_at=None,
        )
        self.memory.lost(job.id, now)
