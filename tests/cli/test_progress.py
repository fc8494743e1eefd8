"""The CLI's progress on long operations (``spotd.cli.progress``), as a person sees it: a
rich display on a terminal, plain lines in a log, nothing beside ``-o json``.

Rendered into rich consoles over a string buffer: ``force_terminal=True`` is what rich
writes to a terminal (cursor control, colours), ``force_terminal=False`` what it writes to a
pipe. The commands themselves run on a pseudo-terminal in ``tests/services/test_ship_code.py``.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from spotd.cli.progress import FilesProgress, ReplicaWait, progress_mode, replica_summary

MB = 1_000_000


def console(*, tty: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=tty, width=100, color_system="standard"), buf


def test_on_a_terminal_packing_then_an_upload_bar_with_bytes() -> None:
    c, buf = console(tty=True)
    files = FilesProgress(c, progress_mode(c, "table"))
    files.packing(["workdir", "/data"])
    files.update(0, 12 * MB)
    files.update(6 * MB, 12 * MB)
    files.update(12 * MB, 12 * MB)  # done: the display goes away by itself
    text = buf.getvalue()
    assert "packing workdir, /data" in text
    assert "uploading" in text and "12.0 MB" in text
    assert "\x1b[" in text  # drawn with cursor control, as on a terminal
    files.update(1, 1)  # a second request's upload (jobs launch after its dry run) is quiet
    assert buf.getvalue() == text


def test_in_a_log_plain_lines_without_control_characters() -> None:
    c, buf = console(tty=False)
    files = FilesProgress(c, progress_mode(c, "table"))
    files.packing(["workdir"])
    files.update(0, 3 * MB)
    files.update(3 * MB, 3 * MB)
    files.close()
    assert buf.getvalue().splitlines() == [
        "Packing workdir",
        "Uploading 3.0 MB (what the daemon lacks)",
    ]


@pytest.mark.parametrize("tty", [True, False])
def test_json_output_gets_no_progress(tty: bool) -> None:
    c, buf = console(tty=tty)
    assert progress_mode(c, "json") == "off"
    files = FilesProgress(c, "off")
    files.packing(["workdir"])
    files.update(0, 3 * MB)
    files.update(3 * MB, 3 * MB)
    assert buf.getvalue() == ""


def test_nothing_to_pack_shows_nothing() -> None:
    c, buf = console(tty=True)
    files = FilesProgress(c, "rich")
    files.packing([])
    files.close()
    assert buf.getvalue() == ""


def _svc(*states: tuple[str, int], target: int = 2) -> dict[str, Any]:
    return {
        "name": "svc",
        "target": target,
        "replicas": [
            {"id": i, "status": st, "version": v, "ended_at": None}
            for i, (st, v) in enumerate(states)
        ],
    }


STEPS = [
    _svc(("PROVISIONING", 1), ("PROVISIONING", 1)),
    _svc(("STARTING", 1), ("STARTING", 1)),
    _svc(("READY", 1), ("STARTING", 1)),
    _svc(("READY", 1), ("READY", 1)),
]


def _fetcher(steps: list[dict[str, Any]]) -> Any:
    it = iter(steps)
    last: dict[str, Any] = {}

    async def fetch() -> dict[str, Any]:
        nonlocal last
        last = next(it, last)
        return last

    return fetch


def _all_ready(s: dict[str, Any]) -> bool:
    return sum(r["status"] == "READY" for r in s["replicas"]) >= s["target"]


async def test_waiting_for_replicas_plain_prints_a_line_per_change() -> None:
    c, buf = console(tty=False)
    wait = ReplicaWait(c, "plain", poll=0)
    svc = await wait.run(
        _fetcher([STEPS[0], STEPS[0], *STEPS[1:]]), _all_ready, version=None, timeout=10
    )
    assert _all_ready(svc)
    assert buf.getvalue().splitlines() == [  # the repeated state is not printed twice
        "svc: 0/2 READY (2 PROVISIONING)",
        "svc: 0/2 READY (2 STARTING)",
        "svc: 1/2 READY (1 READY, 1 STARTING)",
        "svc: 2/2 READY (2 READY)",
    ]


async def test_waiting_for_replicas_on_a_terminal_draws_a_bar() -> None:
    c, buf = console(tty=True)
    svc = await ReplicaWait(c, "rich", poll=0).run(
        _fetcher(STEPS), _all_ready, version=None, timeout=10
    )
    assert _all_ready(svc)
    text = buf.getvalue()
    assert "replicas READY" in text and "2/2" in text and "2 READY" in text
    assert "\x1b[" in text


async def test_waiting_gives_up_at_the_timeout_naming_the_state() -> None:
    c, _ = console(tty=False)
    stuck = [_svc(("STARTING", 1), ("STARTING", 1))]
    with pytest.raises(TimeoutError, match=r"not READY after 0s \(2 STARTING\)"):
        await ReplicaWait(c, "plain", poll=0).run(
            _fetcher(stuck), _all_ready, version=None, timeout=0
        )


def test_an_update_counts_only_the_new_versions_replicas() -> None:
    svc = _svc(("READY", 1), ("READY", 1), ("STARTING", 2))
    assert replica_summary(svc["replicas"], 2) == "1 STARTING"
    assert replica_summary(svc["replicas"]) == "2 READY, 1 STARTING"
    assert replica_summary([], 2) == "none yet"
