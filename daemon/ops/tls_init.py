"""``spotd tls init``: a private CA and the daemon's certificate, written for a small deployment.

One directory (default ``$SPOTD_HOME/tls``, mode 0700) holds four files::

    ca.pem      the CA certificate: every client (spotctl, the SDK, agents) verifies with it
    ca.key      the CA's key (0600): it signs server certificates; keep it, or move it offline
    server.pem  the daemon's certificate, for the names and addresses clients use
    server.key  its key (0600)

Existing keys are never replaced without ``--force``. With ``--force`` the server key and
certificate are issued anew under the CA already there (clients keep trusting the daemon);
delete ``ca.key`` to start a new CA as well.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import click
from cryptography import x509

from spotd.config import default_home
from spotd.ops.certs import (
    CertError,
    IssuerKey,
    build_ca,
    build_server_cert,
    cert_pem,
    default_hosts,
    key_pem,
    load_issuer_key,
    new_key,
    parse_hosts,
)

__all__ = ["HOME_META", "TlsFiles", "TlsInitError", "TlsInitResult", "init_tls", "tls_command"]

# click's context meta key under which `spotd --home DIR` passes its home to subcommands
HOME_META = "spotd.home"
DEFAULT_DAYS = 825  # the longest server certificate that every TLS client still accepts
CA_DAYS = 3650


class TlsInitError(Exception):
    """The files exist (and no --force), or the existing CA cannot be used."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where ``spotd tls init`` keeps what it makes, inside one directory."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    def all(self) -> tuple[Path, ...]:
        return (self.ca_cert, self.ca_key, self.server_cert, self.server_key)


@dataclass(frozen=True, slots=True)
class TlsInitResult:
    files: TlsFiles
    hosts: tuple[str, ...]
    not_after: dt.datetime
    reused_ca: bool


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically; the file has ``mode`` from its first byte (a key is never
    readable by others, not even for an instant, whatever the umask)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(directory.stat().st_mode) != 0o700:
        directory.chmod(0o700)


def _existing_ca(files: TlsFiles) -> tuple[x509.Certificate, IssuerKey] | None:
    if not (files.ca_cert.exists() and files.ca_key.exists()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = load_issuer_key(files.ca_key.read_bytes())
    except (ValueError, CertError) as exc:
        raise TlsInitError(
            f"cannot use the existing CA in {files.directory} ({exc}); delete ca.pem and "
            "ca.key to create a new one"
        ) from exc
    if cert.public_key() != key.public_key():
        raise TlsInitError(f"{files.ca_key} is not the key of {files.ca_cert}")
    return cert, key


def init_tls(
    directory: Path, *, hosts: tuple[str, ...], days: int, force: bool, now: dt.datetime
) -> TlsInitResult:
    """Make (or, with ``force``, renew) the CA and the server certificate in ``directory``."""
    files = TlsFiles(directory)
    present = [p for p in files.all() if p.exists()]
    if present and not force:
        raise TlsInitError(
            f"{', '.join(str(p) for p in present)} already exist: pass --force to issue a new "
            "server key and certificate (the CA there is kept; delete ca.key to replace it too)"
        )
    existing = _existing_ca(files)
    if existing is None:
        ca_key: IssuerKey = new_key()
        ca_cert = build_ca(
            ca_key,
            common_name=f"spotd private CA ({socket.gethostname()})",
            now=now,
            days=max(CA_DAYS, days),
        )
    else:
        ca_cert, ca_key = existing
    server_key = new_key()
    server_cert = build_server_cert(
        server_key.public_key(), ca_cert=ca_cert, ca_key=ca_key, hosts=hosts, now=now, days=days
    )
    _private_dir(directory)
    if existing is None:
        _write(files.ca_key, key_pem(ca_key), 0o600)
        _write(files.ca_cert, cert_pem(ca_cert), 0o644)
    _write(files.server_key, key_pem(server_key), 0o600)
    _write(files.server_cert, cert_pem(server_cert), 0o644)
    return TlsInitResult(
        files=files,
        hosts=hosts,
        not_after=server_cert.not_valid_after_utc,
        reused_ca=existing is not None,
    )


def _url_host(hosts: tuple[str, ...]) -> str:
    """The name a remote client would use in its URL: the first that is not loopback."""
    for host in hosts:
        if host not in ("localhost", "127.0.0.1", "::1"):
            return f"[{host}]" if ":" in host else host
    return "127.0.0.1"


def _report(result: TlsInitResult) -> None:
    f = result.files
    ca = "kept the CA" if result.reused_ca else "a new private CA"
    click.echo(f"wrote {f.directory} (0700), {ca}:")
    click.echo(f"  {f.ca_cert.name:<11} the CA certificate: clients verify the daemon with it")
    click.echo(f"  {f.ca_key.name:<11} the CA key (0600): signs server certificates; keep it safe")
    click.echo(
        f"  {f.server_cert.name:<11} the daemon's certificate for {', '.join(result.hosts)}; "
        f"valid until {result.not_after:%Y-%m-%d}"
    )
    click.echo(f"  {f.server_key.name:<11} its key (0600)")
    click.echo("")
    click.echo("Daemon, in $SPOTD_HOME/config.yaml:")
    click.echo("  tcp_host: 0.0.0.0      # or one address the certificate names")
    click.echo("  tcp_port: 8470")
    click.echo(f"  tls_cert: {f.server_cert}")
    click.echo(f"  tls_key: {f.server_key}")
    click.echo(f"  tls_ca: {f.ca_cert}    # handed to agents that report over TCP")
    click.echo("")
    click.echo(f"Clients verify the daemon against the CA ({f.ca_cert}; copy it to them):")
    url = f"https://{_url_host(result.hosts)}:8470"
    click.echo(f"  export SPOTD_URL={url} SPOTD_CA_FILE={f.ca_cert} SPOTD_API_TOKEN=...")
    click.echo(f"  spotctl --url {url} --ca-file {f.ca_cert} jobs queue")


@click.group("tls")
def tls_command() -> None:
    """TLS for the TCP API: a private CA and the daemon's certificate."""


@tls_command.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the keys and certificates [default: $SPOTD_HOME/tls].",
)
@click.option(
    "--hosts",
    default=None,
    help="Comma-separated DNS names and IP addresses clients use to reach the daemon "
    "[default: localhost,127.0.0.1,::1 and this machine's name].",
)
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    default=DEFAULT_DAYS,
    show_default=True,
    help="How long the server certificate is valid (the CA: at least ten years).",
)
@click.option("--force", is_flag=True, help="Issue a new server key and certificate over old ones.")
def tls_init_command(directory: Path | None, hosts: str | None, days: int, force: bool) -> None:
    """Create a private CA and a server certificate signed by it, for the TCP API."""
    names = (
        tuple(h.strip() for h in hosts.split(",") if h.strip())
        if hosts is not None
        else default_hosts(socket.gethostname())
    )
    try:
        parse_hosts(names)
    except CertError as exc:
        raise click.BadParameter(str(exc), param_hint="--hosts") from exc
    home = click.get_current_context().meta.get(HOME_META) or default_home()
    target = (directory or Path(home) / "tls").expanduser().absolute()
    try:
        result = init_tls(target, hosts=names, days=days, force=force, now=dt.datetime.now(dt.UTC))
    except (CertError, TlsInitError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot write to {target}: {exc}") from exc
    _report(result)
