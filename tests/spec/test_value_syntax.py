"""The scalar syntaxes: durations, accelerators, cpus, memory, infra, ports."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.spec import parse_duration
from spotd.spec.values import (
    Accelerator,
    AcceleratorChoice,
    Amount,
    Location,
    Memory,
    SyntaxProblem,
    format_duration,
    parse_accelerators,
    parse_cpus,
    parse_infra,
    parse_memory,
    parse_ports,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90), ("15m", 900), ("6h", 21600), ("2d", 172800), ("1w", 604800),
        ("1h30m", 5400), ("1.5h", 5400), (" 6H ", 21600), ("3600", 3600), (3600, 3600),
        (0.5, 0.5), ("0s", 0),
    ],
)  # fmt: skip
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "h", "6hh", "-5", "5 minutes", "1h 30", True, None, "inf"])
def test_bad_durations_raise_value_error(bad: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (90, "1m30s"), (5400, "1h30m"), (86400, "1d"), (0.5, "0.5s")]
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("A100:8", AcceleratorChoice((Accelerator("A100", 8),))),
        ("A100", AcceleratorChoice((Accelerator("A100", 1),))),
        ("a100:8", AcceleratorChoice((Accelerator("A100", 8),))),  # canonical spelling
        ("T4:0.5", AcceleratorChoice((Accelerator("T4", 0.5),))),
        ("tpu-v5e-8", AcceleratorChoice((Accelerator("tpu-v5e-8", 1),))),  # unknown: kept
        (
            {"A100": 8, "H100": 8},
            AcceleratorChoice((Accelerator("A100", 8), Accelerator("H100", 8)), ordered=False),
        ),
        (
            # what YAML makes of `{A100:8, H100:8}` (no space after the colon)
            {"A100:8": None, "H100:8": None},
            AcceleratorChoice((Accelerator("A100", 8), Accelerator("H100", 8)), ordered=False),
        ),
        (
            ["H100:8", "A100:8"],
            AcceleratorChoice((Accelerator("H100", 8), Accelerator("A100", 8)), ordered=True),
        ),
        (None, None),
    ],
)
def test_accelerator_forms(value: Any, expected: AcceleratorChoice | None) -> None:
    assert parse_accelerators(value) == expected


@pytest.mark.parametrize(
    ("value", "at", "phrase"),
    [
        ("A100:abc", (), "must be a number"),
        (":8", (), "name is missing"),
        ("A100:0", (), "> 0"),
        ("A100:-1", (), "> 0"),
        ("A100:1.5", (), "below 1"),
        ("A 100:8", (), "bad accelerator name"),
        ({"A100:8": 8}, ("A100:8",), "give the count once"),
        ({"A100": True}, ("A100",), "must be a number"),
        (["A100:8", 8], (1,), "expected `NAME:COUNT`"),
        (["A100:8", "a100:4"], (1,), "listed twice"),
        ([], (), "empty list"),
        ({}, (), "empty mapping"),
        (8, (), "NAME or NAME:COUNT"),
    ],
)
def test_bad_accelerators(value: Any, at: tuple[Any, ...], phrase: str) -> None:
    with pytest.raises(SyntaxProblem, match=phrase) as info:
        parse_accelerators(value)
    assert info.value.at == at


@pytest.mark.parametrize(
    "choice",
    [
        AcceleratorChoice((Accelerator("A100", 8),)),
        AcceleratorChoice((Accelerator("T4", 0.5),)),
        AcceleratorChoice((Accelerator("A100", 8), Accelerator("H100", 8))),
        AcceleratorChoice((Accelerator("A100", 8), Accelerator("H100", 8)), ordered=True),
    ],
)
def test_accelerators_print_back_in_yaml_syntax(choice: AcceleratorChoice) -> None:
    assert parse_accelerators(choice.yaml_value()) == choice


@pytest.mark.parametrize(
    ("value", "expected", "text"),
    [(4, Amount(4), "4"), ("4+", Amount(4, True), "4+"), ("0.5", Amount(0.5), "0.5"),
     (2.5, Amount(2.5), "2.5"), (" 8+ ", Amount(8, True), "8+")],
)  # fmt: skip
def test_cpus(value: Any, expected: Amount, text: str) -> None:
    assert parse_cpus(value) == expected and str(expected) == text


@pytest.mark.parametrize("bad", ["four", "4++", "+4", 0, -1, "0+", True, "4x"])
def test_bad_cpus(bad: Any) -> None:
    with pytest.raises(SyntaxProblem, match="cpus is a number of vCPUs"):
        parse_cpus(bad)


@pytest.mark.parametrize(
    ("value", "expected", "text"),
    [
        (32, Memory(gib=32), "32"),
        ("32+", Memory(gib=32, plus=True), "32+"),
        ("4x", Memory(per_cpu=4, plus=True), "4x"),
        ("0.5", Memory(gib=0.5), "0.5"),
    ],
)
def test_memory(value: Any, expected: Memory, text: str) -> None:
    assert parse_memory(value) == expected and str(expected) == text


@pytest.mark.parametrize("bad", ["32GB+", "32GB", "32 GiB", "x", "4xx", 0, "-8", "32++"])
def test_bad_memory(bad: Any) -> None:
    with pytest.raises(SyntaxProblem, match="memory is GiB"):
        parse_memory(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("aws", Location("aws")),
        ("AWS/us-east-1", Location("aws", "us-east-1")),
        ("aws/us-east-1/us-east-1a", Location("aws", "us-east-1", "us-east-1a")),
        ("aws/*/us-east-1a", Location("aws", None, "us-east-1a")),
        ("*/us-east-1", Location(None, "us-east-1")),
        ("k8s/my-context", Location("k8s", "my-context")),
        ("kubernetes", Location("k8s")),
        (
            "k8s/arn:aws:eks:us-east-1:123:cluster/gpu",
            Location("k8s", "arn:aws:eks:us-east-1:123:cluster/gpu"),
        ),
        ("slurm/gpu-partition", Location("slurm", "gpu-partition")),
        ("local/local-east", Location("local", "local-east")),
    ],
)
def test_infra(text: str, expected: Location) -> None:
    assert parse_infra(text) == expected


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("gcp/us-central1", "not supported by spotd"),
        ("mars", "unknown cloud"),
        ("aws//x", "CLOUD/REGION/ZONE"),
        ("aws/a/b/c", "at most three parts"),
    ],
)
def test_bad_infra(text: str, phrase: str) -> None:
    with pytest.raises(SyntaxProblem, match=phrase):
        parse_infra(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(8080, ("8080",)), ("8080", ("8080",)), ("10000-10010", ("10000-10010",)),
     ([80, "443", "9000-9001"], ("80", "443", "9000-9001")), (None, ())],
)  # fmt: skip
def test_ports(value: Any, expected: tuple[str, ...]) -> None:
    assert parse_ports(value) == expected


@pytest.mark.parametrize("bad", [0, 70000, "http", "9001-9000", [80, "x"], 80.5, True])
def test_bad_ports(bad: Any) -> None:
    with pytest.raises(SyntaxProblem):
        parse_ports(bad)
