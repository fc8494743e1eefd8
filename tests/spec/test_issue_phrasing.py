"""How a pydantic error becomes the issue a user reads: the key path as written in YAML, the
loc cleaned of pydantic's own segments, and a phrase instead of pydantic's wording."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from spotd.spec.issues import clean_loc, describe, format_path, message, model_at, unknown_key
from spotd.spec.resources import ResourceFields, Resources
from spotd.spec.service import ReplicaPolicy
from spotd.spec.task import FileMount, Task
from spotd.spec.values import Path


@pytest.mark.parametrize(
    ("path", "text"),
    [
        pytest.param((), "", id="whole-file"),
        pytest.param(("name",), "name", id="top-level-key"),
        pytest.param(("resources", "any_of", 1, "cpus"), "resources.any_of[1].cpus", id="index"),
        pytest.param(("file_mounts", "/data", "mode"), 'file_mounts["/data"].mode', id="quoted"),
        pytest.param(("envs", "MY-VAR"), "envs.MY-VAR", id="dash-is-plain"),
        pytest.param((0,), "[0]", id="index-first"),
    ],
)
def test_format_path(path: Path, text: str) -> None:
    assert format_path(path) == text


@pytest.mark.parametrize(
    ("loc", "data", "cleaned"),
    [
        pytest.param(
            ("resources", "any_of", 1, "cpus"),
            {"resources": {"any_of": [{}, {"cpus": "x"}]}},
            ("resources", "any_of", 1, "cpus"),
            id="keys-and-index-kept",
        ),
        pytest.param(
            ("resources", "image_id", "str"),
            {"resources": {"image_id": 5}},
            ("resources", "image_id"),
            id="union-member-tag-dropped",
        ),
        pytest.param(
            ("envs", "1BAD", "[key]"),
            {"envs": {"1BAD": "x"}},
            ("envs", "1BAD"),
            id="key-marker-dropped",
        ),
        pytest.param(
            ("service", "readiness_probe"),
            {"service": {}},
            ("service", "readiness_probe"),
            id="missing-last-key-kept",
        ),
        pytest.param(
            ("resources", "any_of", 5, "cpus"),
            {"resources": {"any_of": [{}]}},
            ("resources", "any_of"),
            id="index-past-the-list-dropped",
        ),
    ],
)
def test_clean_loc(loc: tuple[str | int, ...], data: Any, cleaned: Path) -> None:
    assert clean_loc(loc, data) == cleaned


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(None, "nothing (null)", id="null"),
        pytest.param(True, "true", id="true"),
        pytest.param(False, "false", id="false"),
        pytest.param({"a": 1}, "a mapping", id="mapping"),
        pytest.param([1], "a list", id="list"),
        pytest.param("four", "'four'", id="string"),
        pytest.param(5, "5", id="number"),
        pytest.param("a" * 50, "'" + "a" * 36 + "...", id="long-is-cut"),
    ],
)
def test_describe(value: Any, text: str) -> None:
    assert describe(value) == text


@pytest.mark.parametrize(
    ("err", "path", "text"),
    [
        pytest.param(
            {"type": "spotd_missing_env", "msg": "no value"},
            ("envs", "HF_TOKEN"),
            "`HF_TOKEN` has no value: supply it at launch with --env HF_TOKEN=VALUE "
            '(for an empty value write "")',
            id="missing-env-named",
        ),
        pytest.param({"type": "spotd", "msg": "bad syntax"}, ("x",), "bad syntax", id="spotd"),
        pytest.param({"type": "missing"}, ("run",), "required key is missing", id="missing"),
        pytest.param(
            {"type": "greater_than_equal", "ctx": {"ge": 1}, "input": 0},
            ("num_nodes",),
            "must be >= 1, got 0",
            id="bound",
        ),
        pytest.param(
            {"type": "greater_than", "ctx": {"gt": 0}, "input": -1.5},
            ("x",),
            "must be > 0, got -1.5",
            id="strict-bound",
        ),
        pytest.param(
            {"type": "int_parsing", "input": "four"},
            ("num_nodes",),
            "expected an integer, got 'four'",
            id="type-phrase",
        ),
        pytest.param(
            {"type": "string_type", "input": ["hf_secret"]},
            ("secrets", "HF_TOKEN"),
            "expected a string",
            id="secret-value-never-shown",
        ),
        pytest.param(
            {"type": "literal_error", "msg": "Value error, Input should be 'COPY'"},
            ("x",),
            "input should be 'COPY'",
            id="pydantic-wording-lowered",
        ),
    ],
)
def test_message(err: dict[str, Any], path: Path, text: str) -> None:
    assert message(err, path) == text


@pytest.mark.parametrize(
    ("loc", "model"),
    [
        pytest.param((), Task, id="root"),
        pytest.param(("resources",), Resources, id="section"),
        pytest.param(("resources", "any_of", 0), ResourceFields, id="list-entry"),
        pytest.param(("file_mounts", "/data"), FileMount, id="mapping-value"),
        pytest.param(("service", "replica_policy"), ReplicaPolicy, id="optional-section"),
        pytest.param(("name",), None, id="scalar"),
    ],
)
def test_model_at(loc: Path, model: type[BaseModel] | None) -> None:
    assert model_at(Task, loc) is model


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        pytest.param(
            ("resources", "acclerators"), "unknown key; did you mean `accelerators`?", id="typo"
        ),
        pytest.param(
            ("job_recovery", "give_up_afte"),
            "unknown key; did you mean `give_up_after`?",
            id="typo-of-yaml-alias",
        ),
        pytest.param(("volumes",), "not supported by spotd", id="skypilot-key"),
        pytest.param(("service", "pool"), "not supported by spotd", id="skyserve-key"),
        pytest.param(
            ("resources", "any_of", 0, "ordered"),
            "any_of/ordered cannot be nested inside any_of/ordered",
            id="nested-choice",
        ),
        pytest.param(("envs", "X", "y"), "unknown key", id="under-a-scalar"),
    ],
)
def test_unknown_key(loc: Path, text: str) -> None:
    assert unknown_key(Task, loc) == text


def test_unknown_key_without_close_match_lists_the_keys() -> None:
    assert unknown_key(Task, ("frobnicate",)).startswith("unknown key (expected one of: name,")
