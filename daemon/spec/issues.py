"""Pydantic's validation errors turned into ``SpecIssue``s a person can act on.

A pydantic error has a ``loc`` in pydantic's terms (union member tags, ``[key]`` markers) and
a message in pydantic's words ("Input should be a valid integer"). The functions here map the
``loc`` back onto the user's data (``resources.any_of[1].cpus``), look its line up in the
``Document``, and phrase the message for someone editing a YAML file: "expected an integer,
got 'four'", "unknown key; did you mean `accelerators`?", "not supported by spotd".

All of it is pure: data in, strings out. The root model is a parameter (``unknown_key`` walks
it to learn which keys a section accepts), so this module imports no model.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ValidationError

from spotd.spec.documents import Document
from spotd.spec.errors import SpecIssue
from spotd.spec.values import Path

_TYPE_PHRASES = (
    (("int_type", "int_parsing", "int_from_float"), "expected an integer"),
    (("float_type", "float_parsing", "finite_number"), "expected a number"),
    (("string_type",), "expected a string"),
    (("bool_type", "bool_parsing"), "expected true or false"),
    (("list_type", "tuple_type"), "expected a list"),
    (("dict_type", "model_type", "model_attributes_type", "mapping_type"), "expected a mapping"),
)
_BOUND_OPERATORS = types.MappingProxyType(
    {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
)
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def describe(value: Any) -> str:
    """A value as a message shows it: short, and in YAML's words (``null``, ``true``)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_path(path: Path) -> str:
    """``("resources", "any_of", 1, "cpus")`` -> ``resources.any_of[1].cpus``."""
    text = ""
    for seg in path:
        if isinstance(seg, int):
            text += f"[{seg}]"
        elif _PLAIN_KEY.fullmatch(seg):
            text += f".{seg}" if text else seg
        else:
            text += f'["{seg}"]'
    return text


def _has_child(node: Any, seg: str | int) -> bool:
    if isinstance(node, dict):
        return seg in node
    return isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node)


def clean_loc(loc: tuple[str | int, ...], data: Any) -> Path:
    """Drop what pydantic adds to a loc that is not a key of the data (union member tags,
    ``[key]`` on an error about a mapping key)."""
    out: list[str | int] = []
    node = data
    for i, seg in enumerate(loc):
        if seg == "[key]":
            continue
        if _has_child(node, seg):
            out.append(seg)
            node = node[seg]
        elif i == len(loc) - 1 and isinstance(node, dict):
            out.append(seg)  # a key that is missing from the data
            node = None
    return tuple(out)


def message(err: Mapping[str, Any], path: Path) -> str:
    """The user's phrase for one pydantic error at ``path`` (a cleaned loc).

    Under ``secrets`` the offending value is never repeated: it may be the secret.
    """
    kind = err["type"]
    if kind == "spotd_missing_env" and path:
        name = path[-1]
        return (
            f"`{name}` has no value: supply it at launch with --env {name}=VALUE "
            f'(for an empty value write "")'
        )
    if kind in ("spotd", "spotd_missing_env"):
        return str(err["msg"])
    if kind == "missing":
        return "required key is missing"
    ctx = err.get("ctx") or {}
    if kind in _BOUND_OPERATORS:
        bound = next(iter(ctx.values()), "?")
        return f"must be {_BOUND_OPERATORS[kind]} {bound}, got {describe(err.get('input'))}"
    phrase = next((p for kinds, p in _TYPE_PHRASES if kind in kinds), None)
    secret = bool(path) and path[0] == "secrets"
    got = "" if secret else f", got {describe(err.get('input'))}"
    if phrase is not None:
        return f"{phrase}{got}"
    text = str(err["msg"]).removeprefix("Value error, ")
    return text[:1].lower() + text[1:]


# -- which keys a section accepts ----------------------------------------------------------


def _field_type(cls: type[BaseModel], key: str | int) -> Any:
    for name, info in cls.model_fields.items():
        aliases: list[str] = [name]
        if isinstance(info.validation_alias, AliasChoices):
            aliases += [c for c in info.validation_alias.choices if isinstance(c, str)]
        elif isinstance(info.validation_alias, str):
            aliases.append(info.validation_alias)
        if key in aliases:
            return info.annotation
    return None


def _unwrap_models(tp: Any) -> list[Any]:
    """The types an annotation may hold, with Optional/Union/Annotated taken apart."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap_models(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(tp) for t in _unwrap_models(arg)]
    return [tp]


def model_at(root: type[BaseModel], loc: Path) -> type[BaseModel] | None:
    """The model class that validates the value at ``loc`` (a cleaned pydantic loc)."""
    current: list[Any] = [root]
    for seg in loc:
        nxt: list[Any] = []
        for tp in current:
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                field_tp = _field_type(tp, seg)
                if field_tp is not None:
                    nxt += _unwrap_models(field_tp)
            elif typing.get_origin(tp) in (list, tuple) and isinstance(seg, int):
                nxt += _unwrap_models(typing.get_args(tp)[0])
            elif typing.get_origin(tp) is dict:
                nxt += _unwrap_models(typing.get_args(tp)[1])
        current = nxt
    models = [t for t in current if isinstance(t, type) and issubclass(t, BaseModel)]
    return models[0] if models else None


def _allowed_keys(cls: type[BaseModel]) -> list[str]:
    keys: list[str] = []
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            keys.append(alias.choices[0])
        else:
            keys.append(name)
    return keys


def unknown_key(root: type[BaseModel], loc: Path) -> str:
    """The message for a key the section at ``loc[:-1]`` does not accept: the section's own
    ``special_keys`` message, else the closest accepted key, else the list of them."""
    key = str(loc[-1])
    model = model_at(root, loc[:-1])
    if model is None:
        return "unknown key"
    special = getattr(model, "special_keys", {})
    if key in special:
        return str(special[key])
    allowed = _allowed_keys(model)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean `{close[0]}`?"
    return f"unknown key (expected one of: {', '.join(allowed)})"


def issues_from(
    exc: ValidationError,
    *,
    root: type[BaseModel],
    data: Any,
    doc: Document,
    file: str,
    hoisted: bool,
) -> list[SpecIssue]:
    """One issue per error of validating ``data`` (document ``doc``) as ``root``.

    ``hoisted``: the data's ``job_recovery`` was written under ``resources`` and moved up
    before validation, so its issues are reported where the user wrote it.
    """
    issues: list[SpecIssue] = []
    for err in exc.errors():
        loc = clean_loc(tuple(err["loc"]), data)
        at = (err.get("ctx") or {}).get("at", ())
        if err["type"] == "extra_forbidden":
            text = unknown_key(root, loc)
        else:
            text = message(err, loc)
            loc = (*loc, *at)
        if hoisted and loc[:1] == ("job_recovery",):
            loc = ("resources", *loc)
        issues.append(SpecIssue(format_path(loc), doc.line_of(loc), text, file))
    return issues
