"""Task files read into models, with every problem of every document reported at once.

The steps, for each ``---`` document of the text:

1. ``spotd.spec.documents`` composes the YAML within ``YamlLimits`` (size, documents,
   aliases, depth, expanded values), learning the line of every key path and the keys
   written twice (an issue each);
2. the plain data is prepared: ``resources.job_recovery`` hoisted to the top level,
   ``--env K=V`` overrides applied (a declared secret is set, else an env);
3. the model validates it, and ``spotd.spec.issues`` turns each pydantic error into a
   ``SpecIssue`` with the user's key path and line.

Any issue in any document raises one ``SpecError`` listing them all. The model class is a
parameter, not an import: ``Task.from_yaml`` reads with this module, so it must not import
``spotd.spec.task``; ``spotd.spec.check`` binds it to ``Task`` for everyone else.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from spotd.spec.documents import DEFAULT_LIMITS, Document, YamlLimits, compose_documents
from spotd.spec.errors import SpecError, SpecIssue
from spotd.spec.issues import describe, format_path, issues_from
from spotd.spec.job_recovery import hoist_job_recovery

M = TypeVar("M", bound=BaseModel)


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, str]) -> dict[str, Any]:
    """``--env K=V``: sets a declared secret, else sets (or adds) an env, as SkyPilot does."""
    if not overrides:
        return data
    out = dict(data)
    secrets = out.get("secrets")
    envs = out.get("envs")
    secrets = dict(secrets) if isinstance(secrets, dict) else secrets
    envs = dict(envs) if isinstance(envs, dict) else ({} if envs is None else envs)
    for key, value in overrides.items():
        if isinstance(secrets, dict) and key in secrets:
            secrets[key] = value
        elif isinstance(envs, dict):
            envs[key] = value
    out["envs"] = envs
    if secrets is not None:
        out["secrets"] = secrets
    return out


def _model_from(
    model: type[M],
    doc: Document,
    *,
    file: str,
    overrides: Mapping[str, str],
    context: Mapping[str, Any] | None = None,
) -> M | list[SpecIssue]:
    issues = [
        SpecIssue(
            format_path(p),
            doc.line_of(p),
            "key given twice (YAML would silently keep the last one)",
            file,
        )
        for p in doc.duplicates
    ]
    if not isinstance(doc.data, dict):
        issues.append(
            SpecIssue(
                "",
                doc.line_of(()),
                f"a task is a mapping of keys (name, resources, run, ...), got "
                f"{describe(doc.data)}",
                file,
            )
        )
        return issues
    data, hoisted = hoist_job_recovery(doc.data)
    data = apply_overrides(data, overrides)
    try:
        result = model.model_validate(data, context=context)
    except ValidationError as exc:
        issues += issues_from(exc, root=model, data=data, doc=doc, file=file, hoisted=hoisted)
    return issues or result


def _read(path: FsPath, *, file: str, limits: YamlLimits) -> str:
    # one character past the limit is enough for compose_documents to refuse the size, and a
    # huge file is never read whole; text mode keeps read_text's newline translation
    try:
        with path.open(encoding="utf-8") as f:
            return f.read(limits.max_bytes + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([SpecIssue("", None, f"cannot read the file: {exc}", file)]) from exc


def load_models(
    model: type[M],
    source: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
    limits: YamlLimits = DEFAULT_LIMITS,
) -> list[M]:
    """Every document of a task file as a ``model``; see ``spotd.spec.check.load_tasks``."""
    loaded = load_documents(model, source, env_overrides=env_overrides, text=text, limits=limits)
    return [m for _, m in loaded]


def load_documents(
    model: type[M],
    source: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
    limits: YamlLimits = DEFAULT_LIMITS,
    context: Mapping[str, Any] | None = None,
) -> list[tuple[Document, M]]:
    """``load_models``, each model with its document (its data and lines); ``context`` is
    the validation context (``spotd.spec.fields.CHECKING``)."""
    file = str(source)
    if text is None:
        text = _read(FsPath(source), file=file, limits=limits)
    docs = [d for d in compose_documents(text, file=file, limits=limits) if d.data is not None]
    if len(docs) > 1 and isinstance(docs[0].data, dict) and set(docs[0].data) <= {"name"}:
        docs = docs[1:]
    if not docs:
        raise SpecError([SpecIssue("", 1, "the file holds no task", file)])
    results: list[tuple[Document, M]] = []
    issues: list[SpecIssue] = []
    for doc in docs:
        result = _model_from(model, doc, file=file, overrides=env_overrides or {}, context=context)
        if isinstance(result, list):
            issues += result
        else:
            results.append((doc, result))
    if issues:
        raise SpecError(issues)
    return results


def load_model(
    model: type[M],
    source: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
    limits: YamlLimits = DEFAULT_LIMITS,
) -> M:
    """The one document of a task file as a ``model``; several documents are an error."""
    results = load_models(model, source, env_overrides=env_overrides, text=text, limits=limits)
    if len(results) != 1:
        raise SpecError(
            [SpecIssue("", 1, f"expected one task, the file has {len(results)}", str(source))]
        )
    return results[0]
