"""Who is looking at the dashboard: sessions, one-time login links, CSRF.

Over TCP a browser signs in once — with a token typed into the login page, or with a one-time
link that ``spotctl dashboard`` asks the API for — and gets a session cookie: ``HttpOnly`` (no
script reads it), ``SameSite=Strict`` (no other site's page sends it), ``Secure`` when the
listener has TLS. The cookie holds only a random session id; who it is (the admin, or one
project) stays in this server-side store, which is bounded in size (the least recently used
session is dropped first) and in time (a session lasts ``session_ttl`` from its last use, and
never more than ``session_max_age``), and only while the token it was signed in with is still
in force: a session keeps a fingerprint of that token, so changing the admin token (a restart
with another ``api_token``) or a project's token (or removing the project) signs its browsers
out. Sessions live in the state database (``spotd.store.signin``), as the SHA-256 of their
ids: every daemon on the database accepts them, and a restart or a takeover signs nobody out.

A login link is single use and short-lived (``link_ttl``, a minute): it carries the identity of
the token that asked for it, never the token; it too is kept hashed in the database, so a link
asked for on one daemon opens on any, once.

Every POST (cancel, scale, drain, sign out) must come from the dashboard's own pages: the
session cookie is ``SameSite=Strict``, the ``Origin`` header (browsers send it on every POST)
must be this listener's, and the form or header must carry the session's CSRF token.

Example: ``spotctl dashboard`` on the admin's socket → ``POST /dashboard/login-link`` → ``{"path":
"/dashboard/login/Zx…"}``; the browser opens it, the link is spent, a session is made and the
page moves on to ``/dashboard/``; opening the same link again shows the login page.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from spotd.store import AsyncStore, LoginLinkRow, SessionRow

__all__ = [
    "Identity",
    "LoginLinks",
    "Session",
    "Sessions",
    "fingerprint",
    "origin_allowed",
    "still_valid",
]

COOKIE = "spotd_dashboard"
MAX_SECRET = 256  # a longer cookie or code is no session id nor link of ours: not even hashed


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a credential speaks for: the admin (``project`` None) or one project; and a
    fingerprint of that credential (:func:`fingerprint`; not part of who it is, so not
    compared): a session lasts only while its token is still the one in force."""

    project: str | None = None
    credential: str = field(default="", compare=False)

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
        store: AsyncStore,
        *,
        admin_token_hash: str,
        max_sessions: int = 1000,
        session_ttl: float = 12 * 3600.0,
        session_max_age: float = 7 * 86400.0,
    ) -> None:
        self.store = store
        self.admin_token_hash = admin_token_hash  # the admin token in force (its SHA-256)
        self.max_sessions = max_sessions
        self.session_ttl = session_ttl
        self.session_max_age = session_max_age
        # a session's last use is written at most this often (a live page re-reads it each
        # second): so a session may end up to this much before ``session_ttl`` of idleness
        self.touch_after = min(60.0, session_ttl / 10)

    async def create(self, who: Identity, *, now: float) -> Session:
        s = Session(
            id=secrets.token_urlsafe(32),
            who=who,
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            used_at=now,
        )
        await self.store.add_session(
            SessionRow(_digest(s.id), who.project, who.credential, s.csrf, now, now),
            idle=self.session_ttl,
            max_age=self.session_max_age,
            keep=self.max_sessions,
        )
        return s

    async def get(self, session_id: str | None, *, now: float) -> Session | None:
        """The live session with this id (its last use moved to ``now``), or None."""
        if not session_id or len(session_id) > MAX_SECRET:
            return None
        row = await self.store.session(
            _digest(session_id),
            now=now,
            idle=self.session_ttl,
            max_age=self.session_max_age,
            touch_after=self.touch_after,
        )
        if row is None:
            return None
        if not still_valid(row, admin_token_hash=self.admin_token_hash):
            await self.store.end_session(row.id_hash)  # its token was changed: signed out
            return None
        who = Identity(row.project, row.credential)
        return Session(session_id, who, row.csrf, row.created_at, row.used_at)

    async def end(self, session_id: str) -> None:
        if session_id and len(session_id) <= MAX_SECRET:
            await self.store.end_session(_digest(session_id))

    async def count(self) -> int:
        return await self.store.count_sessions()


class LoginLinks:
    """One-time login codes: spent by the first use, void after ``ttl`` seconds."""

    def __init__(self, store: AsyncStore, *, ttl: float = 60.0, max_pending: int = 100) -> None:
        self.store = store
        self.ttl = ttl
        self.max_pending = max_pending

    async def issue(self, who: Identity, *, now: float) -> str:
        code = secrets.token_urlsafe(32)
        await self.store.add_login_link(
            _digest(code),
            LoginLinkRow(who.project, who.credential, now + self.ttl),
            now=now,
            keep=self.max_pending,
        )
        return code

    async def redeem(self, code: str, *, now: float) -> Identity | None:
        """The identity the code was issued for, once; None when unknown, spent or expired."""
        if not code or len(code) > MAX_SECRET:
            return None
        spent = await self.store.redeem_login_link(_digest(code), now=now)
        return None if spent is None else Identity(spent.project, spent.credential)

    async def count(self) -> int:
        return await self.store.count_login_links()


def fingerprint(token_hash: str) -> str:
    """What a session keeps of the token it was signed in with (given that token's SHA-256,
    ``quota.hash_token``): enough to tell whether the token was changed since, nothing more."""
    return hashlib.sha256(f"spotd-dashboard-session:{token_hash}".encode()).hexdigest()


def still_valid(row: SessionRow, *, admin_token_hash: str) -> bool:
    """Whether the token a session was signed in with is still in force: the admin's (the
    daemon's ``api_token``), or the project's (its row: a project gone ends its sessions)."""
    now = admin_token_hash if row.project is None else row.project_token_hash
    return now is not None and hmac.compare_digest(row.credential, fingerprint(now))


def _digest(secret: str) -> str:
    """What the database keeps of a session id or a link code."""
    return hashlib.sha256(secret.encode()).hexdigest()


def origin_allowed(origin: str | None, *, scheme: str, host: str) -> bool:
    """Whether a POST's ``Origin`` is this listener (``scheme://host``, host with its port).
    A missing Origin is refused: every browser that runs the dashboard sends one on POST."""
    if not origin or origin == "null":
        return False
    return hmac.compare_digest(origin.rstrip("/").lower(), f"{scheme}://{host}".lower())
