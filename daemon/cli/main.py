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
from spotd.cli.daemon import daemon
from spotd.cli.jobs import jobs
from spotd.cli.projects import cost_cmd, project
from spotd.cli.providers import catalog
from spotd.cli.serve import serve
from spotd.sim.cli import simulate

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """spotd client: managed jobs and services on spot capacity."""


for command in (check, jobs, cost_cmd, project, chaos, daemon, serve, catalog, simulate):
    main.add_command(command)


if __name__ == "__main__":
    main()
