"""Clock jumps (NTP corrections, a board booting with a 1970 clock, a VM resumed): the
coordinator takes ``now`` as a parameter, so the jumps are driven through ``tick(now)``.

Backwards: nothing scheduled under the old clock may wait for the new clock to catch up
(backoff rows, paused-target re-checks, rescans, settling files) — each runs within its
own bound. Forwards: timers expire early, which is harmless; nothing is lost or sent twice.
"""

from __future__ import annotations

import time

from syncd.errors import FatalTargetError, TransientError
from tests.conftest import ScriptedTarget, drive
from tests.daemon_harness import wait_for
from tests.helpers import write_item

DAY = 86400.0


def run_until(daemon, clock: float, done, *, seconds: float, step: float = 5.0) -> float:
    """Tick from ``clock`` in ``step``s for at most ``seconds`` of daemon time; returns the
    daemon time it took for ``done()`` to hold (AssertionError when it never does)."""
    start = clock
    while clock - start <= seconds:
        daemon.tick(clock)
        daemon._collect(clock, block=0.02)
        if done():
            return clock - start
        clock += step
    raise AssertionError(f"not done within {seconds:.0f}s of daemon time after the jump")


def test_backoff_scheduled_before_a_backward_jump_runs_in_bounded_time(make_daemon, inbox, scripted):
    write_item(inbox, "flaky")
    scripted.script["flaky"] = [TransientError("HTTP 503", retry_after=600)]
    daemon = make_daemon({"fake": scripted}, daemon={"retry_max_seconds": 60})
    now = time.time() + 3600
    daemon.tick(now)
    daemon._collect(now, block=2)
    row = daemon.store.query("SELECT next_attempt_at FROM deliveries")[0]
    assert row["next_attempt_at"] >= now + 600  # the server's Retry-After is honoured
    # The clock is set back a day (the retry is now "a day and ten minutes" away).
    took = run_until(daemon, now - DAY, lambda: "flaky" in scripted.items, seconds=120)
    assert took <= 60


def test_backoff_journaled_before_a_restart_with_an_earlier_clock(make_daemon, inbox, scripted):
    write_item(inbox, "a")
    scripted.script["a"] = [TransientError("reset")]
    daemon = make_daemon({"fake": scripted}, daemon={"retry_base_seconds": 300, "retry_max_seconds": 300})
    now = time.time() + 3600
    daemon.tick(now)
    daemon._collect(now, block=2)
    daemon.store._tx([("UPDATE deliveries SET next_attempt_at=?", (now + 300,))])  # the longest backoff
    daemon.close(wait_seconds=0)
    # The machine reboots with a clock a year behind (no RTC battery, no NTP yet).
    again = make_daemon({"fake": scripted}, open_now=False)
    earlier = now - 365 * DAY
    again.open(earlier)
    took = run_until(again, earlier, lambda: "a" in scripted.items, seconds=60)
    assert took <= 10 and len(scripted.sent) == 1


def test_paused_target_is_rechecked_after_a_backward_jump(make_daemon, inbox, scripted):
    write_item(inbox, "a")
    scripted.check_error = FatalTargetError("HTTP 401: bad key")
    daemon = make_daemon({"fake": scripted}, daemon={"target_recheck_seconds": 30})
    clock = drive(daemon, until=lambda: "fake" in daemon.paused)
    scripted.check_error = None
    took = run_until(daemon, clock - DAY, lambda: "a" in scripted.items, seconds=120)
    assert took <= 40


def test_settling_file_and_rescan_survive_a_backward_jump(make_daemon, inbox, scripted):
    daemon = make_daemon({"fake": scripted}, daemon={"settle_seconds": 2.0, "rescan_seconds": 60})
    now = time.time()
    write_item(inbox, "fresh", old=False)
    daemon.scan(now)  # settling since `now`
    assert daemon.settling
    took = run_until(daemon, now - DAY, lambda: "fresh" in scripted.items, seconds=60, step=1.0)
    assert took <= 5
    # Without watches only the periodic rescan finds new files: it must not wait a day either.
    later = now - DAY + 10
    daemon.scan(later)  # the next rescan is now due at about later + 60
    write_item(inbox, "dropped")
    took = run_until(daemon, later - DAY, lambda: "dropped" in scripted.items, seconds=120)
    assert took <= 70


def test_forward_jump_loses_nothing_and_sends_nothing_twice(make_daemon, inbox):
    target = ScriptedTarget("fake", create_only=True, workers=6)  # every first attempt before the jump
    for i in range(6):
        write_item(inbox, f"item{i}", metadata={"i": i})
    target.script["item1"] = [TransientError("HTTP 429", retry_after=3000)]
    target.script["item2"] = [TransientError("timeout", outcome_unknown=True)]
    daemon = make_daemon({"fake": target}, daemon={"retry_max_seconds": 60})
    now = time.time() + 3600
    daemon.tick(now)
    wait_for(lambda: daemon.results.qsize() == 6, timeout=5, message="six first attempts")
    daemon._collect(now)
    assert daemon.store.query("SELECT max(next_attempt_at) AS at FROM deliveries")[0]["at"] >= now + 3000

    def states() -> set[str]:
        return {r["state"] for r in daemon.store.query("SELECT state FROM deliveries")}

    # Done when the target holds the six and the journal recorded the last ack (a report the
    # daemon has not collected yet is still in flight: on a loaded machine, for a few ticks).
    run_until(daemon, now + 30 * DAY, lambda: len(target.items) == 6 and states() == {"acked"}, seconds=120)
    assert sorted(key for key, _, _ in target.sent) == [f"item{i}" for i in range(6)]
