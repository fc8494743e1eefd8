"""Reading and checking task files: the entry points ``spotctl``, the API and the SDK call.

``load_tasks`` / ``load_task`` give ``Task``s or raise one ``SpecError`` naming every problem
by key path and line; ``check_file`` gives the problems as a list and never raises (``spotctl
check``). The reading itself is ``spotd.spec.load``'s; this module binds it to ``Task``.

Every entry point reads within ``YamlLimits`` (``DEFAULT_LIMITS`` unless told otherwise), so
no file makes the reading unbounded. ``load_tasks_bounded`` is the daemon's: it reads in a
worker thread, so the event loop keeps answering while a large file is read, and gives up
waiting after ``timeout_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path as FsPath

from spotd.spec.documents import DEFAULT_LIMITS, YamlLimits
from spotd.spec.errors import SpecError, SpecIssue
from spotd.spec.load import load_model, load_models
from spotd.spec.task import Task

LOAD_TIMEOUT_S = 10.0  # what an API request waits for its task file to be read


def load_tasks(
    source: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
    limits: YamlLimits = DEFAULT_LIMITS,
) -> list[Task]:
    """Every task in a YAML file (one per ``---`` document); raises ``SpecError`` listing
    every problem in every document.

    ``source`` names the file in messages; it is read only when ``text`` is None.
    ``env_overrides`` (``--env K=V``) fill null envs/secrets and add envs. A first document
    holding only ``name`` before further documents is a SkyPilot pipeline header and is
    skipped; empty documents are skipped. A file past ``limits`` is a ``SpecError`` too.
    """
    return load_models(Task, source, env_overrides=env_overrides, text=text, limits=limits)


def load_task(
    source: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
    limits: YamlLimits = DEFAULT_LIMITS,
) -> Task:
    """The one task of a file; a file with several documents is an error."""
    return load_model(Task, source, env_overrides=env_overrides, text=text, limits=limits)


async def load_tasks_bounded(
    source: str | FsPath,
    *,
    text: str | None = None,
    env_overrides: Mapping[str, str] | None = None,
    limits: YamlLimits = DEFAULT_LIMITS,
    timeout_s: float = LOAD_TIMEOUT_S,
) -> list[Task]:
    """``load_tasks`` off the event loop, answering within ``timeout_s``.

    A thread cannot be stopped: on a timeout the reading goes on in its worker until it ends,
    and only the caller stops waiting. ``limits`` are what make that reading finite; the
    timeout is what lets a request be answered promptly (a ``SpecError``, hence a 400)
    whatever the reading costs on a busy machine.
    """
    reading = asyncio.to_thread(
        load_tasks, source, env_overrides=env_overrides, text=text, limits=limits
    )
    try:
        return await asyncio.wait_for(reading, timeout_s)
    except TimeoutError:
        message = f"reading the task file took longer than {timeout_s:g} s; it was given up"
        raise SpecError([SpecIssue("", None, message, str(source))]) from None


def check_file(
    path: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
    limits: YamlLimits = DEFAULT_LIMITS,
) -> list[SpecIssue]:
    """Every problem in a task file; an empty list means it is valid. Never raises for bad
    input: a missing file, malformed YAML or a file past ``limits`` is an issue like any
    other."""
    try:
        load_tasks(path, env_overrides=env_overrides, text=text, limits=limits)
    except SpecError as exc:
        return list(exc.issues)
    return []
