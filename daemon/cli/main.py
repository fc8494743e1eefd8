"""``spotctl``: the command line client. It talks only to the daemon's API.

Commands follow SkyPilot's where a user knows them (``sky jobs launch`` → ``spotctl jobs
launch``). Every listing takes ``-o json``. Each command group is its own module; this one
only assembles them:

- ``check`` (``spotd.cli.check``) and ``catalog`` (``spotd.cli.providers``): offline
- ``jobs`` (``spotd.cli.jobs``), ``serve`` (``spotd.cli.serve``)
- ``cost``, ``project`` (``spotd.cli.projects``), ``chaos`` (``spotd.cli.chaos``)
- ``daemon`` (``spotd.cli.daemon``): the local daemon itself
- ``simulate`` (``spotd.sim.cli``): offline, needs no daemon
"""

from __future__ import annotations

import click

from spotd.cli.chaos import chaos
from spotd.cli.check import check
from spotd.cli.common import DaemonTarget
from spotd.cli.daemon import daemon
from spotd.cli.jobs import jobs
from spotd.cli.projects import cost_cmd, project
from spotd.cli.providers import catalog
from spotd.cli.serve import serve
from spotd.sim.cli import simulate

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    ctx.obj = DaemonTarget(url=url or None, ca_file=ca_file or None)


for command in (check, jobs, cost_cmd, project, chaos, daemon, serve, catalog, simulate):
    main.add_command(command)


if __name__ == "__main__":
    main()
