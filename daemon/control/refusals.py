"""Why a launch is refused: the classes the use cases raise and the API maps to a status
(``spotd.api.app.refusal_status``: 403 for what the caller may not do, 404 for an unknown
project, 400 for the rest)."""

from __future__ import annotations

from typing import Any

__all__ = ["InvalidRequest", "NotPermitted", "QuotaExceeded", "Refused", "UnknownProject"]


class Refused(Exception):
    """A launch the daemon will not accept; nothing was stored or started."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(Refused):
    """The request itself is wrong: bad YAML, a missing path, no feasible placement."""


class NotPermitted(Refused):
    """The caller may not do this: a project token launching into another project."""


class QuotaExceeded(NotPermitted):
    """The job would take its project over one of its limits (GPUs, jobs, nodes per job)."""


class UnknownProject(Refused):
    """The request names a project that does not exist."""
