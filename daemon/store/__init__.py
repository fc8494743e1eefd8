"""The state store: tables, frozen rows, migrations and compare-and-set transitions over
SQLite or PostgreSQL, and the async facade the daemon uses.

Import from here; the modules inside are the package's own business:

- ``tables`` (the SQLModel tables) and ``rows`` (the frozen rows handed out);
- ``migrations`` (schema versions and the runner that applies them at open);
- ``cas`` (the one compare-and-set helper every status change goes through, and the event
  written with it);
- ``base`` (connections and transactions), then one part of :class:`Store` per resource:
  ``jobs``, ``instances``, ``services``, ``events``, ``projects``, ``leases``, ``signin``
  (dashboard sessions and login links), joined in ``store``;
- ``aio`` (:class:`AsyncStore`, the same methods as coroutines on one store thread).
"""

from __future__ import annotations

from spotd.store.aio import AsyncStore
from spotd.store.errors import (
    NotFound,
    OverQuota,
    ProjectExists,
    SchemaTooNew,
    ServiceExists,
    StaleTransition,
    StoreError,
)
from spotd.store.job_inserts import AttemptIntent
from spotd.store.jobs import Watched
from spotd.store.migrations import LATEST_VERSION, MIGRATIONS
from spotd.store.projects import LIMITS as PROJECT_LIMITS
from spotd.store.projects import Admit
from spotd.store.rows import (
    AttemptRow,
    EventRow,
    InstanceRow,
    JobRow,
    ProjectRow,
    ProjectUsage,
    ReplicaRow,
    ServiceRow,
    ServiceStatus,
    ZoneEventRow,
    current_attempt_of,
)
from spotd.store.signin import LoginLinkRow, SessionRow
from spotd.store.store import Store
from spotd.store.tables import Attempt, Event, Instance, Job, ZoneEvent

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "PROJECT_LIMITS",
    "Admit",
    "AsyncStore",
    "Attempt",
    "AttemptIntent",
    "AttemptRow",
    "Event",
    "EventRow",
    "Instance",
    "InstanceRow",
    "Job",
    "JobRow",
    "LoginLinkRow",
    "NotFound",
    "OverQuota",
    "ProjectExists",
    "ProjectRow",
    "ProjectUsage",
    "ReplicaRow",
    "SchemaTooNew",
    "ServiceExists",
    "ServiceRow",
    "ServiceStatus",
    "SessionRow",
    "StaleTransition",
    "Store",
    "StoreError",
    "Watched",
    "ZoneEvent",
    "ZoneEventRow",
    "current_attempt_of",
]
