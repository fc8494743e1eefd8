"""The route table's row: each route declared once — method, path, handler, body model,
parameters, who may call it, what it answers — and read by everything that needs to know:
``make_app`` registers the rows, the auth middleware checks callers against them, and
``spotd.api.openapi`` publishes them. A route that is not in the table does not exist; one that
is cannot be served differently from how it is documented.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from spotd.api.common import Body, Handler
from spotd.api.params import Param

__all__ = ["ADMIN", "AGENT", "TENANT", "Caller", "Route"]


class Caller(StrEnum):
    """Who a request comes from, by the credential it carries."""

    ADMIN = "admin"  # the unix socket (its file mode), or the admin token on TCP
    PROJECT = "project"  # a project's token on TCP: only that project's jobs, costs, project
    AGENT = "agent"  # an instance's agent: no API token; the handler checks the agent's own


ADMIN = frozenset({Caller.ADMIN})
TENANT = frozenset({Caller.ADMIN, Caller.PROJECT})
AGENT = frozenset({Caller.AGENT})


@dataclass(frozen=True, slots=True)
class Route:
    """One operation of the API.

    ``errors`` are the refusals particular to this route (404, 409, ...); a route with a body
    or parameters can also answer 400, every route on TCP 401/403 — the document adds those.
    """

    method: Literal["GET", "POST", "PATCH", "PUT"]
    path: str
    handler: Handler
    summary: str
    tag: str  # the resource, as the module is named
    body: type[Body] | None = None
    params: tuple[Param, ...] = ()
    callers: frozenset[Caller] = ADMIN
    ok: tuple[int, ...] = (200,)  # the statuses of success
    errors: tuple[int, ...] = ()
    text: bool = False  # the answer is text/plain (logs, metrics), not JSON

    @property
    def key(self) -> tuple[str, str]:
        """What the auth middleware looks a request up by: method and aiohttp's canonical path."""
        return (self.method, self.path)
