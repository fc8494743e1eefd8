"""``spotd``: the daemon, in the foreground (what systemd runs); ``spotd install-units``;
``spotd tls init`` (a private CA and the TCP API's certificate)."""

from __future__ import annotations

import asyncio
import faulthandler
import sys
from collections.abc import Callable
from pathlib import Path

import click

from spotd.config import ConfigError, load_settings
from spotd.control.cluster import LEASE_LOST_EXIT
from spotd.logconfig import configure
from spotd.ops.tls_init import HOME_META, tls_command
from spotd.ops.units import install_units_command
from spotd.server import (
    AlreadyRunning,
    LeaseLost,
    ProviderConfigError,
    TransportError,
    run_daemon,
)


@click.group(invoke_without_command=True)
@click.option("--home", type=click.Path(), default=None, help="Data directory ($SPOTD_HOME).")
@click.option("--json-logs/--console-logs", default=None, help="Log format (default: by tty).")
@click.pass_context
def main(ctx: click.Context, home: str | None, json_logs: bool | None) -> None:
    """Run the spotd controller in the foreground until SIGTERM or SIGINT."""
    if ctx.invoked_subcommand is not None:
        if home:  # `spotd --home DIR tls init` writes under that home
            ctx.meta[HOME_META] = Path(home)
        return
    configure(json_lines=json_logs)
    # a fatal signal (a C extension's crash) leaves its Python stacks in the log, not silence
    faulthandler.enable()
    try:
        settings = load_settings(Path(home) if home else None)
    except ConfigError as exc:
        click.echo(f"spotd: {exc}", err=True)
        sys.exit(2)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run_daemon(settings))
    except TransportError as exc:  # a config the daemon refuses: like a ConfigError
        click.echo(f"spotd: {exc}", err=True)
        sys.exit(2)
    except (AlreadyRunning, ProviderConfigError) as exc:
        click.echo(f"spotd: {exc}", err=True)
        sys.exit(1)
    except LeaseLost as exc:  # several daemons: another took this one's work over
        click.echo(f"spotd: {exc}", err=True)
        sys.exit(LEASE_LOST_EXIT)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed (the ``fast`` extra), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


main.add_command(install_units_command)
main.add_command(tls_command)

if __name__ == "__main__":
    main()
