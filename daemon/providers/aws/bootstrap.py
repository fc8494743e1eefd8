"""One-time bootstrap tokens: how an instance gets its secrets without user-data carrying them.

EC2 user-data is readable by anyone who can call ``DescribeInstanceAttribute`` and by anything
on the instance that reaches the metadata service, for the instance's whole life. So it carries
only what is harmless there: the daemon's URL, the CA of its certificate, the instance's key and
a bootstrap token. The agent trades the token once, over TLS, for its config (the task's secrets
and its long-lived agent token) at ``POST /agent/v1/bootstrap``; the daemon then marks it used,
and a replay — or a token older than ``BOOTSTRAP_TTL`` — is refused (401).

The token is ``<expires>.<mac>``: an HMAC-SHA256, keyed with the instance's agent token, of the
key and the expiry. So the daemon stores nothing of it (not even a hash: it recomputes the MAC
from the instance's row), the provider that renders the user-data needs no database, and the
token reveals nothing about the agent token it was derived from. Its one use is recorded on the
instance row (``bootstrapped_at``), in the same transaction that hands out the config.

``issue_token`` and ``check_bootstrap`` are the decisions (pure, ``now`` passed in).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

__all__ = [
    "BOOTSTRAP_FILE",
    "BOOTSTRAP_PATH",
    "BOOTSTRAP_REFUSED_EXIT",
    "BOOTSTRAP_TTL",
    "BootstrapVerdict",
    "check_bootstrap",
    "issue_token",
]

BOOTSTRAP_PATH = "/agent/v1/bootstrap"
BOOTSTRAP_FILE = "bootstrap.json"  # what user-data writes in the instance directory
BOOTSTRAP_TTL = 15 * 60.0  # an instance boots and installs the agent well within this
# The agent's exit status when the daemon refuses its bootstrap token (used, expired, unknown):
# retrying would be refused again, so the instance's unit does not restart it.
BOOTSTRAP_REFUSED_EXIT = 4

_UNKNOWN = "unknown instance or wrong bootstrap token"


def _mac(agent_token: str, *, key: str, expires: int) -> str:
    msg = f"spotd-bootstrap\n{key}\n{expires}".encode()
    return hmac.new(agent_token.encode(), msg, hashlib.sha256).hexdigest()


def issue_token(agent_token: str, *, key: str, now: float, ttl: float = BOOTSTRAP_TTL) -> str:
    """The bootstrap token for instance ``key``, valid until ``now + ttl``. An instance with
    no agent token gets one too, which ``check_bootstrap`` never accepts."""
    expires = int(now + ttl)
    return f"{expires}.{_mac(agent_token, key=key, expires=expires)}"


@dataclass(frozen=True, slots=True)
class BootstrapVerdict:
    """Whether the daemon hands the config out; else the status and the reason, in words."""

    ok: bool
    status: int = 200
    reason: str = ""


def check_bootstrap(
    presented: str,
    *,
    key: str,
    agent_token: str | None,
    bootstrapped_at: float | None,
    holds_config: bool,
    now: float,
) -> BootstrapVerdict:
    """The daemon's answer to a bootstrap token presented for instance ``key``.

    ``agent_token`` is the instance row's (None: no such instance); ``bootstrapped_at`` when
    its token was used; ``holds_config``: the daemon keeps a config for this instance to hand
    out. A forged token and an unknown instance get the same answer; a genuine token that was
    used or has expired is told so, since saying it reveals nothing the holder does not know.
    """
    expires_text, _, mac = presented.partition(".")
    try:
        expires = int(expires_text)
    except ValueError:
        return BootstrapVerdict(False, 401, _UNKNOWN)
    if not agent_token or not hmac.compare_digest(
        mac.encode(), _mac(agent_token, key=key, expires=expires).encode()
    ):
        return BootstrapVerdict(False, 401, _UNKNOWN)
    if bootstrapped_at is not None:
        return BootstrapVerdict(
            False,
            401,
            f"the bootstrap token of {key} was already used (at {bootstrapped_at:.0f}): "
            "it is good for one fetch of the agent's config",
        )
    if now >= expires:
        return BootstrapVerdict(
            False,
            401,
            f"the bootstrap token of {key} expired {now - expires:.0f}s ago (it lasts "
            f"{BOOTSTRAP_TTL:.0f}s from launch): the instance must be replaced",
        )
    if not holds_config:
        return BootstrapVerdict(False, 404, f"the daemon holds no agent config for {key}")
    return BootstrapVerdict(True)
