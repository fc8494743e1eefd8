"""The fleet process: the fleet's cloud API and every instance's agent, in one asyncio process.

``python -m spotd.providers.fleet --socket PATH [--config JSON]`` (or ``--host/--port``) serves:

- ``POST /v1/launch``: run one instance (idempotent by ``key``); a stock-out is a 409 with
  ``{"kind": "capacity"}``;
- ``GET /v1/regions/{region}/instances``: one region's batched listing (counted per region);
  with ``?since=`` only what changed, and the keys of the rest;
- ``POST /v1/terminate``: terminate (a no-op when gone);
- ``POST /v1/preempt``, ``/v1/kill``, ``/v1/partition``, ``/v1/stockout``, ``/v1/reclaim``: the
  test and chaos controls;
- ``GET /v1/stats``: instance counts, list calls per region, reports sent, preemption times,
  and the keys that made more than one instance (``launched_twice``);
- ``GET /v1/history``: every instance still known, with when its run started and stopped.

It outlives the daemon that started it, like a cloud: a restarted daemon adopts the instances
it finds there. The agents (``spotd.providers.fleet.agents``) report to the daemon over its
real agent API; the trace loop (``spotd.providers.fleet.trace``) reclaims instances as the
trace says.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from spotd.aiokit import sleep
from spotd.providers.fleet.agents import AgentPool
from spotd.providers.fleet.catalog import fleet_offers
from spotd.providers.fleet.model import FleetModel, ModelConfig, Refused
from spotd.providers.fleet.trace import load_region_traces, steps_between

__all__ = ["FLEET", "POOL", "main", "make_app", "serve"]

log = structlog.get_logger("spotd.providers.fleet.server")

FLEET = web.AppKey("fleet", FleetModel)
POOL = web.AppKey("pool", AgentPool)
EPOCH = web.AppKey("epoch", str)  # this fleet process's own id: revisions count from its start

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bad(message: str, status: int = 400, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return data


async def launch(request: web.Request) -> web.Response:
    spec = await _body(request)
    model = request.app[FLEET]
    try:
        inst = model.launch(spec, now=time.time())
    except Refused as exc:
        return _bad(str(exc), 409, kind=exc.kind)
    except (KeyError, ValueError) as exc:
        return _bad(f"bad launch request: {exc}", kind="invalid")
    request.app[POOL].tick.set()
    return web.json_response({"id": inst.id})


async def list_region(request: web.Request) -> web.Response:
    """Every instance of the region; with ``?since=REV&epoch=E`` (what an earlier answer
    said) only the keys, and whole rows for what changed after REV. A fleet restarted since
    (another epoch) answers every row in full."""
    model, region = request.app[FLEET], request.match_info["region"]
    since = request.query.get("since", "")
    try:
        if not since:
            return web.json_response([i.listing() for i in model.list_region(region)])
        rev = int(since) if request.query.get("epoch") == request.app[EPOCH] else -1
        keys, changed = model.changed_since(region, rev)
    except KeyError as exc:
        return _bad(str(exc.args[0]), 404)
    except ValueError:
        return _bad(f"since must be a revision number, got {since!r}")
    return web.json_response(
        {
            "epoch": request.app[EPOCH],
            "rev": model.rev,
            "keys": keys,
            "changed": [i.listing() for i in changed],
        }
    )


async def terminate(request: web.Request) -> web.Response:
    body = await _body(request)
    request.app[FLEET].terminate(str(body.get("id")), now=time.time())
    return web.json_response({})


def _control(act: Callable[[FleetModel, dict[str, Any], float], object]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            result = act(request.app[FLEET], body, time.time())
        except KeyError as exc:
            return _bad(str(exc.args[0]), 404)
        except (TypeError, ValueError) as exc:
            return _bad(str(exc))
        request.app[POOL].tick.set()
        return web.json_response({"result": result})

    return handler


def _seconds(body: dict[str, Any], name: str) -> float | None:
    raw = body.get(name)
    return None if raw is None else float(raw)


async def stats(request: web.Request) -> web.Response:
    model, pool = request.app[FLEET], request.app[POOL]
    return web.json_response(
        {
            "instances": model.counts(),
            "launches": model.launches,
            "list_calls": model.list_calls,
            "reports_sent": pool.sent,
            "reports_failed": pool.failed,
            "preempted_at": model.preempted_at,
            "launched_twice": sorted(k for k, n in model.launches_by_key.items() if n > 1),
        }
    )


async def history(request: web.Request) -> web.Response:
    return web.json_response(request.app[FLEET].history())


def make_app(model: FleetModel, pool: AgentPool) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[FLEET] = model
    app[POOL] = pool
    app[EPOCH] = secrets.token_hex(8)
    controls: dict[str, Callable[[FleetModel, dict[str, Any], float], object]] = {
        "preempt": lambda m, b, now: m.preempt(
            str(b["id"]), now=now, notice_seconds=_seconds(b, "notice_seconds")
        ),
        "kill": lambda m, b, now: m.kill(str(b["id"]), now=now),
        "partition": lambda m, b, now: m.partition(
            str(b["id"]), now=now, seconds=float(b["seconds"])
        ),
        "stockout": lambda m, b, now: m.stockout(
            str(b["region"]), now=now, seconds=float(b["seconds"]), market=b.get("market")
        ),
        "reclaim": lambda m, b, now: m.reclaim_share(str(b["region"]), float(b["share"]), now=now),
    }
    app.router.add_post("/v1/launch", launch)
    app.router.add_get("/v1/regions/{region}/instances", list_region)
    app.router.add_post("/v1/terminate", terminate)
    for name, act in controls.items():
        app.router.add_post(f"/v1/{name}", _control(act))
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/v1/history", history)
    app.router.add_get("/v1/health", lambda _: _ok())
    return app


async def _ok() -> web.Response:
    return web.json_response({"ok": True})


async def _play_traces(model: FleetModel, cfg: dict[str, Any], stop: asyncio.Event) -> None:
    """Apply the trace's ticks as they come, ``trace_speedup`` times faster than real time."""
    traces = load_region_traces(Path(str(cfg["trace"])), model.regions)
    speedup = float(cfg.get("trace_speedup", 60.0))
    start = time.time()
    played = 0.0
    while not stop.is_set():
        await sleep(0.5, stop)
        now = time.time()
        upto = (now - start) * speedup
        for trace in traces:
            for step in steps_between(trace, played, upto):
                if step.reclaim_share > 0:
                    model.reclaim_share(step.region, step.reclaim_share, now=now)
                gap = trace.gap_seconds / speedup
                model.stockout(
                    step.region, now=now, seconds=0 if step.available else gap, market="spot"
                )
        played = upto


async def serve(
    *,
    config: dict[str, Any],
    socket: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the fleet until ``stop`` (or SIGTERM/SIGINT when run as a process)."""
    stop = stop or asyncio.Event()
    model = FleetModel(ModelConfig.from_mapping(config), offers=fleet_offers())
    pool = AgentPool(model, concurrency=int(config.get("concurrency", 32)))
    runner = web.AppRunner(make_app(model, pool), access_log=None, handle_signals=False)
    await runner.setup()
    site: web.BaseSite
    if socket is not None:
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
        old = os.umask(0o177)  # agents' tokens pass through here: the owner's only
        try:
            site = web.UnixSite(runner, str(socket))
            await site.start()
        finally:
            os.umask(old)
    else:
        site = web.TCPSite(runner, host or "127.0.0.1", port or 0)
        await site.start()
    tasks = [asyncio.create_task(pool.run(stop), name="fleet-agents")]
    if config.get("trace"):
        tasks.append(asyncio.create_task(_play_traces(model, config, stop), name="fleet-trace"))
    log.info("fleet serving", at=site.name, regions=model.regions)
    if ready is not None:
        ready()
    try:
        await stop.wait()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        if socket is not None:
            with contextlib.suppress(FileNotFoundError):
                socket.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spotd.providers.fleet")
    parser.add_argument("--socket", type=Path, help="listen on this unix socket")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", default="{}", help="the providers.fleet section as JSON")
    parser.add_argument("--pid-file", type=Path)
    args = parser.parse_args(argv)
    config = json.loads(args.config)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.pid_file is not None:
            args.pid_file.write_text(str(os.getpid()))
        try:
            await serve(
                config=config,
                socket=args.socket,
                host=None if args.socket else args.host,
                port=None if args.socket else args.port,
                stop=stop,
            )
        finally:
            if args.pid_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    args.pid_file.unlink()

    asyncio.run(run())
