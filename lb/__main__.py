"""``python -m spotd.lb --port P --control-port C [--policy least_load] ...``

Policies (``--policy``): round_robin, least_load, power_of_two, prefix_aware, least_tokens
(``policy.py``).
LLM streams on a replica under a preemption notice move to another replica
``--handoff-margin`` seconds before its deadline (``llmstream.py``).

Runs one load-balancer process: the proxy on ``--host:--port`` and the control API on
127.0.0.1:``--control-port`` (or under ``/-/`` on the proxy port when ``--control-port`` is
not given). Several such processes may serve one service (``--reuse-port`` lets them share a
port); each keeps its own statistics and takes the same replica pushes.

SIGTERM/SIGINT: stop accepting, let in-flight requests finish (``--shutdown-timeout``), exit.

The control API decides where the LB sends traffic, so it is never open to whoever reaches a
port: without ``--token`` the LB starts only with a separate ``--control-port`` on a loopback
``--control-host`` (what the daemon's own LBs use); a control API on the proxy port, or on
another address, needs a token (``control_refusal``).

Endpoint security (what a service's ``tls:`` and ``api_keys_env`` turn on):

- ``--tls-cert FILE --tls-key FILE``: the proxy port speaks TLS (1.2 or later) only; there is
  no plaintext listener on it. A separate ``--control-port`` stays plain HTTP on loopback.
- client API keys: ``--api-keys-file PATH`` (one key per line, mode 0600) and/or
  ``SPOTD_LB_API_KEYS`` (comma-separated; how the daemon passes them), replaced later by
  ``PUT /-/api-keys`` without a restart. Clients send ``Authorization: Bearer <key>`` (or
  the ``--api-key-header``); a missing or wrong key is answered 401 and never proxied. The
  header is removed before forwarding unless ``--forward-api-key``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import ssl
import sys

from aiohttp import web

from .app import make_app, make_control_app, running_proxy, serve_proxy, server_tls
from .auth import read_keys_file
from .policy import Policy
from .state import LBConfig, LBState, parse_replicas

log = logging.getLogger("spotd.lb")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name may resolve anywhere


def control_refusal(*, token: str, control_port: int | None, control_host: str) -> str | None:
    """Why this LB must not start, or None. Without a token the control API (which replaces
    the replica set) must be reachable only from this machine: a separate port on loopback.

    Examples: no token, ``--control-port 9001`` on 127.0.0.1 -> None (the daemon's LBs); no
    token and no ``--control-port`` -> refused (``PUT /-/replicas`` on the public proxy port);
    no token, ``--control-host 0.0.0.0`` -> refused; any of them with a token -> None."""
    if token:
        return None
    fix = "pass --token (or SPOTD_LB_TOKEN), or a --control-port on a loopback --control-host"
    if control_port is None:
        return (
            "refusing to serve the control API on the proxy port without a token "
            f"(anyone who reaches the proxy could repoint its traffic): {fix}"
        )
    if not _is_loopback(control_host):
        return f"refusing to serve the control API on {control_host} without a token: {fix}"
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spotd.lb",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="proxy bind address")
    p.add_argument("--port", type=int, required=True, help="proxy port")
    p.add_argument(
        "--control-port",
        type=int,
        default=None,
        help="control API port on 127.0.0.1 (default: under /-/ on --port)",
    )
    p.add_argument("--control-host", default="127.0.0.1")
    p.add_argument(
        "--token",
        default=os.environ.get("SPOTD_LB_TOKEN", ""),
        help="bearer token for the control API (env SPOTD_LB_TOKEN)",
    )
    p.add_argument("--policy", choices=[x.value for x in Policy], default=Policy.LEAST_LOAD.value)
    p.add_argument(
        "--prefix-chars",
        type=int,
        default=256,
        help="prefix_aware: prompt characters that make the routing key",
    )
    p.add_argument(
        "--load-factor",
        type=float,
        default=1.25,
        help="prefix_aware: a replica takes at most this times the mean load",
    )
    p.add_argument(
        "--handoff-margin",
        type=float,
        default=10.0,
        help="LLM streams leave a replica under a preemption notice this many seconds "
        "before its deadline",
    )
    p.add_argument(
        "--no-continue-streams",
        dest="continue_streams",
        action="store_false",
        help="never move LLM streams (and never ask replicas for token ids)",
    )
    p.add_argument(
        "--affinity-header",
        default="X-Session-Id",
        help="consistent-hash requests carrying this header ('' to disable)",
    )
    p.add_argument(
        "--replica",
        action="append",
        default=[],
        metavar="ID=URL",
        help="initial READY replica (repeatable); the daemon's PUTs replace them",
    )
    p.add_argument("--max-tries", type=int, default=3)
    p.add_argument("--retry-ratio", type=float, default=0.2)
    p.add_argument(
        "--queue-size",
        type=int,
        default=256,
        help="requests held while no replica is ready (0: answer 503 at once)",
    )
    p.add_argument("--queue-timeout", type=float, default=30.0)
    p.add_argument("--connect-timeout", type=float, default=3.0)
    p.add_argument("--read-timeout", type=float, default=600.0)
    p.add_argument("--pool-limit", type=int, default=1024)
    p.add_argument("--probe-path", default="/health")
    p.add_argument("--probe-interval", type=float, default=0.5)
    p.add_argument("--report-url", default=None, help="POST ejections here")
    p.add_argument(
        "--report-unix",
        default=None,
        metavar="PATH",
        help="reach --report-url through this unix socket (the daemon's API)",
    )
    p.add_argument("--tls-cert", default=None, metavar="FILE", help="serve the proxy over TLS")
    p.add_argument("--tls-key", default=None, metavar="FILE", help="the --tls-cert's key")
    p.add_argument(
        "--api-keys-file",
        default=None,
        metavar="PATH",
        help="client API keys, one a line (mode 0600); also env SPOTD_LB_API_KEYS (a,b,...)",
    )
    p.add_argument(
        "--api-key-header",
        default="Authorization",
        help="where clients send their key (Authorization: Bearer <key>, or this header)",
    )
    p.add_argument(
        "--forward-api-key",
        action="store_true",
        help="keep the key's header on requests to replicas (default: removed)",
    )
    p.add_argument("--lb-id", default="")
    p.add_argument("--reuse-port", action="store_true")
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    p.add_argument("--log-level", default="INFO")
    return p


def tls_refusal(cert: str | None, key: str | None) -> str | None:
    """Why the TLS options cannot be used, or None (both given, or neither)."""
    if bool(cert) != bool(key):
        return "--tls-cert and --tls-key go together: give both, or neither"
    return None


def initial_keys(args: argparse.Namespace, env: dict[str, str] | None = None) -> list[str]:
    """The client keys to start with: ``--api-keys-file`` and ``SPOTD_LB_API_KEYS``."""
    env = dict(os.environ) if env is None else env
    keys = [k for k in env.get("SPOTD_LB_API_KEYS", "").split(",") if k.strip()]
    if args.api_keys_file:
        keys += read_keys_file(args.api_keys_file)
    return keys


async def serve(args: argparse.Namespace, tls: ssl.SSLContext | None = None) -> None:
    cfg = LBConfig(
        policy=Policy(args.policy),
        affinity_header=args.affinity_header,
        max_tries=args.max_tries,
        retry_ratio=args.retry_ratio,
        queue_size=args.queue_size,
        queue_timeout=args.queue_timeout,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout or None,
        pool_limit=args.pool_limit,
        probe_path=args.probe_path,
        probe_interval=args.probe_interval,
        report_url=args.report_url,
        report_unix=args.report_unix,
        lb_id=args.lb_id or f"lb-{os.getpid()}",
        prefix_chars=args.prefix_chars,
        load_factor=args.load_factor,
        handoff_margin=args.handoff_margin,
        continue_streams=args.continue_streams,
    )
    state = LBState(cfg)
    state.api_keys.replace(
        initial_keys(args), header=args.api_key_header, forward=args.forward_api_key
    )
    os.environ.pop("SPOTD_LB_API_KEYS", None)  # not left for anything this process starts
    if args.replica:
        state.replicas.replace(
            parse_replicas(
                [{"id": r.split("=", 1)[0], "url": r.split("=", 1)[1]} for r in args.replica]
            )
        )
    separate = args.control_port is not None
    async with contextlib.AsyncExitStack() as stack:
        if separate:  # the usual case (the daemon's LBs): the proxy on the low-level server
            proxy = await stack.enter_async_context(running_proxy(state))
            runner: web.BaseRunner = await serve_proxy(
                proxy,
                args.host,
                args.port,
                reuse_port=args.reuse_port,
                shutdown_timeout=args.shutdown_timeout,
                ssl_context=tls,
            )
            stack.push_async_callback(runner.cleanup)
            crunner = web.AppRunner(make_control_app(state, token=args.token), access_log=None)
            await crunner.setup()
            stack.push_async_callback(crunner.cleanup)
            await web.TCPSite(crunner, args.control_host, args.control_port).start()
        else:
            runner = web.AppRunner(
                make_app(state, control_on_proxy=True, token=args.token),
                access_log=None,
                handler_cancellation=True,
                shutdown_timeout=args.shutdown_timeout,
            )
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(
                runner,
                args.host,
                args.port,
                backlog=2048,
                reuse_port=args.reuse_port or None,
                ssl_context=tls,
            ).start()
        log.info(
            "spotd-lb %s: proxy on %s://%s:%d, control on %s, policy %s, %d API key(s)",
            cfg.lb_id,
            "https" if tls else "http",
            args.host,
            args.port,
            f"{args.control_host}:{args.control_port}" if separate else "/-/",
            cfg.policy.value,
            state.api_keys.count,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("spotd-lb shutting down")
        # the exit stack closes the control API, then the proxy (in-flight requests finish
        # up to --shutdown-timeout), then the pool and session


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    refusal = control_refusal(
        token=args.token, control_port=args.control_port, control_host=args.control_host
    )
    refusal = refusal or tls_refusal(args.tls_cert, args.tls_key)
    if refusal:
        print(f"spotd-lb: {refusal}", file=sys.stderr)
        raise SystemExit(2)
    tls: ssl.SSLContext | None = None
    try:  # a bad file is a start-up error, said plainly (not a traceback from the loop)
        if args.tls_cert:
            tls = server_tls(args.tls_cert, args.tls_key)
        initial_keys(args)
    except (OSError, ssl.SSLError, ValueError) as e:
        print(f"spotd-lb: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args, tls))
    else:
        uvloop.run(serve(args, tls))


if __name__ == "__main__":
    main()
