"""The state store: tables, frozen rows, migrations and compare-and-set transitions over
SQLite or PostgreSQL, and the async facade the daemon uses.

Import from here; the modules inside are the package's own business.
"""

from __future__ import annotations

from spotd.store.core import (
    AsyncStore,
    Attempt,
    AttemptRow,
    Event,
    EventRow,
    Instance,
    InstanceRow,
    Job,
    JobRow,
    LATEST_VERSION,
    MIGRATIONS,
    NotFound,
    ProjectExists,
    ReplicaRow,
    SchemaTooNew,
    ServiceExists,
    ServiceRow,
    ServiceStatus,
    StaleTransition,
    Store,
    StoreError,
    ZoneEvent,
    ZoneEventRow,
)

__all__ = [
    "AsyncStore",
    "Attempt",
    "AttemptRow",
    "Event",
    "EventRow",
    "Instance",
    "InstanceRow",
    "Job",
    "JobRow",
    "LATEST_VERSION",
    "MIGRATIONS",
    "NotFound",
    "ProjectExists",
    "ReplicaRow",
    "SchemaTooNew",
    "ServiceExists",
    "ServiceRow",
    "ServiceStatus",
    "StaleTransition",
    "Store",
    "StoreError",
    "ZoneEvent",
    "ZoneEventRow",
]
