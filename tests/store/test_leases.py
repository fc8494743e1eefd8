"""Leases, fencing and takeover (spotd.store.leases) on SQLite and PostgreSQL.

Two (or three) ``Store`` objects on one database play daemons; lease lengths are real seconds
of the database's clock, so the tests that need a lapse wait a fraction of a second for it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from spotd.store import Store, leases
from spotd.store.errors import Fenced
from spotd.types import JobStatus

SHORT = 0.3  # a lease that lapses while the test waits


def _job(store: Store, name: str = "train") -> int:
    return store.create_job(
        name=name,
        task_id_prefix="t-",
        spec_json="{}",
        spec_redacted_json="{}",
        resources="cpu",
        submitted_at=time.time(),
    ).id


def _lapse(seconds: float = SHORT) -> None:
    time.sleep(seconds + 0.1)


def test_a_daemon_owns_what_it_creates_and_events_name_it(
    open_store: Callable[[], Store],
) -> None:
    a = open_store()
    a.join_cluster("d1", url="http://a", lease_seconds=30)
    job = a.require_job(_job(a))
    assert job.owner == "d1"
    assert {e.daemon for e in a.events(job_id=job.id)} == {"d1"}
    assert [j.id for j in a.active_jobs(owner="d1")] == [job.id]
    assert a.active_jobs(owner="d2") == []


def test_a_lapsed_lease_refuses_every_write_and_writes_nothing(
    open_store: Callable[[], Store],
) -> None:
    a = open_store()
    a.join_cluster("d1", url="", lease_seconds=SHORT)
    job_id = _job(a)
    _lapse()
    with pytest.raises(Fenced, match="lease expired"):
        a.transition_job(
            job_id, from_=[JobStatus.PENDING], to=JobStatus.CANCELLING, reason="x", now=1.0
        )
    with pytest.raises(Fenced):
        _job(a, "second")
    with pytest.raises(Fenced):
        a.renew_lease(30)
    assert a.require_job(job_id).status == JobStatus.PENDING
    assert [j.name for j in a.list_jobs()] == ["train"]


def test_takeover_moves_a_dead_daemons_work_and_fences_it_for_good(
    open_store: Callable[[], Store],
) -> None:
    a, b = open_store(), open_store()
    a.join_cluster("d1", url="", lease_seconds=SHORT)
    b.join_cluster("d2", url="", lease_seconds=30)
    mine = [_job(a, f"j{i}") for i in range(3)]
    assert b.take_over().jobs == ()  # d1 is alive: nothing to take
    _lapse()
    taken = b.take_over()
    assert sorted(taken.jobs) == mine and taken.from_ == ("d1",)
    assert {b.require_job(j).owner for j in mine} == {"d2"}
    assert "d1 stopped renewing its lease" in b.events(job_id=mine[0])[-1].message
    # d1 wakes up: its epoch is gone, whatever its clock says
    with pytest.raises(Fenced, match="taken over"):
        a.transition_job(
            mine[0], from_=[JobStatus.PENDING], to=JobStatus.CANCELLING, reason="x", now=1.0
        )
    with pytest.raises(Fenced):
        a.renew_lease(30)
    # it rejoins with a new epoch and owns nothing it lost
    a.join_cluster("d1", url="", lease_seconds=30)
    assert a.active_jobs(owner="d1") == []
    rows = {d.id: d for d in a.daemons()}
    assert rows["d1"].alive and rows["d1"].jobs == 0
    assert rows["d2"].alive and rows["d2"].jobs == 3


def test_a_restart_within_the_lease_keeps_its_work(open_store: Callable[[], Store]) -> None:
    a = open_store()
    first = a.join_cluster("d1", url="", lease_seconds=30)
    job_id = _job(a)
    again = open_store()  # the same daemon, restarted (kill -9) before anyone took over
    second = again.join_cluster("d1", url="", lease_seconds=30)
    assert second.epoch == first.epoch + 1
    assert [j.id for j in again.active_jobs(owner="d1")] == [job_id]
    with pytest.raises(Fenced):  # the old process, had it survived, could not write
        _job(a)


def test_the_living_share_a_dead_daemons_work(open_store: Callable[[], Store]) -> None:
    a, b, c = open_store(), open_store(), open_store()
    a.join_cluster("d1", url="", lease_seconds=30)
    b.join_cluster("d2", url="", lease_seconds=30)
    c.join_cluster("d3", url="", lease_seconds=30)
    jobs = [_job(a, f"j{i}") for i in range(10)]
    assert b.take_over().jobs == () and c.take_over().jobs == ()  # both watch their work
    a.join_cluster("d1", url="", lease_seconds=SHORT)  # a short lease only now: a busy
    _lapse()  # machine took more than SHORT to write the ten jobs, and a was fenced midway
    first = b.take_over()
    second = c.take_over()
    assert len(first.jobs) == 5 and len(second.jobs) == 5
    assert sorted(first.jobs + second.jobs) == jobs
    assert b.take_over().jobs == () and c.take_over().jobs == ()


def test_jobs_without_an_owner_are_claimed(open_store: Callable[[], Store]) -> None:
    """A database one daemon ran alone, then several: its active jobs find owners."""
    solo = open_store()
    old = _job(solo)
    b = open_store()
    b.join_cluster("d2", url="", lease_seconds=30)
    assert b.take_over().jobs == (old,)
    assert b.require_job(old).owner == "d2"


def test_a_clean_stop_hands_over_at_once(open_store: Callable[[], Store]) -> None:
    a, b = open_store(), open_store()
    a.join_cluster("d1", url="", lease_seconds=30)
    b.join_cluster("d2", url="", lease_seconds=30)
    job_id = _job(a)
    a.leave_cluster()
    assert b.take_over().jobs == (job_id,)


@pytest.fixture
def pg_url(pg_admin: tuple[Engine, str]) -> Iterator[str]:
    engine, url = pg_admin
    schema = f"t_{secrets.token_hex(6)}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        opts = {"options": f"-csearch_path={schema}"}
        yield make_url(url).update_query_dict(opts).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.postgres
def test_a_takeover_waits_for_the_dead_daemons_transaction(pg_url: str) -> None:
    """The fence holds its row FOR SHARE: a takeover cannot slip between a daemon's check and
    its commit. A's write transaction is held open past its lease; B's takeover waits for it,
    then finds the job written by A before it, and A's next write is refused."""
    a, b = Store.open(pg_url), Store.open(pg_url)
    try:
        a.join_cluster("d1", url="", lease_seconds=SHORT)
        b.join_cluster("d2", url="", lease_seconds=30)
        job_id = _job(a)
        order: list[str] = []
        checked = threading.Event()

        def slow_write() -> None:
            with a._write() as conn:  # the fence passes, then the daemon stalls
                checked.set()
                time.sleep(SHORT + 0.5)
                conn.exec_driver_sql(f"UPDATE job SET message='from d1' WHERE id={job_id}")
                order.append("d1 committed")

        t = threading.Thread(target=slow_write)
        t.start()
        assert checked.wait(5)
        _lapse()
        taken = b.take_over()
        order.append("d2 took over")
        t.join()
        assert order == ["d1 committed", "d2 took over"]
        assert taken.jobs == (job_id,)
        assert b.require_job(job_id).message == "from d1"
        with pytest.raises(Fenced):
            _job(a)
    finally:
        a.close()
        b.close()


def _running(store: Store, n: int) -> list[int]:
    ids = [_job(store, f"r{i}") for i in range(n)]
    for job_id in ids:
        store.transition_job(
            job_id, from_=[JobStatus.PENDING], to=JobStatus.RUNNING, reason="up", now=time.time()
        )
    return ids


def test_jobs_handed_over_go_to_the_daemon_below_its_share(
    open_store: Callable[[], Store],
) -> None:
    """A ran everything alone; B joins: A hands over its surplus, B claims it, A does not
    take it back; only RUNNING jobs of A's own are handed over."""
    a, b = open_store(), open_store()
    a.join_cluster("d1", url="", lease_seconds=30)
    assert a.take_over().live == ("d1",)
    running = _running(a, 6)
    pending = _job(a, "waiting")
    b.join_cluster("d2", url="", lease_seconds=30)
    assert a.job_shares().live == 1  # B is still starting: nothing is handed to it yet
    assert b.take_over().jobs == ()  # its first pass: B watches its work now
    shares = a.job_shares()
    assert (shares.mine, shares.total, shares.live) == (7, 7, 2)
    movable = a.movable_jobs(3)
    assert movable == sorted(running, reverse=True)[:3] and pending not in a.movable_jobs(10)
    assert not a.release_job(pending, why="test")  # not RUNNING: it stays
    assert all(a.release_job(j, why="evening the load") for j in movable)
    assert not a.release_job(movable[0], why="again")  # not A's any more
    assert a.take_over().jobs == ()  # A is at its share: it takes nothing back
    assert sorted(b.take_over().jobs) == sorted(movable)
    assert (a.job_shares().mine, b.job_shares().mine) == (4, 3)
    said = [e.message for e in a.events(job_id=movable[0]) if e.kind == "job.owner"]
    assert said[0] == "released by daemon d1: evening the load"
    assert said[1].startswith("now run by daemon d2")


def test_a_daemon_still_starting_is_not_counted_and_keeps_its_work(
    open_store: Callable[[], Store],
) -> None:
    """A joining daemon counts in the shares, and for the pools' leader, only from its first
    takeover pass; meanwhile nobody hands it jobs nor takes its own."""
    a, b = open_store(), open_store()
    a.join_cluster("d2", url="", lease_seconds=30)
    assert a.take_over().live == ("d2",)
    _running(a, 4)
    b.join_cluster("d1", url="", lease_seconds=30)  # the smaller id: the leader once ready
    kept = _job(b, "b's own")  # submitted through B's API while it starts
    assert a.job_shares().live == 1
    assert a.take_over() == leases.Takeover(live=("d2",))  # B's job is not A's to take
    assert {d.id: (d.alive, d.ready) for d in a.daemons()} == {
        "d1": (True, False),
        "d2": (True, True),
    }
    assert b.take_over().live == ("d1", "d2")
    assert a.job_shares().live == 2
    assert b.require_job(kept).owner == "d1"
    b.join_cluster("d1", url="", lease_seconds=30)  # restarted: starting again
    assert {d.id: d.ready for d in a.daemons()} == {"d1": False, "d2": True}


def test_a_daemon_over_its_share_still_takes_a_dead_daemons_work(
    open_store: Callable[[], Store],
) -> None:
    """Rows of a dead daemon are never left waiting for a daemon that does not claim them."""
    a, b = open_store(), open_store()
    a.join_cluster("d1", url="", lease_seconds=SHORT)
    b.join_cluster("d2", url="", lease_seconds=30)
    dead = _job(a, "orphan")
    _running(b, 4)
    _lapse()
    assert b.take_over().jobs == (dead,)


def test_a_large_takeover_comes_in_passes_of_at_most_claim_max(
    open_store: Callable[[], Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction claiming thousands of rows outlasted the claiming daemon's own lease on
    a remote database (an HA review: 2,000 rows, 6 s, a 5 s lease): it claims CLAIM_MAX rows
    a pass now, and the next passes (a second apart) claim the rest."""
    monkeypatch.setattr(leases, "CLAIM_MAX", 2)
    a, b = open_store(), open_store()
    a.join_cluster("d1", url="", lease_seconds=SHORT)
    b.join_cluster("d2", url="", lease_seconds=30)
    mine = [_job(a, f"j{i}") for i in range(5)]
    _lapse()
    passes = [sorted(b.take_over().jobs) for _ in range(4)]
    assert passes == [mine[:2], mine[2:4], mine[4:], []]
    assert {b.require_job(j).owner for j in mine} == {"d2"}
