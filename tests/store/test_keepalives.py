"""Keep-alives written in batches (spotd.control.keepalive): the store's half, and the rule
that tells a keep-alive from news."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from spotd.control.keepalive import KeepAlive, is_keepalive
from spotd.store import InstanceRow, Store


def test_a_batch_moves_each_instance_forward_never_back(
    store: Store, make_job: Callable[..., object], make_attempt: Callable[..., object]
) -> None:
    job = make_job()
    make_attempt(job.id, nodes=2)  # type: ignore[attr-defined]
    k0, k1 = f"j{job.id}-a1-n0", f"j{job.id}-a1-n1"  # type: ignore[attr-defined]
    store.record_heartbeat(k0, now=100.0, phase="run", exit_code=None, notice_deadline=None)
    store.record_keepalives({k0: 90.0, k1: 105.0})  # k0's batch is older than its last beat
    assert store.require_instance(k0).last_heartbeat_at == 100.0
    assert store.require_instance(k1).last_heartbeat_at == 105.0
    store.record_keepalives({k0: 110.0})
    assert store.require_instance(k0).last_heartbeat_at == 110.0
    assert store.require_instance(k0).phase == "run"  # nothing but the time changes
    store.record_keepalives({})  # nothing to write: no transaction, no error


def _row(
    store: Store, make_job: Callable[..., object], make_attempt: Callable[..., object]
) -> InstanceRow:
    job = make_job()
    make_attempt(job.id, nodes=1)  # type: ignore[attr-defined]
    key = f"j{job.id}-a1-n0"  # type: ignore[attr-defined]
    return store.record_heartbeat(key, now=1.0, phase="run", exit_code=None, notice_deadline=None)


SAME = {"phase": "run", "exit_code": None, "notice_deadline": None, "log_bytes": 0, "gpus": False}


@pytest.mark.parametrize(
    ("change", "keepalive"),
    [
        ({}, True),
        ({"phase": "exited", "exit_code": 0}, False),  # news: the run ended
        ({"exit_code": 3}, False),
        ({"notice_deadline": 123.0}, False),  # a notice is news
        ({"log_bytes": 10}, False),  # log to write
        ({"log_offset": 99}, False),  # the agent thinks the daemon holds another size
        ({"gpus": True}, False),  # GPU samples are written
        ({"token": "wrong"}, False),  # checked against memory, then refused by the store
        ({"token": ""}, False),
        ({"phase": None}, False),  # an unknown phase: the full path decides
    ],
)
def test_what_counts_as_a_keepalive(
    store: Store,
    make_job: Callable[..., object],
    make_attempt: Callable[..., object],
    change: dict[str, object],
    keepalive: bool,
) -> None:
    row = _row(store, make_job, make_attempt)
    beat = KeepAlive(key=row.key, token=row.token, log_offset=row.log_offset, **SAME)  # type: ignore[arg-type]
    assert is_keepalive(dataclasses.replace(beat, **change), row) is keepalive  # type: ignore[arg-type]
    assert is_keepalive(beat, None) is False  # never seen here: the full path
