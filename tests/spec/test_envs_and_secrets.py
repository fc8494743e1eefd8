"""envs and secrets: scalar conversion, values required at launch, overrides."""

from __future__ import annotations

import pytest

from tests.spec.conftest import issues_of, task_of


@pytest.mark.parametrize(
    ("value", "expected"),
    [("hello", "hello"), ("3", "3"), ("42", "42"), ("0.1", "0.1"), ("true", "True"),
     ("'true'", "true"), ('""', ""), ("2.0e-5", "2e-05")],
)  # fmt: skip
def test_values_become_strings_like_skypilot(value: str, expected: str) -> None:
    assert task_of(f"run: x\nenvs:\n  V: {value}\n").envs == {"V": expected}


def test_null_values_are_filled_by_overrides() -> None:
    t = task_of(
        "run: x\nenvs: {A: null, B: keep}\nsecrets: {TOKEN: null}\n",
        A="from-cli",
        TOKEN="s3cr3t",
        EXTRA="added",
    )
    # a declared secret stays a secret; an undeclared override becomes an env (SkyPilot's --env)
    assert t.envs == {"A": "from-cli", "B": "keep", "EXTRA": "added"}
    assert t.secrets == {"TOKEN": "s3cr3t"}
    assert t.environment() == {"A": "from-cli", "B": "keep", "EXTRA": "added", "TOKEN": "s3cr3t"}


def test_overrides_replace_values_given_in_the_file() -> None:
    assert task_of("run: x\nenvs: {A: file}\n", A="cli").envs == {"A": "cli"}


def test_every_missing_value_is_named() -> None:
    issues = issues_of("run: x\nenvs:\n  A: null\n  B: 1\n  C:\nsecrets:\n  TOKEN: null\n")
    assert [(i.path, i.line) for i in issues] == [
        ("envs.A", 3),
        ("envs.C", 5),
        ("secrets.TOKEN", 7),
    ]
    assert "--env TOKEN=VALUE" in issues[2].message


def test_empty_sections_are_empty_not_errors() -> None:
    t = task_of("run: x\nenvs:\nsecrets:\nfile_mounts:\nresources:\njob_recovery:\n")
    assert (t.envs, t.secrets, t.file_mounts) == ({}, {}, {})


def test_override_with_a_bad_name_is_reported() -> None:
    [issue] = issues_of("run: x\n", **{"BAD-NAME": "1"})
    assert (
        issue.path == "envs.BAD-NAME" and "not a valid environment variable name" in issue.message
    )
