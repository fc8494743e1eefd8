"""TLS for the TCP API: the daemon's server context, a client's verifying context, and the rule
on when the TCP API may go without TLS.

Standard library only (``ssl``, ``ipaddress``): the daemon, the SDK and ``spotctl`` load it on
every start, and an agent on an instance may use ``client_context`` with the CA's PEM text, so
none of them pays for ``cryptography`` (which only ``spotd tls init`` needs, in
``spotd.ops.certs``).

The rule: the TCP API carries the admin token in every request, so on any address another
machine can reach it is served over TLS, or not at all unless the operator says in the config
that the network in between is theirs (``allow_plaintext_tcp: true``). Loopback stays allowed
without TLS: nothing leaves the host, and local tools and tests use it so.
"""

from __future__ import annotations

import ipaddress
import os
import ssl

__all__ = [
    "TlsError",
    "client_context",
    "is_loopback",
    "plaintext_refusal",
    "server_context",
]

# Names that always resolve to the host itself (RFC 6761 reserves "localhost" for loopback).
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class TlsError(Exception):
    """A certificate, key or CA file is missing or unusable, or TLS is required and absent."""


def is_loopback(host: str) -> bool:
    """Whether a listener on ``host`` is reachable only from this machine.

    An empty host, ``0.0.0.0`` or ``::`` means every interface; any other name might resolve to
    a routable address (and may resolve differently tomorrow), so only the loopback names and
    addresses count. ``[::1]`` (a URL's spelling) is accepted too.
    """
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def plaintext_refusal(host: str, *, tls: bool, allow_plaintext: bool) -> str | None:
    """Why the TCP API must not listen on ``host`` as configured, or None when it may."""
    if tls or allow_plaintext or is_loopback(host):
        return None
    return (
        f"refusing to serve the TCP API on {host or '*'} without TLS: the API token would "
        "cross the network in clear text. Configure tls_cert and tls_key (`spotd tls init` "
        "creates them), listen on 127.0.0.1, or set allow_plaintext_tcp: true in config.yaml "
        "if the network between clients and the daemon is trusted."
    )


def server_context(
    cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]
) -> ssl.SSLContext:
    """The daemon's context: TLS 1.2 or newer, with the certificate (chain) and its key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=os.fspath(cert_file), keyfile=os.fspath(key_file))
    except FileNotFoundError as exc:
        raise TlsError(f"TLS: cannot read {exc.filename or cert_file}: no such file") from exc
    except PermissionError as exc:
        raise TlsError(f"TLS: cannot read {exc.filename or key_file}: permission denied") from exc
    except ssl.SSLError as exc:
        raise TlsError(
            f"TLS: {cert_file} and {key_file} are not a PEM certificate and its private key "
            f"({exc.reason or exc})"
        ) from exc
    return ctx


def client_context(
    *, ca_file: str | os.PathLike[str] | None = None, ca_pem: str | None = None
) -> ssl.SSLContext:
    """A client's context that checks the chain and the host name, TLS 1.2 or newer.

    With ``ca_file`` (a path) or ``ca_pem`` (the PEM text, for an agent that received it in its
    config) it trusts that CA only; with neither, the system's trust store.
    """
    try:
        if ca_file is not None or ca_pem:
            ctx = ssl.create_default_context(
                cafile=os.fspath(ca_file) if ca_file is not None else None, cadata=ca_pem or None
            )
        else:
            ctx = ssl.create_default_context()
    except FileNotFoundError as exc:
        raise TlsError(f"cannot read the CA file {ca_file}: no such file") from exc
    except PermissionError as exc:
        raise TlsError(f"cannot read the CA file {ca_file}: permission denied") from exc
    except ssl.SSLError as exc:
        where = ca_file if ca_file is not None else "the CA PEM"
        raise TlsError(f"{where} is not a PEM CA certificate ({exc.reason or exc})") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
