"""Certificates for a small deployment: a private CA and the daemon's server certificate.

Pure builders over ``cryptography``'s x509 API, with ``now`` passed in: what a certificate says
(names, validity, key usage, CA constraints) is decided here and checked by table-driven tests;
``spotd.ops.tls_init`` writes the files. Only ``spotd tls init`` imports this module.

The shape is the one browsers and Python's ``ssl`` accept under strict verification:

- the CA: ``basicConstraints CA:TRUE, pathlen:0`` (it signs server certificates, never another
  CA) and ``keyUsage keyCertSign, cRLSign``, both critical; a subject key identifier;
- the server: ``basicConstraints CA:FALSE`` and ``keyUsage digitalSignature`` (critical),
  ``extendedKeyUsage serverAuth``, every name in ``subjectAltName`` (clients match the host name
  there, not in the subject's CN), and an authority key identifier naming the CA's key.

Keys are ECDSA P-256: small, fast to make, and accepted by every TLS 1.2+ client.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CLOCK_SKEW",
    "CertError",
    "IssuerKey",
    "build_ca",
    "build_server_cert",
    "cert_pem",
    "default_hosts",
    "key_pem",
    "load_issuer_key",
    "new_key",
    "parse_hosts",
]

# Certificates start this long before "now": a client whose clock is a little behind the
# daemon's must not see a certificate from the future.
CLOCK_SKEW = dt.timedelta(minutes=5)

# A CA key spotd can sign with (its own are EC; an operator's RSA CA works too).
IssuerKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class CertError(ValueError):
    """A host name, address or validity the certificates cannot carry."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _dns_name(host: str) -> str:
    """``host`` as a DNS name a certificate may hold (lower case; ``*.`` only leftmost)."""
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise CertError(f"{host!r} is neither an IP address nor a valid DNS name")
    return name


def parse_hosts(hosts: Iterable[str]) -> tuple[x509.GeneralName, ...]:
    """The subjectAltName entries for ``hosts``: IP addresses as iPAddress (clients compare
    those byte for byte, not as text), everything else as dNSName; duplicates once, in order."""
    out: list[x509.GeneralName] = []
    for raw in hosts:
        host = raw.strip().strip("[]")
        if not host:
            continue
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(_dns_name(host))
        if entry not in out:
            out.append(entry)
    if not out:
        raise CertError("a certificate needs at least one host name or address")
    return tuple(out)


def default_hosts(hostname: str) -> tuple[str, ...]:
    """What ``spotd tls init`` certifies without ``--hosts``: loopback, and this machine's
    name when it is a valid DNS name (a container's may not be)."""
    hosts = ["localhost", "127.0.0.1", "::1"]
    try:
        name = _dns_name(hostname)
    except CertError:
        return tuple(hosts)
    if name not in hosts:
        hosts.append(name)
    return tuple(hosts)


def _validity(now: dt.datetime, days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise CertError(f"a certificate must be valid for at least one day, not {days}")
    return now - CLOCK_SKEW, now + dt.timedelta(days=days)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "spotd"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def build_ca(
    key: IssuerKey, *, common_name: str, now: dt.datetime, days: int, serial: int | None = None
) -> x509.Certificate:
    """A self-signed CA that may sign end-entity certificates only (``pathlen:0``)."""
    not_before, not_after = _validity(now, days)
    name = _name(common_name)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def build_server_cert(
    public_key: ec.EllipticCurvePublicKey,
    *,
    ca_cert: x509.Certificate,
    ca_key: IssuerKey,
    hosts: Iterable[str],
    now: dt.datetime,
    days: int,
    serial: int | None = None,
) -> x509.Certificate:
    """The daemon's certificate for ``hosts``, signed by the CA.

    It ends no later than the CA does: a chain is only as valid as its shortest link, and a
    certificate that claims more would mislead whoever reads its dates.
    """
    names = parse_hosts(hosts)
    not_before, not_after = _validity(now, days)
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    if not_after <= now:
        raise CertError(f"the CA expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}")
    first = names[0].value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_name(str(first)))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def key_pem(key: IssuerKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM: the daemon reads it unattended at start, so
    the file's mode (0600 in a 0700 directory) is its protection."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_issuer_key(pem: bytes) -> IssuerKey:
    """An existing CA key, for issuing a new server certificate under the same CA."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertError(f"the CA key is a {type(key).__name__}; spotd signs with EC or RSA keys")
    return key
