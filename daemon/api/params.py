"""Path and query parameters: each declared once, as the parser that reads it and the OpenAPI
parameter that describes it, so the published document and the checks cannot disagree.

A route's table entry (``spotd.api.routes.Route``) lists its parameters; its handler reads
each with ``PARAM.parse(request)``. Whatever does not parse is a 400 naming the parameter and
what it must be — never a 500 from ``int("²")`` (``"²".isdigit()`` is true) or from an id the
database cannot hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from spotd.api.common import ApiError

__all__ = [
    "MAX_ID",
    "Param",
    "PathId",
    "PathName",
    "QueryChoice",
    "QueryFlag",
    "QueryInt",
    "QueryList",
    "QueryText",
    "parse_id",
]

# Ids are the database's INTEGER: 32-bit signed on PostgreSQL (SQLite's is wider).
MAX_ID = 2**31 - 1

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"", "0", "false", "no"})


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def parse_id(text: str, what: str) -> int:
    """``text`` as an id: ASCII digits only, 1 to ``MAX_ID``; a 400 naming ``what`` otherwise."""
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or not 1 <= int(text) <= MAX_ID:
        raise ApiError(400, f"{what} must be a number from 1 to {MAX_ID}, got {_shown(text)}")
    return int(text)


@dataclass(frozen=True, slots=True)
class PathId:
    """A numeric id in the path (``/v1/jobs/{job_id}``)."""

    name: str
    what: str  # "job id": how the error names it

    def parse(self, request: web.Request) -> int:
        return parse_id(request.match_info[self.name], self.what)

    def openapi(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": "path",
            "required": True,
            "description": f"the {self.what}",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        }


@dataclass(frozen=True, slots=True)
class PathName:
    """A name in the path (``/v1/services/{name}``): it must match ``pattern`` in full."""

    name: str
    what: str  # "service name"
    pattern: str  # a regular expression the whole name matches; it bounds the length too
    hint: str  # what the pattern allows, in words

    def parse(self, request: web.Request) -> str:
        raw = request.match_info[self.name]
        if not re.fullmatch(self.pattern, raw):
            raise ApiError(400, f"{self.what} {_shown(raw)}: {self.hint}")
        return raw

    def openapi(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": "path",
            "required": True,
            "description": f"the {self.what}: {self.hint}",
            "schema": {"type": "string", "pattern": f"^{self.pattern}$"},
        }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


@dataclass(frozen=True, slots=True)
class QueryFlag:
    """``?follow=1``: 1/true/yes or 0/false/no (absent or empty: false)."""

    name: str
    description: str

    def parse(self, request: web.Request) -> bool:
        raw = request.query.get(self.name, "").lower()
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise ApiError(400, f"{self.name} must be 1, true, yes, 0, false or no, got {_shown(raw)}")

    def openapi(self) -> dict[str, Any]:
        return _query(
            self.name,
            self.description,
            {"type": "string", "enum": sorted(_TRUE | (_FALSE - {""}))},
        )


@dataclass(frozen=True, slots=True)
class QueryInt:
    """``?attempt=2``: a whole number from ``ge`` to ``le``; None when absent."""

    name: str
    description: str
    ge: int = 1
    le: int = MAX_ID

    def parse(self, request: web.Request) -> int | None:
        raw = request.query.get(self.name)
        if raw is None:
            return None
        digits = len(str(self.le))
        if (
            not (raw.isascii() and raw.isdigit())
            or len(raw) > digits
            or not (self.ge <= int(raw) <= self.le)
        ):
            raise ApiError(
                400, f"{self.name} must be a number from {self.ge} to {self.le}, got {_shown(raw)}"
            )
        return int(raw)

    def openapi(self) -> dict[str, Any]:
        return _query(
            self.name, self.description, {"type": "integer", "minimum": self.ge, "maximum": self.le}
        )


@dataclass(frozen=True, slots=True)
class QueryChoice:
    """``?by=job``: one of ``choices``; ``default`` when absent."""

    name: str
    description: str
    choices: tuple[str, ...]
    default: str

    def parse(self, request: web.Request) -> str:
        raw = request.query.get(self.name, self.default)
        if raw not in self.choices:
            raise ApiError(
                400, f"{self.name} must be one of {', '.join(self.choices)}, got {_shown(raw)}"
            )
        return raw

    def openapi(self) -> dict[str, Any]:
        return _query(
            self.name,
            self.description,
            {"type": "string", "enum": list(self.choices), "default": self.default},
        )


@dataclass(frozen=True, slots=True)
class QueryList:
    """``?status=RUNNING,PENDING``: a comma-separated list of ``choices`` (any case); None
    when absent."""

    name: str
    description: str
    choices: tuple[str, ...]  # upper case

    def parse(self, request: web.Request) -> tuple[str, ...] | None:
        raw = request.query.get(self.name)
        if raw is None:
            return None
        items = tuple(s.strip().upper() for s in raw.split(","))
        unknown = [s for s in items if s not in self.choices]
        if unknown:
            raise ApiError(
                400,
                f"unknown {self.name}: {_shown(unknown[0])} (known: {', '.join(self.choices)})",
            )
        return items

    def openapi(self) -> dict[str, Any]:
        one = "|".join(re.escape(c) for c in self.choices)
        return _query(
            self.name,
            self.description,
            {"type": "string", "pattern": f"^({one})(,({one}))*$"},
        )


@dataclass(frozen=True, slots=True)
class QueryText:
    """``?since=7d``: text of at most ``max_length`` characters, which the handler reads
    further; None when absent or empty."""

    name: str
    description: str
    max_length: int = 64

    def parse(self, request: web.Request) -> str | None:
        raw = request.query.get(self.name)
        if not raw:
            return None
        if len(raw) > self.max_length:
            raise ApiError(400, f"{self.name} is longer than {self.max_length} characters")
        return raw

    def openapi(self) -> dict[str, Any]:
        return _query(self.name, self.description, {"type": "string", "maxLength": self.max_length})


Param = PathId | PathName | QueryFlag | QueryInt | QueryChoice | QueryList | QueryText
