"""libyaml's parser reads what PyYAML's reads, the same way.

Task files are parsed with libyaml's C parser under PyYAML's own composer, constructor and
resolver (``spotd.spec.documents``: a quarter of the time); a file it refuses is read again in
pure Python, whose messages are the documented ones. Here: on every example, every file of the
SkyPilot corpus and the awkward corners (anchors, merge keys, duplicates, several documents,
block scalars, flow style), the two give the same documents — data, the line of every path,
the duplicate keys — and on malformed files the user sees PyYAML's message and line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spotd.spec import documents as d
from spotd.spec.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(
    [
        *ROOT.glob("examples/**/*.yaml"),
        *ROOT.glob("tests/spec/skypilot_corpus/*.yaml"),
        *ROOT.glob("tests/spec/data/*.yaml"),
    ]
)
CORNERS = [
    "base: &b {cpus: 2, memory: 8}\nresources:\n  <<: *b\n  cpus: 4\n",
    "name: a\nname: b\nrun: x\n",  # a duplicate key
    "---\nname: one\n---\nname: two\nrun: |\n  echo 1\n  echo 2\n",
    "envs: {A: 1, B: 'two', C: null, D: 0x10, E: 1e3, F: yes}\nrun: >-\n  folded\n  text\n",
    "list: [1, [2, [3]], {a: *x}]\n".replace("*x", "'*x'"),
    "# only a comment\n",
    "",
    "k: v # trailing\n? complex\n: value\n",
]
MALFORMED = [
    ("name: x\n  bad: indent\n", 2, "mapping values are not allowed here"),
    # a lone surrogate (JSON allows "\ud800"): libyaml cannot even take it as UTF-8
    ("name: \ud800\n", None, "unacceptable character #xd800"),  # a position, no line
    ("a: [1, 2\n", 2, "expected ',' or ']'"),
    ("a: *nowhere\n", 1, "found undefined alias"),
]


def docs(text: str, loader: type) -> list[d.Document]:
    return d._compose(text, "t.yaml", d.DEFAULT_LIMITS, loader)


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
@pytest.mark.parametrize("text", [*(p.read_text() for p in FILES), *CORNERS])
def test_both_parsers_give_the_same_documents(text: str) -> None:
    assert len(FILES) > 40  # the examples and the corpus were found
    fast, python = docs(text, d._FastBoundedLoader), docs(text, d._BoundedLoader)
    assert [(x.data, x.lines, x.duplicates) for x in fast] == [
        (x.data, x.lines, x.duplicates) for x in python
    ]


@pytest.mark.parametrize(("text", "line", "phrase"), MALFORMED)
def test_a_malformed_file_gets_pythons_message_and_line(
    text: str, line: int | None, phrase: str
) -> None:
    with pytest.raises(SpecError) as err:
        d.compose_documents(text, file="t.yaml")
    [issue] = err.value.issues
    assert issue.line == line and phrase in issue.message, issue


def test_a_limit_is_refused_by_the_fast_parser_without_a_second_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file past a limit is refused where it is counted, not read twice (a hostile file
    costs once)."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    calls: list[type] = []
    real = d._compose

    def counting(text: str, file: str, limits: d.YamlLimits, loader: type) -> list[d.Document]:
        calls.append(loader)
        return real(text, file, limits, loader)

    monkeypatch.setattr(d, "_compose", counting)
    with pytest.raises(SpecError) as err:
        d.compose_documents(bomb, file="t.yaml")
    assert "limit" in str(err.value)
    assert len(calls) == 1
