"""The synchronous store: one class made of the per-resource parts.

Everything the daemon must not forget lives here, so a daemon killed at any point restarts
into the same picture. Three habits keep that picture trustworthy:

- **compare-and-set transitions.** A status changes only through a ``transition_*`` method,
  each one call to :func:`spotd.store.cas.compare_and_set`: ``UPDATE … WHERE key=? AND status
  IN (…)``, and :class:`StaleTransition` (naming the status actually found) when no row
  matched.
- **the event goes with the change.** The event row describing a change is inserted in the
  same transaction as the UPDATE.
- **intent before action.** ``create_attempt`` / ``create_replica`` write their rows before any
  provider call; a daemon killed mid-launch finds rows without an instance id and finishes the
  launch, idempotent by key.

The store never reads the clock: every timestamp (float epoch seconds) is passed in as
``now``/``at``, so tests run on a fake clock. ``get_*`` return None for a missing row;
``require_*`` raise :class:`NotFound` instead, for callers to whom a missing row is an error.
"""

from __future__ import annotations

from spotd.store.checkpoints import ReportedCheckpointStore
from spotd.store.events import EventStore
from spotd.store.instances import InstanceStore
from spotd.store.jobs import JobStore
from spotd.store.leases import LeaseStore
from spotd.store.nodes import NodeStore
from spotd.store.pools import PoolStore
from spotd.store.projects import ProjectStore
from spotd.store.services import ServiceStore
from spotd.store.signin import SignInStore

__all__ = ["Store"]


class Store(
    JobStore,
    InstanceStore,
    NodeStore,
    ServiceStore,
    EventStore,
    ProjectStore,
    PoolStore,
    LeaseStore,
    SignInStore,
    ReportedCheckpointStore,
):
    """Synchronous access to the state database. Open with :meth:`Store.open`.

    SQLAlchemy Core over the SQLModel tables; for the event loop, wrap it in
    :class:`~spotd.store.AsyncStore`.
    """
