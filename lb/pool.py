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
        while True:
            kept = self._take_idle(key)
            if kept is not None:
                return kept
            if self._open < self.limit or self._evict_idle():
                break
            # woken when a connection closes or one goes idle (to this replica, maybe)
            w = self.loop.create_future()
            self._waiters.append(w)
            try:
                await w
            except BaseException:
                if w.done() and not w.cancelled():
                    self._wake_one()  # the wake-up was ours: the next waiter's now
                raise
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

    def _take_idle(self, key: tuple[str, int]) -> UpstreamConn | None:
        idle = self._idle.get(key)
        now = self.loop.time()
        while idle:
            c = idle.pop()
            if not c.closed and now - c.idle_since < self.keepalive_timeout:
                return c
            c.abort()
        self._idle.pop(key, None)  # no key kept for a replica with nothing idle
        return None

    def release(self, conn: UpstreamConn) -> None:
        """Back to the pool when the answer was complete and the replica keeps it open; a
        request waiting at the limit is woken (it may be for this replica). Before, only a
        connection closing woke one: past the limit, requests waited while connections to
        their replica sat idle (for ever, with a replica that keeps them open)."""
        if conn.closed:
            return
        if not conn.reusable or not conn.body_done or self._closing:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)
        self._wake_one()

    def _evict_idle(self) -> bool:
        """Close the oldest idle connection (to any replica) to make room, counted out at
        once: counted when the transport reported it lost (a later loop turn), one new
        connection at the limit closed every idle one."""
        for key, conns in self._idle.items():
            if conns:
                c = conns.pop(0)
                if not conns:
                    del self._idle[key]
                c.counted_out = True
                self._open -= 1
                c.abort()
                return True
        return False

    def _count_closed(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                break

    def lost(self, conn: UpstreamConn) -> None:
        """``UpstreamConn.connection_lost``: count it out, and out of the idle list."""
        if not conn.counted_out:
            self._count_closed()
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    def close(self) -> None:
        self._closing = True
        for conns in self._idle.values():
            for c in conns:
                c.abort()
        self._idle.clear()
