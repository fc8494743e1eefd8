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
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from spotd.spec.documents import DEFAULT_LIMITS, YamlLimits
from spotd.spec.errors import SpecError, SpecIssue
from spotd.spec.fields import CHECKING
from spotd.spec.issues import format_path
from spotd.spec.load import load_documents, load_model, load_models
from spotd.spec.task import Task
from spotd.spec.values import Path

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


@dataclass
class Review:
    """What ``spotctl check`` says of a file: its tasks (read as check reads them), its
    errors (the file cannot be used), and its notes and warnings (it is valid, but something
    is due at launch, or cannot be honoured or placed yet). Notes and warnings are
    ``SpecIssue``s whose message starts with ``note:`` or ``warning:``."""

    tasks: list[Task] = field(default_factory=list)
    errors: list[SpecIssue] = field(default_factory=list)
    notes: list[SpecIssue] = field(default_factory=list)


def _due_at_launch(data: Any) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for section in ("envs", "secrets"):
            values = data.get(section)
            if isinstance(values, dict):
                found += [(section, str(k)) for k, v in values.items() if v is None]
    return found


def review_file(
    path: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
    limits: YamlLimits = DEFAULT_LIMITS,
) -> Review:
    """``spotctl check``'s reading of a file; never raises for bad input.

    It validates without placing: an env or secret with a null value is valid (a note: it is
    due at launch), and what launch refuses only because spotd lacks it yet (a cloud spotd
    has no provider for, a bucket store it lacks, a pool, a docker image, a config override) is a
    warning, not an error. Everything else ``load_tasks`` refuses is an error here too.
    """
    file = str(path)
    try:
        loaded = load_documents(
            Task,
            path,
            env_overrides=env_overrides,
            text=text,
            limits=limits,
            context={CHECKING: True},
        )
    except SpecError as exc:
        return Review(errors=list(exc.issues))
    review = Review(tasks=[t for _, t in loaded])
    overrides = env_overrides or {}
    for doc, task in loaded:
        for section, name in _due_at_launch(doc.data):
            if name in overrides:
                continue
            due: Path = (section, name)
            review.notes.append(
                SpecIssue(
                    format_path(due),
                    doc.line_of(due),
                    f"note: no value here: due at launch (--env {name}=VALUE)",
                    file,
                )
            )
        for at, message in task.advisories():
            review.notes.append(
                SpecIssue(format_path(at), doc.line_of(at), f"warning: {message}", file)
            )
    return review
