"""Ports for local replicas and load balancers.

Replicas on the local provider share this machine, and every LB listens here, so each gets its
own port from ``[port_low, port_high)`` — below the ephemeral range, so an outgoing connection
never holds one — that no live service or replica has in the store and nothing has bound.
"""

from __future__ import annotations

import random
import socket

from spotd.store import AsyncStore

ATTEMPTS = 200


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortAllocator:
    def __init__(
        self, store: AsyncStore, *, low: int, high: int, rng: random.Random | None = None
    ) -> None:
        self._store = store
        self._low = low
        self._high = high
        self._rng = rng or random.Random()

    async def used(self) -> set[int]:
        used: set[int] = set()
        for s in await self._store.list_services(live_only=True):
            used |= {s.lb_port, s.lb_control_port}
        used |= {r.port for r in await self._store.replicas(live_only=True)}
        return used

    def pick(self, used: set[int]) -> int:
        for _ in range(ATTEMPTS):
            port = self._rng.randrange(self._low, self._high)
            if port not in used and port_free(port):
                return port
        raise RuntimeError("no free port for a replica or load balancer")

    async def one(self) -> int:
        return self.pick(await self.used())

    async def two(self) -> tuple[int, int]:
        """Two distinct ports (an LB's proxy and control ports)."""
        used = await self.used()
        a = self.pick(used)
        return a, self.pick(used | {a})
