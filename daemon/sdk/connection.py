"""Where the SDK finds the daemon: the same rules as ``spotctl``, through the same client.

``Connection()`` with no arguments means what ``spotctl`` does: ``$SPOTD_URL`` (+
``$SPOTD_API_TOKEN``, and ``$SPOTD_CA_FILE`` for an ``https://`` URL) for a daemon over TCP,
else the unix socket ``$SPOTD_HOME/spotd.sock`` (``~/.spotd`` by default), starting a local
daemon in the background when none answers.
Pass one explicitly to talk to another home or URL, or to forbid the autostart::

    spotd.jobs.queue(connection=spotd.Connection(home="/srv/spotd", autostart=False))

Each SDK call opens one connection and closes it: no process-wide client, nothing to reset.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spotd.sdk.errors import DaemonUnreachableError, from_api

if TYPE_CHECKING:
    from spotd.config import Settings
    from spotd.sdk.client import Client

log = logging.getLogger("spotd.sdk")


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """How to reach the daemon; every field None means "as spotctl would"."""

    home: str | os.PathLike[str] | None = None  # a local daemon's $SPOTD_HOME
    url: str | None = None  # a remote daemon (TCP); overrides home
    token: str | None = None  # bearer token for url (default $SPOTD_API_TOKEN)
    ca_file: str | os.PathLike[str] | None = None  # CA for an https:// url ($SPOTD_CA_FILE)
    autostart: bool = True  # start a local daemon when none answers

    @asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        """An open ``spotd.sdk.client.Client``; API refusals leave it as SDK exceptions."""
        from spotd.sdk.client import ApiError, DaemonUnreachable

        try:
            client = await self._connect()
        except DaemonUnreachable as exc:
            raise DaemonUnreachableError(str(exc)) from exc
        try:
            async with client:
                yield client
        except ApiError as exc:
            raise from_api(exc) from exc
        except DaemonUnreachable as exc:
            raise DaemonUnreachableError(str(exc)) from exc

    async def _connect(self) -> Client:
        from spotd.sdk.client import Client

        url = self.url or (None if self.home is not None else os.environ.get("SPOTD_URL"))
        if url:
            return Client.connect(url=url, token=self.token, ca_file=self.ca_file)
        # Finding (and maybe starting) a local daemon blocks for up to seconds: not on the loop.
        settings = await asyncio.to_thread(self._local_daemon)
        return Client.connect(settings=settings, autostart=False)

    def _local_daemon(self) -> Settings:
        from spotd.config import ConfigError, load_settings
        from spotd.sdk.local import DaemonUnreachable, socket_alive, start_local_daemon

        try:
            settings = load_settings(Path(self.home) if self.home is not None else None)
        except ConfigError as exc:
            raise DaemonUnreachable(f"cannot read spotd's configuration: {exc}") from exc
        if socket_alive(settings.socket_path):
            return settings
        if not self.autostart:
            raise DaemonUnreachable(f"no spotd answers on {settings.socket_path}")
        pid = start_local_daemon(settings)
        log.info(
            "No daemon was running: started spotd in the background (pid %d, home %s, log %s)",
            pid,
            settings.home,
            settings.home / "spotd.log",
        )
        return settings


def resolve(connection: Connection | None) -> Connection:
    return connection if connection is not None else Connection()
