"""The store's own errors: what a caller may catch and decide on."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


class StoreError(Exception):
    """Base class of the store's own errors."""


class StaleTransition(StoreError):
    """A compare-and-set transition found the row in a state it did not expect.

    Raised instead of overwriting: whoever gets it re-reads the row and decides again.
    """

    def __init__(
        self, *, what: str, row_id: object, current: str, expected: Collection[str], to: str
    ) -> None:
        self.what = what
        self.row_id = row_id
        self.current = current
        self.expected = tuple(expected)
        self.to = to
        super().__init__(
            f"{what} {row_id}: cannot move to {to}: it is {current}, "
            f"expected one of {', '.join(sorted(self.expected)) or '(none)'}"
        )


class NotFound(StoreError, LookupError):
    """The job, attempt, instance, service or replica named does not exist."""


class SchemaTooNew(StoreError):
    """The database was written by a newer spotd than this one."""


class ServiceExists(StoreError):
    """A live service already has that name."""


class ProjectExists(StoreError):
    """A project of that name exists already."""


class OverQuota(StoreError):
    """A job or service was not inserted: it would take its project over one of its limits.

    Raised by ``create_job`` / ``create_service`` with what the caller's
    ``admit`` decided (``spotd.control.quota``): the message for the user and the numbers.
    """

    def __init__(self, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details)


class Fenced(StoreError):
    """This daemon's lease lapsed or was taken over (``spotd.store.leases``): the store refuses
    every write it makes, and the daemon must stop (it restarts with a new epoch)."""
