"""Reading and checking task files: the entry points ``spotctl``, the API and the SDK call.

``load_tasks`` / ``load_task`` give ``Task``s or raise one ``SpecError`` naming every problem
by key path and line; ``check_file`` gives the problems as a list and never raises (``spotctl
check``). The reading itself is ``spotd.spec.load``'s; this module binds it to ``Task``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path as FsPath

from spotd.spec.errors import SpecError, SpecIssue
from spotd.spec.load import load_model, load_models
from spotd.spec.task import Task


def load_tasks(
    source: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
) -> list[Task]:
    """Every task in a YAML file (one per ``---`` document); raises ``SpecError`` listing
    every problem in every document.

    ``source`` names the file in messages; it is read only when ``text`` is None.
    ``env_overrides`` (``--env K=V``) fill null envs/secrets and add envs. A first document
    holding only ``name`` before further documents is a SkyPilot pipeline header and is
    skipped; empty documents are skipped.
    """
    return load_models(Task, source, env_overrides=env_overrides, text=text)


def load_task(
    source: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
) -> Task:
    """The one task of a file; a file with several documents is an error."""
    return load_model(Task, source, env_overrides=env_overrides, text=text)


def check_file(
    path: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
) -> list[SpecIssue]:
    """Every problem in a task file; an empty list means it is valid. Never raises for bad
    input: a missing file or malformed YAML is an issue like any other."""
    try:
        load_tasks(path, env_overrides=env_overrides, text=text)
    except SpecError as exc:
        return list(exc.issues)
    return []
