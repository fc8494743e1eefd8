"""The LB's keep-alive pool of upstream connections (``upstream.UpstreamConn``).

Connections are kept per (host, port), at most ``limit`` open in all: past the limit an idle
connection to any replica is closed to make room, and with none idle a request waits for one
to close. An idle connection is reused only within ``keepalive_timeout`` of its release;
``release`` keeps a connection only when its answer was complete and the replica keeps it
open (see ``upstream``).
"""

from __future__ import annotations

import asyncio
import collections

from .http1 import UpstreamConnectError
from .upstream import UpstreamConn

__all__ = ["UpstreamPool"]


class UpstreamPool:
    """Keep-alive connections per (host, port), at most ``limit`` open in all."""

    def __init__(
        self,
        *,
        limit: int = 1024,
        keepalive_timeout: float = 30.0,
        connect_timeout: float = 3.0,
        read_timeout: float | None = 600.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.keepalive_timeout = keepalive_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[tuple[str, int], list[UpstreamConn]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closing = False

    async def acquire(self, host: str, port: int) -> UpstreamConn:
        key = (host, port)
        idle = self._idle.get(key)
        if idle:
            now = self.loop.time()
            while idle:
                c = idle.pop()
                if not c.closed and now - c.idle_since < self.keepalive_timeout:
                    return c
                c.abort()
        while self._open >= self.limit:
            if not self._evict_idle():
                w = self.loop.create_future()
                self._waiters.append(w)
                try:
                    await w
                finally:
                    if not w.done():
                        w.cancel()
        self._open += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConn(self, key), host, port),
                self.connect_timeout,
            )
        except TimeoutError:
            self._count_closed()
            raise UpstreamConnectError(
                f"timed out connecting to {host}:{port} after {self.connect_timeout:g} s"
            ) from None
        except OSError as e:
            self._count_closed()
            raise UpstreamConnectError(f"cannot connect to {host}:{port}: {e}") from e
        except BaseException:
            self._count_closed()
            raise
        return conn

    def release(self, conn: UpstreamConn) -> None:
        """Back to the pool when the answer was complete and the replica keeps it open."""
        if conn.closed:
            return
        if not conn.reusable or not conn.body_done or self._closing:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)

    def _evict_idle(self) -> bool:
        for conns in self._idle.values():
            if conns:
                conns.pop(0).abort()
                return True
        return False

    def _count_closed(self) -> None:
        self._open -= 1
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                break

    def lost(self, conn: UpstreamConn) -> None:
        """``UpstreamConn.connection_lost``: count it out, and out of the idle list."""
        self._count_closed()
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        self._closing = True
        for conns in self._idle.values():
            for c in conns:
                c.abort()
        self._idle.clear()
