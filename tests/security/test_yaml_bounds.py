"""A task file cannot make reading it unbounded: size, documents, aliases, depth and the
values a file stands for are limited while it is composed, before anything is expanded, and
going past a limit is an ordinary ``SpecError`` naming the limit and the line.

The bombs here would take hours (or all memory) to walk unbounded; each test carries a
generous pytest timeout rather than a timing assertion.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from spotd.spec import (
    DEFAULT_LIMITS,
    SpecError,
    SpecIssue,
    Task,
    YamlLimits,
    check_file,
    load_tasks,
    load_tasks_bounded,
)

ROOT = Path(__file__).resolve().parents[2]

TASK = "name: train\nrun: python train.py\n"


def laughs(levels: int, width: int = 9) -> str:
    """The billion-laughs shape: each level a list of ``width`` aliases to the level below."""
    lines = [TASK.rstrip("\n"), "envs:", f"  a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def nested_flow(depth: int) -> str:
    return f"{TASK}envs: {'[' * depth}x{']' * depth}\n"


def nested_block(depth: int) -> str:
    return TASK + "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}end\n"


def aliases(uses: int) -> str:
    """One anchor, used ``uses`` times: cheap to expand, many alias events."""
    return TASK + "envs:\n  A0: &v x\n" + "".join(f"  A{i + 1}: *v\n" for i in range(uses))


def documents(n: int) -> str:
    return "".join(f"---\nname: t{i}\nrun: echo {i}\n" for i in range(n))


def refusal(text: str, limits: YamlLimits = DEFAULT_LIMITS) -> SpecIssue:
    with pytest.raises(SpecError) as caught:
        load_tasks("t.yaml", text=text, limits=limits)
    [issue] = caught.value.issues
    return issue


def limit_issues(text: str, limits: YamlLimits) -> list[str]:
    return [
        i.message
        for i in check_file("t.yaml", text=text, limits=limits)
        if "the limit of" in i.message
    ]


# -- hostile files, refused -----------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("text", "limits", "line", "phrases"),
    [
        pytest.param(
            laughs(9), DEFAULT_LIMITS, 8, ["limit of 50000 values", "alias"], id="laughs-9"
        ),
        pytest.param(laughs(30), DEFAULT_LIMITS, 8, ["limit of 50000 values"], id="laughs-30"),
        pytest.param(
            laughs(6, width=40), DEFAULT_LIMITS, 6, ["limit of 50000 values"], id="laughs-wide"
        ),
        pytest.param(
            laughs(2, width=2) + "".join(f"  b{i}: &b{i} [*a1, *a1]\n" for i in range(60)),
            DEFAULT_LIMITS,
            55,
            ["limit of 100 alias uses"],
            id="many-cheap-aliases",
        ),
        pytest.param(
            laughs(60, width=2),
            YamlLimits(max_values=10**18),
            55,
            ["limit of 100 alias uses"],
            id="chain-past-the-alias-count",
        ),
        pytest.param(
            laughs(13),
            YamlLimits(max_values=10**18),
            16,
            ["limit of 100 alias uses"],
            id="laughs-13-past-the-alias-count",
        ),
    ],
)
def test_alias_bombs_are_refused_before_expansion(
    text: str, limits: YamlLimits, line: int, phrases: list[str]
) -> None:
    issue = refusal(text, limits)
    assert issue.line == line, issue
    for phrase in phrases:
        assert phrase in issue.message, issue


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("text", "limits", "line", "phrase"),
    [
        pytest.param(nested_flow(65), DEFAULT_LIMITS, 3, "deeper than the limit of 64", id="flow"),
        pytest.param(nested_flow(100_000), DEFAULT_LIMITS, 3, "limit of 64", id="flow-100k"),
        pytest.param(nested_block(100), DEFAULT_LIMITS, 66, "limit of 64", id="block"),
        pytest.param(
            f"{TASK}envs:\n  a: &deep {'[' * 40}x{']' * 40}\n  b: {'[' * 40}*deep{']' * 40}\n",
            DEFAULT_LIMITS,
            5,
            "once the alias is expanded",
            id="through-an-alias",
        ),
        pytest.param(
            TASK + "envs: {A: [x]}\n", YamlLimits(max_depth=3), 3, "limit of 3", id="tight"
        ),
    ],
)
def test_deep_nesting_is_refused(text: str, limits: YamlLimits, line: int, phrase: str) -> None:
    issue = refusal(text, limits)
    assert issue.line == line and phrase in issue.message, issue


@pytest.mark.parametrize(
    ("text", "limits", "line"),
    [
        pytest.param(TASK + f"setup: {'x' * (1 << 20)}\n", DEFAULT_LIMITS, 3, id="1MiB-scalar"),
        pytest.param(
            TASK + "setup: |\n" + "  é\n" * 400,
            YamlLimits(max_bytes=1000),
            3 + 192,  # 42 bytes before the é lines, 5 bytes each
            id="utf8-bytes",
        ),
        pytest.param(TASK + "#" * 1000 + "\n", YamlLimits(max_bytes=1000), 3, id="tight"),
    ],
)
def test_oversize_files_are_refused(text: str, limits: YamlLimits, line: int) -> None:
    issue = refusal(text, limits)
    assert issue.line == line, issue
    assert f"larger than the limit of {limits.max_bytes} bytes" in issue.message


def test_an_oversize_file_on_disk_is_refused_when_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(TASK + f"setup: {'x' * 2000}\n")
    with pytest.raises(SpecError, match="larger than the limit of 1000 bytes"):
        load_tasks(path, limits=YamlLimits(max_bytes=1000))


@pytest.mark.parametrize(
    ("n", "limits", "line"),
    [
        pytest.param(101, DEFAULT_LIMITS, 301, id="default"),
        pytest.param(10_000, DEFAULT_LIMITS, 301, id="ten-thousand"),
        pytest.param(3, YamlLimits(max_documents=2), 7, id="tight"),
    ],
)
def test_too_many_documents_are_refused(n: int, limits: YamlLimits, line: int) -> None:
    issue = refusal(documents(n), limits)
    assert issue.line == line, issue
    assert f"more than the limit of {limits.max_documents} documents" in issue.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param(TASK + "envs: &e {A: *e}\n", 3, id="mapping"),
        pytest.param("name: x\nrun: &r [*r]\n", 2, id="sequence"),
        pytest.param(
            TASK + "service:\n  readiness_probe:\n    post_data: &p {a: [*p]}\n", 5, id="any-typed"
        ),
    ],
)
def test_recursive_aliases_are_refused(text: str, line: int) -> None:
    issue = refusal(text)
    assert issue.line == line and "recursive alias" in issue.message, issue


@pytest.mark.parametrize(
    ("text", "line", "phrase"),
    [
        pytest.param(
            TASK + f"num_nodes: {'9' * 5000}\n", 3, "int value", id="int-past-4300-digits"
        ),
        pytest.param(TASK + "envs:\n  X: 2001-13-45\n", 4, "timestamp value", id="no-such-date"),
        pytest.param(TASK + "envs: {X: !!int abc}\n", 3, "int value", id="tagged-int"),
    ],
)
def test_a_scalar_python_cannot_convert_is_a_spec_error(text: str, line: int, phrase: str) -> None:
    issue = refusal(text)
    assert issue.line == line and phrase in issue.message, issue


# -- each limit at its boundary ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "within", "past"),
    [
        pytest.param(
            aliases(3), YamlLimits(max_aliases=3), YamlLimits(max_aliases=2), id="aliases"
        ),
        pytest.param(
            TASK + "envs: {A: x}\n", YamlLimits(max_depth=3), YamlLimits(max_depth=2), id="depth"
        ),
        pytest.param(
            documents(3), YamlLimits(max_documents=3), YamlLimits(max_documents=2), id="documents"
        ),
        pytest.param(
            TASK, YamlLimits(max_bytes=len(TASK)), YamlLimits(max_bytes=len(TASK) - 1), id="bytes"
        ),
        # root mapping, 2 keys and 2 values, envs: key + mapping + 2 x (key, value): 11
        pytest.param(
            TASK + "envs: {A: &v x, B: *v}\n",
            YamlLimits(max_values=11),
            YamlLimits(max_values=10),
            id="values",
        ),
    ],
)
def test_a_limit_allows_exactly_its_bound(text: str, within: YamlLimits, past: YamlLimits) -> None:
    assert limit_issues(text, within) == []
    assert len(limit_issues(text, past)) == 1


# -- real files with anchors still load -------------------------------------------------------

ANCHORED = """\
name: train
resources:
  cpus: 2+
  any_of:
    - &east {infra: aws/us-east-1, accelerators: A100:1}
    - {<<: *east, use_spot: false}
envs: &shared
  MODEL: llama
  STEPS: "100"
setup: &prepare pip install -r requirements.txt
run: *prepare
"""


def test_a_task_with_anchors_and_merge_keys_loads() -> None:
    [task] = load_tasks("t.yaml", text=ANCHORED)
    assert task.run == task.setup == "pip install -r requirements.txt"
    assert task.envs == {"MODEL": "llama", "STEPS": "100"}
    first, second = task.resources.any_of or []
    assert first.infra == second.infra == "aws/us-east-1"
    assert second.use_spot is False


EXAMPLES = sorted(
    [*(ROOT / "tests" / "spec" / "data").glob("*.yaml"), *(ROOT / "examples").glob("*.yaml")]
)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_example_files_are_far_within_the_limits(path: Path) -> None:
    tight = YamlLimits(
        max_bytes=64 << 10, max_documents=8, max_depth=16, max_aliases=8, max_values=2000
    )
    assert limit_issues(path.read_text(), tight) == []


# -- the daemon's entry point: off the event loop, with a time limit --------------------------


async def test_the_bounded_loader_reads_a_task() -> None:
    [task] = await load_tasks_bounded("t.yaml", text=ANCHORED, timeout_s=30)
    assert isinstance(task, Task) and task.name == "train"


@pytest.mark.timeout(30)
async def test_the_bounded_loader_refuses_a_bomb() -> None:
    with pytest.raises(SpecError, match="limit of 50000 values"):
        await load_tasks_bounded("t.yaml", text=laughs(9), timeout_s=30)


@pytest.mark.timeout(30)
async def test_the_bounded_loader_gives_up_waiting_and_the_loop_keeps_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow_load(*args: object, **kwargs: object) -> list[Task]:
        started.set()
        release.wait(timeout=20)  # a parse that would take long; released when the test ends
        return []

    monkeypatch.setattr("spotd.spec.check.load_tasks", slow_load)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        with pytest.raises(SpecError) as caught:
            await load_tasks_bounded("slow.yaml", text=TASK, timeout_s=0.5)
    finally:
        release.set()
        ticking.cancel()
    [issue] = caught.value.issues
    assert issue.file == "slow.yaml" and "took longer than 0.5 s" in issue.message
    assert started.is_set() and ticks > 0


# -- end to end: spotctl check -----------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        pytest.param(laughs(9), "limit of 50000 values", id="laughs"),
        pytest.param(nested_flow(5000), "deeper than the limit of 64", id="deep"),
        pytest.param(documents(200), "limit of 100 documents", id="documents"),
    ],
)
def test_spotctl_check_refuses_a_bomb_with_the_message(
    tmp_path: Path, text: str, phrase: str
) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(text)
    env = {**os.environ, "SPOTD_HOME": str(tmp_path / "home")}
    env.pop("SPOTD_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "spotd.cli", "check", str(bomb)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done
    assert phrase in done.stderr and str(bomb) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
