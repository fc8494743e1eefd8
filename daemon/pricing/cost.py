"""Cost accounting: what each job, service, project and region cost, and what spot saved.

Pure functions over frozen records: the API turns attempts and replicas into :class:`Usage`
(with the catalog, for GPU counts and the on-demand price of the same instance type in the same
region), then :func:`cost_report` groups and sums them for a window ending ``now``.

What is billed: a placement from its creation (spotd asked the provider for machines) to its
end, times its node count; a job attempt whose launch failed (``LAUNCH_FAILED``: the provider
gave no machine) and a replica that never got an instance cost nothing. A placement still
running is billed up to ``now``. ``since`` clips every placement to the window, so a job that
ran 10:00–14:00 costs 2 hours "since 12:00".

The saving compares what was paid with the same instance-hours at the on-demand list price.
Example: 3 h of one ``sim-a100-1`` on spot at $0.60/h where on-demand is $2.00/h costs $1.80;
on-demand would have cost $6.00, so the saving is $4.20 (70%). On-demand hours save nothing.
When the catalog no longer lists the instance type, the on-demand price is unknown: that
placement's saving counts as 0 and it is counted in ``unpriced``.

Simulated placements (the local provider's: processes on the daemon's host at made-up prices,
``spotd.pricing.catalog.is_simulated``) are summed like the others, so a test or a laptop
still sees its numbers, but never pass for money spent: each row says how many of its dollars
are simulated (``simulated_dollars``) and whether all of them are (``simulated``), and the
report carries a note saying so. Example: a job that ran 1 h on ``sim-a100-8`` at $9.83/h and
then 1 h on ``p4d.24xlarge`` at $13.76/h is one row of $23.59 with ``simulated_dollars``
9.83 and ``simulated`` false; a row of ``local/local-east`` is ``simulated`` true.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotd.pricing.catalog import is_simulated
from spotd.spec import parse_duration
from spotd.types import CatalogEntry, EndReason, Market

__all__ = [
    "CatalogIndex",
    "CostBy",
    "CostRow",
    "Usage",
    "cost_report",
    "parse_since",
    "report_json",
    "simulated_note",
    "usage_from_attempt",
    "usage_from_replica",
]


class CostBy(enum.StrEnum):
    JOB = "job"  # one row per job (services are left out)
    SERVICE = "service"  # one row per service (jobs are left out)
    PROJECT = "project"  # jobs and services of each project
    REGION = "region"  # "provider/region", jobs and services


@dataclass(frozen=True, slots=True)
class Usage:
    """One placement (a job attempt or a service replica) as cost accounting sees it."""

    job_id: int | None
    job_name: str
    service: str | None
    project: str
    provider: str
    region: str
    instance_type: str
    market: Market
    price_per_hour: float  # per node, what was paid
    ondemand_price_per_hour: float | None  # per node, the same type on-demand; None: unknown
    gpus_per_node: float
    nodes: int
    start: float | None  # None: it never got a machine (costs nothing)
    end: float | None  # None: still running

    @property
    def simulated(self) -> bool:
        """A placement on simulated capacity: its price was made up."""
        return is_simulated(self.provider)


@dataclass(frozen=True, slots=True)
class CostRow:
    key: str
    label: str
    placements: int
    hours: float  # instance-hours (nodes × hours)
    gpu_hours: float
    spot_hours: float
    ondemand_hours: float
    dollars: float
    spot_dollars: float
    ondemand_dollars: float
    ondemand_equivalent_dollars: float  # the same hours at the on-demand price
    saving_dollars: float
    unpriced: int  # placements whose on-demand price is unknown
    simulated_placements: int = 0  # placements on simulated capacity (made-up prices)
    simulated_dollars: float = 0.0  # the part of ``dollars`` those made up

    @property
    def simulated(self) -> bool:
        """Every placement of the row was simulated: none of its dollars were spent."""
        return self.placements > 0 and self.simulated_placements == self.placements

    @property
    def saving_pct(self) -> float:
        eq = self.ondemand_equivalent_dollars
        return 100.0 * self.saving_dollars / eq if eq > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "placements": self.placements,
            "hours": self.hours,
            "gpu_hours": self.gpu_hours,
            "spot_hours": self.spot_hours,
            "ondemand_hours": self.ondemand_hours,
            "dollars": self.dollars,
            "spot_dollars": self.spot_dollars,
            "ondemand_dollars": self.ondemand_dollars,
            "ondemand_equivalent_dollars": self.ondemand_equivalent_dollars,
            "saving_dollars": self.saving_dollars,
            "saving_pct": round(self.saving_pct, 2),
            "unpriced": self.unpriced,
            "simulated": self.simulated,
            "simulated_placements": self.simulated_placements,
            "simulated_dollars": self.simulated_dollars,
        }


class CatalogIndex:
    """On-demand price and GPU count of an instance type, by (provider, region[, zone])."""

    def __init__(self, catalog: Iterable[CatalogEntry]) -> None:
        self._zone: dict[tuple[str, str, str, str], CatalogEntry] = {}
        self._region: dict[tuple[str, str, str], CatalogEntry] = {}
        self._type: dict[tuple[str, str], CatalogEntry] = {}
        for e in catalog:
            self._zone.setdefault((e.provider, e.region, e.zone, e.instance_type), e)
            self._region.setdefault((e.provider, e.region, e.instance_type), e)
            self._type.setdefault((e.provider, e.instance_type), e)

    def entry(
        self, provider: str, region: str, zone: str, instance_type: str
    ) -> CatalogEntry | None:
        return self._zone.get((provider, region, zone, instance_type)) or self._region.get(
            (provider, region, instance_type)
        )

    def gpus(self, provider: str, instance_type: str) -> float:
        e = self._type.get((provider, instance_type))
        return e.accelerator_count if e else 0.0


def _ondemand(market: Market, paid: float, entry: CatalogEntry | None) -> float | None:
    if entry is not None:
        return float(entry.ondemand_price)
    return paid if market == Market.ON_DEMAND else None


def usage_from_attempt(attempt: Any, *, job: Any, index: CatalogIndex) -> Usage:
    """``attempt``: a store AttemptRow; ``job``: its JobRow."""
    market = Market(attempt.market)
    entry = index.entry(attempt.provider, attempt.region, attempt.zone, attempt.instance_type)
    failed = attempt.end_reason == EndReason.LAUNCH_FAILED
    return Usage(
        job_id=int(job.id),
        job_name=str(job.name),
        service=None,
        project=str(job.project),
        provider=attempt.provider,
        region=attempt.region,
        instance_type=attempt.instance_type,
        market=market,
        price_per_hour=float(attempt.price_per_hour),
        ondemand_price_per_hour=_ondemand(market, float(attempt.price_per_hour), entry),
        gpus_per_node=index.gpus(attempt.provider, attempt.instance_type),
        nodes=int(attempt.num_nodes),
        start=None if failed else float(attempt.created_at),
        end=attempt.ended_at,
    )


def usage_from_replica(
    replica: Any, *, service: str, project: str = "default", index: CatalogIndex
) -> Usage:
    """``replica``: a store ReplicaRow of the service named ``service``."""
    market = Market(replica.market)
    entry = index.entry(replica.provider, replica.region, replica.zone, replica.instance_type)
    return Usage(
        job_id=None,
        job_name="",
        service=service,
        project=project,
        provider=replica.provider,
        region=replica.region,
        instance_type=replica.instance_type,
        market=market,
        price_per_hour=float(replica.price_per_hour),
        ondemand_price_per_hour=_ondemand(market, float(replica.price_per_hour), entry),
        gpus_per_node=index.gpus(replica.provider, replica.instance_type),
        nodes=1,
        start=None if replica.instance_id is None else float(replica.created_at),
        end=replica.ended_at,
    )


def _group(u: Usage, by: CostBy) -> tuple[str, str] | None:
    if by == CostBy.JOB:
        return None if u.job_id is None else (str(u.job_id), u.job_name)
    if by == CostBy.SERVICE:
        return None if u.service is None else (u.service, u.service)
    if by == CostBy.PROJECT:
        return u.project, u.project
    return f"{u.provider}/{u.region}", f"{u.provider}/{u.region}"


def _hours(u: Usage, since: float | None, now: float) -> float:
    if u.start is None:
        return 0.0
    start = max(u.start, since) if since is not None else u.start
    end = min(u.end if u.end is not None else now, now)
    return max(0.0, end - start) / 3600.0 * u.nodes


@dataclass
class _Acc:
    label: str
    placements: int = 0
    hours: float = 0.0
    gpu_hours: float = 0.0
    spot_hours: float = 0.0
    ondemand_hours: float = 0.0
    spot_dollars: float = 0.0
    ondemand_dollars: float = 0.0
    equivalent: float = 0.0
    unpriced: int = 0
    simulated_placements: int = 0
    simulated_dollars: float = 0.0

    def add(self, u: Usage, hours: float) -> None:
        paid = hours * u.price_per_hour
        self.placements += 1
        if u.simulated:
            self.simulated_placements += 1
            self.simulated_dollars += paid
        self.hours += hours
        self.gpu_hours += hours * u.gpus_per_node
        if u.market == Market.SPOT:
            self.spot_hours += hours
            self.spot_dollars += paid
        else:
            self.ondemand_hours += hours
            self.ondemand_dollars += paid
        if u.ondemand_price_per_hour is None:
            self.unpriced += 1
            self.equivalent += paid
        else:
            self.equivalent += hours * u.ondemand_price_per_hour

    def row(self, key: str) -> CostRow:
        dollars = self.spot_dollars + self.ondemand_dollars
        return CostRow(
            key=key,
            label=self.label,
            placements=self.placements,
            hours=self.hours,
            gpu_hours=self.gpu_hours,
            spot_hours=self.spot_hours,
            ondemand_hours=self.ondemand_hours,
            dollars=dollars,
            spot_dollars=self.spot_dollars,
            ondemand_dollars=self.ondemand_dollars,
            ondemand_equivalent_dollars=self.equivalent,
            saving_dollars=self.equivalent - dollars,
            unpriced=self.unpriced,
            simulated_placements=self.simulated_placements,
            simulated_dollars=self.simulated_dollars,
        )


def cost_report(
    usages: Sequence[Usage], *, by: CostBy, since: float | None, now: float
) -> tuple[list[CostRow], CostRow]:
    """Rows (most expensive first) and their total, over ``[since, now]``.

    A placement with no billed time in the window is left out (it neither adds a row nor counts
    as a placement).
    """
    groups: dict[str, _Acc] = {}
    total = _Acc(label="total")
    for u in usages:
        g = _group(u, by)
        if g is None:
            continue
        hours = _hours(u, since, now)
        if hours <= 0:
            continue
        groups.setdefault(g[0], _Acc(label=g[1])).add(u, hours)
        total.add(u, hours)
    rows = sorted((acc.row(k) for k, acc in groups.items()), key=lambda r: (-r.dollars, r.key))
    return rows, total.row("total")


def simulated_note(total: CostRow) -> str | None:
    """What a reader must know when simulated placements are in the report; None if none."""
    if total.simulated_placements == 0:
        return None
    share = "all" if total.simulated else f"${total.simulated_dollars:.4f}"
    return (
        f"simulated: {share} of these costs are the local provider's made-up prices "
        "(processes on the daemon's host), not money spent"
    )


def report_json(
    rows: Sequence[CostRow], total: CostRow, *, by: CostBy, since: float | None, now: float
) -> Mapping[str, Any]:
    return {
        "by": str(by),
        "since": since,
        "until": now,
        "rows": [r.to_json() for r in rows],
        "total": total.to_json(),
        "note": simulated_note(total),
    }


def parse_since(text: str, *, now: float) -> float:
    """``--since``: a date or datetime (ISO-8601, local time unless it says otherwise), epoch
    seconds, or a duration back from ``now`` (``7d``, ``12h``). Raises ``ValueError``."""
    raw = text.strip()
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        try:
            return now - float(parse_duration(raw))
        except (ValueError, TypeError):
            raise ValueError(
                f"--since must be a date (2025-01-31), a datetime, epoch seconds or a duration "
                f"(7d), got {text!r}"
            ) from None
    return dt.timestamp() if dt.tzinfo else dt.astimezone().timestamp()
