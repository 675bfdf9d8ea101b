"""Bandwidth limits that follow a timetable (rclone's --bwlimit form), overall and per target:
the daemon puts in force what applies at its ``now``, at the times given; the transport pays
both buckets; a limit raised or lifted lets a waiting request go at once."""

from __future__ import annotations

import threading
import time

import pytest

from syncd import limits
from syncd.targets.http import SessionPool, send
from tests.core.test_operations import Echo, FakeClock
from tests.core.test_timetable import at
from tests.daemon_harness import run_cli, write_config

MiB = 1 << 20


@pytest.fixture
def echo():
    with Echo() as emulator:
        yield emulator
    limits.configure({}, 0)


@pytest.fixture(autouse=True)
def no_limits_left():
    yield
    limits.configure({}, 0)


def test_the_daemon_changes_the_limits_at_the_times_given(make_daemon, caplog):
    caplog.set_level("INFO", logger="syncd.daemon")
    daemon = make_daemon(None, daemon={"bandwidth_limit": "07:00,1M 23:30,off"})
    daemon.tick(at(2, "06:00"))
    assert limits.bandwidth() == (None, {})
    assert daemon.next_deadline(at(2, "06:00")) <= at(2, "07:00")  # it wakes for the change
    daemon.tick(at(2, "06:59", 59))
    assert limits.bandwidth()[0] is None
    daemon.tick(at(2, "07:00"))
    assert limits.bandwidth() == (MiB, {})
    assert "bandwidth limit now 1.0 MiB/s (timetable '07:00,1M 23:30,off') over all targets" in caplog.text
    daemon.tick(at(2, "12:00"))
    assert limits.bandwidth()[0] == MiB
    daemon.tick(at(2, "23:30"))
    assert limits.bandwidth()[0] is None
    daemon.tick(at(3, "07:00", 30))  # the next morning
    assert limits.bandwidth()[0] == MiB


def test_a_targets_own_timetable(tmp_path):
    from syncd.config import load_config
    from syncd.daemon import Daemon

    config = write_config(tmp_path, {"slow": {"platform": "local", "path": "a", "bandwidth_limit": "Sat-00:00,100K "
                                                                                               "Mon-00:00,off"},
                                     "fast": {"platform": "local", "path": "b"}},
                          daemon={"bandwidth_limit": "2M"})
    daemon = Daemon(load_config(config), watch=False)
    daemon.open(at(5, "09:00"))  # a Saturday
    try:
        assert limits.bandwidth() == (2 * MiB, {"slow": 100 * 1024})
        daemon.tick(at(6, "23:59"))
        assert limits.bandwidth() == (2 * MiB, {"slow": 100 * 1024})
        daemon.tick(at(7, "00:00"))  # Monday
        assert limits.bandwidth() == (2 * MiB, {})
    finally:
        daemon.close(wait_seconds=0)


def test_a_request_pays_the_overall_limit_and_its_targets(echo):
    clock = FakeClock()
    limits.configure({}, 8000, clock=clock.clock, sleep=clock.sleep, target_bandwidth={"slow": 2000})
    session = SessionPool().get()
    with limits.serving("slow"):
        send(session, "POST", echo.url + "/upload", context="t", timeout=5, data=b"\0" * 10000)
    assert clock.slept == [pytest.approx(0.25), pytest.approx(4.0)]  # 2000 over the 8000 burst; 8000 over 2000
    clock.slept.clear()
    with limits.serving("other"):
        send(session, "POST", echo.url + "/upload", context="t", timeout=5, data=b"\0" * 8000)
    assert clock.slept == [pytest.approx(1.25)]  # the overall bucket only (in debt from before)


def test_a_lifted_limit_lets_a_waiting_request_go_at_once(echo):
    limits.configure({}, 1000)  # real time: 100 kB would take about 100 s
    session = SessionPool().get()
    done = threading.Event()

    def upload():
        with limits.serving("any"):
            send(session, "POST", echo.url + "/upload", context="t", timeout=5, data=b"\0" * 100_000)
        done.set()

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    assert not done.wait(0.5)  # it waits in the bucket
    started = time.monotonic()
    limits.set_bandwidth(None, {})
    assert done.wait(10), "the request kept waiting at the old rate"
    assert time.monotonic() - started < 10


def test_a_lowered_limit_does_not_release_anyone(echo):
    limits.configure({}, 1000)
    old = limits._bandwidth
    limits.set_bandwidth(500, {})
    assert limits._bandwidth is not old and not old._released.is_set()
    limits.set_bandwidth(500, {})
    same = limits._bandwidth
    limits.set_bandwidth(500, {})
    assert limits._bandwidth is same  # unchanged: the same bucket, its debts kept


def test_mistakes_are_one_line_at_load_and_a_bare_number_is_warned_about(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          daemon={"bandwidth_limit": "25:00,1M"})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2, result.stdout
    assert "daemon.bandwidth_limit: '25:00,1M': 25:00 is not a time of day (00:00 to 23:59)" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 2
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "bandwidth_limit": "7:00,1M"}})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2, result.stdout
    assert "targets.local.bandwidth_limit: '7:00,1M': the time must be HH:MM" in result.stderr
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          daemon={"bandwidth_limit": "08:00,512 18:00,off"})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert ("daemon.bandwidth_limit: '08:00,512 18:00,off': a rate without a unit is bytes per second "
            "(rclone reads it as KiB/s); write the unit, e.g. 512K or 512B") in result.stdout
