"""``spotd``: the daemon, in the foreground (what systemd runs); ``spotd install-units``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
from spotd.config import ConfigError, load_settings
from spotd.logconfig import configure
from spotd.server import AlreadyRunning, ProviderConfigError, run_daemon
from spotd.ops.units import install_units_command


@click.group(invoke_without_command=True)
@click.option("--home", type=click.Path(), default=None, help="Data directory ($SPOTD_HOME).")
@click.option("--json-logs/--console-logs", default=None, help="Log format (default: by tty).")
@click.pass_context
def main(ctx: click.Context, home: str | None, json_logs: bool | None) -> None:
    """Run the spotd controller in the foreground until SIGTERM or SIGINT."""
    if ctx.invoked_subcommand is not None:
        return
    configure(json_lines=json_logs)
    try:
        settings = load_settings(Path(home) if home else None)
    except ConfigError as exc:
        click.echo(f"spotd: {exc}", err=True)
        sys.exit(2)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(run_daemon(settings))
    except (AlreadyRunning, ProviderConfigError) as exc:
        click.echo(f"spotd: {exc}", err=True)
        sys.exit(1)


main.add_command(install_units_command)

if __name__ == "__main__":
    main()
