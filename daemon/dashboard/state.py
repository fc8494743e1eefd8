"""What the dashboard's handlers share: the daemon's parts and the sign-in state.

One :class:`Dashboard` per daemon, shared by the applications of every listener (a login link
asked for on the unix socket is redeemed on the TCP listener); one :class:`Viewer` per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import jinja2
from aiohttp import web

from spotd.clock import wall
from spotd.config import Settings
from spotd.control import quota
from spotd.control.jobs import Controller
from spotd.control.services import ServiceController
from spotd.dashboard.auth import Identity, LoginLinks, Sessions
from spotd.dashboard.render import environment
from spotd.store import AsyncStore

__all__ = ["DASHBOARD", "TCP", "VIEWER", "Dashboard", "Viewer"]


@dataclass(slots=True)
class Dashboard:
    settings: Settings
    store: AsyncStore
    controller: Controller
    services: ServiceController | None
    sessions: Sessions = field(init=False)  # in the store: every daemon on it knows them
    links: LoginLinks = field(init=False)
    env: jinja2.Environment = field(default_factory=environment)
    clock: Callable[[], float] = wall
    live_interval: float = 1.0  # how often a live page is re-rendered for its stream
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # the daemon stops: end streams

    def __post_init__(self) -> None:
        self.sessions = Sessions(
            self.store, admin_token_hash=quota.hash_token(self.settings.api_token or "")
        )
        self.links = LoginLinks(self.store)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking (the admin, or one project) and the CSRF token of their session."""

    who: Identity
    csrf: str  # "" on the unix socket: no session there, its file mode is the credential

    def sees(self, project: str) -> bool:
        return self.who.project is None or self.who.project == project


DASHBOARD = web.AppKey("dashboard", Dashboard)
TCP = web.AppKey("dashboard_tcp", bool)
VIEWER = web.RequestKey("viewer", Viewer)
