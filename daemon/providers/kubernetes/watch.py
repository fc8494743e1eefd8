"""What is known about each region's pods, and the watch loop that keeps it current.

Each region's task lists once (the snapshot, and the periodic re-list that repairs anything a
watch missed), then watches from that version until the stream ends (``watch_seconds``, a
dropped connection, a 410 Gone), and starts over, backing off while the API fails. While a
region's watch is not live — disabled in the config, not started yet, or failing — the
provider's listing lists that region itself, once (``RegionCache.watching`` says which).

A pod that vanishes is remembered for a while as a tombstone (reported PREEMPTED, "pod
deleted"), unless spotd deleted it itself: the cache knows which pods it is deleting.

The API calls themselves (the list, opening the stream, classifying their failures) are the
provider's: this module only reads lines and updates the cache, so it needs no SDK.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog

from spotd.aiokit import sleep
from spotd.providers.base import ProviderError
from spotd.providers.kubernetes.pods import is_ours

log = structlog.get_logger("spotd.providers.kubernetes")

Pod = dict[str, Any]


@dataclass
class RegionCache:
    """What is known about one region's pods, by pod name."""

    pods: dict[str, Pod] = field(default_factory=dict)
    tombstones: dict[str, tuple[float, Pod]] = field(default_factory=dict)
    deleting: dict[str, float] = field(default_factory=dict)  # pods spotd deleted -> when
    synced_at: float | None = None  # monotonic time of the last successful snapshot
    watching: bool = False  # a watch stream is open and feeding ``pods``

    def replace(self, fresh: dict[str, Pod], *, now: float) -> None:
        """A new snapshot: every pod missing from it is buried."""
        for name, old in self.pods.items():
            if name not in fresh:
                self.bury(name, old, now=now)
        self.pods = fresh

    def bury(self, name: str, last: Pod, *, now: float) -> None:
        """A pod vanished: remember it for a while, unless spotd deleted it."""
        if self.deleting.pop(name, None) is not None:
            return
        self.tombstones[name] = (now, last)

    def apply(self, event: Mapping[str, Any], *, home_tag: str | None, now: float) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) for one of our pods."""
        kind = event.get("type")
        pod = event.get("object") or {}
        name = (pod.get("metadata") or {}).get("name")
        if not name or not is_ours(pod, home_tag):
            return
        if kind in ("ADDED", "MODIFIED"):
            self.pods[name] = dict(pod)
            self.tombstones.pop(name, None)
        elif kind == "DELETED":
            self.pods.pop(name, None)
            self.bury(name, dict(pod), now=now)


class EventStream(Protocol):
    """An open watch response: one JSON event per line."""

    async def readline(self) -> bytes: ...

    def release(self) -> None: ...


class RegionWatcher:
    """Snapshot, watch until the stream ends, repeat: the re-list is the safety net."""

    def __init__(
        self,
        *,
        region: str,
        cache: RegionCache,
        relist: Callable[[], Awaitable[str]],
        open_stream: Callable[[str], Awaitable[EventStream]],
        on_event: Callable[[Mapping[str, Any]], None],
        stop: asyncio.Event,
    ) -> None:
        self.region = region
        self._cache = cache
        self._relist = relist  # replaces the snapshot, returns its resourceVersion
        self._open = open_stream  # a watch from that version; raises ProviderError
        self._on_event = on_event
        self._stop = stop

    async def run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                version = await self._relist()
                await self._follow(await self._open(version))
                backoff = 0.5
            except ProviderError as exc:
                log.warning("k8s watch interrupted", region=self.region, error=str(exc))
                self._cache.watching = False
                await sleep(backoff, self._stop)
                backoff = min(backoff * 2, 30.0)
            finally:
                self._cache.watching = False

    async def _follow(self, stream: EventStream) -> None:
        try:
            self._cache.watching = True
            while not self._stop.is_set():
                try:
                    line = await stream.readline()
                except (aiohttp.ClientError, TimeoutError, OSError):
                    return  # the stream ended (server timeout, dropped connection): re-list
                if not line:
                    return
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("type") == "ERROR":
                    return  # typically 410 Gone: the version is too old; re-list
                if event.get("type") == "BOOKMARK":
                    continue
                self._on_event(event)
        finally:
            self._cache.watching = False
            stream.release()
