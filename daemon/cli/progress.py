"""Progress on ``spotctl``'s long operations: shipping files (``jobs launch``, ``serve up``,
``serve update``) and waiting for a service's replicas to be READY (``serve up --wait``,
``serve update --wait``).

Progress goes to stderr, so stdout stays what a script reads. How it shows is decided once
per command (``progress_mode``):

- ``rich``: stderr is a terminal — a spinner while the files are packed, then a transfer bar
  (bytes, speed), then a bar of READY replicas with the others' states; all transient, so
  what stays on screen is the command's summary;
- ``plain``: stderr is a pipe or a file (CI logs) — one line per phase or change, no
  control characters;
- ``off``: ``-o json`` — nothing but the JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

__all__ = [
    "FilesProgress",
    "Mode",
    "ReplicaWait",
    "progress_mode",
    "replica_summary",
    "upload_line",
]

Mode = Literal["rich", "plain", "off"]


def progress_mode(console: Console, output: str) -> Mode:
    """How progress shows on ``console`` (stderr) for a command printing ``output``."""
    if output == "json":
        return "off"
    return "rich" if console.is_terminal else "plain"


def upload_line(report: dict[str, Any]) -> str:
    """What a launch's files cost, from the SDK's ``upload`` report."""
    return (
        f"Files: {report['files']} in {report['packages']} package(s), "
        f"{report['bytes'] / 1e6:.1f} MB; uploaded {report['uploaded_blobs']} of "
        f"{report['blobs']} blobs, {report['uploaded_bytes'] / 1e6:.1f} MB (the daemon had "
        "the rest)"
    )


class FilesProgress:
    """Packing, then uploading, a task's local sources; ``update`` is the SDK's ``Progress``
    callback (``spotd.sdk.uploads``: ``(0, total)`` once the daemon said what it lacks, then
    after each blob)."""

    def __init__(self, console: Console, mode: Mode) -> None:
        self._console = console
        self._mode = mode
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._uploading = False
        self._done = False

    def packing(self, sources: Sequence[str]) -> None:
        """The client starts packing ``sources`` ("workdir", mount targets)."""
        if not sources or self._mode == "off":
            return
        what = ", ".join(sources)
        if self._mode == "plain":
            self._console.print(f"Packing {what}", markup=False, highlight=False)
            return
        spinner = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            console=self._console,
            transient=True,
        )
        self._start(spinner, f"packing {what}", None)

    def _start(self, progress: Progress, description: str, total: int | None) -> None:
        """Show ``progress`` in place of what was shown."""
        if self._progress is not None:
            self._progress.stop()
        self._progress = progress
        progress.start()
        self._task = progress.add_task(description, total=total)

    def update(self, sent: int, total: int) -> None:
        if self._mode == "off" or self._done:
            return
        if not self._uploading:
            self._uploading = True
            if self._mode == "plain":
                self._console.print(
                    f"Uploading {total / 1e6:.1f} MB (what the daemon lacks)",
                    markup=False,
                    highlight=False,
                )
            elif total:  # the spinner makes way for a transfer bar
                bar = Progress(
                    TextColumn("uploading"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    console=self._console,
                    transient=True,
                )
                self._start(bar, "uploading", total)
        if self._progress is not None and self._task is not None and total:
            self._progress.update(self._task, completed=sent)
        if sent >= total:
            self.close()

    def close(self) -> None:
        self._done = True
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def replica_summary(replicas: Sequence[dict[str, Any]], version: int | None = None) -> str:
    """``2 READY, 1 STARTING`` over the live replicas (of ``version``, when given)."""
    counts = Counter(
        r["status"]
        for r in replicas
        if r.get("ended_at") is None and (version is None or r["version"] == version)
    )
    return ", ".join(f"{n} {st}" for st, n in sorted(counts.items())) or "none yet"


class ReplicaWait:
    """Poll a service until ``done`` holds, showing READY replicas of ``want`` (rich: a bar
    with the other replicas' states; plain: a line whenever the states change)."""

    def __init__(self, console: Console, mode: Mode, *, poll: float = 0.5) -> None:
        self._console = console
        self._mode = mode
        self._poll = poll

    async def run(
        self,
        fetch: Callable[[], Awaitable[dict[str, Any]]],
        done: Callable[[dict[str, Any]], bool],
        *,
        version: int | None,
        timeout: float,
    ) -> dict[str, Any]:
        """The service once ``done``; TimeoutError naming its last state otherwise."""
        deadline = time.monotonic() + timeout
        progress = None
        if self._mode == "rich":
            progress = Progress(
                SpinnerColumn(),
                TextColumn("replicas READY"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            progress.start()
        task: TaskID | None = None
        last = ""
        try:
            while True:
                svc = await fetch()
                mine = [r for r in svc["replicas"] if version is None or r["version"] == version]
                ready = sum(1 for r in mine if r["status"] == "READY" and r["ended_at"] is None)
                want = max(int(svc["target"]), 1)
                line = replica_summary(svc["replicas"], version)
                if progress is not None:
                    if task is None:
                        task = progress.add_task(line, total=want)
                    progress.update(task, completed=min(ready, want), total=want, description=line)
                elif self._mode == "plain" and line != last:
                    self._console.print(
                        f"{svc['name']}: {ready}/{want} READY ({line})",
                        markup=False,
                        highlight=False,
                    )
                last = line
                if done(svc):
                    return svc
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"service {svc['name']}: not READY after {timeout:.0f}s ({line})"
                    )
                await asyncio.sleep(self._poll)
        finally:
            if progress is not None:
                progress.stop()
