"""``spotd.clock.WallClock``: the database's clock read from a lease renewal's round trip."""

from __future__ import annotations

import pytest

from spotd.clock import TRUSTED_RTT, UNTRUSTED_WARN, WallClock


@pytest.mark.parametrize(
    ("sent", "db_time", "received", "used", "offset"),
    [
        (100.0, 100.1, 100.2, True, 0.0),  # in step: the middle of the round trip
        (100.0, 10.1, 100.2, True, -90.0),  # the host is 90 s ahead of the database
        (100.0, 190.1, 100.2, True, 90.0),  # ... 90 s behind
        (100.0, 500.0, 100.0 + TRUSTED_RTT + 0.01, False, 0.0),  # too slow to tell
        (100.0, 500.0, 99.0, False, 0.0),  # the host's clock stepped back meanwhile
    ],
)
def test_observe(sent: float, db_time: float, received: float, used: bool, offset: float) -> None:
    clock = WallClock()
    assert clock.observe(sent=sent, db_time=db_time, received=received) is used
    assert clock.offset == pytest.approx(offset)


def test_the_clock_reads_the_host_moved_by_the_offset() -> None:
    host = [1000.0]
    clock = WallClock(host=lambda: host[0])
    assert clock() == 1000.0  # no reading yet: the host's
    clock.observe(sent=1000.0, db_time=1090.0, received=1000.0)
    host[0] = 1005.0
    assert clock() == 1095.0
    clock.observe(sent=1005.0, db_time=500.0, received=1005.5)  # a later reading replaces it
    assert clock() == pytest.approx(1005.0 - 505.25)


def test_slow_readings_keep_the_last_offset_and_are_said(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = WallClock()
    clock.observe(sent=0.0, db_time=30.0, received=0.1)
    for i in range(UNTRUSTED_WARN):
        assert not clock.observe(sent=i, db_time=1e6, received=i + 2 * TRUSTED_RTT)
    assert clock.offset == pytest.approx(29.95)  # the last reading that could be trusted
    assert "could not be read in time" in capsys.readouterr().out
