"""EC2's instance metadata service as the agent polls it: IMDSv2, with session tokens.

spotd launches its instances with ``HttpTokens=required``: the metadata service answers a GET
that carries no session token with 401. A token comes from ``PUT /latest/api/token`` (its
lifetime asked for in ``X-aws-ec2-metadata-token-ttl-seconds``) and goes on every GET in
``X-aws-ec2-metadata-token``. A PUT answer travels only ``HttpPutResponseHopLimit`` network hops,
and a GET forwarded by a server-side request forgery carries no token: that is what IMDSv2
buys over IMDSv1, whose plain GETs anything on (or one hop past) the instance could make.

The token is fetched on first use, refreshed once most of its lifetime has passed, and fetched
anew when a GET with it answers 401 (stopping and starting an instance voids its tokens). An
endpoint that refuses the PUT (an IMDSv1-only service, a proxy, a stand-in: 403, 404, 405, or no
answer at all) is polled without a token, which the log says once, and the token is asked for
again a minute later, so one bad answer does not leave the agent without tokens for good.

``token_step`` is the decision (pure, ``now`` passed in); ``Imds`` does the HTTP.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import aiohttp

__all__ = [
    "REFRESH_FRACTION",
    "RETRY_TOKEN_AFTER",
    "TOKEN_HEADER",
    "TOKEN_PATH",
    "TOKEN_TTL",
    "TTL_HEADER",
    "Imds",
    "TokenState",
    "token_step",
]

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TOKEN_TTL = 21600  # six hours: EC2's longest
REFRESH_FRACTION = 0.8  # a token is renewed after 80 % of its lifetime, well before it expires
RETRY_TOKEN_AFTER = 60.0  # after a refused PUT, poll without a token this long, then ask again

Step = Literal["use", "fetch", "without"]


@dataclass(frozen=True, slots=True)
class TokenState:
    """The session token the agent holds, on the monotonic clock."""

    token: str = ""
    refresh_at: float = 0.0  # renew from here on
    expires_at: float = 0.0  # the service stops accepting it here
    retry_at: float = 0.0  # a PUT was refused: do not ask again before this


def token_step(state: TokenState, now: float) -> Step:
    """What the next metadata GET does: ``use`` the token held, ``fetch`` one first, or go
    ``without`` (no valid token, and the service refused one too recently to ask again)."""
    valid = bool(state.token) and now < state.expires_at
    if valid and now < state.refresh_at:
        return "use"
    if now < state.retry_at:
        return "use" if valid else "without"
    return "fetch"


class Imds:
    """One instance's metadata service at ``base`` (``http://169.254.169.254``)."""

    def __init__(
        self,
        base: str,
        *,
        say: Callable[[str], None],
        ttl_seconds: int = TOKEN_TTL,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base.rstrip("/")
        self.say = say  # the agent's log: fallbacks and recoveries, once each
        self.ttl_seconds = ttl_seconds
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.clock = clock
        self.state = TokenState()
        self.tokenless = False  # polling without a token now (said in the log when it began)
        self.said_required = False

    async def get(self, session: aiohttp.ClientSession, path: str) -> tuple[int, str]:
        """``GET base+path`` with a session token where the service gives one: (status, body).

        Connection errors and timeouts propagate (aiohttp's), as for any other GET.
        """
        token = await self._token(session)
        status, body = await self._get(session, path, token)
        if status == 401 and token:  # a token the service no longer takes: one new one, once
            self.state = dataclasses.replace(self.state, token="", refresh_at=0.0, expires_at=0.0)
            token = await self._token(session)
            if token:
                status, body = await self._get(session, path, token)
        if status == 401 and not token and not self.said_required:
            self.said_required = True
            self.say(
                f"metadata service {self.base} requires a session token (IMDSv2) and gave none: "
                "no spot notice can be read. If the agent runs in a container, the instance's "
                "HttpPutResponseHopLimit must allow the extra hop"
            )
        return status, body

    async def _get(self, session: aiohttp.ClientSession, path: str, token: str) -> tuple[int, str]:
        headers = {TOKEN_HEADER: token} if token else {}
        async with session.get(self.base + path, headers=headers, timeout=self.timeout) as r:
            return r.status, await r.text()

    async def _token(self, session: aiohttp.ClientSession) -> str:
        now = self.clock()
        step = token_step(self.state, now)
        if step == "use":
            return self.state.token
        if step == "without":
            return ""
        why = await self._fetch(session, now)
        if why is None:
            if self.tokenless:
                self.tokenless = False
                self.say(f"metadata service {self.base}: IMDSv2 session token obtained")
            return self.state.token
        self.state = dataclasses.replace(self.state, retry_at=now + RETRY_TOKEN_AFTER)
        if not self.tokenless:
            self.tokenless = True
            self.say(
                f"metadata service {self.base} refused an IMDSv2 session token ({why}): polling "
                f"without one (IMDSv1), asking again in {RETRY_TOKEN_AFTER:.0f}s"
            )
        valid = bool(self.state.token) and now < self.state.expires_at
        return self.state.token if valid else ""

    async def _fetch(self, session: aiohttp.ClientSession, now: float) -> str | None:
        """Ask for a token; None when one was stored, else why not (for the log)."""
        try:
            async with session.put(
                self.base + TOKEN_PATH,
                headers={TTL_HEADER: str(self.ttl_seconds)},
                timeout=self.timeout,
            ) as r:
                if r.status != 200:
                    return f"HTTP {r.status}"
                token = (await r.text()).strip()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not token:
            return "an empty token"
        self.state = TokenState(
            token=token,
            refresh_at=now + self.ttl_seconds * REFRESH_FRACTION,
            expires_at=now + self.ttl_seconds,
        )
        return None
