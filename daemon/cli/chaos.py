"""``spotctl chaos preempt|kill-instance|stockout|partition``: failures on demand, through the
daemon, for providers with test controls (the local one)."""

from __future__ import annotations

from typing import Any

import click

from spotd.cli.common import out, run

__all__ = ["chaos"]


@click.group()
def chaos() -> None:
    """Inject failures into a live daemon's local provider (for tests and demos)."""


@chaos.command("preempt")
@click.argument("target")
@click.option("--notice", type=float, default=None, help="Give an advance notice of N seconds.")
def chaos_preempt(target: str, notice: float | None) -> None:
    """Preempt TARGET (a job id or an instance id), with or without a notice."""
    body: dict[str, Any] = {"target": target}
    if notice:
        body["notice_seconds"] = notice
    r = run(lambda c: c.chaos("preempt", **body))
    out.print(
        f"preempted {', '.join(r['preempted'])}"
        + (f" with a {notice:g}s notice" if notice else " without notice")
    )


@chaos.command("kill-instance")
@click.argument("target")
def chaos_kill(target: str) -> None:
    """SIGKILL the whole process group of an instance (or of a job's node 0): no notice."""
    r = run(lambda c: c.chaos("kill-instance", target=target))
    out.print(f"killed {', '.join(r['killed'])}")


@chaos.command("stockout")
@click.argument("region")
@click.option(
    "--for", "seconds", type=float, default=300.0, help="How long (seconds); 0 ends the stockout."
)
@click.option(
    "--market",
    type=click.Choice(["spot", "on-demand"]),
    default=None,
    help="Only this market (default: both).",
)
def chaos_stockout(region: str, seconds: float, market: str | None) -> None:
    """Make launches in REGION fail with no capacity for a while."""
    body: dict[str, Any] = {"target": region, "seconds": seconds}
    if market:
        body["market"] = market
    run(lambda c: c.chaos("stockout", **body))
    what = f"{region} ({market})" if market else region
    out.print(f"{what} stocked out for {seconds:g}s" if seconds else f"{what}: stockout ended")


@chaos.command("partition")
@click.argument("target")
@click.option("--for", "seconds", type=float, default=30.0, help="How long (seconds).")
def chaos_partition(target: str, seconds: float) -> None:
    """Block an instance's heartbeats (it keeps running)."""
    r = run(lambda c: c.chaos("partition", target=target, seconds=seconds))
    out.print(f"partitioned {', '.join(r['partitioned'])} for {seconds:g}s")
