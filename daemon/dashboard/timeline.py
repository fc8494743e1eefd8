"""A job's preemption story as a picture: attempts as bands, one lane per place, and markers.

Pure functions of the store's rows and ``now``. Each attempt is a band in the lane of its
placement (``provider/zone · market``): from its creation (spotd asked for a machine)
to its end, the part before its run started drawn lighter (provisioning, setup). Each
preemption adds markers:

- ``notice``: the provider's interruption notice, seen by spotd (the attempt ended on it; the
  reclaim deadline is in the label);
- ``detected``: spotd decided the attempt was gone (the attempt's end);
- ``replacement``: the next attempt was asked for (its creation);
- ``resumed``: the next attempt's run started.

Example: attempt 1 runs 10:00–10:30 in local-east-a on spot and gets a notice at 10:30;
attempt 2 is created at 10:30:01 in local-central-a and runs from 10:30:40. Two lanes; markers
notice and detected at 10:30, replacement at 10:30:01, resumed at 10:30:40; the preemption row
says it ran 30 min before (the work at risk: without a checkpoint all of it is lost, with one
only what came after the last checkpoint) and the job was down 39 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spotd.store import AttemptRow, InstanceRow
from spotd.types import EndReason

__all__ = ["Band", "Marker", "Preemption", "Timeline", "timeline"]

PREEMPTED_ENDS = frozenset({EndReason.PREEMPTED})


@dataclass(frozen=True, slots=True)
class Band:
    attempt: int
    lane: str
    market: str
    start: float
    running: float | None  # when its run started (None: never)
    end: float
    live: bool  # still going: its end is ``now``
    outcome: str  # the end reason, or the attempt's status while it lives


@dataclass(frozen=True, slots=True)
class Marker:
    kind: str  # notice | detected | replacement | resumed
    at: float
    attempt: int
    label: str


@dataclass(frozen=True, slots=True)
class Preemption:
    attempt: int
    where: str
    at: float
    notice: bool
    ran_seconds: float  # the attempt's run before it was lost: the work at risk
    down_seconds: float | None  # from detection to the next run's start (None: not yet)


@dataclass(frozen=True, slots=True)
class Timeline:
    lanes: tuple[str, ...]
    bands: tuple[Band, ...]
    markers: tuple[Marker, ...]
    preemptions: tuple[Preemption, ...]
    start: float
    end: float

    def pct(self, t: float) -> float:
        """Where ``t`` falls on the drawing, 0–100."""
        return round(100.0 * (t - self.start) / (self.end - self.start), 3)

    def ticks(self, n: int = 6) -> list[tuple[float, float]]:
        """``n`` evenly spaced moments on the axis, with their position."""
        step = (self.end - self.start) / max(1, n - 1)
        return [(self.pct(self.start + i * step), self.start + i * step) for i in range(n)]


def lane_of(a: AttemptRow) -> str:
    """The lane of an attempt: ``local/local-east-a · spot`` (a zone names its region)."""
    return f"{a.provider}/{a.zone} · {a.market}"


def timeline(
    attempts: Sequence[AttemptRow], instances: Sequence[InstanceRow], *, now: float
) -> Timeline:
    """The bands, markers and preemptions of a job's attempts (first to last)."""
    lanes: list[str] = []
    bands: list[Band] = []
    markers: list[Marker] = []
    preemptions: list[Preemption] = []
    deadlines: dict[str, float] = {}
    for inst in instances:
        if inst.notice_deadline is not None:
            deadlines[inst.attempt_id] = max(
                deadlines.get(inst.attempt_id, 0.0), inst.notice_deadline
            )
    for i, a in enumerate(attempts):
        lane = lane_of(a)
        if lane not in lanes:
            lanes.append(lane)
        end = a.ended_at if a.ended_at is not None else now
        bands.append(
            Band(
                attempt=a.attempt,
                lane=lane,
                market=str(a.market),
                start=a.created_at,
                running=a.started_at,
                end=max(end, a.created_at),
                live=a.ended_at is None,
                outcome=str(a.end_reason) if a.end_reason else str(a.status),
            )
        )
        if a.end_reason not in PREEMPTED_ENDS or a.ended_at is None:
            continue
        deadline = deadlines.get(a.id)
        # "reclaimed without notice" says notice too: only an interruption notice counts
        noticed = deadline is not None or "interruption notice" in a.end_detail
        if noticed:
            label = "interruption notice"
            if deadline is not None:
                label += f", reclaim {max(0.0, deadline - a.ended_at):.0f}s later"
            markers.append(Marker("notice", a.ended_at, a.attempt, label))
        markers.append(Marker("detected", a.ended_at, a.attempt, f"attempt {a.attempt} lost"))
        nxt = attempts[i + 1] if i + 1 < len(attempts) else None
        down = None
        if nxt is not None:
            markers.append(
                Marker("replacement", nxt.created_at, nxt.attempt, f"attempt {nxt.attempt} asked")
            )
            if nxt.started_at is not None:
                markers.append(
                    Marker("resumed", nxt.started_at, nxt.attempt, f"attempt {nxt.attempt} runs")
                )
                down = nxt.started_at - a.ended_at
        preemptions.append(
            Preemption(
                attempt=a.attempt,
                where=lane,
                at=a.ended_at,
                notice=noticed,
                ran_seconds=max(0.0, a.ended_at - a.started_at) if a.started_at else 0.0,
                down_seconds=down,
            )
        )
    start = min((b.start for b in bands), default=now)
    end = max((b.end for b in bands), default=now)
    return Timeline(
        lanes=tuple(lanes),
        bands=tuple(bands),
        markers=tuple(markers),
        preemptions=tuple(preemptions),
        start=start,
        end=max(end, start + 1.0),
    )
