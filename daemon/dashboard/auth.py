"""Who is looking at the dashboard: sessions, one-time login links, CSRF.

Over TCP a browser signs in once — with a token typed into the login page, or with a one-time
link that ``spotctl dashboard`` asks the API for — and gets a session cookie: ``HttpOnly`` (no
script reads it), ``SameSite=Strict`` (no other site's page sends it), ``Secure`` when the
listener has TLS. The cookie holds only a random session id; who it is (the admin, or one
project) stays in this server-side store, which is bounded in size (the oldest session is
dropped first) and in time (a session lasts ``session_ttl`` from its last use, and never more
than ``session_max_age``). The daemon's memory is the only place sessions live: a restart signs
everyone out.

A login link is single use and short-lived (``link_ttl``, a minute): it carries the identity of
the token that asked for it, never the token.

Every POST (cancel, scale, drain, sign out) must come from the dashboard's own pages: the
session cookie is ``SameSite=Strict``, the ``Origin`` header (browsers send it on every POST)
must be this listener's, and the form or header must carry the session's CSRF token.

Example: ``spotctl dashboard`` on the admin's socket → ``POST /dashboard/login-link`` → ``{"path":
"/dashboard/login/Zx…"}``; the browser opens it, the link is spent, a session is made and the
page moves on to ``/dashboard/``; opening the same link again shows the login page.
"""

from __future__ import annotations

import collections
import hmac
import secrets
from dataclasses import dataclass, replace

__all__ = ["Identity", "LoginLinks", "Session", "Sessions", "origin_allowed"]

COOKIE = "spotd_dashboard"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a credential speaks for: the admin (``project`` None) or one project."""

    project: str | None = None

    @property
    def label(self) -> str:
        return "admin" if self.project is None else f"project {self.project}"


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    who: Identity
    csrf: str
    created_at: float
    used_at: float


class Sessions:
    """The server-side session store, bounded in size and time (see the module docstring)."""

    def __init__(
        self,
        *,
        max_sessions: int = 1000,
        session_ttl: float = 12 * 3600.0,
        session_max_age: float = 7 * 86400.0,
    ) -> None:
        self.max_sessions = max_sessions
        self.session_ttl = session_ttl
        self.session_max_age = session_max_age
        self._by_id: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def create(self, who: Identity, *, now: float) -> Session:
        self._expire(now)
        s = Session(
            id=secrets.token_urlsafe(32),
            who=who,
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            used_at=now,
        )
        self._by_id[s.id] = s
        while len(self._by_id) > self.max_sessions:
            self._by_id.popitem(last=False)  # the least recently used goes first
        return s

    def get(self, session_id: str | None, *, now: float) -> Session | None:
        """The live session with this id (its last use moved to ``now``), or None."""
        if not session_id:
            return None
        s = self._by_id.get(session_id)
        if s is None:
            return None
        if self._expired(s, now):
            del self._by_id[session_id]
            return None
        s = replace(s, used_at=now)
        self._by_id[session_id] = s
        self._by_id.move_to_end(session_id)
        return s

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._by_id)

    def _expired(self, s: Session, now: float) -> bool:
        return now - s.used_at > self.session_ttl or now - s.created_at > self.session_max_age

    def _expire(self, now: float) -> None:
        # least recently used first: stop at the first one still live
        while self._by_id:
            oldest = next(iter(self._by_id.values()))
            if not self._expired(oldest, now):
                break
            self._by_id.popitem(last=False)


class LoginLinks:
    """One-time login codes: spent by the first use, void after ``ttl`` seconds."""

    def __init__(self, *, ttl: float = 60.0, max_pending: int = 100) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self._codes: collections.OrderedDict[str, tuple[Identity, float]] = (
            collections.OrderedDict()
        )

    def issue(self, who: Identity, *, now: float) -> str:
        self._expire(now)
        code = secrets.token_urlsafe(32)
        self._codes[code] = (who, now + self.ttl)
        while len(self._codes) > self.max_pending:
            self._codes.popitem(last=False)
        return code

    def redeem(self, code: str, *, now: float) -> Identity | None:
        """The identity the code was issued for, once; None when unknown, spent or expired."""
        held = self._codes.pop(code, None)
        if held is None or now > held[1]:
            return None
        return held[0]

    def __len__(self) -> int:
        return len(self._codes)

    def _expire(self, now: float) -> None:
        for code in [c for c, (_, until) in self._codes.items() if now > until]:
            del self._codes[code]


def origin_allowed(origin: str | None, *, scheme: str, host: str) -> bool:
    """Whether a POST's ``Origin`` is this listener (``scheme://host``, host with its port).
    A missing Origin is refused: every browser that runs the dashboard sends one on POST."""
    if not origin or origin == "null":
        return False
    return hmac.compare_digest(origin.rstrip("/").lower(), f"{scheme}://{host}".lower())
