"""``spotctl``: the command line client. It talks only to the daemon's API.

Commands follow SkyPilot's where a user knows them (``sky jobs launch`` → ``spotctl jobs
launch``). Every listing takes ``-o json``. Each command group is its own module; this one
only assembles them:

- ``check`` (``spotd.cli.check``) and ``catalog`` (``spotd.cli.providers``): offline
- ``jobs`` (``spotd.cli.jobs``), ``serve`` (``spotd.cli.serve``)
- ``cost``, ``project`` (``spotd.cli.projects``), ``chaos`` (``spotd.cli.chaos``)
- ``storage`` (``spotd.cli.storage``): buckets of storage objects
- ``daemon`` (``spotd.cli.daemon``): the local daemon itself
- ``dashboard`` (``spotd.cli.dashboard``): a one-time sign-in link to the web dashboard
- ``simulate`` (``spotd.sim.cli``): offline, needs no daemon
"""

from __future__ import annotations

from types import MappingProxyType

import click

from spotd.cli.lazy import LazyCommand, LazyGroup

__all__ = ["COMMANDS", "main"]

# Each command group is imported only when it runs: `spotctl --help` imports none of them
# (spotd.cli.lazy; tests/fleet/test_cli_start.py keeps these lines equal to each command's own).
COMMANDS = MappingProxyType(
    {
        "catalog": LazyCommand(
            "spotd.cli.providers:catalog", "Instance types and prices of every configured provider."
        ),
        "chaos": LazyCommand(
            "spotd.cli.chaos:chaos",
            "Inject failures into a live daemon's local provider (for tests and demos).",
        ),
        "check": LazyCommand(
            "spotd.cli.check:check",
            "Validate task YAML files; exit non-zero if any cannot be used.",
        ),
        "cost": LazyCommand(
            "spotd.cli.projects:cost_cmd",
            "What jobs and services cost: GPU-hours, spot vs on-demand, dollars, saving.",
        ),
        "daemon": LazyCommand(
            "spotd.cli.daemon:daemon", "Start, stop or inspect the local daemon."
        ),
        "dashboard": LazyCommand(
            "spotd.cli.dashboard:dashboard",
            "Print (and open in a browser) a one-time sign-in link to the dashboard.",
        ),
        "jobs": LazyCommand(
            "spotd.cli.jobs:jobs",
            "Managed jobs: launched on the cheapest place that fits, recovered on preemption.",
        ),
        "project": LazyCommand(
            "spotd.cli.projects:project",
            "Tenants: projects with GPU quotas and their own API tokens.",
        ),
        "serve": LazyCommand(
            "spotd.cli.serve:serve", "Services: replicas on spot capacity behind a load balancer."
        ),
        "simulate": LazyCommand(
            "spotd.sim.cli:simulate",
            "Replay spot traces through spotd's policies and published baselines (no daemon).",
        ),
        "storage": LazyCommand(
            "spotd.cli.storage:storage",
            "Buckets of storage objects (file_mounts with a `name`, or mode MOUNT/MOUNT_CACHED).",
        ),
    }
)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="SPOTD_URL",
    default=None,
    metavar="URL",
    help="A daemon over TCP, https://HOST:PORT (or http:// on loopback), with the token in "
    "$SPOTD_API_TOKEN [$SPOTD_URL; default: the local daemon's socket].",
)
@click.option(
    "--ca-file",
    envvar="SPOTD_CA_FILE",
    type=click.Path(dir_okay=False),
    default=None,
    help="The CA certificate that signed the daemon's certificate, for https:// URLs "
    "(`spotd tls init` prints its path) [$SPOTD_CA_FILE; default: the system's CAs].",
)
@click.pass_context
def main(ctx: click.Context, url: str | None, ca_file: str | None) -> None:
    """spotd client: managed jobs and services on spot capacity."""
    from spotd.cli.common import DaemonTarget  # not for --help: it imports the SDK

    ctx.obj = DaemonTarget(url=url or None, ca_file=ca_file or None)


if __name__ == "__main__":
    main()
