"""What the controllers keep in memory per active job and per live service — and nothing
past its end.

The store holds everything a job or a service needs; memory holds only what saves work while
it is live: parsed tasks (a spec is parsed once, not once per step), when a job's last attempt
was lost (for the recovery-time metric), when a replica's instance was launched (so a listing
older than the launch does not count it gone). A job's worker calls ``JobMemory.forget`` when
the job reaches a terminal status; a replica's entry goes when it ends, a service's when it is
DOWN, and a version's parsed task once no live replica runs it. So a daemon that ran a million
jobs holds entries only for the live ones.
"""

from __future__ import annotations

import json

from spotd.spec import Task
from spotd.store import JobRow, ServiceRow


class JobMemory:
    def __init__(self) -> None:
        self._tasks: dict[int, Task] = {}
        self._lost_at: dict[int, float] = {}  # when each recovering job's attempt was lost

    def task(self, job: JobRow) -> Task:
        """The job's task, parsed at the first call."""
        task = self._tasks.get(job.id)
        if task is None:
            task = Task.model_validate(json.loads(job.spec_json))
            self._tasks[job.id] = task
        return task

    def known(self, job_id: int) -> Task | None:
        """The job's task if a worker parsed it already; None otherwise, and nothing kept
        (a reader of other jobs, such as a metrics scrape, must not fill this memory)."""
        return self._tasks.get(job_id)

    def lost(self, job_id: int, at: float) -> None:
        self._lost_at[job_id] = at

    def recovered(self, job_id: int) -> float | None:
        """When the attempt the job recovered from was lost (None: not known)."""
        return self._lost_at.pop(job_id, None)

    def forget(self, job_id: int) -> None:
        self._tasks.pop(job_id, None)
        self._lost_at.pop(job_id, None)

    def sizes(self) -> dict[str, int]:
        return {"tasks": len(self._tasks), "lost_at": len(self._lost_at)}


class ServiceMemory:
    def __init__(self) -> None:
        self._tasks: dict[tuple[int, int], Task] = {}  # (service id, version) -> its task
        self._launched_at: dict[str, float] = {}  # replica key -> when its instance launched

    def task(self, svc: ServiceRow, version: int | None = None) -> Task:
        """The task of ``version`` (the newest by default); KeyError if an older version is
        not loaded (``keep`` it first)."""
        v = svc.version if version is None else version
        task = self._tasks.get((svc.id, v))
        if task is None and v == svc.version:
            task = self.keep(svc.id, v, Task.model_validate(json.loads(svc.spec_json)))
        if task is None:
            raise KeyError(f"version {v} of service {svc.id} is not loaded")
        return task

    def keep(self, service_id: int, version: int, task: Task) -> Task:
        self._tasks[(service_id, version)] = task
        return task

    def keep_versions(self, service_id: int, versions: set[int]) -> None:
        """Drop the parsed tasks of the service's other versions (no live replica runs them)."""
        for key in [k for k in self._tasks if k[0] == service_id and k[1] not in versions]:
            del self._tasks[key]

    def launched(self, key: str, at: float) -> None:
        self._launched_at[key] = at

    def launched_at(self, key: str) -> float | None:
        return self._launched_at.get(key)

    def replica_gone(self, key: str) -> None:
        self._launched_at.pop(key, None)

    def forget(self, service_id: int) -> None:
        """The service is DOWN: its tasks and its replicas' entries go."""
        self.keep_versions(service_id, set())
        prefix = f"s{service_id}-r"
        for key in [k for k in self._launched_at if k.startswith(prefix)]:
            del self._launched_at[key]

    def sizes(self) -> dict[str, int]:
        return {"tasks": len(self._tasks), "launched_at": len(self._launched_at)}
