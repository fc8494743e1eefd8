"""Assembles and runs one daemon: store, providers, controller, API listeners.

This module is the composition root: the only place that wires the parts together.

The daemon's home is private: ``$SPOTD_HOME`` and every directory the daemon makes in it are
0700 (``spotd.files.private``), since they hold the state database, agents' configs with their
tokens and the task's secrets, and the jobs' logs. File modes do not keep out processes of the
daemon's own user, such as its jobs on the local provider: those could read the admin token
from ``/proc/<daemon pid>/environ`` (or attach a debugger) if the daemon stayed dumpable, so
it makes itself non-dumpable before anything else (``forbid_inspection``).

Agents have a listener of their own that serves only the agent routes (``make_app(callers=
AGENT)``): the unix socket ``$SPOTD_HOME/agent.sock`` (0666: the agent's per-instance token is
what authenticates it there) and, with ``agent_host``/``agent_port``, TCP under the same TLS
rules as the main TCP API. Local agents call that socket, remote agents the TCP listener when
it is configured. The main listeners still serve the agent routes too: agents launched before
an upgrade keep reporting there, and the routes give nothing to a caller without an agent's
token, so an admin listener gains nothing by refusing them.

With ``providers.local.run_as_project_users`` jobs on this host run as other users, who must
reach ``agent.sock``: the home is then 0711 (they may pass through it, not list it), every file
in it is narrowed to 0600 at start and the daemon's umask is 077, so the socket and their own
instance directories (``spotd.providers.local``) are all they can open there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import signal
import socket
import ssl
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import structlog
from aiohttp import web

from spotd.aiokit import sleep
from spotd.api.app import MalformedRequests, make_app
from spotd.api.pools import POOLS
from spotd.api.routes import AGENT
from spotd.api.services import SERVICES
from spotd.config import Settings
from spotd.control.cluster import Cluster
from spotd.control.jobs import Controller
from spotd.control.pools import Pools
from spotd.control.services import ServiceController
from spotd.dashboard import Dashboard, mount_dashboard
from spotd.files.private import forbid_inspection, private_dir
from spotd.metrics import DaemonMetrics
from spotd.ops import sdnotify
from spotd.ops.tls import TlsError, client_context, plaintext_refusal, server_context
from spotd.pricing.catalog import default_local_catalog, load_catalog
from spotd.providers.allowlist import allowlist_errors
from spotd.providers.base import Provider
from spotd.providers.local import LocalProvider
from spotd.providers.local_tenancy import LocalTenancy, TenancyError, privilege_refusal
from spotd.store import AsyncStore, Store
from spotd.store.leases import Takeover

log = structlog.get_logger("spotd.daemon")


class AlreadyRunning(Exception):
    pass


class LeaseLost(Exception):
    """Several daemons on one database: this one's lease lapsed or its work was taken over
    (``spotd.control.cluster``); it stopped, to be restarted with a fresh view."""


class TransportError(Exception):
    """The TCP API cannot listen as configured: TLS files unusable, or plaintext refused."""


def tcp_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TCP API's TLS context, None for plaintext (loopback, or explicitly allowed), or
    ``TransportError``: checked before anything starts, so a refused config changes nothing."""
    if not (settings.tcp_host and settings.tcp_port):
        return None
    return _tls_for(settings, settings.tcp_host)


def agent_tls(settings: Settings) -> ssl.SSLContext | None:
    """The agents' TCP listener's TLS context: the same certificate and the same refusal of
    plaintext off loopback as the main TCP API (agents send their tokens over it)."""
    if not (settings.agent_host and settings.agent_port):
        return None
    return _tls_for(settings, settings.agent_host)


def _tls_for(settings: Settings, host: str) -> ssl.SSLContext | None:
    refusal = plaintext_refusal(
        host,
        tls=settings.tls_cert is not None,
        allow_plaintext=settings.allow_plaintext_tcp,
    )
    if refusal:
        raise TransportError(refusal)
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        if settings.tls_ca is not None:  # agents get it: unreadable is an error now, not then
            client_context(ca_file=settings.tls_ca)
        return server_context(settings.tls_cert, settings.tls_key)
    except TlsError as exc:
        raise TransportError(str(exc)) from exc


def local_tenancy(settings: Settings) -> LocalTenancy:
    """The local provider's tenancy rules, checked before anything starts: a daemon that must
    run projects as their own users but cannot switch users refuses to start, saying so."""
    errors = allowlist_errors(settings.providers)  # local's and slurm's `projects`
    if errors:
        raise ProviderConfigError("; ".join(errors))
    try:
        tenancy = LocalTenancy.from_config(settings.providers.get("local", {}))
    except TenancyError as exc:
        raise ProviderConfigError(str(exc)) from exc
    refusal = privilege_refusal(tenancy)
    if refusal:
        raise ProviderConfigError(refusal)
    return tenancy


def open_home_to_project_users(home: Path) -> None:
    """Let project users reach ``agent.sock`` and nothing else of the home: the home 0711, its
    files 0600 (the database, the config with its token, the logs), new files private."""
    os.umask(0o077)
    os.chmod(home, 0o711)
    for entry in home.iterdir():
        st = entry.lstat()
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(entry, stat.S_IMODE(st.st_mode) & 0o700)


def _lock_home(settings: Settings) -> IO[str]:
    private_dir(settings.home)
    f = open(settings.home / "spotd.lock", "a+")  # noqa: SIM115 - held for the daemon's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        pid = settings.pid_path.read_text().strip() if settings.pid_path.exists() else "?"
        raise AlreadyRunning(f"another spotd (pid {pid}) is running for {settings.home}") from exc
    return f


def _local(settings: Settings, cfg: dict[str, Any]) -> Provider:
    catalog = (
        load_catalog(settings.local_catalog) if settings.local_catalog else default_local_catalog()
    )
    try:
        tenancy = LocalTenancy.from_config(cfg)
    except TenancyError as exc:
        raise ProviderConfigError(str(exc)) from exc
    return LocalProvider(settings.local_dir, catalog, tenancy=tenancy)


def _k8s(settings: Settings, cfg: dict[str, Any]) -> Provider:
    from spotd.providers.kubernetes import KubernetesProvider  # kubernetes_asyncio: optional

    return KubernetesProvider.from_config(cfg, home_tag=settings.home_tag)


def _aws(settings: Settings, cfg: dict[str, Any]) -> Provider:
    from spotd.providers.aws import from_settings

    return from_settings(settings, cfg)


def _slurm(settings: Settings, cfg: dict[str, Any]) -> Provider:
    from spotd.providers.slurm import SlurmProvider  # Slurm commands live only in there

    return SlurmProvider.from_config(cfg, default_root=settings.home / "slurm")


def _fleet(settings: Settings, cfg: dict[str, Any]) -> Provider:
    from spotd.providers.fleet import FleetProvider  # the scale fake: one process plays it all

    try:
        return FleetProvider.from_config(cfg, default_root=settings.home / "fleet")
    except ValueError as exc:
        raise ProviderConfigError(str(exc)) from exc


# Builds one backend from the daemon's settings and its `providers.<name>` config section.
ProviderFactory = Callable[[Settings, dict[str, Any]], Provider]

# Every backend, by the name used in config and in `infra:`. Cloud SDKs are imported inside each
# factory, so a daemon without aioboto3 or kubernetes_asyncio still runs the others. A table,
# not a chain of ifs on names: `spotctl providers` checks the same factories the daemon runs.
PROVIDER_FACTORIES: Mapping[str, ProviderFactory] = MappingProxyType(
    {"local": _local, "slurm": _slurm, "k8s": _k8s, "aws": _aws, "fleet": _fleet}
)


class ProviderConfigError(Exception):
    pass


def _cluster(
    settings: Settings, store: AsyncStore, jobs: Controller, services: ServiceController
) -> Cluster:
    """Several daemons on one database: this daemon's lease, its takeovers and wake-ups."""

    def taken(t: Takeover) -> None:
        for job_id in t.jobs:
            jobs.spawn_worker(job_id)
        for service_id in t.services:
            services.spawn(service_id)

    def woken(kind: str, oid: int) -> None:
        (jobs.workers if kind == "j" else services.workers).wake(oid)

    scheme = "https" if settings.tls_cert is not None else "http"
    host = settings.tcp_host or ""
    if host in ("0.0.0.0", "::"):  # every interface: name the host instead (a pod's name)
        host = socket.gethostname()
    url = f"{scheme}://{host}:{settings.tcp_port}" if settings.tcp_port else ""
    cluster = Cluster(
        settings=settings,
        store=store,
        on_takeover=taken,
        on_wake=woken,
        on_release=jobs.release,
        url=url,
    )
    jobs.elsewhere = services.elsewhere = cluster.wake_elsewhere
    return cluster


def build_providers(settings: Settings) -> dict[str, Provider]:
    """The enabled providers: local unless disabled, plus every configured one."""
    wanted = dict(settings.providers)
    wanted.setdefault("local", {})
    out: dict[str, Provider] = {}
    for name, cfg in wanted.items():
        if cfg.get("enabled", True) is False:
            continue
        factory = PROVIDER_FACTORIES.get(name)
        if factory is None:
            raise ProviderConfigError(
                f"unknown provider {name!r} in config (known: {sorted(PROVIDER_FACTORIES)})"
            )
        out[name] = factory(settings, {k: v for k, v in cfg.items() if k != "enabled"})
    return out


async def _agent_socket(runner: web.AppRunner, path: Path) -> None:
    """The agents' unix socket, 0666: anyone who can reach it may connect; only an agent's
    token gets an answer from its routes."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # stale, from a killed daemon: we hold the home's lock
    old_umask = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o666)


async def run_daemon(
    settings: Settings, *, notify: Callable[[str], object] | None = sdnotify.notify
) -> None:
    """Serve until SIGTERM/SIGINT, telling systemd (``notify``) when ready and when stopping."""
    tls = tcp_tls(settings)
    tls_agents = agent_tls(settings)
    tenancy = local_tenancy(settings)
    sealed = forbid_inspection(lambda why: log.warning(why))
    lock = _lock_home(settings)
    for d in (settings.logs_dir, settings.checkpoints_dir, settings.local_dir):
        private_dir(d)
    if tenancy.run_as_project_users:
        open_home_to_project_users(settings.home)
    store = AsyncStore(Store.open(settings.db_url))
    providers = build_providers(settings)
    metrics = DaemonMetrics()
    controller = Controller(settings=settings, store=store, providers=providers, metrics=metrics)
    services = ServiceController(
        settings=settings, store=store, observer=controller.observer, metrics=metrics
    )
    pools = Pools(settings=settings, store=store, controller=controller)
    cluster = _cluster(settings, store, controller, services) if settings.ha else None
    if cluster is not None:
        pools.leading = cluster.leading
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    try:
        if cluster is not None:  # the lease before any listener: every write is fenced
            await cluster.join()
            cluster.keep_lease(controller.sup)
        dashboard = Dashboard(
            settings=settings, store=store, controller=controller, services=services
        )
        logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
        app = make_app(settings=settings, store=store, controller=controller, metrics_=metrics)
        app[SERVICES] = services
        app[POOLS] = pools
        mount_dashboard(app, dashboard, tcp=False)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        runners.append(runner)
        if settings.tcp_host and settings.tcp_port:
            tcp_app = make_app(
                settings=settings, store=store, controller=controller, metrics_=metrics, tcp=True
            )
            tcp_app[SERVICES] = services
            tcp_app[POOLS] = pools
            mount_dashboard(tcp_app, dashboard, tcp=True)
            tcp_runner = web.AppRunner(tcp_app, handle_signals=False, access_log=None)
            await tcp_runner.setup()
            runners.append(tcp_runner)
            # One TCP site: with TLS configured there is no plaintext listener at all.
            await web.TCPSite(
                tcp_runner, settings.tcp_host, settings.tcp_port, ssl_context=tls
            ).start()
            log.info(
                "TCP API listening",
                host=settings.tcp_host,
                port=settings.tcp_port,
                tls=tls is not None,
            )
        agent_app = make_app(
            settings=settings,
            store=store,
            controller=controller,
            metrics_=metrics,
            tcp=True,
            callers=AGENT,
        )
        agent_app[SERVICES] = services
        agent_app[POOLS] = pools  # one instance: the workers' asks wait for its news
        agent_runner = web.AppRunner(agent_app, handle_signals=False, access_log=None)
        await agent_runner.setup()
        runners.append(agent_runner)
        if settings.agent_host and settings.agent_port:
            await web.TCPSite(
                agent_runner, settings.agent_host, settings.agent_port, ssl_context=tls_agents
            ).start()
            log.info(
                "agent listener on TCP",
                host=settings.agent_host,
                port=settings.agent_port,
                tls=tls_agents is not None,
            )
        await controller.start()
        await services.start()
        pools.start()
        if cluster is not None:
            cluster.take_work(controller.sup)
        # The unix socket last: a client that can connect finds everything started (agents
        # that heartbeat before then simply retry).
        sock = settings.socket_path
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # a stale socket from a killed daemon: we hold the lock, so it is ours
        old_umask = os.umask(0o177)
        try:
            await web.UnixSite(runner, str(sock)).start()
        finally:
            os.umask(old_umask)
        os.chmod(sock, 0o600)
        await _agent_socket(agent_runner, settings.agent_socket_path)
        controller.sup.spawn("watchdog", lambda: sdnotify.watchdog_loop(controller.stop))
        settings.pid_path.write_text(str(os.getpid()))
        log.info(
            "spotd ready",
            home=str(settings.home),
            socket=str(sock),
            pid=os.getpid(),
            non_dumpable=sealed,
        )
        if notify:
            notify("READY=1")
        lost = cluster.lost if cluster is not None else asyncio.Event()
        await sleep(math.inf, stop, lost)
        log.info("spotd stopping", lease_lost=lost.is_set())
        if notify:
            notify("STOPPING=1")
    finally:
        await services.shutdown(handing_over=cluster is not None and cluster.others_take_over())
        await controller.shutdown()
        for r in reversed(runners):
            await r.cleanup()
        for p in providers.values():
            await p.close()
        if cluster is not None:
            await cluster.leave()  # a clean stop hands the work over now
        await store.close()
        for path in (settings.socket_path, settings.agent_socket_path, settings.pid_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        lock.close()
    if cluster is not None and cluster.lost.is_set():
        raise LeaseLost(f"lease lost ({cluster.reason}): exiting so a supervisor restarts me")
