"""How the agent reaches the daemon: the unix socket on the daemon's machine, else HTTP(S).

Over https the agent checks the daemon's certificate against the CA it was handed in its
config (``daemon_ca_pem``, the daemon's ``tls_ca``), or the system's trust store when none
was: the heartbeat carries the agent's bearer token and the job's log, and neither goes to a
peer that cannot show a certificate from that CA. A certificate that does not verify is not
a passing network fault: retrying would offer the same certificate again (or keep offering a
man in the middle the connection), so the agent stops with ``DaemonUntrusted`` and says why.

Only the daemon's calls use this session. The metadata service (``spotd.agent.imds``) is
plain HTTP on a link-local address and gets a session of its own.
"""

from __future__ import annotations

import aiohttp

from spotd.ops.tls import TlsError, client_context
from spotd.types import AgentConfig

__all__ = ["UNTRUSTED_EXIT", "DaemonUntrusted", "daemon_session", "untrusted"]

# The agent's exit status when it refuses the daemon: the user-data's systemd unit does not
# restart it for this one (RestartPreventExitStatus), since the next try would refuse too.
UNTRUSTED_EXIT = 3


class DaemonUntrusted(Exception):
    """The daemon's certificate does not verify (or the CA handed to the agent is unusable):
    the agent sends nothing there and stops."""


def daemon_session(cfg: AgentConfig) -> tuple[aiohttp.ClientSession, str]:
    """(a session for the daemon's calls, the base URL to put before ``/agent/v1/...``)."""
    url = cfg.daemon_url
    if url.startswith("unix:"):
        conn: aiohttp.BaseConnector = aiohttp.UnixConnector(path=url[len("unix:") :])
        return aiohttp.ClientSession(connector=conn), "http://spotd"
    if url.startswith("https://"):
        try:
            ctx = client_context(ca_pem=cfg.daemon_ca_pem or None)
        except TlsError as exc:
            raise DaemonUntrusted(
                f"cannot check the daemon's certificate: daemon_ca_pem in agent.json: {exc}"
            ) from exc
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)), url.rstrip("/")
    return aiohttp.ClientSession(), url.rstrip("/")


def untrusted(cfg: AgentConfig, exc: aiohttp.ClientConnectorCertificateError) -> DaemonUntrusted:
    """The fatal error for a certificate that failed verification, saying what to fix."""
    against = (
        "the CA in agent.json (daemon_ca_pem, the daemon's tls_ca)"
        if cfg.daemon_ca_pem
        else "the system's trust store (agent.json has no daemon_ca_pem: set tls_ca)"
    )
    reason = getattr(exc.certificate_error, "verify_message", "") or str(exc.certificate_error)
    return DaemonUntrusted(
        f"refusing the daemon at {cfg.daemon_url}: its TLS certificate does not verify against "
        f"{against}: {reason}. Not retrying: the agent's token and the job's log are not sent "
        "to a daemon it cannot verify"
    )
