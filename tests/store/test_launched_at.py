"""``launched_at``: when the provider's answer to a launch was recorded (schema version 10).

The job controller judges whether a listing covers an instance from it
(``spotd.control.attempts.node_evidence``); here, that the store keeps the first answer's time,
that an idempotent repeat does not move it, and that it survives a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spotd.store import Store


def test_the_first_answer_time_is_kept(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    a = make_attempt(make_job().id, nodes=2)
    first, second = (r.key for r in store.instances(attempt_id=a.id))
    assert [r.launched_at for r in store.instances(attempt_id=a.id)] == [None, None]
    answered = clock.tick(90.0)  # the answer came long after the intent
    row = store.set_instance_id(first, "i-1", now=answered)
    assert (row.instance_id, row.launched_at) == ("i-1", answered)
    assert row.created_at < answered
    # a restarted daemon launching the same key again gets the same id: the time stands
    again = store.set_instance_id(first, "i-1", now=clock.tick(30.0))
    assert again.launched_at == answered
    # the other node has not been answered
    assert store.require_instance(second).launched_at is None


def test_without_a_time_nothing_is_claimed(store: Store, make_job: Any, make_attempt: Any) -> None:
    a = make_attempt(make_job().id, nodes=1)
    key = store.instances(attempt_id=a.id)[0].key
    assert store.set_instance_id(key, "i-1").launched_at is None


def test_it_survives_a_restart(
    open_store: Callable[[], Store], make_job: Any, make_attempt: Any, clock: Any
) -> None:
    s1 = open_store()
    a = make_attempt(make_job().id, nodes=1)
    key = s1.instances(attempt_id=a.id)[0].key
    at = clock.tick(5.0)
    s1.set_instance_id(key, "i-9", now=at)
    s1.close()
    s2 = open_store()
    assert s2.require_instance(key).launched_at == at
