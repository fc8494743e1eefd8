"""The wake-ups daemons send each other through PostgreSQL (``LISTEN``/``NOTIFY``).

A daemon that changes a job or service another daemon runs (a cancel through its API, an
agent's heartbeat with news) sends ``NOTIFY spotd_wake, 'j12'`` (:meth:`LeaseStore.notify_wake`);
every daemon listens on one connection of its own and wakes its worker for that job, if it runs
it. A notification lost (a reconnect) costs only latency: the owner looks again at its next
period anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
from sqlalchemy.engine import make_url

from spotd.store.leases import WAKE_CHANNEL

__all__ = ["libpq_url", "wake_notifications"]


def libpq_url(sqlalchemy_url: str) -> str:
    """``postgresql+psycopg://u@/db?host=/run`` -> ``postgresql://u@/db?host=/run``."""
    return (
        make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


async def wake_notifications(sqlalchemy_url: str) -> AsyncIterator[str]:
    """Every payload sent on the wake channel, until the connection fails (then it raises:
    the caller's supervisor reconnects)."""
    async with await psycopg.AsyncConnection.connect(
        libpq_url(sqlalchemy_url), autocommit=True
    ) as conn:
        await conn.execute(f"LISTEN {WAKE_CHANNEL}")
        async for note in conn.notifies():
            yield note.payload
